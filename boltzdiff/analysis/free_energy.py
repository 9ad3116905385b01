"""Weighted histograms, free-energy profiles and ΔF with bootstrap errors, and comparisons with a reference.

Conventions: free energies in kT (reduced), angles in radians on the periodic interval ``[-pi, pi)``,
log-weights in float64 (``-inf`` = weight zero; ``None`` = equal weights). A histogram's ``p`` is the
probability *mass* per bin, normalised over the samples that fall in range; a free energy is ``F = -ln p``
shifted so that its minimum is 0 (empty bins: ``+inf``). With equal-width bins this equals ``-ln`` of the
density up to the shift.

Bootstrap: particles are resampled with replacement *together with their weights* and the whole estimator
(normalisation and min-shift included) is recomputed on each replicate, so the standard error is that of the
reported number. For correlated samples (an MD trajectory) pass ``block_length``: a circular block bootstrap
(Politis & Romano 1992) resamples contiguous blocks of that many samples, which keeps correlations shorter
than a block. Weighted particles from SMC after resampling are also correlated (duplicates); treat those
with care.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from boltzdiff.analysis.compare import (  # noqa: F401  (re-exported)
    PMFComparison,
    distance_histogram,
    jensen_shannon,
    pairwise_distances,
    pmf_rmse,
    wasserstein_1,
)
from boltzdiff.analysis.histograms import (  # noqa: F401  (re-exported)
    PERIODIC_RANGE,
    Histogram1D,
    Histogram2D,
    RngLike,
    _bin_index,
    _edges,
    _hist_from_index,
    _prepare_1d,
    _prepare_2d,
    _rng,
    _weights,
    weighted_histogram_1d,
    weighted_histogram_2d,
    wrap_angle,
)
from boltzdiff.analysis.weights import as_float64


# --------------------------------------------------------------------------------------------------
def bootstrap_indices(n: int, n_bootstrap: int, rng: RngLike = None, block_length: int | None = None) -> np.ndarray:
    """Resampling indices, ``(n_bootstrap, n)`` int.

    ``block_length=None`` (or 1): i.i.d. resampling with replacement. Otherwise a circular block bootstrap:
    ``ceil(n / L)`` blocks of ``L`` consecutive indices (wrapping around the end) with uniform random starts,
    concatenated and cut to ``n``.
    """
    g = _rng(rng)
    if block_length is None or block_length <= 1:
        return g.integers(0, n, size=(n_bootstrap, n))
    L = int(min(block_length, n))
    n_blocks = -(-n // L)
    starts = g.integers(0, n, size=(n_bootstrap, n_blocks))
    idx = (starts[:, :, None] + np.arange(L)[None, None, :]) % n
    return idx.reshape(n_bootstrap, n_blocks * L)[:, :n]


def _f_from_p(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        f = -np.log(p)
    finite = np.isfinite(f)
    if finite.any():
        f = f - f[finite].min()
    return f


def free_energy_from_histogram(p) -> np.ndarray:
    """``F = -ln p`` (kT) shifted to minimum 0; ``+inf`` in empty bins. Any shape."""
    return _f_from_p(as_float64(p))


def _bootstrap_f(idx_n, w_n, n_bins, n_bootstrap, rng, block_length):
    """Replicate free energies ``(n_bootstrap, n_bins)`` (each shifted to its own min 0)."""
    boot = bootstrap_indices(idx_n.size, n_bootstrap, rng, block_length)
    out = np.empty((n_bootstrap, n_bins))
    for r in range(n_bootstrap):
        p, _ = _hist_from_index(idx_n[boot[r]], w_n[boot[r]], n_bins)
        out[r] = _f_from_p(p)
    return out


def _band(f_rb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin SE (std over finite replicates, ddof=1), and 16th/84th percentiles; NaN with < 2 finite."""
    fin = np.isfinite(f_rb)
    n_fin = fin.sum(0)
    f = np.where(fin, f_rb, np.nan)
    ok = n_fin >= 2
    se = np.full(f_rb.shape[1:], np.nan)
    lo = np.full(f_rb.shape[1:], np.nan)
    hi = np.full(f_rb.shape[1:], np.nan)
    if ok.any():
        se[ok] = np.nanstd(f[:, ok], axis=0, ddof=1)
        lo[ok] = np.nanpercentile(f[:, ok], 15.865, axis=0)
        hi[ok] = np.nanpercentile(f[:, ok], 84.135, axis=0)
    return se, lo, hi


