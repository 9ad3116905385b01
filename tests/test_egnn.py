"""The E(n)-invariant energy network and the chirality helpers (float64 checks, fixed seeds)."""

from __future__ import annotations

import pytest
import torch
from _recipes import ALDP_CHIRAL_QUADS

from boltzdiff.geometry import (
    chirality_signs,
    fix_chirality,
    random_rotations,
    reference_chirality,
    remove_com,
    signed_volume,
)
from boltzdiff.models.egnn import EGNNNet, build_egnn_energy
from boltzdiff.noise import make_grid, make_schedule

N_LEVELS = 16


def _energy(n, dim, atom_types=None, chiral_quads=None, seed=0, hidden=16, n_layers=3):
    """A float64 EGNN energy whose zero-initialised readout is perturbed so the network term is non-zero."""
    torch.manual_seed(seed)
    grid = make_grid(make_schedule(None), N_LEVELS)
    model = build_egnn_energy(
        grid,
        n,
        dim,
        sigma_data=0.5,
        hidden=hidden,
        n_layers=n_layers,
        atom_types=atom_types,
        chiral_quads=chiral_quads,
    ).double()
    torch.nn.init.normal_(model.net.readout.weight, std=0.5)
    torch.nn.init.normal_(model.net.readout.bias, std=0.5)
    for layer in model.net.layers:  # make the coordinate updates matter too
        if layer.coord is not None:
            torch.nn.init.normal_(layer.coord.weight, std=0.3)
    return model


def _configs(B, n, dim, seed=1):
    g = torch.Generator().manual_seed(seed)
    return remove_com(torch.randn(B, n, dim, generator=g, dtype=torch.float64) * 0.8)


def _e(model, x, level):
    return model.energy(x.reshape(x.shape[0], -1), level)


def test_zero_init_gives_gaussian_energy():
    torch.manual_seed(0)
    grid = make_grid(make_schedule(None), N_LEVELS)
    model = build_egnn_energy(grid, 5, 3, sigma_data=0.5, hidden=8, n_layers=2).double()
    x = _configs(4, 5, 3).reshape(4, -1)
    out = model.net(x, torch.zeros(4, dtype=torch.float64))
    assert out.shape == (4, 15) and torch.all(out == 0)
    a2 = model.a2[3]
    expected = 0.5 * (x**2).sum(-1) / a2 + 7.5 * torch.log(2 * torch.pi * a2)
    torch.testing.assert_close(model.energy(x, 3), expected)


