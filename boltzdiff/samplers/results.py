"""Result objects returned by the samplers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplerResult:
    """Unweighted samples from reverse diffusion (SDE or probability-flow ODE).

    Attributes
    ----------
    x : (n, d) tensor
        Samples at the cleanest level of the (sub-)grid.
    levels : list of int
        The grid indices visited, noisiest first.
    n_model_evals : int
        Per-particle evaluations of the model's energy/score.
    n_nonfinite : int
        Samples whose coordinates became non-finite.
    wall_s : float
    """

    x: torch.Tensor
    levels: list[int]
    n_model_evals: int = 0
    n_nonfinite: int = 0
    wall_s: float = 0.0

    @property
    def log_w(self) -> torch.Tensor:
        """Zero log-weights ``(n,)`` float64 (the samples are unweighted)."""
        return torch.zeros(self.x.shape[0], dtype=torch.float64)

    def summary(self) -> dict:
        return dict(
            n=int(self.x.shape[0]),
            ess=1.0,
            n_levels=len(self.levels),
            n_model_evals=int(self.n_model_evals),
            n_target_evals=0,
            n_nonfinite=int(self.n_nonfinite),
            wall_s=float(self.wall_s),
        )


@dataclass
class SMCResult:
    """Weighted particles from diffusion SMC / AIS.

    Attributes
    ----------
    x : (n, d) tensor
        Final particles (level 0 of the grid, or the exact target with ``to_target``).
    log_w : (n,) float64 tensor
        Unnormalised log-weights; ``-inf`` for particles that met a non-finite energy.
    ess : float
        Normalised Kish effective sample size ``(sum w)^2 / (n sum w^2)`` of the final weights, in ``[0, 1]``.
    ess_trace : (n_steps,) float64 tensor
        Normalised ESS after each reweighting (before any resampling), noisiest step first.
    n_resample : int
        Number of resampling events.
    acceptance : float or None
        Mean MCMC acceptance rate over all rejuvenation moves (None without MCMC).
    log_Z : float
        Estimate of ``log`` of the final unnormalised density's normaliser relative to the normalised start
        (0 for an exactly normalised model or target).
    n_model_evals, n_target_evals : int
        Per-particle evaluations of the level energy (with its gradient) and of the target's energy.
    n_nonfinite : int
        Particle events killed by a non-finite energy (weight set to zero).
    levels : list of int
        Grid indices visited, noisiest first.
    lambdas : (K,) float64 tensor or None
        The bridge schedule used to reach the exact target.
    acceptance_trace : list of float
        Mean acceptance of each MCMC sweep.
    step_size : float or None
        Final adapted MCMC step size.
    wall_s : float
    log_Z_trace : list of float
        The running ``log Z`` estimate after each reweighting (steps as in ``ess_trace``): where a run's
        estimate jumps.
    killed_trace : list of int
        Particle events killed by non-finite energies so far, after each reweighting.
    ancestors : list of [int, int]
        The final particles' genealogy: per resampling (oldest first), its step (index into ``ess_trace``) and
        how many distinct particles of that moment the final ones descend from
        (:func:`boltzdiff.samplers.smc.distinct_ancestors`).
    inc_sd_trace : list of float
        Standard deviation of each step's log-weight increments over the live particles (steps as in
        ``ess_trace``): which levels (or bridge steps) spread the weights, and so coalesce the lineages.
    torsion_acceptance, final_torsion_acceptance : float or None
        Mean acceptance of the torsion moves on the bridge and in the sweeps at the target after it (None
        without them).
    n_final_mcmc : int
        Sweeps at the exact target after the bridge (``smc(final_mcmc_steps=...)``).
    n_final_hmc, final_hmc_acceptance : int, float or None
        HMC trajectories at the exact target after the sweeps (``smc(final_hmc_steps=...)``) and their mean
        acceptance (None without them).
    u_average : (n,) float64 tensor or None
        With ``smc(final_hmc_average=k)``: each particle's physical target energy (without a gauge term,
        :meth:`~boltzdiff.targets.base.Target.gauge_energy`) averaged over its states after the last
        ``k`` final HMC trajectories. Every such state, with the particle's weight, is a sample of the target, so
        ``sum w u_average / sum w`` estimates the mean energy with less variance than the final states alone.
        ``n_final_hmc_average`` is that ``k`` (0 without).
    ess_before_final_resample : float or None
        With ``smc(final_resample=True)``: the normalised ESS of the bridge's weights just before the particles
        were resampled for the sweeps (None without that resampling).
    lineage : (n,) long tensor or None
        Each final particle's ancestor just before the first resampling
        (:func:`~boltzdiff.samplers.smc.lineage_labels`).
    """

    x: torch.Tensor
    log_w: torch.Tensor
    ess: float
    ess_trace: torch.Tensor
    n_resample: int
    acceptance: float | None
    log_Z: float
    n_model_evals: int
    n_target_evals: int
    n_nonfinite: int
    levels: list[int] = field(default_factory=list)
    lambdas: torch.Tensor | None = None
    acceptance_trace: list[float] = field(default_factory=list)
    step_size: float | None = None
    wall_s: float = 0.0
    log_Z_trace: list[float] = field(default_factory=list)
    killed_trace: list[int] = field(default_factory=list)
    ancestors: list[list[int]] = field(default_factory=list)
    lineage: torch.Tensor | None = None
    inc_sd_trace: list[float] = field(default_factory=list)
    torsion_acceptance: float | None = None
    final_torsion_acceptance: float | None = None
    n_final_mcmc: int = 0
    n_final_hmc: int = 0
    final_hmc_acceptance: float | None = None
    ess_before_final_resample: float | None = None
    u_average: torch.Tensor | None = None
    n_final_hmc_average: int = 0

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights ``(n,)`` float64 (zeros where ``log_w = -inf``)."""
        return torch.softmax(self.log_w, 0)

    def summary(self) -> dict:
        """JSON-friendly scalars and the per-step ``log_Z_trace`` / ``killed_trace`` (rounded)."""
        return dict(
            n=int(self.x.shape[0]),
            ess=float(self.ess),
            ess_min=float(self.ess_trace.min()) if self.ess_trace.numel() else float(self.ess),
            n_resample=int(self.n_resample),
            acceptance=None if self.acceptance is None else float(self.acceptance),
            log_Z=float(self.log_Z),
            n_model_evals=int(self.n_model_evals),
            n_target_evals=int(self.n_target_evals),
            n_nonfinite=int(self.n_nonfinite),
            n_levels=len(self.levels),
            n_bridge=0 if self.lambdas is None else int(len(self.lambdas) - 1),
            step_size=self.step_size,
            wall_s=float(self.wall_s),
            log_Z_trace=[round(float(v), 4) for v in self.log_Z_trace],
            killed_trace=[int(v) for v in self.killed_trace],
            ancestors=[[int(a), int(b)] for a, b in self.ancestors],
            inc_sd_trace=[round(float(v), 4) for v in self.inc_sd_trace],
            n_lineages=int(self.ancestors[0][1]) if self.ancestors else int(self.x.shape[0]),
            torsion_acceptance=self.torsion_acceptance,
            final_torsion_acceptance=self.final_torsion_acceptance,
            n_final_mcmc=int(self.n_final_mcmc),
            n_final_hmc=int(self.n_final_hmc),
            final_hmc_acceptance=self.final_hmc_acceptance,
            n_final_hmc_average=int(self.n_final_hmc_average),
            ess_before_final_resample=self.ess_before_final_resample,
        )
