"""``F_B - F_A`` from a trained interpolant energy, by annealed importance sampling along its levels.

Forward: particles drawn from state A move through the levels ``t_1 .. t_K`` (``E(., t_K) = u_B`` exactly),
accumulating ``log w += E(x, t_{k-1}) - E(x, t_k)`` before MALA steps that leave level ``k`` invariant; the work of
a particle is ``W = -log w`` and ``exp(-(F_B - F_A)) = <exp(-W_F)>``. Reverse: particles of B through the levels
in the opposite order, ``exp(F_B - F_A) = <exp(-W_R)>``. The two directions are combined by Bennett's acceptance
ratio (``pymbar.other_estimators.bar``): the reverse run uses the forward run's per-level MALA step sizes
without adapting them, so its kernels are the forward ones in reverse order. The energies may be wrong
anywhere between the ends; that only costs variance, never bias.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from boltzdiff.freeenergy.model import InterpolantEnergy
from boltzdiff.samplers.mcmc import LevelDensity, MCMCConfig, run_mcmc
from boltzdiff.samplers.resampling import kish_ess


def _log_mean_exp(a: np.ndarray) -> tuple[float, float]:
    """``log mean exp(a)`` and its delta-method standard error."""
    m = float(np.max(a))
    w = np.exp(a - m)
    mean = float(w.mean())
    se = float(w.std(ddof=1) / math.sqrt(len(w)) / mean) if len(w) > 1 else float("nan")
    return m + math.log(mean), se


def pilot_step_size(model: InterpolantEnergy, x: torch.Tensor, level: int, steps: int = 30, h0: float | None = None):
    """A MALA step size for ``level`` adapted on ``x`` (``steps`` adaptive steps; their evaluations count)."""
    if h0 is None:
        h0 = 1e-2 * float(x.var(0).mean())
    cfg = MCMCConfig("mala", n_steps=steps, step_size=h0)
    run_mcmc(LevelDensity(model, level), x, cfg)
    return float(cfg.step_size)


def anneal(
    model: InterpolantEnergy,
    x: torch.Tensor,
    levels: list[int],
    mcmc_steps: int,
    step_sizes: dict[int, float] | None = None,
    h0: float | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """AIS from ``x`` (samples of level ``levels[0]``) through ``levels[1:]``. With ``step_sizes`` (level ->
    MALA step) the kernels are fixed; otherwise they adapt from ``h0`` and the used ones are returned.
    Returns ``{log_w (n,) float64, step_sizes, acceptance, ess_trace}``."""
    n = x.shape[0]
    log_w = torch.zeros(n, dtype=torch.float64)
    used, acc, ess = {}, [], []
    h = h0
    with torch.no_grad():
        e_prev = model.energy(x, levels[0])
    for i, lvl in enumerate(levels[1:], start=1):
        with torch.no_grad():
            e_new = model.energy(x, lvl)
        log_w += (e_prev - e_new).double()
        ess.append(kish_ess(log_w))
        if mcmc_steps > 0 and i < len(levels) - 1:
            fixed = step_sizes is not None
            cfg = MCMCConfig("mala", n_steps=mcmc_steps, step_size=step_sizes[lvl] if fixed else h, adapt=not fixed)
            res = run_mcmc(LevelDensity(model, lvl), x, cfg, generator=generator)
            x = res.x
            used[lvl] = res.step_size if fixed else float(cfg.step_size)
            h = float(cfg.step_size)
            acc.append(res.acceptance)
            with torch.no_grad():
                e_new = model.energy(x, lvl)
        e_prev = e_new
    return dict(log_w=log_w.numpy(), step_sizes=used, acceptance=acc, ess_trace=ess, x=x)


def ais_estimates(
    model: InterpolantEnergy,
    xa: torch.Tensor,
    xb: torch.Tensor,
    n: int,
    mcmc_steps: int = 5,
    seed: int = 0,
) -> dict:
    """Forward (A -> B), reverse (B -> A) and BAR-combined ``F_B - F_A`` (kT) from ``n`` particles each, drawn
    from ``xa`` and ``xb`` (equal-weight samples of the two states). Counts the target evaluations spent."""
    from boltzdiff.reference.umbrella import _import_pymbar

    bar = _import_pymbar().other_estimators.bar
    gen = torch.Generator().manual_seed(int(seed))
    n0 = model.n_target_evals
    ia = torch.randint(0, xa.shape[0], (n,), generator=gen)
    ib = torch.randint(0, xb.shape[0], (n,), generator=gen)
    K = model.path.n_levels - 1
    h0 = pilot_step_size(model, xa[ia], 0) if mcmc_steps > 0 else None
    fwd = anneal(model, xa[ia], list(range(0, K + 1)), mcmc_steps, h0=h0, generator=gen)
    rev = anneal(
        model, xb[ib], list(range(K, -1, -1)), mcmc_steps, step_sizes=fwd["step_sizes"] or None, h0=h0, generator=gen
    )
    w_f, w_r = -fwd["log_w"], -rev["log_w"]
    df_f, se_f = _log_mean_exp(-w_f)
    df_r, se_r = _log_mean_exp(-w_r)
    out = dict(
        forward=dict(
            delta_f_kT=-df_f,
            delta_f_se_kT=se_f,
            ess=kish_ess(fwd["log_w"]),
            ess_trace=fwd["ess_trace"],
            acceptance=fwd["acceptance"],
        ),
        reverse=dict(
            delta_f_kT=df_r,
            delta_f_se_kT=se_r,
            ess=kish_ess(rev["log_w"]),
            ess_trace=rev["ess_trace"],
            acceptance=rev["acceptance"],
        ),
        n_particles=n,
        mcmc_steps=mcmc_steps,
    )
    finite = np.isfinite(w_f).all() and np.isfinite(w_r).all()
    if finite:
        b = bar(w_f, w_r, DeltaF=0.5 * (-df_f + df_r), compute_uncertainty=True)
        out["bar"] = dict(delta_f_kT=float(b["Delta_f"]), delta_f_se_kT=float(b["dDelta_f"]))
    out["n_target_evals"] = int(model.n_target_evals - n0)
    return out



def endpoint_bar(target_a, target_b, xa: torch.Tensor, xb: torch.Tensor, chunk: int = 1000) -> dict:
    """BAR directly between the two states on their own samples, without the interpolant: the reduced-energy
    differences ``u_B - u_A`` on samples of A and ``u_A - u_B`` on samples of B (``2 (N_A + N_B)`` target
    evaluations). Where the two states overlap well (a spread of ``u_B - u_A`` of a few kT) this is already an
    accurate answer and the interpolant's estimates cannot beat it on the same samples; what limits both is then
    the sampling of the end states. Also reports the spread of ``u_B - u_A`` on each side (the overlap)."""
    from boltzdiff.reference.umbrella import _import_pymbar

    def du(x, first, second):
        with torch.no_grad():
            parts = [(second.energy(c) - first.energy(c)).double() for c in torch.split(x, chunk)]
        return torch.cat(parts).numpy()

    w_f = du(xa, target_a, target_b)  # u_B - u_A on A: forward work
    w_r = du(xb, target_b, target_a)  # u_A - u_B on B: reverse work
    ok_f, ok_r = np.isfinite(w_f), np.isfinite(w_r)
    out = dict(
        du_a_mean_kT=float(w_f[ok_f].mean()),
        du_a_sd_kT=float(w_f[ok_f].std()),
        du_b_mean_kT=float(-w_r[ok_r].mean()),
        du_b_sd_kT=float(w_r[ok_r].std()),
        n_nonfinite=int((~ok_f).sum() + (~ok_r).sum()),
        n_target_evals=int(2 * (len(w_f) + len(w_r))),
    )
    b = _import_pymbar().other_estimators.bar(w_f[ok_f], w_r[ok_r], compute_uncertainty=True)
    out.update(delta_f_kT=float(b["Delta_f"]), delta_f_se_kT=float(b["dDelta_f"]))
    return out
