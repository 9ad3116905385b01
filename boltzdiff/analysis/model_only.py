"""Model-only free energies: is the learned energy ``E_theta(x, t_0)`` right on its own, without the exact
target's importance weights? (docs/method.md#model-only)

Two estimators of the model's free-energy profile F(CV) over a 1-D collective variable:

- **A, reweighting (the default).** Reference frames ``x_i`` are Boltzmann samples of a known reduced energy
  ``u`` (optionally with log-weights ``log w_i``). Reweighted to the model's cleanest level they carry

      log v_i = log w_i + u(x_i) - E_theta(x_i, t_0),

  so that ``sum_{i in b} v_i`` estimates ``int_b exp(-E_theta)`` up to one constant and
  ``F_model(b) = -log sum_{i in b} v_i``. No barrier has to be crossed: every bin the reference visits is
  scored. Each bin's Kish ESS of the ``v_i`` says how far it can be trusted, and the estimate from halves of
  the frames (first/second half, random halves) says how converged it is.
- **B, chains on the model alone.** MALA chains on ``E_theta(x, t_0)`` from the reference frames; F(CV) is the
  histogram of their last halves. The target energy enters nowhere, but short chains cannot cross barriers, so
  a basin's population stays where the starting frames put it (see :func:`model_chains`).

Metrics against a reference profile on the same grid: the RMSE over the bins where the reference F is at most
``max_f`` (6 kT), after aligning both profiles by their mean over those bins; ΔF between a state (a CV interval)
and the rest; the region offset (model ΔF minus reference ΔF).

All functions take arrays (numpy float64 unless stated) and do no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: dihedral profiles: 72 bins of 5 degrees on [-pi, pi)
N_DIHEDRAL_BINS = 72
DIHEDRAL_EDGES = np.linspace(-math.pi, math.pi, N_DIHEDRAL_BINS + 1)
#: bins where the reference F (minimum 0) is at most this many kT enter the RMSE
RMSE_MAX_F_KT = 6.0


def bin_centres(edges: np.ndarray) -> np.ndarray:
    """Centres ``(n_bins,)`` of bins with ``edges: (n_bins + 1,)``."""
    edges = np.asarray(edges, dtype=np.float64)
    return 0.5 * (edges[1:] + edges[:-1])


def _lse(a: np.ndarray) -> float:
    """``log sum exp`` of a 1-D array (``-inf`` for an empty or all ``-inf`` one)."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return -math.inf
    m = np.max(a)
    if not np.isfinite(m):
        return -math.inf
    return float(m + np.log(np.sum(np.exp(a - m))))


def kish_ess_count(log_w: np.ndarray) -> float:
    """Kish ESS ``(sum w)^2 / sum w^2`` of log-weights ``(n,)`` as a number of samples (0 for none)."""
    log_w = np.asarray(log_w, dtype=np.float64)
    log_w = log_w[np.isfinite(log_w)]
    if log_w.size == 0:
        return 0.0
    return float(np.exp(2 * _lse(log_w) - _lse(2 * log_w)))


def reweight_to_model(e_model: np.ndarray, u_ref: np.ndarray, log_w: np.ndarray | None = None) -> np.ndarray:
    """Estimator A's log-weights ``log v_i = log w_i + u(x_i) - E_theta(x_i, t_0)``, ``(n,)`` float64.

    Parameters
    ----------
    e_model : (n,) array
        The model's energy at its cleanest level on the frames.
    u_ref : (n,) array
        The reduced energy the frames are Boltzmann samples of.
    log_w : (n,) array, optional
        The frames' own log-weights (zeros when omitted). Non-finite entries get weight zero.
    """
    e = np.asarray(e_model, dtype=np.float64)
    u = np.asarray(u_ref, dtype=np.float64)
    lw = np.zeros_like(e) if log_w is None else np.asarray(log_w, dtype=np.float64)
    out = lw + u - e
    out[~np.isfinite(out)] = -np.inf
    return out - (np.max(out[np.isfinite(out)]) if np.isfinite(out).any() else 0.0)


