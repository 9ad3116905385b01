"""Model-only evaluation of a trained energy on a system with a dihedral CV (molecules): the model's own F(CV)
at its cleanest level against the reference frames' (docs/method.md#model-only).

:func:`model_only_block` is what ``boltzdiff evaluate`` writes as ``eval.json``'s ``model_only`` block and what
the pipeline's analysis can add to ``analysis.json``; the numerics are :mod:`boltzdiff.analysis.model_only`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from boltzdiff.analysis.model_only import (
    DIHEDRAL_EDGES,
    aligned_rmse,
    bin_centres,
    binned_free_energy,
    chain_profile,
    model_chains,
    model_only_profile,
    state_delta_f,
)
from boltzdiff.errors import ConfigError
from boltzdiff.systems import dihedral_cvs

log = logging.getLogger(__name__)

ESTIMATORS = ("reweight", "chains", "smc")


def require_dihedral_cv(system, cv: str | None = None) -> tuple[str, list[int]]:
    """``(name, atom quadruple)`` of the CV to profile: ``cv``, else ``phi`` if declared, else the first dihedral.
    One-line :class:`ConfigError` when the system declares none (or not ``cv``)."""
    cvs = dihedral_cvs(system)
    if not cvs:
        raise ConfigError(
            f"system {system.name} declares no dihedral cvs in its system.yaml; model-only F(CV) needs one"
        )
    if cv is None:
        cv = "phi" if "phi" in cvs else next(iter(cvs))
    if cv not in cvs:
        raise ConfigError(f"--cv: system {system.name} declares no dihedral cv {cv!r}; expected one of {sorted(cvs)}")
    return cv, cvs[cv]


def parse_state(text: str) -> tuple[str, float, float]:
    """``"CV:LO:HI"`` -> ``(cv, lo, hi)`` (radians)."""
    parts = str(text).split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi = float(parts[1]), float(parts[2])
    except ValueError:
        raise ConfigError(f"--state: expected CV:LO:HI (e.g. phi:0:2), got {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        raise ConfigError(f"--state: expected two different finite bounds, got {text!r}")
    return parts[0], lo, hi


def resolve_state(system, state: str | tuple | None = None) -> tuple[str, str, float, float] | None:
    """The state for ΔF as ``(name, cv, lo, hi)``: state A of the spec's ``free_energy`` (by default its first
    named state, :mod:`boltzdiff.analysis.states`) when it is one CV interval against the rest, else ``state``
    (``"CV:LO:HI"`` or a tuple), else None."""
    from boltzdiff.analysis.states import free_energy_spec

    fe = free_energy_spec(system.spec or {}, f"system {system.name}")
    if fe is not None and fe.against is None and len(fe.state.intervals) == 1:
        iv = fe.state.intervals[0]
        return fe.state.name, iv.cv, float(iv.lo), float(iv.hi)
    if state is None:
        if fe is not None:
            log.warning("model-only: state %r is not one CV interval against the rest; no model-only ΔF", fe.state.name)
        return None
    cv, lo, hi = parse_state(state) if isinstance(state, str) else state
    return f"{cv}:{lo:g}:{hi:g}", cv, float(lo), float(hi)


def as_model(run_dir_or_model):
    """A :class:`~boltzdiff.models.base.LevelEnergy` as is; a ``boltzdiff run`` directory's first model
    (``train/``); a ``boltzdiff train`` directory's model."""
    from boltzdiff.models.base import LevelEnergy
    from boltzdiff.train import load_run

    if isinstance(run_dir_or_model, LevelEnergy):
        return run_dir_or_model
    rd = Path(run_dir_or_model)
    if (rd / "pipeline.json").is_file():
        rd = rd / "train"
    return load_run(rd).model


def cv_values(system, x: np.ndarray, name: str, reference: np.ndarray | None = None) -> np.ndarray:
    """The dihedral ``cvs.<name>`` ``(F,)`` of frames ``x: (F, d)``, mirror images mapped back to the hand of
    ``reference`` (frames; default the system's structure) first, as the analysis reads it
    (:func:`boltzdiff.systems.system_cv_values`)."""
    from boltzdiff.systems import system_cv_values

    return system_cv_values(system, np.asarray(x, dtype=np.float64), [name], reference=reference).values[name]


