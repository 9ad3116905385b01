"""Geometry helpers on batches of configurations (torch; numpy arrays are accepted and converted).

Shapes: ``x: (B, n, d)`` holds ``B`` configurations of ``n`` particles in ``d`` dimensions (``d = 2`` or 3).
Lengths are in whatever unit ``x`` is in (nm for molecules); angles are radians.
"""

from __future__ import annotations

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