@dataclass(frozen=True)
class FreeEnergyProfile:
    """``F(x)`` in kT on a 1-D grid with bootstrap error bands.

    Attributes
    ----------
    f_b : (n_bins,) float64
        Free energy, minimum 0, ``+inf`` in empty bins.
    se_b : (n_bins,) float64
        Bootstrap standard error (NaN where fewer than 2 replicates populate the bin, or no bootstrap).
    lo_b, hi_b : (n_bins,) float64
        15.9th / 84.1th bootstrap percentiles (a ±1 sigma band).
    p_b : (n_bins,) float64
        Probability mass per bin.
    edges : (n_bins + 1,) float64
    n_bootstrap : int
    """

    f_b: np.ndarray
    se_b: np.ndarray
    lo_b: np.ndarray
    hi_b: np.ndarray
    p_b: np.ndarray
    edges: np.ndarray
    n_bootstrap: int

    @property
    def centers(self) -> np.ndarray:
        """Bin centres, ``(n_bins,)``."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])


@dataclass(frozen=True)
class FreeEnergySurface:
    """``F(x, y)`` in kT on a 2-D grid with bootstrap standard errors.

    Attributes
    ----------
    f_xy, se_xy, p_xy : (n_x, n_y) float64
    edges_x : (n_x + 1,), edges_y : (n_y + 1,) float64
    n_bootstrap : int
    """

    f_xy: np.ndarray
    se_xy: np.ndarray
    p_xy: np.ndarray
    edges_x: np.ndarray
    edges_y: np.ndarray
    n_bootstrap: int


def free_energy_profile(
    x_n,
    log_w_n=None,
    bins: int | np.ndarray = 60,
    range: tuple[float, float] | None = None,
    periodic: bool = True,
    n_bootstrap: int = 100,
    rng: RngLike = None,
    block_length: int | None = None,
) -> FreeEnergyProfile:
    """Weighted free-energy profile ``F(x) = -ln p(x)`` (kT, min 0) with bootstrap bands.

    Parameters
    ----------
    x_n : (n,) array-like
        Collective variable, e.g. phi in radians.
    log_w_n : (n,) array-like or None
    bins, range, periodic
        As :func:`weighted_histogram_1d`; ``periodic`` defaults to True (angles).
    n_bootstrap : int
        Replicates (0 = no error bars).
    rng : numpy Generator, int seed or None
    block_length : int or None
        Block length for a circular block bootstrap of correlated (time-ordered) samples.
    """
    x, w, edges, idx = _prepare_1d(x_n, log_w_n, bins, range, periodic)
    n_bins = edges.size - 1
    p, _ = _hist_from_index(idx, w, n_bins)
    f = _f_from_p(p)
    if n_bootstrap > 0:
        se, lo, hi = _band(_bootstrap_f(idx, w, n_bins, n_bootstrap, rng, block_length))
    else:
        se = lo = hi = np.full(n_bins, np.nan)
    return FreeEnergyProfile(f, se, lo, hi, p, edges, int(n_bootstrap))


def free_energy_profile_from_probabilities(
    p_nb,
    edges,
    log_w_n=None,
    n_bootstrap: int = 100,
    rng: RngLike = None,
    clusters=None,
) -> FreeEnergyProfile:
    """``F(x) = -ln p(x)`` (kT, min 0) from each sample's probability of each bin rather than its bin.

    ``p_nb[i]`` is sample ``i``'s conditional distribution over the bins given something the estimate
    conditions on (e.g. its orbit under rotation about a torsion bond,
    :func:`boltzdiff.analysis.torsion_rb.torsion_state_probability` with ``profile_edges``); the weighted mean
    of the rows has the histogram's expectation and less variance (Rao-Blackwell), and a bin no sample sits in
    still gets the mass the samples' conditionals put there.

    Parameters
    ----------
    p_nb : (n, n_bins) array-like
        Non-negative rows summing to 1.
    edges : (n_bins + 1,) array-like
    log_w_n : (n,) array-like or None
    n_bootstrap : int
        Replicates over samples (0 = no error bars).
    clusters : (n,) int array-like or None
        Draw whole clusters (e.g. SMC lineages) instead of single samples, as :func:`two_state_delta_f`.
    """
    pm = np.asarray(p_nb, dtype=np.float64)
    edges = as_float64(edges).reshape(-1)
    if pm.ndim != 2 or pm.shape[1] != edges.size - 1:
        raise ValueError(f"p_nb: expected shape (n, {edges.size - 1}) for {edges.size} edges, got {pm.shape}")
    if pm.size and not (np.all(np.isfinite(pm)) and pm.min() >= 0 and np.allclose(pm.sum(1), 1.0, atol=1e-6)):
        raise ValueError("p_nb: expected non-negative rows summing to 1")
    w = _weights(pm.shape[0], log_w_n)

    def prob(counts_w: np.ndarray) -> np.ndarray:
        h = counts_w @ pm
        return h / h.sum() if h.sum() > 0 else h

    p = prob(w)
    f = _f_from_p(p)
    if n_bootstrap > 0:
        g = _rng(rng)
        if clusters is not None:
            lab = np.unique(np.asarray(clusters).reshape(-1), return_inverse=True)[1].reshape(-1)
            if lab.size != w.size:
                raise ValueError(f"clusters: expected {w.size} labels, got {lab.size}")
            nc = int(lab.max()) + 1
            draws = g.multinomial(nc, np.full(nc, 1.0 / nc), size=n_bootstrap)[:, lab]
        else:
            draws = g.multinomial(w.size, np.full(w.size, 1.0 / w.size), size=n_bootstrap)
        f_rb = np.stack([_f_from_p(prob(d * w)) for d in draws])
        se, lo, hi = _band(f_rb)
    else:
        se = lo = hi = np.full(edges.size - 1, np.nan)
    return FreeEnergyProfile(f, se, lo, hi, p, edges, int(n_bootstrap))


def free_energy_surface(
    x_n,
    y_n,
    log_w_n=None,
    bins=60,
    range=None,
    periodic: bool = True,
    n_bootstrap: int = 0,
    rng: RngLike = None,
    block_length: int | None = None,
) -> FreeEnergySurface:
    """Weighted 2-D free-energy surface, e.g. ``F(phi, psi)``; see :func:`free_energy_profile`."""
    w, ex, ey, idx = _prepare_2d(x_n, y_n, log_w_n, bins, range, periodic)
    shape = (ex.size - 1, ey.size - 1)
    n_bins = shape[0] * shape[1]
    p, _ = _hist_from_index(idx, w, n_bins)
    f = _f_from_p(p)
    if n_bootstrap > 0:
        se, _, _ = _band(_bootstrap_f(idx, w, n_bins, n_bootstrap, rng, block_length))
    else:
        se = np.full(n_bins, np.nan)
    return FreeEnergySurface(f.reshape(shape), se.reshape(shape), p.reshape(shape), ex, ey, int(n_bootstrap))


# --------------------------------------------------------------------------------------------------
# ΔF between two states
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeltaF:
    """Two-state free-energy difference ``ΔF = -ln[P(A) / P(not A)]`` in kT.

    Attributes
    ----------
    delta_f : float
        ``+inf`` if state A is empty, ``-inf`` if the rest is.
    se : float
        Bootstrap standard error (ddof=1 over finite replicates; NaN if fewer than 2 or no bootstrap).
    p_a : float
        Weighted probability of state A.
    n_bootstrap : int
    n_finite_bootstrap : int
        Replicates in which both states were populated (the SE uses those).
    block_length : int or None
    """

    delta_f: float
    se: float
    p_a: float
    n_bootstrap: int
    n_finite_bootstrap: int
    block_length: int | None


def _df(in_a: np.ndarray, w: np.ndarray) -> float:
    pa = float(np.sum(w * in_a))
    pb = float(np.sum(w * (1.0 - in_a)))
    if pa <= 0:
        return math.inf
    if pb <= 0:
        return -math.inf
    return -math.log(pa / pb)


def two_state_delta_f(
    in_a_n,
    log_w_n=None,
    n_bootstrap: int = 200,
    rng: RngLike = None,
    block_length: int | None = None,
    clusters=None,
) -> DeltaF:
    """ΔF (kT) between state A (``in_a_n`` True) and the rest, with a (block or cluster) bootstrap standard error.

    Parameters
    ----------
    in_a_n : (n,) bool array-like, or floats in [0, 1]
        Membership of state A: a bool per sample, or each sample's probability of A given something the
        estimate conditions on (e.g. :func:`boltzdiff.analysis.torsion_rb.torsion_state_probability`, the
        state integrated over a torsion), which keeps the estimate and lowers its variance.
    log_w_n : (n,) array-like or None
    n_bootstrap : int
    rng : numpy Generator, int seed or None
    block_length : int or None
        Circular block bootstrap for correlated, time-ordered samples (e.g. MD).
    clusters : (n,) int array-like or None
        Cluster bootstrap: whole clusters are drawn with replacement (as many as there are), each bringing
        all its samples and weights. For SMC particles pass their lineages (``samples.npz`` ``lineage``):
        resampled copies of one ancestor are one draw, and their weights move together.
    """
    in_a = np.asarray(in_a_n).reshape(-1)
    if in_a.dtype == bool:
        in_a = in_a.astype(np.float64)
    else:
        in_a = np.asarray(in_a, dtype=np.float64)
        if in_a.size and not (np.all(np.isfinite(in_a)) and in_a.min() >= 0 and in_a.max() <= 1):
            raise ValueError("two_state_delta_f: in_a_n must be bools or probabilities in [0, 1]")
    w = _weights(in_a.size, log_w_n)
    est = _df(in_a, w)
    reps = np.array([])
    if n_bootstrap > 0 and clusters is not None:
        lab = np.unique(np.asarray(clusters).reshape(-1), return_inverse=True)[1].reshape(-1)
        if lab.size != in_a.size:
            raise ValueError(f"clusters: expected {in_a.size} labels, got {lab.size}")
        nc = int(lab.max()) + 1
        wa_c = np.bincount(lab, weights=w * in_a, minlength=nc)
        wt_c = np.bincount(lab, weights=w, minlength=nc)
        counts = _rng(rng).multinomial(nc, np.full(nc, 1.0 / nc), size=n_bootstrap)
        pa, pt = counts @ wa_c, counts @ wt_c
        with np.errstate(divide="ignore", invalid="ignore"):
            reps = -np.log(pa / (pt - pa))
        reps = reps[np.isfinite(reps)]
    elif n_bootstrap > 0:
        boot = bootstrap_indices(in_a.size, n_bootstrap, rng, block_length)
        wa = w * in_a
        pa = wa[boot].sum(1)
        pt = w[boot].sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            reps = -np.log(pa / (pt - pa))
        reps = reps[np.isfinite(reps)]
    se = float(np.std(reps, ddof=1)) if reps.size >= 2 else math.nan
    return DeltaF(est, se, float(np.sum(w * in_a)), int(n_bootstrap), int(reps.size), block_length)
