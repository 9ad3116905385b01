"""Geometry helpers on batches of configurations (torch; numpy arrays are accepted and converted).

Shapes: ``x: (B, n, d)`` holds ``B`` configurations of ``n`` particles in ``d`` dimensions (``d = 2`` or 3).
Lengths are in whatever unit ``x`` is in (nm for molecules); angles are radians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def center_of_mass(x: torch.Tensor, masses: torch.Tensor | None = None) -> torch.Tensor:
    """Centre of mass ``(B, 1, d)`` of ``x: (B, n, d)``; equal masses when ``masses`` is None."""
    x = _t(x)
    if masses is None:
        return x.mean(dim=-2, keepdim=True)
    w = _t(masses).to(x)
    w = w / w.sum()
    return (x * w[:, None]).sum(dim=-2, keepdim=True)


def remove_com(x: torch.Tensor, masses: torch.Tensor | None = None) -> torch.Tensor:
    """``x - centre_of_mass(x)``; ``x: (B, n, d)`` -> ``(B, n, d)``."""
    x = _t(x)
    return x - center_of_mass(x, masses)


def random_rotations(
    n: int, dim: int = 3, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``n`` rotation matrices ``(n, dim, dim)`` drawn uniformly (Haar) from SO(dim).

    QR of a Gaussian matrix with the signs of ``diag(R)`` fixed gives Haar O(dim); flipping one column
    where the determinant is -1 gives SO(dim).
    """
    dtype = dtype or torch.get_default_dtype()
    a = torch.randn(n, dim, dim, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    det = torch.linalg.det(q)
    q[:, :, 0] = q[:, :, 0] * det[:, None]
    return q


def random_rotate(
    x: torch.Tensor, generator: torch.Generator | None = None, about_com: bool = True
) -> torch.Tensor:
    """Rotate each configuration of ``x: (B, n, d)`` by its own random rotation (about its centroid)."""
    x = _t(x)
    rot = random_rotations(x.shape[0], x.shape[-1], generator=generator, dtype=x.dtype)
    c = center_of_mass(x) if about_com else torch.zeros_like(x[:, :1])
    return (x - c) @ rot.transpose(-1, -2) + c


def kabsch(
    x: torch.Tensor, ref: torch.Tensor, masses: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal proper rotation and translation mapping ``x`` onto ``ref`` (least squares).

    Parameters
    ----------
    x : (B, n, d)
    ref : (n, d) or (B, n, d)
    masses : (n,), optional

    Returns
    -------
    rot : (B, d, d)
        Apply as ``x @ rot.transpose(-1, -2) + shift``.
    shift : (B, 1, d)
    """
    x = _t(x)
    ref = _t(ref).to(x)
    if ref.dim() == 2:
        ref = ref.expand(x.shape[0], -1, -1)
    cx, cr = center_of_mass(x, masses), center_of_mass(ref, masses)
    a, b = x - cx, ref - cr
    if masses is not None:
        a = a * _t(masses).to(x)[:, None]
    h = a.transpose(-1, -2) @ b  # (B, d, d)
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.transpose(-1, -2) @ u.transpose(-1, -2)))
    diag = torch.ones(x.shape[0], x.shape[-1], dtype=x.dtype, device=x.device)
    diag[:, -1] = d
    rot = vt.transpose(-1, -2) @ torch.diag_embed(diag) @ u.transpose(-1, -2)
    shift = cr - cx @ rot.transpose(-1, -2)
    return rot, shift


def kabsch_align(x: torch.Tensor, ref: torch.Tensor, masses: torch.Tensor | None = None) -> torch.Tensor:
    """``x: (B, n, d)`` optimally rotated and translated onto ``ref: (n, d)``; returns ``(B, n, d)``."""
    x = _t(x)
    rot, shift = kabsch(x, ref, masses)
    return x @ rot.transpose(-1, -2) + shift


def rmsd(x: torch.Tensor, ref: torch.Tensor, align: bool = True) -> torch.Tensor:
    """RMSD ``(B,)`` of ``x: (B, n, d)`` from ``ref: (n, d)``, after Kabsch alignment (when ``align``)."""
    x = _t(x)
    ref = _t(ref).to(x)
    y = kabsch_align(x, ref) if align else x
    return ((y - ref) ** 2).sum(-1).mean(-1).sqrt()


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """All distances ``(B, n, n)`` of ``x: (B, n, d)`` (zeros on the diagonal)."""
    x = _t(x)
    diff = x[:, :, None, :] - x[:, None, :, :]
    return (diff**2).sum(-1).clamp_min(0).sqrt()


def interatomic_distances(x: torch.Tensor) -> torch.Tensor:
    """Distances of the ``n(n-1)/2`` unique pairs ``i < j``: ``x: (B, n, d)`` -> ``(B, n(n-1)/2)``.

    Differentiable at every configuration without coincident particles.
    """
    x = _t(x)
    n = x.shape[-2]
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    return torch.linalg.vector_norm(x[:, i] - x[:, j], dim=-1)


def dihedral(x: torch.Tensor, indices: tuple[int, int, int, int] | list[int]) -> torch.Tensor:
    """Dihedral angle ``(B,)`` in radians, in (-pi, pi], of atoms ``indices`` in ``x: (B, n, 3)``.

    IUPAC sign convention (the same as mdtraj's ``compute_dihedrals``).
    """
    x = _t(x)
    a, b, c, d = (x[:, k] for k in indices)
    b0, b1, b2 = b - a, c - b, d - c
    n1 = torch.linalg.cross(b0, b1)
    n2 = torch.linalg.cross(b1, b2)
    m1 = torch.linalg.cross(b1 / torch.linalg.vector_norm(b1, dim=-1, keepdim=True), n1)
    return torch.atan2((m1 * n2).sum(-1), (n1 * n2).sum(-1))


def signed_volume(x: torch.Tensor, center: int, a: int, b: int, c: int) -> torch.Tensor:
    """Chirality at atom ``o = center``: ``(x_a - x_o) . ((x_b - x_o) x (x_c - x_o))``, shape ``(B,)``.

    The sign flips under reflection and not under rotation/translation, so comparing it with a reference
    structure's sign detects a mirror-image (e.g. D- instead of L-) configuration. For an L-amino acid with
    ``center = CA``, ``(a, b, c) = (N, C, CB)`` the volume is positive (see ``tests/test_geometry.py``).
    """
    x = _t(x)
    o = x[:, center]
    va, vb, vc = x[:, a] - o, x[:, b] - o, x[:, c] - o
    return (va * torch.linalg.cross(vb, vc)).sum(-1)


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles (radians) mapped to ``[-pi, pi)``: ``(a + pi) mod 2 pi - pi``."""
    return (np.asarray(a) + math.pi) % (2 * math.pi) - math.pi


# ------------------------------------------------------------------------------------------------------------
# chirality: the sign of the signed volume at a chiral centre tells a configuration from its mirror image
# ------------------------------------------------------------------------------------------------------------
def chirality_signs(x: torch.Tensor, chiral_quads: Sequence[Sequence[int]]) -> torch.Tensor:
    """Signs ``(B, Q)`` (+1, -1, or 0 if degenerate) of the signed volumes of ``x: (B, n, 3)`` (or flat
    ``(B, 3 n)``) at each quadruple ``(center, a, b, c)``."""
    x = torch.as_tensor(x)
    if x.dim() == 2:
        x = x.reshape(x.shape[0], -1, 3)
    return torch.stack([torch.sign(signed_volume(x, *q)) for q in chiral_quads], dim=-1)


def reference_chirality(x_ref: torch.Tensor, chiral_quads: Sequence[Sequence[int]]) -> list[int]:
    """Majority sign per quadruple over reference configurations ``x_ref: (B, n, 3)`` (e.g. the MD data)."""
    s = chirality_signs(x_ref, chiral_quads).sum(0)
    if torch.any(s == 0):
        raise ValueError("reference configurations have no majority handedness at some chiral centre")
    return [int(v) for v in torch.sign(s).tolist()]


@dataclass(frozen=True)
class ChiralityFix:
    """Result of :func:`fix_chirality`.

    Attributes
    ----------
    x : tensor, same shape as the input
        Configurations with the wrong-handed ones mirrored (``-x``) and every configuration re-centred.
    flipped_b : (B,) bool tensor
        Which configurations were mirrored.
    """

    x: torch.Tensor
    flipped_b: torch.Tensor

    @property
    def n_flipped(self) -> int:
        return int(self.flipped_b.sum())


def fix_chirality(
    x: torch.Tensor,
    chiral_quads: Sequence[Sequence[int]],
    reference_sign: int | Sequence[int] = 1,
) -> ChiralityFix:
    """Mirror configurations whose handedness disagrees with the reference.

    A configuration is wrong-handed when the signs of its signed volumes agree with ``reference_sign`` at
    fewer quadruples than they disagree (a majority vote; one quadruple for a molecule with one chiral centre).
    Mirroring is the point inversion ``x -> -x`` followed by centring, which flips every signed volume and keeps
    every distance, hence every (reflection-invariant) physical energy and importance weight.

    Parameters
    ----------
    x : (B, n, 3) or (B, 3 n) tensor
    chiral_quads : sequence of ``(center, a, b, c)``
        The chiral centres, e.g. a system spec's ``chiral_quads``.
    reference_sign : int or sequence of int (one per quadruple)
        The correct signs; default +1 (a positive signed volume at every quadruple). See
        :func:`reference_chirality`.
    """
    x = torch.as_tensor(x)
    shape = x.shape
    x3 = x.reshape(shape[0], -1, 3)
    ref = torch.as_tensor(reference_sign, dtype=x3.dtype).reshape(-1)
    s = chirality_signs(x3, chiral_quads)
    if ref.numel() not in (1, s.shape[1]):
        raise ValueError(f"reference_sign: expected 1 or {s.shape[1]} signs, got {ref.numel()}")
    flipped = (s * ref).sum(-1) < 0
    y = remove_com(torch.where(flipped[:, None, None], -x3, x3))
    return ChiralityFix(y.reshape(shape), flipped)
