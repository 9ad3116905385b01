"""Geometry helpers: rotations, alignment, COM removal, distances, dihedrals, chirality."""

import math

import numpy as np
import pytest
import torch

from boltzdiff import geometry as g


def test_random_rotations_are_proper_and_orthonormal():
    gen = torch.Generator().manual_seed(0)
    for dim in (2, 3):
        r = g.random_rotations(500, dim, generator=gen, dtype=torch.float64)
        eye = torch.eye(dim, dtype=torch.float64).expand(500, dim, dim)
        assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=1e-12)
        assert torch.allclose(torch.linalg.det(r), torch.ones(500, dtype=torch.float64), atol=1e-12)
    # Haar: the mean of a uniformly random rotation matrix is zero
    r = g.random_rotations(20000, 3, generator=gen, dtype=torch.float64)
    assert r.mean(0).abs().max() < 0.03


def test_kabsch_recovers_rotation_and_translation():
    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    rot = g.random_rotations(4, 3, generator=gen, dtype=torch.float64)
    x = ref @ rot.transpose(-1, -2) + torch.randn(4, 1, 3, generator=gen, dtype=torch.float64)
    y = g.kabsch_align(x, ref)
    assert torch.allclose(y, ref.expand_as(y), atol=1e-10)
    assert g.rmsd(x, ref).max() < 1e-10
    # a reflected copy cannot be aligned by a proper rotation
    assert g.rmsd(x * torch.tensor([-1.0, 1, 1], dtype=torch.float64), ref).min() > 1e-2


def test_remove_com_and_random_rotate_keep_distances():
    x = torch.randn(5, 7, 3, dtype=torch.float64) + 3.0
    z = g.remove_com(x)
    assert z.mean(1).abs().max() < 1e-12
    m = torch.arange(1.0, 8.0, dtype=torch.float64)
    zm = g.remove_com(x, m)
    assert ((zm * m[:, None]).sum(1)).abs().max() < 1e-12
    y = g.random_rotate(x, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(g.pairwise_distances(y), g.pairwise_distances(x), atol=1e-10)
    assert torch.allclose(g.center_of_mass(y), g.center_of_mass(x), atol=1e-10)


def test_interatomic_distances_matches_pairwise():
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    d = g.interatomic_distances(x)
    full = g.pairwise_distances(x)
    i, j = np.triu_indices(6, 1)
    assert d.shape == (3, 15)
    assert torch.allclose(d, full[:, i, j])


def test_dihedral_known_values_and_mdtraj():
    md = pytest.importorskip("mdtraj")
    # trans (pi) and +90 degree (IUPAC sign) configurations
    a = torch.tensor(
        [[[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [-1, 1, 0]], [[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1]]],
        dtype=torch.float64,
    )
    ang = g.dihedral(a, (0, 1, 2, 3))
    assert abs(abs(ang[0].item()) - math.pi) < 1e-12
    ref = md.compute_dihedrals(_traj(a.numpy()), [[0, 1, 2, 3]])[:, 0]
    assert np.allclose(ang.numpy(), ref, atol=1e-5)
    x = torch.randn(10, 4, 3, dtype=torch.float64)
    ref = md.compute_dihedrals(_traj(x.numpy()), [[0, 1, 2, 3]])[:, 0]
    assert np.allclose(g.dihedral(x, (0, 1, 2, 3)).numpy(), ref, atol=1e-4)


def _traj(xyz):
    import mdtraj as md

    top = md.Topology()
    ch = top.add_chain()
    for _ in range(xyz.shape[1]):
        top.add_atom("C", md.element.carbon, top.add_residue("X", ch))
    return md.Trajectory(xyz.astype(np.float32), top)


def test_signed_volume_flips_under_reflection_only():
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    v = g.signed_volume(x, 0, 1, 2, 3)
    y = g.random_rotate(x, generator=torch.Generator().manual_seed(3)) + 2.0
    assert torch.allclose(g.signed_volume(y, 0, 1, 2, 3), v, atol=1e-10)
    assert torch.allclose(g.signed_volume(-x, 0, 1, 2, 3), -v, atol=1e-12)
