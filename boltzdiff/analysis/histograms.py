"""Weighted histograms of (periodic) collective variables; the building blocks of
:mod:`boltzdiff.analysis.free_energy`. Conventions as there: angles in radians on ``[-pi, pi)``, log-weights
in float64 (``-inf`` = weight zero; ``None`` = equal weights), ``p`` the probability mass per bin."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from boltzdiff.analysis.weights import as_float64, normalized_weights

PERIODIC_RANGE = (-math.pi, math.pi)

RngLike = np.random.Generator | int | None


def _rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def wrap_angle(a) -> np.ndarray:
    """Wrap angles (radians) to ``[-pi, pi)``."""
    a = as_float64(a)
    return np.mod(a + math.pi, 2 * math.pi) - math.pi


def _weights(n: int, log_w_n) -> np.ndarray:
    if log_w_n is None:
        return np.full(n, 1.0 / n)
    w = normalized_weights(log_w_n)
    if w.size != n:
        raise ValueError(f"samples ({n}) and log-weights ({w.size}) differ in length")
    return w


def _bin_index(x_n: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index per sample (``-1`` outside ``[edges[0], edges[-1]]`` or non-finite); last edge inclusive."""
    n_bins = edges.size - 1
    idx = np.searchsorted(edges, x_n, side="right") - 1
    idx = np.where(x_n == edges[-1], n_bins - 1, idx)
    bad = ~np.isfinite(x_n) | (idx < 0) | (idx >= n_bins)
    return np.where(bad, -1, idx)


def _edges(x_n: np.ndarray, w_n: np.ndarray, bins, range_, periodic: bool) -> np.ndarray:
    if not np.isscalar(bins):
        e = as_float64(bins)
        if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
            raise ValueError("bin edges must be a strictly increasing 1-D array")
        return e
    if range_ is None:
        if periodic:
            range_ = PERIODIC_RANGE
        else:
            keep = (w_n > 0) & np.isfinite(x_n)
            if not keep.any():
                raise ValueError("no finite sample with non-zero weight to set the histogram range")
            lo, hi = float(x_n[keep].min()), float(x_n[keep].max())
            range_ = (lo, hi if hi > lo else lo + 1.0)
    return np.linspace(float(range_[0]), float(range_[1]), int(bins) + 1)


# --------------------------------------------------------------------------------------------------
# histograms
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Histogram1D:
    """A weighted 1-D histogram.

    Attributes
    ----------
    p_b : (n_bins,) float64
        Probability mass per bin (sums to 1 unless no mass is in range).
    edges : (n_bins + 1,) float64
    mass_in_range : float
        Fraction of the total weight that fell inside the edges (1 for periodic angles).
    """

    p_b: np.ndarray
    edges: np.ndarray
    mass_in_range: float

    @property
    def centers(self) -> np.ndarray:
        """Bin centres, ``(n_bins,)``."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def density(self) -> np.ndarray:
        """Probability density per bin (``p_b / width``), ``(n_bins,)``."""
        return self.p_b / np.diff(self.edges)


@dataclass(frozen=True)
class Histogram2D:
    """A weighted 2-D histogram; ``p_xy[i, j]`` is the mass of bin ``(x_i, y_j)``.

    Attributes
    ----------
    p_xy : (n_x, n_y) float64
    edges_x : (n_x + 1,) float64
    edges_y : (n_y + 1,) float64
    mass_in_range : float
    """

    p_xy: np.ndarray
    edges_x: np.ndarray
    edges_y: np.ndarray
    mass_in_range: float


def _hist_from_index(idx_n: np.ndarray, w_n: np.ndarray, n_bins: int) -> tuple[np.ndarray, float]:
    keep = idx_n >= 0
    counts = np.bincount(idx_n[keep], weights=w_n[keep], minlength=n_bins)
    total = counts.sum()
    return (counts / total if total > 0 else counts), float(total / max(w_n.sum(), 1e-300))


def _prepare_1d(x_n, log_w_n, bins, range, periodic):
    x = as_float64(x_n).reshape(-1)
    w = _weights(x.size, log_w_n)
    if periodic:
        x = wrap_angle(x)
    edges = _edges(x, w, bins, range, periodic)
    return x, w, edges, _bin_index(x, edges)


def weighted_histogram_1d(
    x_n,
    log_w_n=None,
    bins: int | np.ndarray = 60,
    range: tuple[float, float] | None = None,
    periodic: bool = False,
) -> Histogram1D:
    """Weighted 1-D histogram of ``x_n: (n,)``.

    Parameters
    ----------
    x_n : (n,) array-like
    log_w_n : (n,) array-like or None
        Unnormalised log-weights; ``None`` = equal weights.
    bins : int or (n_bins + 1,) array
        Number of equal-width bins or explicit edges.
    range : (lo, hi) or None
        Histogram range; default ``[-pi, pi)`` if ``periodic`` else the weighted samples' min/max.
    periodic : bool
        Wrap ``x`` to ``[-pi, pi)`` first (angles in radians).
    """
    x, w, edges, idx = _prepare_1d(x_n, log_w_n, bins, range, periodic)
    p, mass = _hist_from_index(idx, w, edges.size - 1)
    return Histogram1D(p, edges, mass)


def _prepare_2d(x_n, y_n, log_w_n, bins, range, periodic):
    x = as_float64(x_n).reshape(-1)
    y = as_float64(y_n).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"x ({x.size}) and y ({y.size}) differ in length")
    w = _weights(x.size, log_w_n)
    if periodic:
        x, y = wrap_angle(x), wrap_angle(y)
    bx, by = (bins, bins) if np.isscalar(bins) else bins
    rx, ry = (None, None) if range is None else range
    ex, ey = _edges(x, w, bx, rx, periodic), _edges(y, w, by, ry, periodic)
    ix, iy = _bin_index(x, ex), _bin_index(y, ey)
    idx = np.where((ix >= 0) & (iy >= 0), ix * (ey.size - 1) + iy, -1)
    return w, ex, ey, idx


def weighted_histogram_2d(x_n, y_n, log_w_n=None, bins=60, range=None, periodic: bool = True) -> Histogram2D:
    """Weighted 2-D histogram of ``(x_n, y_n)``, e.g. a Ramachandran histogram of ``(phi, psi)``.

    Parameters
    ----------
    x_n, y_n : (n,) array-like
    log_w_n : (n,) array-like or None
    bins : int, (n_x, n_y), or a pair of edge arrays
    range : ((x_lo, x_hi), (y_lo, y_hi)) or None
    periodic : bool
        Default True: both coordinates are angles, wrapped to ``[-pi, pi)``.
    """
    w, ex, ey, idx = _prepare_2d(x_n, y_n, log_w_n, bins, range, periodic)
    p, mass = _hist_from_index(idx, w, (ex.size - 1) * (ey.size - 1))
    return Histogram2D(p.reshape(ex.size - 1, ey.size - 1), ex, ey, mass)
