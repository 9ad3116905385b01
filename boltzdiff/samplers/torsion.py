"""Torsion moves: Metropolis-Hastings rotations of one side of a molecule about a rotatable bond.

A Cartesian kernel (MALA, HMC) moves a molecule by a fraction of a bond length per step, so it never carries a
particle over a torsional barrier (alanine dipeptide's phi ~ 0 barrier is ~11 kT). A torsion move does it in
one step: pick one of the rotatable bonds ``j - k`` uniformly, rotate every atom on ``k``'s side of it about the
axis ``j -> k`` by an angle drawn uniformly from ``[-width, width]``, and accept with probability
``min(1, pi(y) / pi(x))``. The proposal is symmetric (the same bond, angle ``-theta``, maps ``y`` back to
``x``) and preserves volume (a rotation of some atoms about an axis through atoms that do not move), so no
Jacobian or proposal ratio enters. The unweighted mean of the atoms is kept where it was (a translation of
the whole molecule after the rotation; the composite map is still a volume-preserving involution pair), since
the models' Gaussian preconditioning is not translation-invariant. Chirality is never changed.

Rotating an uneven split of the molecule costs nothing extra, so the smaller side is the one that moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from boltzdiff.errors import ConfigError
from boltzdiff.samplers.mcmc import DensityEval, _accept, _valid


@dataclass
class TorsionMoves:
    """The rotatable bonds of a molecule and the atoms each one moves.

    Attributes
    ----------
    n_atoms : int
    axes : (m, 2) long tensor
        ``(j, k)`` per move: rotate about the axis from atom ``j`` to atom ``k``.
    masks : (m, n_atoms) bool tensor
        The atoms each move rotates (``k``'s side of the bond, without ``k``).
    width : float
        Angles are drawn uniformly from ``[-width, width]`` radians (``pi``: any angle).
    """

    n_atoms: int
    axes: torch.Tensor
    masks: torch.Tensor
    width: float = math.pi

    def __post_init__(self):
        if not 0 < float(self.width) <= math.pi:
            raise ConfigError(f"torsion width: expected an angle in (0, pi] radians, got {self.width}")
        if self.axes.ndim != 2 or self.axes.shape[1] != 2 or self.masks.shape != (self.axes.shape[0], self.n_atoms):
            raise ConfigError(
                f"torsion moves: axes {tuple(self.axes.shape)} and masks {tuple(self.masks.shape)} disagree"
            )
        if self.axes.shape[0] < 1:
            raise ConfigError("torsion moves: no rotatable bond")

    @property
    def n_moves(self) -> int:
        return int(self.axes.shape[0])


def _neighbours(bonds: Sequence[Sequence[int]], n_atoms: int) -> list[set[int]]:
    nb: list[set[int]] = [set() for _ in range(n_atoms)]
    for a, b in bonds:
        a, b = int(a), int(b)
        if not (0 <= a < n_atoms and 0 <= b < n_atoms) or a == b:
            raise ConfigError(f"torsion moves: bond ({a}, {b}) is not a pair of atoms in 0..{n_atoms - 1}")
        nb[a].add(b)
        nb[b].add(a)
    return nb


def side_of_bond(bonds: Sequence[Sequence[int]], n_atoms: int, j: int, k: int) -> list[int] | None:
    """Atoms reached from ``k`` without crossing the bond ``j - k`` (``k`` included), or None if ``j`` is reached
    too (the bond is in a ring, so rotating about it would break the ring)."""
    nb = _neighbours(bonds, n_atoms)
    if k not in nb[j]:
        raise ConfigError(f"torsion moves: atoms {j} and {k} are not bonded")
    seen, stack = {k}, [k]
    while stack:
        a = stack.pop()
        for b in nb[a]:
            if a == k and b == j:
                continue
            if b == j:
                return None
            if b not in seen:
                seen.add(b)
                stack.append(b)
    return sorted(seen)


def rotatable_bonds(bonds: Sequence[Sequence[int]], n_atoms: int) -> list[tuple[int, int]]:
    """Bonds ``(j, k)`` not in a ring whose both atoms have another neighbour (a rotation about them moves
    something), each once, in the order given."""
    nb = _neighbours(bonds, n_atoms)
    out, seen = [], set()
    for a, b in bonds:
        a, b = int(a), int(b)
        key = (min(a, b), max(a, b))
        if key in seen or len(nb[a]) < 2 or len(nb[b]) < 2:
            continue
        seen.add(key)
        if side_of_bond(bonds, n_atoms, a, b) is not None:
            out.append((a, b))
    return out


def torsion_moves(
    bonds: Sequence[Sequence[int]], n_atoms: int, about: Sequence[Sequence[int]] | None = None, width: float = math.pi
) -> TorsionMoves:
    """Moves about the bonds ``about`` (pairs of bonded atoms; default: every rotatable bond), each rotating the
    smaller side. A bond in a ring, or one with nothing to rotate, is a :class:`ConfigError`."""
    pairs = rotatable_bonds(bonds, n_atoms) if about is None else [(int(a), int(b)) for a, b in about]
    axes, masks = [], []
    for a, b in pairs:
        side_b = side_of_bond(bonds, n_atoms, a, b)
        if side_b is None:
            raise ConfigError(f"torsion moves: bond ({a}, {b}) is in a ring; a rotation about it would break the ring")
        side_a = side_of_bond(bonds, n_atoms, b, a)
        j, k, side = (a, b, side_b) if len(side_b) <= len(side_a) else (b, a, side_a)
        moving = [i for i in side if i != k]
        if not moving:
            raise ConfigError(
                f"torsion moves: bond ({a}, {b}) ends in a terminal atom; rotating about it moves nothing"
            )
        m = torch.zeros(n_atoms, dtype=torch.bool)
        m[moving] = True
        axes.append((j, k))
        masks.append(m)
    if not axes:
        raise ConfigError("torsion moves: the molecule has no rotatable bond")
    return TorsionMoves(n_atoms, torch.tensor(axes, dtype=torch.long), torch.stack(masks), float(width))


def rotate_about_bonds(x: torch.Tensor, moves: TorsionMoves, which: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate, in each configuration ``x[b]`` (flat ``(B, 3 n_atoms)``), the atoms of move ``which[b]`` by
    ``theta[b]`` radians about its bond (right-handed about ``j -> k``), keeping the mean of the atoms fixed."""
    B = x.shape[0]
    x3 = x.reshape(B, moves.n_atoms, 3)
    ax = moves.axes.to(x.device)[which]
    rows = torch.arange(B, device=x.device)
    pj, pk = x3[rows, ax[:, 0]], x3[rows, ax[:, 1]]
    u = pk - pj
    u = u / u.norm(dim=-1, keepdim=True)
    v = x3 - pk[:, None]
    theta = theta.to(x.dtype)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    uu = u[:, None, :].expand_as(v)
    rot = v * c + torch.cross(uu, v, dim=-1) * s + uu * (uu * v).sum(-1, keepdim=True) * (1 - c)
    mask = moves.masks.to(x.device)[which][:, :, None]
    y3 = torch.where(mask, rot + pk[:, None], x3)
    y3 = y3 - y3.mean(1, keepdim=True) + x3.mean(1, keepdim=True)
    return y3.reshape(x.shape)


def torsion_step(
    density, x: torch.Tensor, state: DensityEval, moves: TorsionMoves, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, DensityEval, torch.Tensor]:
    """One Metropolis-Hastings torsion move per configuration of ``x: (B, 3 n_atoms)`` on ``density`` (an object
    with ``evaluate(x) -> DensityEval``, as in :mod:`boltzdiff.samplers.mcmc`); returns ``(x, state, accepted)``.
    Proposals with a non-finite density are rejected."""
    B = x.shape[0]
    which = torch.randint(moves.n_moves, (B,), generator=generator).to(x.device)
    theta = (2 * torch.rand(B, generator=generator, dtype=torch.float64) - 1).to(x.device) * float(moves.width)
    y = rotate_about_bonds(x, moves, which, theta)
    new = density.evaluate(y)
    acc = _accept(new.log_prob - state.log_prob, _valid(new), generator)
    return torch.where(acc[:, None], y, x), state.select(acc, new), acc
