"""boltzdiff: energy-based diffusion models as Boltzmann generators.

Energies are reduced (kT), positions in nm, ``force = -grad energy``. Heavy pieces (OpenMM, mdtraj,
matplotlib) are imported lazily.
"""

__version__ = "0.1.0"

from boltzdiff.errors import BoltzdiffError, ConfigError  # noqa: E402


def load_system(name_or_path, variant=None):
    """Load a system spec into a :class:`boltzdiff.systems.System` (see :func:`boltzdiff.systems.load_system`)."""
    from boltzdiff.systems import load_system as _load

    return _load(name_or_path, variant=variant)


__all__ = ["BoltzdiffError", "ConfigError", "load_system", "__version__"]
