"""Targets: reduced energies u(x) = U(x)/kT (see :mod:`boltzdiff.targets.base`)."""

from boltzdiff.targets.base import Target, WrappedTarget, as_target
from boltzdiff.targets.gmm import GaussianMixture

__all__ = ["Target", "WrappedTarget", "as_target", "GaussianMixture", "from_openmm"]


def __getattr__(name: str):
    # ``boltzdiff.targets.from_openmm`` lives in boltzdiff.systems (it returns a System, which targets/ must not
    # import at module level); resolved on first access only.
    if name == "from_openmm":
        from boltzdiff.systems import from_openmm

        return from_openmm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
