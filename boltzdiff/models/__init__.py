"""Time-dependent energy models and the level-energy protocol."""

from boltzdiff.models.base import LevelEnergy
from boltzdiff.models.energy import PreconditionedEnergy, build_mlp_energy
from boltzdiff.models.exact import ExactMixtureEnergy

__all__ = ["LevelEnergy", "PreconditionedEnergy", "build_mlp_energy", "ExactMixtureEnergy"]
