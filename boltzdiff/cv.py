"""Collective variables: backbone dihedrals (via mdtraj) for molecules, interatomic distances for particles.

Angles are in radians, in (-pi, pi]; positions in nm (molecules) or reduced units (particles).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    for a system, ``phi=system.spec['cvs']['phi']`` etc. (or :func:`boltzdiff.systems.system_cv_values` for
    every declared CV).
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
