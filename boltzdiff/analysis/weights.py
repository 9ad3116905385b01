"""Importance weights: Kish ESS traces, self-normalised weights, weighted moments.

The Kish ESS itself is :func:`boltzdiff.samplers.resampling.kish_ess` (a fraction in ``[0, 1]``).

All functions take *log*-weights (float64, any unnormalised offset) and never exponentiate raw log-weights:
normalisation goes through ``logsumexp``. A log-weight of ``-inf`` is a particle with weight zero (e.g. a
clashing configuration whose target energy overflowed); NaN or ``+inf`` log-weights are errors, see
:func:`clean_log_weights` to map them to zero weight and count them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from boltzdiff.samplers.resampling import kish_ess


def as_float64(a) -> np.ndarray:
    """A numpy float64 copy-or-view of an array-like or (CPU/GPU, grad or not) torch tensor."""
    if hasattr(a, "detach"):  # torch.Tensor without importing torch
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _check_log_w(log_w_n) -> np.ndarray:
    lw = as_float64(log_w_n)
    if lw.ndim != 1:
        raise ValueError(f"log-weights must be 1-D (n,), got shape {lw.shape}")
    if lw.size == 0:
        raise ValueError("log-weights are empty")
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise ValueError("log-weights contain NaN or +inf; map them with clean_log_weights() first")
    return lw


@dataclass(frozen=True)
class CleanLogWeights:
    """Result of :func:`clean_log_weights`.

    Attributes
    ----------
    log_w_n : (n,) float64
        Log-weights with every non-finite entry (NaN, +inf) set to ``-inf`` (weight zero).
    n_invalid : int
        How many entries were NaN or +inf.
    n_zero : int
        How many entries have weight zero after cleaning (``-inf``; includes ``n_invalid``).
    """

    log_w_n: np.ndarray
    n_invalid: int
    n_zero: int


def clean_log_weights(log_w_n) -> CleanLogWeights:
    """Give NaN / +inf log-weights weight zero and count them.

    Parameters
    ----------
    log_w_n : (n,) array-like

    Returns
    -------
    CleanLogWeights
    """
    lw = as_float64(log_w_n).reshape(-1).copy()
    bad = np.isnan(lw) | np.isposinf(lw)
    lw[bad] = -np.inf
    return CleanLogWeights(lw, int(bad.sum()), int(np.isneginf(lw).sum()))


def normalized_weights(log_w_n) -> np.ndarray:
    """Self-normalised weights ``w_n / sum(w)``, ``(n,)`` float64, computed with ``logsumexp``.

    Raises
    ------
    ValueError
        If every weight is zero (all ``-inf``), or on NaN/+inf input.
    """
    lw = _check_log_w(log_w_n)
    lse = logsumexp(lw)
    if not np.isfinite(lse):
        raise ValueError("all log-weights are -inf: no particle carries weight")
    return np.exp(lw - lse)


def kish_ess_trace(log_w_tn) -> np.ndarray:
    """Normalised Kish ESS (:func:`boltzdiff.samplers.resampling.kish_ess`, a fraction) for each row of a
    ``(T, n)`` array of log-weights, ``(T,)``."""
    lw = as_float64(log_w_tn)
    if lw.ndim != 2:
        raise ValueError(f"expected (T, n) log-weights, got shape {lw.shape}")
    return np.array([kish_ess(row) for row in lw])


def weighted_mean(a_n, log_w_n=None) -> float:
    """Self-normalised weighted mean ``sum_n w_n a_n / sum_n w_n`` of a ``(n,)`` sample.

    Entries of ``a_n`` with weight zero are ignored even if they are inf/NaN (e.g. overflowed energies).
    ``log_w_n=None`` means equal weights.
    """
    a = as_float64(a_n).reshape(-1)
    w = np.full(a.size, 1.0 / a.size) if log_w_n is None else normalized_weights(log_w_n)
    if w.size != a.size:
        raise ValueError(f"values ({a.size}) and log-weights ({w.size}) differ in length")
    keep = w > 0
    return float(np.sum(w[keep] * a[keep]))


def weighted_var(a_n, log_w_n=None) -> float:
    """Self-normalised weighted variance ``sum_n w_n (a_n - mean)^2`` (no small-sample correction)."""
    a = as_float64(a_n).reshape(-1)
    w = np.full(a.size, 1.0 / a.size) if log_w_n is None else normalized_weights(log_w_n)
    if w.size != a.size:
        raise ValueError(f"values ({a.size}) and log-weights ({w.size}) differ in length")
    keep = w > 0
    m = np.sum(w[keep] * a[keep])
    return float(np.sum(w[keep] * (a[keep] - m) ** 2))


def pool_runs(log_w_n, run_n, log_z_r) -> np.ndarray:
    """Log-weights pooling independent SMC/IS runs: each run's weights normalised within the run, then scaled
    by ``n_r Z_r`` (its particle count times its normalising-constant estimate), so that a self-normalised
    estimate over all particles weights run ``r`` by ``n_r Z_r`` (the standard way to merge independent SMC
    samplers; for plain importance sampling with ``Z_r`` = the run's mean weight it gives back the raw weights
    up to one constant).

    ``log_w_n: (n,)``, ``run_n: (n,)`` integer run labels ``0..R-1``, ``log_z_r: (R,)`` log ``Z_r``.
    """
    lw = _check_log_w(log_w_n).copy()
    run = np.asarray(run_n).reshape(-1)
    lz = as_float64(log_z_r).reshape(-1)
    if run.shape != lw.shape:
        raise ValueError(f"run labels must match the log-weights' shape {lw.shape}, got {run.shape}")
    if run.size and (run.min() < 0 or run.max() >= lz.size):
        raise ValueError(f"run labels must lie in [0, {lz.size}), got [{run.min()}, {run.max()}]")
    for r in range(lz.size):
        m = run == r
        if m.any() and np.isfinite(lw[m]).any():
            lw[m] = lw[m] - logsumexp(lw[m]) + lz[r] + np.log(m.sum())
    return lw


def leave_one_run_out(estimate, run_n) -> np.ndarray:
    """``estimate(mask) -> float`` on all particles but those of each run in turn (runs in sorted label order):
    how much each independent run moves a pooled estimate, ``(R,)``; empty with fewer than two runs (leaving
    out the only run leaves nothing to estimate from)."""
    run = np.asarray(run_n).reshape(-1)
    labels = np.unique(run)
    if labels.size < 2:
        return np.zeros(0)
    return np.array([float(estimate(run != r)) for r in labels])


def jackknife_se(loo) -> float:
    """Delete-one jackknife standard error from the leave-one-out estimates ``loo`` (NaN with fewer than 2 of
    them or any non-finite one)."""
    loo = np.asarray(loo, dtype=np.float64).reshape(-1)
    R = loo.size
    if R < 2 or not np.isfinite(loo).all():
        return float("nan")
    return float(np.sqrt((R - 1) / R * np.sum((loo - loo.mean()) ** 2)))


def jackknife_over_runs(estimate, run_n) -> tuple[float, float]:
    """Delete-one-run jackknife: ``estimate(mask) -> float`` evaluated on all particles and on all but each
    run; returns ``(estimate on all, jackknife standard error)``. The SE is NaN with fewer than 2 runs or if a
    leave-one-out estimate is not finite (e.g. no particle left in a state)."""
    full = float(estimate(np.ones(np.asarray(run_n).size, dtype=bool)))
    return full, jackknife_se(leave_one_run_out(estimate, run_n))


def top_lineage_share(log_w, lineage) -> float:
    """The largest share of the normalised weight ``exp(log_w)`` that the particles of one lineage (SMC
    ancestor) carry together: near 1 when one ancestor's copies make up the sample."""
    lw = clean_log_weights(log_w).log_w_n
    lin = np.asarray(lineage).reshape(-1)
    if lin.size == 0 or not np.isfinite(lw).any():  # no particle, or none with weight
        return float("nan")
    _, inv = np.unique(lin, return_inverse=True)
    return float(np.bincount(inv, weights=normalized_weights(lw)).max())


def mean_of_runs(values) -> tuple[float, float]:
    """The plain mean of independent runs' estimates and its standard error (SD over runs / sqrt(R), ddof 1):
    each run counted once, where pooling by normalising constants lets the run with the largest estimate of Z
    decide. NaN for the error with fewer than two finite values; ValueError with none."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("mean_of_runs: no finite run estimate")
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se