def bin_index(cv: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value ``(n,)`` (int; -1 outside ``[edges[0], edges[-1]]``, the last edge counted in)."""
    cv = np.asarray(cv, dtype=np.float64)
    nb = len(edges) - 1
    idx = np.searchsorted(edges, cv, side="right") - 1
    idx[cv == edges[-1]] = nb - 1
    idx[(cv < edges[0]) | (cv > edges[-1]) | ~np.isfinite(cv)] = -1
    return idx


def binned_free_energy(cv: np.ndarray, log_w: np.ndarray | None, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``F(b) = -log sum_{i in b} w_i`` (kT, minimum 0, ``inf`` for empty bins) and each bin's Kish ESS.

    Parameters
    ----------
    cv : (n,) array
    log_w : (n,) array or None (equal weights)
    edges : (n_bins + 1,) array

    Returns
    -------
    f : (n_bins,) array
    ess : (n_bins,) array (numbers of samples)
    """
    cv = np.asarray(cv, dtype=np.float64)
    lw = np.zeros(len(cv)) if log_w is None else np.asarray(log_w, dtype=np.float64)
    idx = bin_index(cv, edges)
    nb = len(edges) - 1
    log_m = np.full(nb, -np.inf)
    ess = np.zeros(nb)
    for b in range(nb):
        sel = lw[idx == b]
        log_m[b] = _lse(sel)
        ess[b] = kish_ess_count(sel)
    f = -log_m
    fin = np.isfinite(f)
    if fin.any():
        f = f - f[fin].min()
    return f, ess


def aligned_rmse(f_model: np.ndarray, f_ref: np.ndarray, max_f: float = RMSE_MAX_F_KT) -> dict:
    """RMSE between two profiles over the bins where the reference is at most ``max_f`` kT above its minimum.

    Both profiles are shifted to mean zero over the scored bins (where both are finite). Returns ``{rmse_kT,
    n_bins, n_bins_missing}``: ``n_bins_missing`` counts the bins the reference scores but the model leaves
    empty (not in the RMSE).
    """
    fm, fr = np.asarray(f_model, dtype=np.float64), np.asarray(f_ref, dtype=np.float64)
    fr0 = fr - np.nanmin(np.where(np.isfinite(fr), fr, np.nan)) if np.isfinite(fr).any() else fr
    want = np.isfinite(fr0) & (fr0 <= max_f)
    use = want & np.isfinite(fm)
    if not use.any():
        return dict(rmse_kT=float("nan"), n_bins=0, n_bins_missing=int(want.sum()))
    d = (fm[use] - fm[use].mean()) - (fr[use] - fr[use].mean())
    return dict(rmse_kT=float(np.sqrt(np.mean(d**2))), n_bins=int(use.sum()), n_bins_missing=int((want & ~use).sum()))


def in_interval(cv: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo < cv < hi`` ``(n,)`` bool; ``lo > hi`` means the interval that wraps through ``+-pi``."""
    cv = np.asarray(cv, dtype=np.float64)
    if lo <= hi:
        return (cv > lo) & (cv < hi)
    return (cv > lo) | (cv < hi)


def state_delta_f(cv: np.ndarray, log_w: np.ndarray | None, lo: float, hi: float) -> float:
    """``ΔF = -ln[sum_{A} w / sum_{not A} w]`` (kT) of the state ``A = {lo < cv < hi}``, as in
    docs/method.md#free-energies (``inf`` when A carries no weight, ``-inf`` when the rest carries none)."""
    lw = np.zeros(len(cv)) if log_w is None else np.asarray(log_w, dtype=np.float64)
    a = in_interval(cv, lo, hi)
    return float(-(_lse(lw[a]) - _lse(lw[~a])))


def half_split(
    cv: np.ndarray,
    log_w: np.ndarray,
    edges: np.ndarray,
    f_ref: np.ndarray,
    n_random: int = 4,
    seed: int = 0,
    max_f: float = RMSE_MAX_F_KT,
) -> dict:
    """Convergence of a reweighted profile: the profile from each half of the frames and their difference.

    Splits: the first against the second half (in the order given; for MD frames this sees slow drifts), then
    ``n_random`` random halves. For each split the two halves' profiles are compared like
    :func:`aligned_rmse` on the bins where ``f_ref`` is at most ``max_f``. The full estimate's own error is
    about half the halves' difference (each half has twice the variance of the whole).

    Returns
    -------
    dict
        ``rms_kT`` (root mean square over the splits), ``per_split_kT`` (list, the contiguous split first) and
        ``f_halves_kT`` (the contiguous halves' profiles, two lists of ``n_bins``).
    """
    n = len(cv)
    rng = np.random.default_rng(seed)
    orders = [np.arange(n)] + [rng.permutation(n) for _ in range(int(n_random))]
    fr = np.asarray(f_ref, dtype=np.float64)
    low = np.isfinite(fr) & (fr - (fr[np.isfinite(fr)].min() if np.isfinite(fr).any() else 0.0) <= max_f)
    per, halves = [], None
    for k, order in enumerate(orders):
        a, b = order[: n // 2], order[n // 2 :]
        fa, _ = binned_free_energy(cv[a], log_w[a], edges)
        fb, _ = binned_free_energy(cv[b], log_w[b], edges)
        use = low & np.isfinite(fa) & np.isfinite(fb)  # the reference's low-F bins where both halves have frames
        if use.any():
            d = (fa[use] - fa[use].mean()) - (fb[use] - fb[use].mean())
            per.append(float(np.sqrt(np.mean(d**2))))
        else:
            per.append(float("nan"))
        if k == 0:
            halves = [fa, fb]
    per_arr = np.asarray(per, dtype=np.float64)
    ok = np.isfinite(per_arr)
    return dict(
        rms_kT=float(np.sqrt(np.mean(per_arr[ok] ** 2))) if ok.any() else float("nan"),
        per_split_kT=[float(v) for v in per_arr],
        f_halves_kT=[_finite_list(h) for h in halves],
    )


def _finite_list(a: np.ndarray) -> list:
    """A JSON-friendly list: non-finite entries become None."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a, dtype=np.float64)]


@dataclass
class ModelOnlyProfile:
    """What :func:`model_only_profile` returns (profiles ``(n_bins,)`` in kT, minimum 0, ``inf`` where empty)."""

    f_model: np.ndarray
    f_reference: np.ndarray
    bin_ess: np.ndarray
    rmse: dict
    half_split: dict
    delta_f_model: float | None
    delta_f_reference: float | None
    ess_fraction: float

    @property
    def region_offset(self) -> float | None:
        """The model's ΔF minus the reference's (kT), None without a state."""
        if self.delta_f_model is None or self.delta_f_reference is None:
            return None
        return float(self.delta_f_model - self.delta_f_reference)


def model_only_profile(
    cv: np.ndarray,
    e_model: np.ndarray,
    u_ref: np.ndarray,
    log_w: np.ndarray | None = None,
    edges: np.ndarray = DIHEDRAL_EDGES,
    state: tuple[float, float] | None = None,
    u_target: np.ndarray | None = None,
    n_random_halves: int = 4,
    seed: int = 0,
    max_f: float = RMSE_MAX_F_KT,
) -> ModelOnlyProfile:
    """Estimator A on frames with CV values ``cv: (n,)`` (see the module docstring).

    Parameters
    ----------
    cv : (n,) array
    e_model : (n,) array
        ``E_theta(x_i, t_0)``.
    u_ref : (n,) array
        The reduced energy the frames sample (with ``log_w``).
    log_w : (n,) array, optional
    edges : (n_bins + 1,) array
    state : (lo, hi), optional
        A CV interval for ΔF against the rest.
    u_target : (n,) array, optional
        The reduced energy the reference profile is wanted for, when it is not ``u_ref`` (frames from another
        temperature): the reference profile then uses ``log w + u_ref - u_target``. The model's profile does not
        depend on it.
    """
    cv = np.asarray(cv, dtype=np.float64)
    lw = np.zeros(len(cv)) if log_w is None else np.asarray(log_w, dtype=np.float64)
    lv = reweight_to_model(e_model, u_ref, lw)
    lw_ref = lw if u_target is None else lw + np.asarray(u_ref) - np.asarray(u_target)
    f_m, ess = binned_free_energy(cv, lv, edges)
    f_r, _ = binned_free_energy(cv, lw_ref, edges)
    dfm = dfr = None
    if state is not None:
        dfm = state_delta_f(cv, lv, *state)
        dfr = state_delta_f(cv, lw_ref, *state)
    return ModelOnlyProfile(
        f_model=f_m,
        f_reference=f_r,
        bin_ess=ess,
        rmse=aligned_rmse(f_m, f_r, max_f),
        half_split=half_split(cv, lv, edges, f_r, n_random=n_random_halves, seed=seed, max_f=max_f),
        delta_f_model=dfm,
        delta_f_reference=dfr,
        ess_fraction=kish_ess_count(lv) / max(len(cv), 1),
    )


def model_chains(
    model,
    x0: torch.Tensor,
    n_steps: int,
    level: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    thin: int = 1,
) -> tuple[torch.Tensor, float]:
    """Estimator B's chains: MALA on ``q(x) = exp(-E_theta(x, t_level))`` alone from ``x0: (B, d)``.

    The step size adapts (towards 57 % acceptance) during the first half and is frozen for the second, whose
    states (every ``thin``-th step) are returned. Chains started from Boltzmann frames of ``u`` relax within
    their basins towards the model's local shape; crossing a barrier of many kT takes far more steps than any
    affordable run, so the basins' populations stay those of the starting frames unless the chains are long.

    Parameters
    ----------
    model : LevelEnergy
    x0 : (B, d) tensor
    n_steps : int
        Steps per chain (at least 2).
    step_size : float, optional
        Initial MALA step ``h`` (``x + h grad log q + sqrt(2h) xi``); default ``0.05 * sigma_t0^2``-scale,
        ``0.05 * min(var of x0 per coordinate)``.

    Returns
    -------
    states : (n_kept, B, d) tensor
        The last half's states.
    acceptance : float
        Mean acceptance over the last half.
    """
    from boltzdiff.samplers.mcmc import LevelDensity, MCMCConfig, run_mcmc

    n_steps = max(2, int(n_steps))
    dens = LevelDensity(model, level)
    if step_size is None:
        v = x0.double().var(0)
        step_size = float(0.05 * v[v > 0].min()) if (v > 0).any() else 1e-3
    burn = n_steps // 2
    cfg = MCMCConfig("mala", n_steps=burn, step_size=step_size, adapt=True, adapt_rate=0.5)
    res = run_mcmc(dens, x0, cfg, generator)
    x, state = res.x, res.state
    keep, acc = [], []
    run = MCMCConfig("mala", n_steps=1, step_size=cfg.step_size, adapt=False)
    for k in range(n_steps - burn):
        r = run_mcmc(dens, x, run, generator, state=state)
        x, state = r.x, r.state
        acc.append(r.acceptance)
        if k % max(1, int(thin)) == 0:
            keep.append(x.detach().clone())
    return torch.stack(keep), float(np.mean(acc))


def chain_profile(cv_chains: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimator B's profile: an unweighted histogram of the chains' CV values ``(n_kept, B)`` (any shape).

    Returns ``(f (n_bins,), counts (n_bins,))``; the counts stand in for the bins' ESS (an upper bound: the
    states of one chain are correlated).
    """
    flat = np.asarray(cv_chains, dtype=np.float64).reshape(-1)
    f, ess = binned_free_energy(flat, None, edges)
    return f, ess
