"""boltzdiff: energy-based diffusion models as Boltzmann generators.

Energies are reduced (kT), positions in nm, ``force = -grad energy``. Heavy pieces (OpenMM, mdtraj,
matplotlib) are imported lazily.
"""

__version__ = "0.1.0"

from typing import Any  # noqa: E402

from boltzdiff.errors import BoltzdiffError, ConfigError  # noqa: E402


def load_system(name_or_path, variant=None):
    """Load a system spec into a :class:`boltzdiff.systems.System` (see :func:`boltzdiff.systems.load_system`)."""
    from boltzdiff.systems import load_system as _load

    return _load(name_or_path, variant=variant)


def from_openmm(system: Any, topology: Any, positions: Any, temperature: Any, **kwargs: Any) -> Any:
    """A :class:`boltzdiff.systems.System` from an OpenMM System, topology, positions and temperature (K), usable
    wherever :func:`load_system`'s result is (see :func:`boltzdiff.systems.from_openmm`)."""
    from boltzdiff.systems import from_openmm as _from_openmm

    return _from_openmm(system, topology, positions, temperature, **kwargs)


__all__ = ["BoltzdiffError", "ConfigError", "from_openmm", "load_system", "__version__"]
