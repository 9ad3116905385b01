"""Samplers: reverse diffusion (SDE/ODE), diffusion SMC/AIS over levels (optionally ending at the exact
target), MCMC kernels, resampling, composition of level energies, and diagnostics against analytic targets."""

from boltzdiff.samplers.compose import MixtureEnergy, ProductEnergy, TemperedEnergy, check_compatible, compose
from boltzdiff.samplers.config import SMCConfig
from boltzdiff.samplers.diagnostics import mode_report, total_variation, weighted_mode_weights
from boltzdiff.samplers.mcmc import (
    BridgeDensity,
    EvalCounter,
    LevelDensity,
    MCMCConfig,
    MCMCResult,
    TargetDensity,
    hmc,
    mala,
    run_mcmc,
)
from boltzdiff.samplers.replica import replica_exchange
from boltzdiff.samplers.resampling import kish_ess, multinomial_resample, systematic_resample
from boltzdiff.samplers.results import SamplerResult, SMCResult
from boltzdiff.samplers.sde import noisiest_gaussian, probability_flow_ode, resolve_levels, reverse_sde
from boltzdiff.samplers.smc import smc
from boltzdiff.samplers.torsion import TorsionMoves, torsion_moves, torsion_step

__all__ = [
    "BridgeDensity",
    "EvalCounter",
    "LevelDensity",
    "MCMCConfig",
    "MCMCResult",
    "MixtureEnergy",
    "ProductEnergy",
    "SMCConfig",
    "SMCResult",
    "SamplerResult",
    "TargetDensity",
    "TemperedEnergy",
    "TorsionMoves",
    "check_compatible",
    "compose",
    "hmc",
    "kish_ess",
    "mala",
    "mode_report",
    "multinomial_resample",
    "noisiest_gaussian",
    "probability_flow_ode",
    "replica_exchange",
    "resolve_levels",
    "reverse_sde",
    "run_mcmc",
    "smc",
    "systematic_resample",
    "torsion_moves",
    "torsion_step",
    "total_variation",
    "weighted_mode_weights",
]
