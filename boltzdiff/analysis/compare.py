"""Comparisons of free energies and distributions with a reference: PMF RMSE, Jensen-Shannon divergence,
Wasserstein-1 distance of weighted samples, interatomic-distance histograms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import rel_entr

from boltzdiff.analysis.histograms import Histogram1D, _weights, weighted_histogram_1d
from boltzdiff.analysis.weights import as_float64


@dataclass(frozen=True)
class PMFComparison:
    """Result of :func:`pmf_rmse`.

    Attributes
    ----------
    rmse : float
        Root-mean-square difference (kT) after removing the optimal constant offset; NaN if no common bin.
    offset : float
        The offset removed, ``mean(f - f_ref)`` over the compared bins (with the given bin weights).
    n_bins : int
        Number of bins compared.
    """

    rmse: float
    offset: float
    n_bins: int


def pmf_rmse(f, f_ref, weights=None, f_max: float | None = None) -> PMFComparison:
    """RMSE between two free-energy profiles/surfaces (any equal shapes) over bins populated in both.

    Free energies are defined up to a constant, so the constant is fitted: the RMSE is
    ``sqrt(sum_b v_b (d_b - c)^2 / sum_b v_b)`` with ``d = f - f_ref`` and ``c = sum_b v_b d_b / sum_b v_b``,
    the weighted mean difference, which is the offset minimising this RMSE. Default bin weights ``v_b = 1``
    (every commonly populated bin counts the same, the usual "PMF error"); pass e.g. the reference
    probabilities to emphasise well-populated regions.

    Parameters
    ----------
    f, f_ref : array-like, same shape
        Free energies in kT; non-finite entries (empty bins) are excluded.
    weights : array-like of the same shape, or None
    f_max : float or None
        Also exclude bins where either profile (each shifted to min 0) exceeds ``f_max`` kT.
    """
    a = as_float64(f).reshape(-1)
    b = as_float64(f_ref).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"profiles differ in shape: {np.shape(f)} vs {np.shape(f_ref)}")
    v = np.ones_like(a) if weights is None else as_float64(weights).reshape(-1)
    mask = np.isfinite(a) & np.isfinite(b) & (v > 0)
    if f_max is not None and mask.any():
        a0 = a - a[np.isfinite(a)].min()
        b0 = b - b[np.isfinite(b)].min()
        mask &= (a0 <= f_max) & (b0 <= f_max)
    if not mask.any():
        return PMFComparison(math.nan, math.nan, 0)
    d, vv = a[mask] - b[mask], v[mask]
    c = float(np.sum(vv * d) / np.sum(vv))
    return PMFComparison(float(np.sqrt(np.sum(vv * (d - c) ** 2) / np.sum(vv))), c, int(mask.sum()))


def jensen_shannon(p, q) -> float:
    """Jensen–Shannon divergence (natural log, in ``[0, ln 2]``) between two histograms of the same shape.

    Inputs are normalised to sum 1 first; ``0 ln 0 = 0``.
    """
    p = as_float64(p).reshape(-1)
    q = as_float64(q).reshape(-1)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {p.shape} vs {q.shape}")
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("a histogram has no mass")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    return float(0.5 * rel_entr(p, m).sum() + 0.5 * rel_entr(q, m).sum())


def wasserstein_1(a_n, b_m, log_w_a=None, log_w_b=None) -> float:
    """Wasserstein-1 distance between two weighted 1-D samples, ``int |F_a(x) - F_b(x)| dx``.

    Computed exactly from the two weighted empirical CDFs. Zero-weight samples are dropped (so overflowed
    energies with ``-inf`` log-weight are harmless); remaining values must be finite.

    Parameters
    ----------
    a_n : (n,) array-like, b_m : (m,) array-like
    log_w_a : (n,) or None, log_w_b : (m,) or None
    """

    def prep(x, lw):
        x = as_float64(x).reshape(-1)
        w = _weights(x.size, lw)
        keep = w > 0
        x, w = x[keep], w[keep]
        if not np.all(np.isfinite(x)):
            raise ValueError("samples with non-zero weight must be finite")
        o = np.argsort(x, kind="stable")
        return x[o], np.concatenate([[0.0], np.cumsum(w[o])])

    xa, ca = prep(a_n, log_w_a)
    xb, cb = prep(b_m, log_w_b)
    allx = np.sort(np.concatenate([xa, xb]))
    dx = np.diff(allx)
    fa = ca[np.searchsorted(xa, allx[:-1], side="right")]
    fb = cb[np.searchsorted(xb, allx[:-1], side="right")]
    return float(np.sum(np.abs(fa - fb) * dx))


# --------------------------------------------------------------------------------------------------
# particle systems
# --------------------------------------------------------------------------------------------------
def pairwise_distances(x) -> np.ndarray:
    """All interparticle distances ``(B, n (n - 1) / 2)`` of ``x: (B, n, dim)`` (pairs i < j)."""
    x = as_float64(x)
    if x.ndim != 3:
        raise ValueError(f"expected (B, n, dim) configurations, got shape {x.shape}")
    i, j = np.triu_indices(x.shape[1], k=1)
    return np.linalg.norm(x[:, i, :] - x[:, j, :], axis=-1)


def distance_histogram(
    x, log_w_b=None, bins: int | np.ndarray = 100, range: tuple[float, float] | None = None
) -> Histogram1D:
    """Weighted histogram of interparticle distances of ``x: (B, n, dim)``; each configuration's
    ``n (n - 1) / 2`` distances share its weight equally."""
    d = pairwise_distances(x)
    B, n_pairs = d.shape
    lw = np.zeros(B) if log_w_b is None else as_float64(log_w_b).reshape(-1)
    if lw.size != B:
        raise ValueError(f"configurations ({B}) and log-weights ({lw.size}) differ in length")
    return weighted_histogram_1d(d.reshape(-1), np.repeat(lw, n_pairs), bins=bins, range=range, periodic=False)
