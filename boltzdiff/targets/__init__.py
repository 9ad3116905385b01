"""Targets: reduced energies u(x) = U(x)/kT (see :mod:`boltzdiff.targets.base`)."""

from boltzdiff.targets.base import Target, WrappedTarget, as_target
from boltzdiff.targets.gmm import GaussianMixture

__all__ = ["Target", "WrappedTarget", "as_target", "GaussianMixture"]