@torch.no_grad()
def model_energies(model, x: np.ndarray, level: int = 0, batch: int = 1024) -> np.ndarray:
    """``E_theta(x, t_level)`` ``(F,)`` float64 of frames ``x: (F, d)``; particle frames are centred first (the
    model was trained on centred data; the target is translation-invariant)."""
    dt = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
    out = []
    for s in range(0, len(x), batch):
        xb = torch.as_tensor(np.asarray(x[s : s + batch]), dtype=torch.float64)
        out.append(model.energy(xb.to(dt), level).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def centre(x: np.ndarray, event_shape: tuple) -> np.ndarray:
    """Frames ``(F, d)`` with each frame's mean particle position removed (particle systems only)."""
    if len(event_shape) != 2:
        return x
    n, s = event_shape
    x3 = np.asarray(x, dtype=np.float64).reshape(len(x), n, s)
    return (x3 - x3.mean(1, keepdims=True)).reshape(len(x), -1)


def model_only_block(
    system,
    run_dir_or_model,
    ref_x: np.ndarray,
    ref_u: np.ndarray | None,
    ref_log_w: np.ndarray | None = None,
    *,
    u_target: np.ndarray | None = None,
    cv: str | None = None,
    state: str | tuple | None = None,
    estimator: str = "reweight",
    n_chains: int = 256,
    n_steps: int = 200,
    n_random_halves: int = 4,
    seed: int = 0,
    smc_mcmc_steps: int = 1,
) -> dict:
    """The model-only F(CV) and ΔF of a trained energy against reference frames, as a JSON-ready dict.

    Parameters
    ----------
    system : System
        Must declare a dihedral CV (``cvs:`` in its system.yaml).
    run_dir_or_model : LevelEnergy, or a ``boltzdiff run`` / ``boltzdiff train`` directory
    ref_x : (F, d) or (F, n, 3) array
        Reference frames, Boltzmann samples of ``ref_u`` (with ``ref_log_w``).
    ref_u : (F,) array or None
        Their reduced energies (computed with the system's target when None).
    ref_log_w : (F,) array, optional
    u_target : (F,) array, optional
        The frames' reduced energies under the system's own target, when the frames come from another
        ensemble (another temperature); the reference profile is then reweighted to the target.
    cv : str, optional
        Which dihedral (default ``phi``, else the first declared).
    state : ``"CV:LO:HI"`` or ``(cv, lo, hi)``, optional
        The state for ΔF when the spec has no ``states:`` (see :func:`resolve_state`).
    estimator : {"reweight", "chains", "smc"}
        A (default), B (:mod:`boltzdiff.analysis.model_only`) or C: the model's own SMC from pure noise down to
        its cleanest level (no target energy, no frames; :func:`model_smc`).
    n_chains, n_steps : int
        Estimator B's chains (started from randomly chosen frames) and steps per chain; estimator C: particles
        per SMC run and the number of independent runs.

    Returns
    -------
    dict
        ``estimator, cv, n_frames, phi_grid_rad (72), f_phi_model_kT, f_phi_reference_kT, rmse_kT,
        rmse_n_bins, delta_f_model_kT, delta_f_reference_kT, region_offset_kT, state, bin_ess,
        half_split_rms_kT, half_split_per_split_kT``, and for A ``ess_fraction, log_weight_std`` (profiles:
        minimum 0, None where empty).
    """
    from boltzdiff.analysis.pipeline_analysis import target_energies

    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator: expected one of {list(ESTIMATORS)}, got {estimator!r}")
    cv_name, _ = require_dihedral_cv(system, cv)
    st = resolve_state(system, state)
    if st is not None and st[1] not in dihedral_cvs(system):
        raise ConfigError(f"state {st[0]}: system {system.name} declares no dihedral cv {st[1]!r}")
    model = as_model(run_dir_or_model)
    target = system.target
    x = centre(np.asarray(ref_x, dtype=np.float64).reshape(-1, target.dim), target.event_shape)
    if ref_u is None:
        ref_u = target_energies(target, x)
    ref_u = np.asarray(ref_u, dtype=np.float64).reshape(-1)
    if len(ref_u) != len(x) or (ref_log_w is not None and len(ref_log_w) != len(x)):
        raise ConfigError(f"reference: {len(x)} frames but {len(ref_u)} energies (and log-weights must match too)")
    phi = cv_values(system, x, cv_name, reference=x)
    state_cv = cv_values(system, x, st[1], reference=x) if st is not None else None
    e = model_energies(model, x)
    prof = model_only_profile(
        phi,
        e,
        ref_u,
        ref_log_w,
        edges=DIHEDRAL_EDGES,
        u_target=u_target,
        n_random_halves=n_random_halves,
        seed=seed,
    )
    lw = np.zeros(len(x)) if ref_log_w is None else np.asarray(ref_log_w, dtype=np.float64)
    lw_ref = lw if u_target is None else lw + ref_u - np.asarray(u_target, dtype=np.float64)
    lv = lw + ref_u - e
    block: dict = dict(
        estimator=estimator,
        estimator_detail={
            "reweight": "reference frames reweighted to the model's cleanest level: "
            "log v = log w + u - E_theta(x, t_0)",
            "chains": f"MALA chains on E_theta(x, t_0) alone from {n_chains} reference frames, last halves",
            "smc": f"the model's own SMC from noise to its cleanest level, {n_steps} runs of {n_chains} particles, "
            f"{smc_mcmc_steps} MALA step(s) per level (no target energy)",
        }[estimator],
        cv=cv_name,
        n_frames=int(len(x)),
        phi_grid_rad=bin_centres(DIHEDRAL_EDGES).tolist(),
        f_phi_reference_kT=_js(prof.f_reference),
    )
    if estimator == "reweight":
        f_model, bin_ess, hs = prof.f_model, prof.bin_ess, prof.half_split
        df_model = state_delta_f(state_cv, lv, st[2], st[3]) if st is not None else None
        block["ess_fraction"] = float(prof.ess_fraction)
        # spread of u - E_theta over the frames: 0 for a model exact up to a constant; the ESS falls like
        # exp(-std^2) for Gaussian log-weights
        fin = np.isfinite(lv)
        block["log_weight_std"] = float(np.std(lv[fin])) if fin.any() else None
    elif estimator == "smc":
        strata = None
        if st is not None:
            from boltzdiff.pipeline.sample import cv_strata

            strata = cv_strata(system, {"cv": st[1], "edges": [st[2], st[3]], "wrap": True})
        runs = model_smc(
            model,
            int(n_chains),
            int(n_steps),
            int(seed),
            tuple(target.event_shape),
            strata=strata,
            mcmc_steps=int(smc_mcmc_steps),
        )
        phis = [cv_values(system, xr, cv_name, reference=x) for xr, _, _ in runs]
        lws, equal = pool_runs([lr for _, lr, _ in runs], [r[2]["log_Z"] for r in runs])
        phi_s, lw_s = np.concatenate(phis), np.concatenate(lws)
        f_model, bin_ess = binned_free_energy(phi_s, lw_s, DIHEDRAL_EDGES)
        per = [binned_free_energy(a, b, DIHEDRAL_EDGES)[0] for a, b in zip(phis, lws, strict=True)]
        hs = dict(
            rms_kT=aligned_rmse(per[0], per[1])["rmse_kT"] if len(per) > 1 else None,
            per_split_kT=[],
            split="SMC runs: first against second",
        )
        df_model = None
        if st is not None:
            scvs = phis if st[1] == cv_name else [cv_values(system, xr, st[1], reference=x) for xr, _, _ in runs]
            df_model = state_delta_f(np.concatenate(scvs), lw_s, st[2], st[3])
            dfs = [state_delta_f(c, b, st[2], st[3]) for c, b in zip(scvs, lws, strict=True)]
            block["delta_f_model_runs_kT"] = [_num(v) for v in dfs]
            block["delta_f_model_equal_runs_kT"] = _num(
                state_delta_f(np.concatenate(scvs), np.concatenate(equal), st[2], st[3])
            )
        block.update(n_particles=int(n_chains), n_runs=len(runs), smc=[r[2] for r in runs])
    else:
        gen = torch.Generator().manual_seed(int(seed))
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(x), size=min(int(n_chains), len(x)), replace=False)
        dt = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
        states, acc = model_chains(model, torch.as_tensor(x[pick]).to(dt), int(n_steps), generator=gen)
        flat = states.reshape(-1, target.dim).double().numpy()
        phi_c = cv_values(system, flat, cv_name, reference=x).reshape(states.shape[0], -1)  # (n_kept, n_chains)
        f_model, bin_ess = chain_profile(phi_c, DIHEDRAL_EDGES)
        c = phi_c.shape[1]
        fa, _ = binned_free_energy(phi_c[:, : c // 2].reshape(-1), None, DIHEDRAL_EDGES)
        fb, _ = binned_free_energy(phi_c[:, c // 2 :].reshape(-1), None, DIHEDRAL_EDGES)
        both = np.where(np.isfinite(fb), prof.f_reference, np.inf)
        hs = dict(rms_kT=aligned_rmse(fa, both)["rmse_kT"], per_split_kT=[], split="chains: first vs second half")
        if st is not None:
            scv = cv_values(system, flat, st[1], reference=x)
            df_model = state_delta_f(scv, None, st[2], st[3])
        else:
            df_model = None
        block.update(n_chains=int(c), n_steps=int(n_steps), chain_acceptance=acc)
    rm = aligned_rmse(f_model, prof.f_reference)
    df_ref = state_delta_f(state_cv, lw_ref, st[2], st[3]) if st is not None else None
    block.update(
        f_phi_model_kT=_js(f_model),
        rmse_kT=rm["rmse_kT"],
        rmse_n_bins=rm["n_bins"],
        rmse_n_bins_missing=rm["n_bins_missing"],
        state=None if st is None else dict(name=st[0], cv=st[1], lo=st[2], hi=st[3]),
        delta_f_model_kT=_num(df_model),
        delta_f_reference_kT=_num(df_ref),
        region_offset_kT=_num(df_model - df_ref) if st is not None else None,
        bin_ess=[float(v) for v in bin_ess],
        half_split_rms_kT=_num(hs["rms_kT"]),
        half_split_per_split_kT=[_num(v) for v in hs["per_split_kT"]],
    )
    return block


def pool_runs(log_ws: list, log_zs: list) -> tuple[list, list]:
    """Independent SMC runs' final log-weights, pooled two ways: ``(by_z, equal)``. ``by_z``: each run's
    normalised weights times its normaliser estimate Z_r (the default): Z_r times a run's weighted average of f
    is an unbiased estimate of the unnormalised integral of f, so every region's pooled mass, and their ratios,
    converge as runs are added at any particle count. ``equal``: each run normalised to total weight one, which
    averages the runs' ratios instead, and keeps their bias at a fixed particle count however many runs there
    are."""
    equal = [np.asarray(lw, dtype=np.float64) - np.logaddexp.reduce(lw) for lw in log_ws]
    z = np.asarray(log_zs, dtype=np.float64)
    if not np.all(np.isfinite(z)):
        return equal, equal
    z = z - np.logaddexp.reduce(z)
    return [lw + zr for lw, zr in zip(equal, z, strict=True)], equal


def model_smc(
    model,
    n: int,
    n_runs: int,
    seed: int,
    event_shape: tuple,
    refine: int = 2,
    strata=None,
    min_share: float = 0.3,
    mcmc_steps: int = 1,
) -> list[tuple]:
    """Estimator C: ``n_runs`` independent SMC runs of ``n`` particles on the model alone, from its noisiest
    level to its cleanest through ``refine - 1`` untrained levels between every two trained ones, with the
    curvature (matrix) reverse kernel and ``mcmc_steps`` MALA steps per level. ``strata`` (``x -> labels``, e.g. a state
    and the rest): every resampling keeps each stratum's total weight and at least ``min_share`` of the
    particles in each, labelled by the particles' denoised configurations, so a light state keeps enough
    particles to be measured (the estimate stays unbiased). Returns ``[(x (n, d) float64, log_w (n,),
    summary dict)]``."""
    from boltzdiff.models.energy import refine_levels
    from boltzdiff.samplers.config import SMCConfig
    from boltzdiff.samplers.mcmc import MCMCConfig
    from boltzdiff.samplers.smc import smc

    m = refine_levels(model, refine) if refine > 1 else model
    particles = tuple(event_shape) if len(event_shape) == 2 else None
    # strata at every level (no sigma cap): any labelling keeps the estimate unbiased
    strat = {} if strata is None else dict(bridge_strata=strata, strata_max_sigma=1e30, strata_min_share=min_share)
    out = []
    for r in range(n_runs):
        # built per run: smc adapts the MALA step size in place
        cfg = SMCConfig(
            kernel_variance="matrix",
            particles=particles,
            mcmc=MCMCConfig("mala", int(mcmc_steps)),
            strata_denoised=strata is not None,
            **strat,
        )
        res = smc(m, n, cfg, generator=torch.Generator().manual_seed(seed + 7919 * r))
        s = res.summary()
        keep = {k: s.get(k) for k in ("ess", "n_resample", "n_lineages", "n_model_evals", "wall_s", "log_Z")}
        out.append((res.x.detach().double().numpy(), res.log_w.detach().double().numpy(), keep))
    return out


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _js(a: np.ndarray) -> list:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a, dtype=np.float64)]


def plot_model_only(block: dict, path, title: str = "") -> Path:
    """PNG of the model's and the reference's F(CV) (aligned like the RMSE) and each bin's ESS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = np.asarray(block["phi_grid_rad"])
    fm = np.array([np.nan if v is None else v for v in block["f_phi_model_kT"]])
    fr = np.array([np.nan if v is None else v for v in block["f_phi_reference_kT"]])
    use = np.isfinite(fm) & np.isfinite(fr) & (fr <= 6.0)
    if use.any():
        fm = fm - np.nanmean(fm[use]) + np.nanmean(fr[use])
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ax[0].plot(g, fr, "k-", label="reference frames")
    ax[0].plot(g, fm, "C0.-", label=f"model only ({block['estimator']})")
    ax[0].set(xlabel=f"{block['cv']} (rad)", ylabel="F (kT)", title=f"RMSE {block['rmse_kT']:.3g} kT (F_ref <= 6)")
    ax[0].legend(fontsize=8)
    ax[1].semilogy(g, np.maximum(np.asarray(block["bin_ess"]), 1e-1), "C1.-")
    ax[1].set(xlabel=f"{block['cv']} (rad)", ylabel="ESS per bin", title="model-only weights' ESS per bin")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def reference_from_run_dir(run_dir: Path, system) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A ``boltzdiff run`` directory's reference frames ``(F, d)``, their reduced energies ``(F,)`` (None if not
    stored) and, for frames from another temperature, their energies under the system's target (else None)."""
    from boltzdiff.pipeline.rundir import reference_starts, reference_temperature

    ref = Path(run_dir) / "reference"
    if not (ref / "positions.npy").is_file():
        raise ConfigError(f"{run_dir}: no reference/positions.npy; run the reference stage first")
    from boltzdiff.io import load_npy

    x = load_npy(ref / "positions.npy", "the reference positions").reshape(-1, system.target.dim)
    u = load_npy(ref / "energies.npy", "the reference energies") if (ref / "energies.npy").is_file() else None
    if len(set(reference_starts(Path(run_dir)))) > 1:
        log.warning(
            "model-only: the reference replicas start from several structures; their populations are set by the starts"
        )
    t_ref = reference_temperature(Path(run_dir))
    if u is not None and t_ref is not None and system.temperature and abs(t_ref - system.temperature) > 1e-6:
        return x, u, u * t_ref / system.temperature
    return x, u, None
