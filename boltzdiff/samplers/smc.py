"""Diffusion SMC / AIS over the levels of a level energy, optionally ending at a target's exact energy.

Particles start at the noisiest level from :func:`~boltzdiff.samplers.sde.noisiest_gaussian`, with log-weight
``log q_{N-1}(x) - log N(x)``. Moving from level ``l`` to the cleaner level ``k`` with the reverse kernel
``M(x_k | x_l)`` (:func:`~boltzdiff.samplers.sde.reverse_kernel`) multiplies the weight by (docs/method.md#smc)

    q_k(x_k) K(x_l | x_k) / [q_l(x_l) M(x_k | x_l)],    q_i = exp(-E(., t_i) - f_i),

with ``K`` the forward noising transition. Weights are float64 and handled in log-space. When the normalised
Kish ESS falls below ``ess_threshold`` the particles are resampled (systematic by default) and the weights
reset; the normaliser estimate is ``log Z = sum_epochs [logsumexp(log w) - log n]`` over resampling epochs.
Optional MCMC (MALA/HMC) rejuvenation at each level targets ``q_k`` and leaves the weights unchanged.

With ``target``, the particles are then carried from ``q_0`` to the target's ``exp(-u)`` along the geometric
bridge ``pi_lam ∝ exp(-(1 - lam)(E(x, t_0) + f_0) - lam u(x))`` (AIS: weight
``-(lam_j - lam_{j-1})(u - E - f)``, then MCMC targeting ``pi_{lam_j}``), so the weighted particles are
consistent for the target whatever the model's errors.

Particles whose energy is not finite get weight zero (``log_w = -inf``) and are counted; if all do, a
:class:`~boltzdiff.errors.NonFiniteEnergyError` is raised.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import torch

from boltzdiff.errors import ConfigError, NonFiniteEnergyError
from boltzdiff.samplers.config import SMCConfig
from boltzdiff.samplers.mcmc import (
    BridgeDensity,
    DensityEval,
    EvalCounter,
    LevelDensity,
    MCMCConfig,
    TargetDensity,
    model_energy_and_score,
    run_mcmc,
    target_energy_and_grad,
)
from boltzdiff.samplers.resampling import RESAMPLERS, kish_ess, stratified_resample
from boltzdiff.samplers.results import SMCResult
from boltzdiff.samplers.sde import (
    _progress,
    fisher_curvature,
    fisher_level_variances,
    gaussian_log_density,
    hessian_curvature,
    initial_particles,
    level_variances,
    matrix_move,
    particle_frames,
    resolve_levels,
    reverse_kernel,
)
from boltzdiff.samplers.torsion import torsion_step
from boltzdiff.targets.base import gauge_of

log = logging.getLogger(__name__)


def _mean_or_none(v: list[float]) -> float | None:
    return float(sum(v) / len(v)) if v else None


def level_variance(model, level: int) -> float:
    """The scale of level ``level`` (:func:`~boltzdiff.samplers.sde.level_variances`); MCMC steps are
    relative."""
    return float(level_variances(model)[level])


class _Particles:
    """Mutable SMC state: positions, log-weights, the current density evaluation (log q, score, aux)."""

    def __init__(self, x, log_w, state: DensityEval):
        self.x, self.log_w, self.state = x, log_w, state

    def take(self, idx, log_w=None):
        self.x, self.state = self.x[idx], self.state.index(idx)
        dev = self.x.device
        self.log_w = torch.zeros(idx.numel(), dtype=torch.float64, device=dev) if log_w is None else log_w.to(dev)


class _Run:
    def __init__(self, n, generator, ess_threshold, resampler, progress):
        self.n, self.generator, self.ess_threshold = n, generator, float(ess_threshold)
        self.resample_fn = RESAMPLERS[resampler]
        self.log_Z_acc = 0.0
        self.n_resample = 0
        self.n_nonfinite = 0
        self.ess_trace: list[float] = []
        self.log_Z_trace: list[float] = []  # running log Z estimate after each reweighting
        self.killed_trace: list[int] = []  # particle events killed so far, after each reweighting
        self.inc_sd_trace: list[float] = []  # SD of the log-weight increments over the live particles, per step
        self.acc_trace: list[float] = []
        self.torsion_acc: list[float] = []  # acceptance of each round of torsion moves on the bridge
        self.final_torsion_acc: list[float] = []  # ... and at the target after it
        self.final_hmc_acc: list[float] = []  # the HMC trajectories' acceptance at the target
        self.progress = progress
        #: when set (on the bridge, see ``smc(bridge_strata=...)``), resampling keeps each stratum's weight
        self.strata = None
        self.strata_min_share = 0.0
        #: (step in ess_trace, ancestor indices) of every resampling, for :func:`distinct_ancestors`
        self.parents: list[tuple[int, torch.Tensor]] = []

    def reweight(self, p: _Particles, inc: torch.Tensor, where: str, final: bool = False):
        """Add the incremental log-weights ``inc``; resample if the ESS fell below the threshold, except after the
        ``final`` reweighting: resampling there only adds noise, and it would reset the weights, so the reported
        final ESS would read 1 instead of what the last step left."""
        alive = torch.isfinite(p.log_w)
        ok = torch.isfinite(inc)
        live = inc[alive & ok]
        self.inc_sd_trace.append(float(live.std()) if live.numel() > 1 else 0.0)
        self.n_nonfinite += int((alive & ~ok).sum())
        p.log_w = torch.where(alive & ok, p.log_w + torch.nan_to_num(inc, nan=0.0), torch.full_like(p.log_w, -math.inf))
        if not torch.isfinite(p.log_w).any():
            raise NonFiniteEnergyError(
                f"smc: every particle had a non-finite energy or weight {where} ({self.n_nonfinite} particle "
                f"events killed); check the model/target energies for NaN or overflow"
            )
        ess = kish_ess(p.log_w)
        self.ess_trace.append(ess)
        self.log_Z_trace.append(self.log_Z(p))
        self.killed_trace.append(self.n_nonfinite)
        if ess < self.ess_threshold and not final:
            self.resample(p)

    def resample(self, p: _Particles, stratified: bool = True):
        """Resample by the weights (within ``strata`` where set and ``stratified``), banking the normaliser."""
        self.log_Z_acc += float(torch.logsumexp(p.log_w, 0)) - math.log(p.log_w.numel())
        if self.strata is None or not stratified:
            idx = self.resample_fn(p.log_w, self.n, generator=self.generator)
            p.take(idx.to(p.x.device))
        else:
            idx, lw = stratified_resample(
                p.log_w, self.strata(p), self.resample_fn, self.generator, min_share=self.strata_min_share
            )
            p.take(idx.to(p.x.device), lw)
        self.parents.append((len(self.ess_trace) - 1, idx.detach().cpu().long()))
        self.n_resample += 1

    def log_Z(self, p: _Particles) -> float:
        return self.log_Z_acc + float(torch.logsumexp(p.log_w, 0)) - math.log(p.log_w.numel())

    def torsion_move(self, p: _Particles, density, moves, final: bool = False):
        x, state, acc = torsion_step(density, p.x, p.state, moves, self.generator)
        p.x, p.state = x, state
        alive = torch.isfinite(p.log_w)
        rate = float(acc[alive].double().mean()) if alive.any() else 0.0
        (self.final_torsion_acc if final else self.torsion_acc).append(rate)

    def rejuvenate(self, p: _Particles, density, cfg: MCMCConfig | None, scale: float):
        if cfg is None or cfg.n_steps <= 0:
            return
        alive = torch.isfinite(p.log_w)
        r = run_mcmc(density, p.x, cfg, self.generator, state=p.state, scale=scale, alive=alive)
        p.x, p.state = r.x, r.state
        self.acc_trace.extend(r.acceptance_trace)


def distinct_ancestors(parents: list[tuple[int, torch.Tensor]], n_final: int) -> list[list[int]]:
    """The genealogy of the final particles: ``[[step, k], ...]``, one entry per resampling (oldest first), with
    ``k`` the number of distinct particles, just before that resampling, that the ``n_final`` final particles
    descend from. ``parents``: ``(step, idx)`` per resampling, ``idx[i]`` the parent of new particle ``i``.

    Weights say how well a single step's particles cover the next density; this says how many independent
    lineages the final population rests on. A quantity decided at a noisy level (which basin a molecule
    ends in) can be no better resolved than by the lineages that level passes on: with ``k = 5``, a run's
    basin masses are five draws, however many particles there are and whatever the final ESS.
    """
    cur = torch.arange(int(n_final))
    out = []
    for step, idx in reversed(parents):
        cur = torch.unique(idx[cur])
        out.append([int(step), int(cur.numel())])
    return out[::-1]


def lineage_labels(parents: list[tuple[int, torch.Tensor]], n_final: int) -> torch.Tensor:
    """For each final particle, the index of its ancestor just before the first resampling ``(n_final,)``
    (``arange`` without resampling): particles sharing a label are copies of one lineage, not independent draws
    (the clusters of :func:`boltzdiff.analysis.free_energy.two_state_delta_f`'s lineage bootstrap)."""
    cur = torch.arange(int(n_final))
    for _, idx in reversed(parents):
        cur = idx[cur]
    return cur


def conditional_ess(log_w: torch.Tensor, log_inc: torch.Tensor) -> float:
    """Conditional ESS ``(sum_i W_i w_i)^2 / sum_i W_i w_i^2`` (in (0, 1]) of incremental weights
    ``w = exp(log_inc)`` under the current normalised weights ``W`` (Zhou, Johansen & Aston 2016); particles
    with a non-finite weight or increment are left out (they are dropped by the reweighting anyway)."""
    ok = torch.isfinite(log_w) & torch.isfinite(log_inc)
    if not ok.any():
        return 0.0
    lw, a = log_w[ok], log_w[ok] + log_inc[ok]
    val = 2 * torch.logsumexp(a, 0) - torch.logsumexp(lw, 0) - torch.logsumexp(2 * a - lw, 0)
    return float(torch.exp(val).clamp(max=1.0))


def next_bridge_lambda(log_w: torch.Tensor, delta: torch.Tensor, lam: float, cess: float) -> float:
    """The next ``lambda`` of an adaptive geometric bridge: the largest step ``d`` in ``(0, 1 - lam]`` whose
    increments ``exp(-d * delta)`` keep the conditional ESS at ``cess`` or above (bisection, 40 halvings)."""
    rest = 1.0 - lam
    if conditional_ess(log_w, -rest * delta) >= cess:
        return 1.0
    lo, hi = 0.0, rest
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if conditional_ess(log_w, -mid * delta) >= cess:
            lo = mid
        else:
            hi = mid
    return lam + max(lo, rest * 1e-6)


def _fisher_variances(grid, i_to: int, i_from: int, p: _Particles) -> torch.Tensor:
    return fisher_level_variances(grid, i_from, p.state.grad, p.log_w)


@torch.no_grad()
def smc(
    model,
    n: int,
    cfg: SMCConfig | None = None,
    *,
    target=None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    comm=None,
) -> SMCResult:
    """Diffusion SMC over the levels of ``model``, optionally annealed on to the exact ``target``.

    Parameters
    ----------
    model : LevelEnergy
        A trained energy, an exact one, or a composition; ``model.grid`` gives the levels.
    n : int
        Number of particles.
    cfg : SMCConfig, optional
        The sampler's settings (:class:`~boltzdiff.samplers.config.SMCConfig`, each field documented there and
        in docs/configuration.md); default ``SMCConfig()``.
    target : Target, optional
        End at the exact energy ``u(x)`` through a geometric bridge from level 0.
    generator : torch.Generator, optional
        All randomness (start, kernels, resampling, MCMC) is drawn from it.
    progress : bool
        Show progress (:func:`boltzdiff.progress.progress`).
    comm : boltzdiff.distributed.Communicator, optional
        Processes of a torchrun/srun launch that share the run: each evaluates a block of the particles' energies
        and all hold the same particles and generator state, so the result is the one-process result on every
        process (docs/method.md#distributed). Default: one process.

    Returns
    -------
    SMCResult
    """
    t0 = time.perf_counter()
    ess_bridge = None  # the bridge's final ESS, where final_resample resets the weights after it
    u_average = None  # each particle's target energy averaged over the last final HMC states (final_hmc_average)
    cfg = (SMCConfig() if cfg is None else cfg).validate()
    levels, kernel, ess_threshold, resampler = cfg.levels, cfg.kernel, cfg.ess_threshold, cfg.resampler
    kernel_variance, particles, hessian_samples, mcmc = (
        cfg.kernel_variance,
        cfg.particles,
        cfg.hessian_samples,
        cfg.mcmc,
    )
    n_bridge, bridge_mcmc, bridge_cess, max_bridge = cfg.n_bridge, cfg.bridge_mcmc, cfg.bridge_cess, cfg.max_bridge
    bridge_strata, strata_max_sigma, strata_denoised = cfg.bridge_strata, cfg.strata_max_sigma, cfg.strata_denoised
    strata_min_share, torsion, bridge_torsion_steps = cfg.strata_min_share, cfg.torsion, cfg.bridge_torsion_steps
    final_mcmc_steps, final_resample, final_hmc = cfg.final_mcmc_steps, cfg.final_resample, int(cfg.final_hmc_steps)
    if int(n) < 1:
        raise ConfigError(f"n: expected a number of particles >= 1, got {n}")
    if particles is not None and (len(particles) != 2 or int(particles[0]) * int(particles[1]) != model.dim):
        raise ConfigError(f"particles: expected (n, m) with n * m = {model.dim}, got {particles}")
    if target is not None and int(getattr(target, "dim", model.dim)) != model.dim:
        raise ConfigError(f"target: dimension {target.dim} differs from the model's {model.dim}")
    if target is not None and int(n_bridge) < 1:
        raise ConfigError(f"n_bridge: expected an integer >= 1, got {n_bridge}")
    if (int(final_mcmc_steps) or final_hmc) and target is None:
        raise ConfigError("final_mcmc_steps, final_hmc_steps: moves at the exact target need a target")
    if torsion is not None and torsion.n_atoms * 3 != model.dim:
        raise ConfigError(f"torsion: moves for {torsion.n_atoms} atoms, but the model has dimension {model.dim}")
    n = int(n)
    if comm is not None:
        model, target = comm.shard_model(model), comm.shard_target(target)
    grid = model.grid
    lv = resolve_levels(grid.n, levels)
    mcmc = copy.deepcopy(mcmc) if mcmc is not None and mcmc.n_steps > 0 else None
    counter = EvalCounter()
    run = _Run(n, generator, ess_threshold, resampler, progress)
    run.strata_min_share = float(strata_min_share)

    variances = level_variances(model)
    # a composition (not a diffusion) supplies its own level variances; its backward kernel follows them
    own_path = hasattr(model, "level_variances")
    if kernel_variance == "matrix" and (own_path or kernel != "gaussian"):
        raise ConfigError("kernel_variance: 'matrix' needs kernel 'gaussian' and a diffusion model (not a composition)")

    # -- start at the noisiest level ----------------------------------------------------------------------
    top = lv[-1]
    x, log_prop = initial_particles(model, n, generator)
    ef, s = model_energy_and_score(model, x, top, counter)
    p = _Particles(x, torch.zeros(n, dtype=torch.float64, device=x.device), DensityEval(-ef, s))
    run.reweight(p, -ef - log_prop, f"at the noisiest level {top}")
    run.rejuvenate(p, LevelDensity(model, top, counter), mcmc, level_variance(model, top))

    # -- move down the levels -----------------------------------------------------------------------------
    for j in _progress(range(len(lv) - 1, 0, -1), progress, "SMC levels"):
        i_from, i_to = lv[j], lv[j - 1]
        if kernel_variance == "fisher" and not own_path:
            variances = _fisher_variances(grid, i_to, i_from, p)
        if kernel_variance == "matrix":
            if particles is None:
                mv = matrix_move(grid, i_to, i_from, p.x, p.state.grad, fisher_curvature(p.state.grad, p.log_w))
            else:
                rot = particle_frames(p.x, p.log_w, particles)
                curv = hessian_curvature(model, i_from, p.x, p.log_w, rot, hessian_samples, generator)
                counter.model += int(hessian_samples) * model.dim
                mv = matrix_move(grid, i_to, i_from, p.x, p.state.grad, curv, rot)
        else:
            mv = reverse_kernel(grid, i_to, i_from, p.x, p.state.grad, kernel, variances)
        eps = torch.randn(p.x.shape, generator=generator, dtype=torch.float64).to(p.x.device)
        x_new = mv.sample(eps)
        log_m = mv.log_density(x_new)
        if own_path and kernel == "gaussian":
            log_k = gaussian_log_density(p.x, mv.a.to(x_new) * x_new, mv.s_back)
        else:  # the model's forward noising transition K
            log_k = grid.forward_log_density(p.x, x_new, i_to, i_from).to(torch.float64)
        ef_new, s_new = model_energy_and_score(model, x_new, i_to, counter)
        inc = (-ef_new) - p.state.log_prob + log_k - log_m
        p.x, p.state = x_new, DensityEval(-ef_new, s_new)
        if strata_max_sigma is not None and float(grid.sigma[i_to]) <= float(strata_max_sigma):
            if strata_denoised:
                a_k, s_k = grid.alpha[i_to], grid.sigma[i_to]
                run.strata = lambda q, a=a_k, s=s_k: bridge_strata((q.x + (s**2).to(q.x) * q.state.grad) / a.to(q.x))
            else:
                run.strata = lambda q: bridge_strata(q.x)
        run.reweight(p, inc, f"at level {i_to}", final=(j == 1 and target is None))
        run.rejuvenate(p, LevelDensity(model, i_to, counter), mcmc, level_variance(model, i_to))

    # -- optional bridge to the exact target ---------------------------------------------------------------
    lambdas = None
    if target is not None:
        bridge_mcmc = MCMCConfig("mala", n_steps=2) if bridge_mcmc is None else copy.deepcopy(bridge_mcmc)
        if bridge_mcmc.step_size is None and mcmc is not None and mcmc.kind == bridge_mcmc.kind:
            bridge_mcmc.step_size = mcmc.step_size  # carry the adapted level-0 step over
        u, gu = target_energy_and_grad(target, p.x, counter)
        ef0 = -p.state.log_prob
        scale = level_variance(model, lv[0])
        p.state = BridgeDensity(model, target, 0.0, lv[0], counter).combine(ef0, p.state.grad, u, gu)
        lam_list = [0.0]
        run.strata = None if bridge_strata is None else (lambda q: bridge_strata(q.x))
        fixed = torch.linspace(0.0, 1.0, int(n_bridge) + 1, dtype=torch.float64).tolist()
        bar = None
        if progress:
            from boltzdiff.progress import progress as progress_of

            bar = progress_of(desc="bridge to target", total=None if bridge_cess else int(n_bridge), leave=False)
        while lam_list[-1] < 1.0:
            ef0, u = p.state.aux[:, 0], p.state.aux[:, 1]
            if bridge_cess is None:
                lam = fixed[len(lam_list)]
            elif len(lam_list) >= int(max_bridge):
                log.warning("smc: adaptive bridge reached max_bridge=%d steps; jumping to lambda=1", max_bridge)
                lam = 1.0
            else:
                lam = next_bridge_lambda(p.log_w, u - ef0, lam_list[-1], float(bridge_cess))
            dlam = lam - lam_list[-1]
            lam_list.append(lam)
            run.reweight(p, -dlam * (u - ef0), f"on the bridge to the target (lambda={lam:.3g})", final=lam >= 1.0)
            dens = BridgeDensity(model, target, lam, lv[0], counter)
            p.state = dens.rebase(p.state)  # same points under the new lambda, no new evaluations
            run.rejuvenate(p, dens, bridge_mcmc, scale)
            for _ in range(int(bridge_torsion_steps)):
                run.torsion_move(p, dens, torsion)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        lambdas = torch.tensor(lam_list, dtype=torch.float64)
        if int(final_mcmc_steps) and final_resample:
            ess_bridge = kish_ess(p.log_w)
            run.resample(p, stratified=False)  # the sweeps mix the strata; equal weights for all
        if int(final_mcmc_steps) or final_hmc:  # the moves at the exact target share its density and state
            dens = TargetDensity(target, counter)
            p.state = dens.evaluate(p.x)
        if int(final_mcmc_steps):
            one = copy.deepcopy(bridge_mcmc)
            one.n_steps = min(1, int(one.n_steps))
            for _ in _progress(range(int(final_mcmc_steps)), progress, "MCMC at the target"):
                if torsion is not None:
                    run.torsion_move(p, dens, torsion, final=True)
                run.rejuvenate(p, dens, one, scale)
            bridge_mcmc.step_size = one.step_size
        if final_hmc:
            # MALA of step h is one leapfrog step of size sqrt(2h): the trajectories start from the adapted step
            eps = bridge_mcmc.step_size if bridge_mcmc.kind == "hmc" else math.sqrt(2.0 * bridge_mcmc.step_size)
            hmc = MCMCConfig("hmc", n_steps=1, step_size=eps, n_leapfrog=int(cfg.final_hmc_leapfrog))
            alive = torch.isfinite(p.log_w)
            n_avg = int(cfg.final_hmc_average)
            for k in _progress(range(final_hmc), progress, "HMC at the target"):
                r = run_mcmc(dens, p.x, hmc, generator, state=p.state, scale=scale, alive=alive)
                p.x, p.state = r.x, r.state
                run.final_hmc_acc.append(r.acceptance)
                if k >= final_hmc - n_avg:  # every state of a target-invariant chain is a sample with its weight
                    # the physical energy: without a gauge term such as a restraint on the centre of mass
                    u_k = -p.state.log_prob.detach().double() - gauge_of(target, p.x.detach())
                    u_average = u_k / n_avg if u_average is None else u_average + u_k / n_avg
        mcmc = bridge_mcmc if mcmc is None else mcmc

    log_w = p.log_w
    if comm is not None:
        comm.check_same(run.log_Z(p), "log Z")
    return SMCResult(
        x=p.x,
        log_w=log_w,
        ess=kish_ess(log_w),
        ess_trace=torch.tensor(run.ess_trace, dtype=torch.float64),
        n_resample=run.n_resample,
        acceptance=(float(sum(run.acc_trace) / len(run.acc_trace)) if run.acc_trace else None),
        log_Z=run.log_Z(p),
        n_model_evals=counter.model,
        n_target_evals=counter.target,
        n_nonfinite=run.n_nonfinite,
        levels=lv[::-1],
        lambdas=lambdas,
        acceptance_trace=run.acc_trace,
        log_Z_trace=run.log_Z_trace,
        killed_trace=run.killed_trace,
        ancestors=distinct_ancestors(run.parents, p.x.shape[0]),
        inc_sd_trace=run.inc_sd_trace,
        torsion_acceptance=_mean_or_none(run.torsion_acc),
        final_torsion_acceptance=_mean_or_none(run.final_torsion_acc),
        n_final_mcmc=int(final_mcmc_steps) if target is not None else 0,
        n_final_hmc=final_hmc,
        final_hmc_acceptance=_mean_or_none(run.final_hmc_acc),
        ess_before_final_resample=ess_bridge,
        u_average=u_average,
        n_final_hmc_average=0 if u_average is None else int(cfg.final_hmc_average),
        lineage=lineage_labels(run.parents, p.x.shape[0]),
        step_size=None if (mcmc is None) else float(mcmc.step_size),
        wall_s=time.perf_counter() - t0,
    )
