"""Typed settings of :func:`boltzdiff.samplers.smc` (:class:`SMCConfig`), checked once by ``validate()``."""

from __future__ import annotations

from dataclasses import dataclass

from boltzdiff.errors import ConfigError
from boltzdiff.samplers.mcmc import MCMCConfig
from boltzdiff.samplers.resampling import RESAMPLERS
from boltzdiff.schema import doc_field


@dataclass
class SMCConfig:
    """How :func:`~boltzdiff.samplers.smc.smc` moves its particles down the levels and on to the target."""

    levels: object = doc_field(None, "sub-grid of level indices: null (all), a count, or a list (resolve_levels)")
    kernel: str = doc_field("gaussian", "reverse kernel between levels: ``gaussian``, ``ancestral`` or ``em``")
    ess_threshold: float = doc_field(0.3, "resample when the normalised Kish ESS falls below this, in [0, 1]")
    resampler: str = doc_field("systematic", "resampling scheme (boltzdiff.samplers.resampling.RESAMPLERS)")
    kernel_variance: str = doc_field(
        "fisher", "variance of the gaussian kernel: ``fisher`` (particles' Fisher information), ``matrix``, ``model``"
    )
    particles: tuple | None = doc_field(
        None, "(n, m) particle layout for the ``matrix`` kernel's per-particle frames (rotation-invariant energies)"
    )
    hessian_samples: int = doc_field(16, "Hutchinson samples of the ``matrix`` kernel's particle curvature (>= 1)")
    mcmc: MCMCConfig | None = doc_field(None, "MCMC rejuvenation at every level (targets q_k; weights unchanged)")
    n_bridge: int = doc_field(16, "steps of the geometric bridge to the target (unless bridge_cess is set)")
    bridge_mcmc: MCMCConfig | None = doc_field(None, "MCMC at every bridge step (null: 2 adapted MALA steps)")
    bridge_cess: float | None = doc_field(
        None, "adaptive bridge: each step keeps the conditional ESS of its increments at this value, in (0, 1)"
    )
    max_bridge: int = doc_field(2000, "most adaptive bridge steps; the last jumps to lambda = 1")
    bridge_strata: object = doc_field(
        None, "``x -> labels`` callable: on the bridge, resample within each stratum, keeping its total weight"
    )
    strata_max_sigma: float | None = doc_field(
        None, "also resample within the strata at every level whose noise scale is at most this (data units)"
    )
    strata_min_share: float = doc_field(
        0.0, "every stratum with weight gets at least this share of the particles at a stratified resampling"
    )
    strata_denoised: bool = doc_field(
        False, "on the levels, label particles by their denoised configuration (Tweedie) instead of the noisy x"
    )
    torsion: object = doc_field(None, "TorsionMoves: Metropolis-Hastings rotations about a molecule's rotatable bonds")
    bridge_torsion_steps: int = doc_field(0, "torsion moves at every bridge step (after its MALA steps)")
    final_mcmc_steps: int = doc_field(
        0, "sweeps at the exact target after the bridge (a torsion move and a bridge_mcmc step each); needs a target"
    )
    final_resample: bool = doc_field(
        False, "with final_mcmc_steps: resample once by the weights after the bridge, before the sweeps"
    )
    final_hmc_steps: int = doc_field(
        0, "HMC trajectories at the exact target after the sweeps (identity mass; relax slow modes); needs a target"
    )
    final_hmc_leapfrog: int = doc_field(20, "leapfrog steps per final HMC trajectory (>= 1)")
    final_hmc_average: int = doc_field(
        0, "average each particle's target energy over the states after the last k final HMC trajectories (0: none)"
    )

    def validate(self) -> SMCConfig:
        """Check every setting that needs neither the model nor the target; a bad one is a one-line
        :class:`~boltzdiff.errors.ConfigError` naming it."""
        if not 0.0 <= float(self.ess_threshold) <= 1.0:
            raise ConfigError(f"ess_threshold: expected a number in [0, 1], got {self.ess_threshold}")
        if self.kernel_variance not in ("model", "fisher", "matrix"):
            raise ConfigError(f"kernel_variance: expected 'fisher', 'matrix' or 'model', got {self.kernel_variance!r}")
        if int(self.hessian_samples) < 1:
            raise ConfigError(f"hessian_samples: expected an integer >= 1, got {self.hessian_samples}")
        if self.resampler not in RESAMPLERS:
            raise ConfigError(f"resampler: expected one of {sorted(RESAMPLERS)}, got {self.resampler!r}")
        if self.bridge_cess is not None and not 0.0 < float(self.bridge_cess) < 1.0:
            raise ConfigError(f"bridge_cess: expected a number in (0, 1), got {self.bridge_cess}")
        if int(self.max_bridge) < 1:
            raise ConfigError(f"max_bridge: expected an integer >= 1, got {self.max_bridge}")
        sig = self.strata_max_sigma
        if sig is not None and (self.bridge_strata is None or not float(sig) > 0):
            raise ConfigError(f"strata_max_sigma: expected a positive number with bridge_strata, got {sig}")
        if self.strata_denoised and sig is None:
            raise ConfigError("strata_denoised: labels on the levels need strata_max_sigma (and bridge_strata)")
        share = self.strata_min_share
        if not 0.0 <= float(share) <= 1.0 or (share and self.bridge_strata is None):
            raise ConfigError(f"strata_min_share: expected a number in [0, 1] with bridge_strata, got {share}")
        if int(self.bridge_torsion_steps) < 0 or int(self.final_mcmc_steps) < 0:
            raise ConfigError(
                f"bridge_torsion_steps, final_mcmc_steps: expected integers >= 0, got {self.bridge_torsion_steps}, "
                f"{self.final_mcmc_steps}"
            )
        if int(self.final_hmc_steps) < 0 or int(self.final_hmc_leapfrog) < 1:
            raise ConfigError(
                f"final_hmc_steps, final_hmc_leapfrog: expected integers >= 0 and >= 1, got {self.final_hmc_steps}, "
                f"{self.final_hmc_leapfrog}"
            )
        if not 0 <= int(self.final_hmc_average) <= int(self.final_hmc_steps):
            raise ConfigError(
                f"final_hmc_average: expected an integer from 0 to final_hmc_steps={self.final_hmc_steps}, got "
                f"{self.final_hmc_average}"
            )
        if int(self.bridge_torsion_steps) and self.torsion is None:
            raise ConfigError("bridge_torsion_steps: torsion moves need the molecule's rotatable bonds (torsion=...)")
        if self.final_resample and not int(self.final_mcmc_steps):
            raise ConfigError(
                "final_resample: expected final_mcmc_steps > 0 (a resampling with no moves after it only adds noise)"
            )
        return self
