"""The :class:`System` record, and readers of what a system's spec declares about it (chiral centres,
dihedral collective variables)."""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(frozen=True)
class SystemCVs:
    """Result of :func:`system_cv_values`.

    Attributes
    ----------
    values : dict of str to (F,) float array
        Each requested CV of the spec's ``cvs`` (radians, in (-pi, pi]), in the spec's order.
    n_mirrored : int or None
        How many configurations were mirrored back to the reference hand; None for a system without
        ``chiral_quads`` (or with ``mirror=False``).
    """

    values: dict[str, np.ndarray]
    n_mirrored: int | None


def dihedral_cvs(system: System) -> dict[str, list[int]]:
    """The CVs of a system spec that are dihedrals (four atom indices), in declaration order."""
    cvs = (system.spec or {}).get("cvs") or {}
    out = {}
    for name, idx in cvs.items():
        if isinstance(idx, (list, tuple)) and len(idx) == 4 and all(isinstance(i, int) for i in idx):
            out[str(name)] = [int(i) for i in idx]
    return out


def system_cv_values(system, x, names: Sequence[str] | None = None, reference=None, mirror: bool = True) -> SystemCVs:
    """The dihedral CVs ``cvs: {NAME: [i, j, k, l]}`` of a system's spec for configurations ``x`` (``(F, 3n)``
    or ``(F, n, 3)`` nm, numpy or torch).

    With ``chiral_quads`` in the spec, mirror images are first mapped back to the hand of ``reference``
    (configurations ``(m, n, 3)``, their majority hand; default: the system's own structure), since a network
    that sees only distances generates both hands while the force field cannot tell them apart; a mirrored
    configuration's dihedrals change sign. ``names``: which CVs (default: all, in declared order).
    """
    from boltzdiff.cv import dihedrals

    cvs = system.spec.get("cvs") or {}
    names = list(cvs) if names is None else list(names)
    missing = [k for k in names if k not in cvs]
    if missing:
        raise KeyError(f"system {system.name!r} has no cvs {missing} (it declares {sorted(cvs)})")
    n = system.target.event_shape[0]
    xs = torch.as_tensor(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x).reshape(-1, n, 3))
    quads = chiral_quads_of(system) if mirror else None
    n_mirrored = None
    if quads:
        ref = np.asarray(system.positions)[None] if reference is None else np.asarray(reference).reshape(-1, n, 3)
        fx = fix_chirality(xs, quads, reference_chirality(torch.as_tensor(ref), quads))
        xs, n_mirrored = fx.x, int(fx.n_flipped)
    if not names:
        return SystemCVs({}, n_mirrored)
    ang = dihedrals(xs.numpy(), [cvs[k] for k in names], system.topology)
    return SystemCVs({k: ang[:, i] for i, k in enumerate(names)}, n_mirrored)


def dihedral_of(system: System, x: Any, name: str, *, mirror: bool = True) -> np.ndarray:
    """The dihedral ``cvs.<name>`` of the system's spec for configurations ``x`` (``(F, n, 3)`` or ``(F, 3 n)``,
    numpy or torch, nm): ``(F,)`` radians in ``[-pi, pi)``.

    With ``mirror`` (the default) and ``chiral_quads`` declared in the spec, mirror images (the other hand at
    the chiral centres than the system's reference structure) are mapped back first (:func:`system_cv_values`),
    as the sampling strata and the analysis read it: a reflection-invariant model generates both hands, and a
    mirror image's dihedrals have the opposite sign.
    """
    cvs = system.spec.get("cvs") or {}
    if name not in cvs:
        near = suggest(name, cvs)
        hint = f"; did you mean {near!r}?" if near else ""
        raise ConfigError(f"system {system.name!r}: no dihedral {name!r} among its cvs ({sorted(cvs) or 'none'}){hint}")
    xs = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    return wrap_angle(system_cv_values(system, xs, [name], mirror=mirror).values[name])


__all__ = ["System", "SystemCVs", "chiral_quads_of", "dihedral_cvs", "dihedral_of", "system_cv_values"]
