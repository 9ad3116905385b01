"""The :class:`System` record, and readers of what a system's spec declares about it (chiral centres,
dihedral collective variables)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.geometry import fix_chirality, reference_chirality, wrap_angle
from boltzdiff.schema import suggest
from boltzdiff.targets.base import Target


@dataclass
class System:
    """A target and what describes it.

    Attributes
    ----------
    name : str
    kind : str
    target : Target
    spec : dict
        The spec it was built from (resolved: the variant applied).
    path : Path or None
        The ``system.yaml`` it came from.
    temperature : float or None
        Kelvin, for physical systems.
    topology : mdtraj.Topology or None
    positions : numpy.ndarray or None
        Reference positions ``(n_atoms, 3)`` in nm.
    run_defaults : dict
        The system's default run configuration (``run.yaml`` beside the spec), possibly empty.
    extras : dict
        Anything else a builder attaches (e.g. the OpenMM ``System``).
    """

    name: str
    kind: str
    target: Target
    spec: dict
    path: Path | None = None
    temperature: float | None = None
    topology: Any = None
    positions: Any = None
    variant: str | None = None
    run_defaults: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


def chiral_quads_of(system: System) -> list[tuple[int, int, int, int]] | None:
    """A system's chiral centres, from its spec's ``chiral_quads`` (None if it declares none). Declared in the
    system's YAML, not inferred from its name, so that a copied or renamed system folder keeps them."""
    quads = system.spec.get("chiral_quads")
    return [tuple(int(i) for i in q) for q in quads] if quads else None


def dihedral_of(system: System, x: Any, name: str, *, mirror: bool = True) -> np.ndarray:
    """The dihedral ``cvs.<name>`` of the system's spec for configurations ``x`` (``(F, n, 3)`` or ``(F, 3 n)``,
    numpy or torch, nm): ``(F,)`` radians in ``[-pi, pi)``.

    With ``mirror`` (the default) and ``chiral_quads`` declared in the spec, mirror images (the other hand at
    the chiral centres than the system's reference structure) are mapped back first (:func:`fix_chirality`),
    as the sampling strata and the analysis read phi: a reflection-invariant model generates both hands, and a
    mirror image's dihedrals have the opposite sign.
    """
    from boltzdiff.cv import dihedrals

    cvs = system.spec.get("cvs") or {}
    if name not in cvs:
        near = suggest(name, cvs)
        hint = f"; did you mean {near!r}?" if near else ""
        raise ConfigError(f"system {system.name!r}: no dihedral {name!r} among its cvs ({sorted(cvs) or 'none'}){hint}")
    n_atoms = system.target.event_shape[0]
    xs = torch.as_tensor(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64))
    xs = xs.reshape(-1, n_atoms, 3)
    quads = chiral_quads_of(system) if mirror else None
    if quads:
        ref_sign = reference_chirality(torch.as_tensor(np.asarray(system.positions))[None], quads)
        xs = fix_chirality(xs, quads, ref_sign).x
    angles = dihedrals(xs.numpy(), [cvs[name]], system.topology)[:, 0]
    return wrap_angle(angles)


__all__ = ["System", "chiral_quads_of", "dihedral_of"]
