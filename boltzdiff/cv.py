"""Collective variables: backbone dihedrals (via mdtraj) for molecules, interatomic distances for particles.

Angles are in radians, in (-pi, pi]; positions in nm (molecules) or reduced units (particles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _as_traj(frames, topology=None):
    """An mdtraj.Trajectory from a Trajectory, or positions ``(F, n, 3)`` nm plus a topology (or None)."""
    import mdtraj

    if isinstance(frames, mdtraj.Trajectory):
        return frames
    xyz = np.asarray(frames.detach().cpu() if hasattr(frames, "detach") else frames, dtype=np.float32)
    if xyz.ndim == 2:
        xyz = xyz.reshape(xyz.shape[0], -1, 3)
    if topology is None:
        topology = mdtraj.Topology()
        ch = topology.add_chain()
        for _ in range(xyz.shape[1]):
            topology.add_atom("X", mdtraj.element.virtual, topology.add_residue("X", ch))
    return mdtraj.Trajectory(xyz, topology)


def dihedrals(frames, indices: Sequence[Sequence[int]], topology=None) -> np.ndarray:
    """Dihedral angles ``(F, k)`` (radians) of the ``k`` atom quadruples ``indices`` via mdtraj.

    ``frames`` is an ``mdtraj.Trajectory`` or positions ``(F, n, 3)`` / ``(F, 3n)`` (numpy or torch, nm).
    """
    import mdtraj

    return mdtraj.compute_dihedrals(_as_traj(frames, topology), np.asarray(indices, dtype=int), periodic=False)


def phi_psi(frames, topology=None, *, phi: Sequence[int], psi: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The two dihedrals ``phi (F,)`` and ``psi (F,)`` in radians of the atom quadruples ``phi`` and ``psi``;
    for a system, ``phi=system.spec['cvs']['phi']`` etc. (or :func:`system_cv_values` for every declared CV).
    """
    ang = dihedrals(frames, [phi, psi], topology)
    return ang[:, 0], ang[:, 1]


def interatomic_distances(x) -> np.ndarray:
    """Distances of all unique pairs: ``x: (F, n, d)`` -> ``(F, n (n-1) / 2)``."""
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    n = x.shape[-2]
    i, j = np.triu_indices(n, k=1)
    return np.linalg.norm(x[:, i] - x[:, j], axis=-1)


def distance_histogram(
    x,
    bins: int | np.ndarray = 100,
    range: tuple[float, float] | None = None,
    weights=None,
    density: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of all interatomic distances of ``x: (F, n, d)``, optionally with per-frame ``weights (F,)``.

    Returns
    -------
    hist : (bins,)
        Normalised to a density when ``density`` (the default).
    edges : (bins + 1,)
    """
    d = interatomic_distances(x)
    w = None
    if weights is not None:
        w = np.repeat(np.asarray(weights, dtype=np.float64)[:, None], d.shape[1], axis=1).ravel()
    return np.histogram(d.ravel(), bins=bins, range=range, weights=w, density=density)


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


def system_cv_values(system, x, names: Sequence[str] | None = None, reference=None, mirror: bool = True) -> SystemCVs:
    """The dihedral CVs ``cvs: {NAME: [i, j, k, l]}`` of a system's spec for configurations ``x`` (``(F, 3n)``
    or ``(F, n, 3)`` nm, numpy or torch).

    With ``chiral_quads`` in the spec, mirror images are first mapped back to the hand of ``reference``
    (configurations ``(m, n, 3)``, their majority hand; default: the system's own structure), since a network
    that sees only distances generates both hands while the force field cannot tell them apart; a mirrored
    configuration's dihedrals change sign. ``names``: which CVs (default: all, in declared order).
    """
    import torch

    from boltzdiff.geometry import fix_chirality, reference_chirality
    from boltzdiff.systems import chiral_quads_of

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