@pytest.mark.parametrize("dim", [2, 3])
def test_rotation_translation_permutation_invariance(dim):
    n, B = 6, 5
    types = [0, 0, 1, 1, 1, 2]
    model = _energy(n, dim, atom_types=types)
    x = _configs(B, n, dim)
    level = torch.arange(B) % N_LEVELS
    e0 = _e(model, x, level)
    assert e0.abs().max() > 0 and torch.isfinite(e0).all()
    # the network term is not trivially zero
    gauss = 0.5 * (x.reshape(B, -1) ** 2).sum(-1) / model.a2[level]
    assert (e0 - gauss).std() > 1e-3

    rot = random_rotations(B, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(_e(model, x @ rot.transpose(-1, -2), level), e0, atol=1e-5, rtol=0)

    # translating then re-centring is the identity; the *network term* alone is translation-invariant
    shift = torch.randn(B, 1, dim, dtype=torch.float64) * 3
    torch.testing.assert_close(_e(model, remove_com(x + shift), level), e0, atol=1e-5, rtol=0)
    c = model.c_noise[level]
    xf, xs = x.reshape(B, -1), (x + shift).reshape(B, -1)
    term0 = (model.net(xf, c) * xf).sum(-1)
    term1 = (model.net(xs, c) * xs).sum(-1)
    torch.testing.assert_close(term1, term0, atol=1e-5, rtol=0)

    # permuting identical particles (types 0 <-> 0, 1 <-> 1 <-> 1) leaves E unchanged
    perm = torch.tensor([1, 0, 4, 2, 3, 5])
    torch.testing.assert_close(_e(model, x[:, perm], level), e0, atol=1e-5, rtol=0)
    # ... but swapping particles of different types does change it
    swap = torch.tensor([5, 1, 2, 3, 4, 0])
    assert (_e(model, x[:, swap], level) - e0).abs().max() > 1e-6


def test_reflection_invariant_without_chirality_option():
    model = _energy(7, 3, atom_types=list(range(7)))
    x = _configs(4, 7, 3)
    mirror = x * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(_e(model, mirror, 2), _e(model, x, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(_e(model, -x, 2), _e(model, x, 2), atol=1e-5, rtol=0)


def test_chirality_option_breaks_reflection_only():
    quads = [(0, 1, 2, 3)]
    model = _energy(7, 3, atom_types=list(range(7)), chiral_quads=quads)
    torch.nn.init.normal_(model.net.chiral.weight, std=1.0)
    x = _configs(4, 7, 3)
    e0 = _e(model, x, 2)
    rot = random_rotations(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(_e(model, x @ rot.transpose(-1, -2), 2), e0, atol=1e-5, rtol=0)
    assert (_e(model, -x, 2) - e0).abs().min() > 1e-6
    with pytest.raises(ValueError):
        EGNNNet(4, 2, chiral_quads=quads)


def test_force_matches_finite_differences_and_double_backward(fd_force):
    n, dim = 5, 3
    model = _energy(n, dim, atom_types=[0, 1, 0, 1, 2])
    x = _configs(3, n, dim).reshape(3, -1)
    force = model.score(x, 4)  # -grad_x E
    torch.testing.assert_close(force, fd_force(lambda y: model.energy(y, 4), x), atol=1e-6, rtol=1e-5)

    # second derivatives: a DSM-like loss on the score backpropagates into every parameter
    xr = x.clone().requires_grad_(True)
    s = model.score(xr, torch.tensor([1, 5, 9]), create_graph=True)
    (s**2).sum().backward()
    grads = [p.grad for p in model.net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.net.readout.weight.grad.abs().sum() > 0
    # Hessian-vector product is finite
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.energy(xr, 4).sum(), xr, create_graph=True)
    (hv,) = torch.autograd.grad((g * torch.ones_like(g)).sum(), xr)
    assert torch.isfinite(hv).all()


def test_float32_speed_smoke_aldp_size():
    """n = 22 in float32 with the default width: a batch of 8 through energy + score with create_graph."""
    torch.manual_seed(0)
    grid = make_grid(make_schedule(None), N_LEVELS)
    model = build_egnn_energy(
        grid,
        22,
        3,
        sigma_data=0.15,
        hidden=32,
        n_layers=3,
        atom_types=list(range(22)),
        chiral_quads=ALDP_CHIRAL_QUADS,
    )
    x = remove_com(torch.randn(8, 22, 3) * 0.15).reshape(8, -1).requires_grad_(True)
    s = model.score(x, torch.randint(0, N_LEVELS, (8,)), create_graph=True)
    (s**2).mean().backward()
    assert s.shape == (8, 66) and torch.isfinite(s).all()


# ------------------------------------------------------------------------------------------------------------
# chirality helpers
# ------------------------------------------------------------------------------------------------------------
def _tetrahedra(B, seed=4):
    """Centre atom 0 with neighbours 1, 2, 3 at tetrahedral positions (+ a spectator), randomly rotated."""
    t = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]],
        dtype=torch.float64,
    )
    rot = random_rotations(B, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return remove_com(t[None] @ rot.transpose(-1, -2) + torch.randn(B, 1, 3, dtype=torch.float64))


def test_signed_volume_flips_and_fix_chirality_restores():
    quads = [(0, 1, 2, 3)]
    x = _tetrahedra(6)
    s = chirality_signs(x, quads)[:, 0]
    assert torch.all(s == s[0]) and s[0] != 0  # rotation keeps the handedness
    ref = reference_chirality(x, quads)
    assert ref == [int(s[0])]
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.all(chirality_signs(mirrored, quads)[:, 0] == -s)

    mixed = torch.where((torch.arange(6) % 2 == 0)[:, None, None], x, mirrored)
    out = fix_chirality(mixed, quads, ref)
    assert out.flipped_b.tolist() == [False, True] * 3 and out.n_flipped == 3
    assert torch.all(chirality_signs(out.x, quads)[:, 0] == s)
    torch.testing.assert_close(out.x.mean(1), torch.zeros(6, 3, dtype=torch.float64))
    # distances (hence every physical energy) are preserved; right-handed samples are untouched
    torch.testing.assert_close(torch.cdist(out.x, out.x), torch.cdist(mixed, mixed))
    torch.testing.assert_close(out.x[::2], x[::2])
    # flat input keeps its shape
    flat = fix_chirality(mixed.reshape(6, -1), quads, ref)
    assert flat.x.shape == (6, 15) and flat.flipped_b.tolist() == out.flipped_b.tolist()


def test_fix_chirality_aldp_structure():
    mdtraj = pytest.importorskip("mdtraj")
    import yaml

    from boltzdiff.systems import SYSTEMS_DIR

    folder = SYSTEMS_DIR / "alanine_dipeptide"
    quads = yaml.safe_load((folder / "system.yaml").read_text())["chiral_quads"]
    assert [tuple(q) for q in quads] == list(ALDP_CHIRAL_QUADS)
    x = remove_com(torch.tensor(mdtraj.load(str(folder / "alanine-dipeptide.pdb")).xyz, dtype=torch.float64))
    assert signed_volume(x, *quads[0]).item() > 0  # L-alanine: +1 at the spec's quadruple
    both = torch.cat([x, -x])
    out = fix_chirality(both, quads)  # default reference sign: +1 (L)
    assert out.flipped_b.tolist() == [False, True]
    torch.testing.assert_close(out.x[1], x[0])
