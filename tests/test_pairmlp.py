"""The pair-distance energy network for labelled molecules (float64 checks, fixed seeds)."""

from __future__ import annotations

import pytest
import torch
from _recipes import ALDP_CHIRAL_QUADS

from boltzdiff.config import TrainConfig
from boltzdiff.errors import ConfigError
from boltzdiff.geometry import random_rotations, remove_com
from boltzdiff.models.pairmlp import build_pairmlp_energy
from boltzdiff.noise import make_grid, make_schedule
from boltzdiff.systems import chiral_quads_of

N_LEVELS = 16


def _configs(B, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return remove_com(torch.randn(B, n, 3, generator=g, dtype=torch.float64) * 0.8)


def _model(n=7, quads=None, seed=0, perturb=True):
    torch.manual_seed(seed)
    grid = make_grid(make_schedule(None), N_LEVELS)
    model = build_pairmlp_energy(grid, n, 3, sigma_data=0.5, width=32, depth=2, chiral_quads=quads).double()
    model.net.set_pair_stats(_configs(64, n, seed=9).reshape(64, -1))
    if perturb:  # the last layer starts at zero; make the network term non-zero
        torch.nn.init.normal_(model.net.out.weight, std=0.5)
        torch.nn.init.normal_(model.net.out.bias, std=0.5)
        torch.nn.init.normal_(model.net.stiffness.bias, std=0.5)
    return model


def _e(model, x, level):
    return model.energy(x.reshape(x.shape[0], -1), level)


def test_zero_init_gives_gaussian_energy():
    model = _model(perturb=False)
    x = _configs(4, 7).reshape(4, -1)
    a2 = model.a2[3]
    expected = 0.5 * (x**2).sum(-1) / a2 + 10.5 * torch.log(2 * torch.pi * a2)
    torch.testing.assert_close(model.energy(x, 3), expected)


def test_pair_stats_are_the_data_distance_moments():
    model = _model()
    x = _configs(64, 7, seed=9)
    r01 = (x[:, 0] - x[:, 1]).norm(dim=-1)
    torch.testing.assert_close(model.net.pair_mean[0], r01.mean())
    torch.testing.assert_close(model.net.pair_var[0], r01.var())


def test_rotation_translation_invariance_and_labelled_atoms():
    B = 5
    model = _model()
    x = _configs(B, 7)
    level = torch.arange(B) % N_LEVELS
    e0 = _e(model, x, level)
    gauss = 0.5 * (x.reshape(B, -1) ** 2).sum(-1) / model.a2[level]
    assert (e0 - gauss).std() > 1e-3  # the network term is not trivially zero
    rot = random_rotations(B, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(_e(model, x @ rot.transpose(-1, -2), level), e0, atol=1e-5, rtol=0)
    torch.testing.assert_close(_e(model, remove_com(x + 3.0), level), e0, atol=1e-5, rtol=0)
    # without chiral inputs a mirror image has the same energy
    torch.testing.assert_close(_e(model, -x, level), e0, atol=1e-5, rtol=0)
    # atoms are labelled: swapping two of them changes the energy
    swap = torch.tensor([1, 0, 2, 3, 4, 5, 6])
    assert (_e(model, x[:, swap], level) - e0).abs().max() > 1e-6


def test_chiral_inputs_break_reflection_only():
    model = _model(quads=[(0, 1, 2, 3)])
    torch.nn.init.normal_(model.net.inp.weight, std=1.0)
    x = _configs(4, 7)
    e0 = _e(model, x, 2)
    rot = random_rotations(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(_e(model, x @ rot.transpose(-1, -2), 2), e0, atol=1e-5, rtol=0)
    assert (_e(model, -x, 2) - e0).abs().min() > 1e-6


def test_force_matches_finite_differences_and_double_backward(fd_force):
    model = _model(quads=[(0, 1, 2, 3)])
    x = _configs(3, 7).reshape(3, -1)
    force = model.score(x, 4)
    torch.testing.assert_close(force, fd_force(lambda y: model.energy(y, 4), x), atol=1e-6, rtol=1e-5)
    xr = x.clone().requires_grad_(True)
    s = model.score(xr, torch.tensor([1, 5, 9]), create_graph=True)
    (s**2).sum().backward()
    assert model.net.out.weight.grad.abs().sum() > 0
    assert model.net.inp.weight.grad.abs().sum() > 0


def test_per_level_standardisation_makes_data_distances_order_one():
    """At every level, the standardised distances of noised data have mean ~0 and std ~1 (within 0.35)."""
    torch.manual_seed(0)
    grid = make_grid(make_schedule(None), N_LEVELS)
    n = 6
    g = torch.Generator().manual_seed(5)
    base = remove_com(torch.randn(1, n, 3, generator=g, dtype=torch.float64))
    data = remove_com(base + 0.01 * torch.randn(4000, n, 3, generator=g, dtype=torch.float64)).reshape(4000, -1)
    sd = float(data.std())
    model = build_pairmlp_energy(grid, n, 3, sigma_data=sd, width=8, depth=1).double()
    net = model.net
    net.set_pair_stats(data)
    for lv in (0, N_LEVELS // 2, N_LEVELS - 1):
        xt, _ = grid.noise(data, torch.full((4000,), lv))
        xt = xt / model.a2[lv].sqrt()
        z = net.standardised_distances(xt, torch.full((4000,), lv))
        assert z.mean(0).abs().max() < 0.35, (lv, z.mean(0))
        assert (z.std(0) - 1).abs().max() < 0.35, (lv, z.std(0))


def test_chiral_norm_standardises_the_signed_volume_at_every_level():
    """``chiral_norm``: on noised data of a chiral tetrahedron, V / s_V(t) has RMS within [0.6, 1.4] at every level
    (the fixed ``chiral_scale`` left it at ~0.02 for bond-length molecules); its mean is the chirality signal,
    ~1 where the noise is far below the bonds and ~0 at full noise; the energy stays invariant to rotations
    and translations, not to reflections, and refined levels follow the new grid."""
    from boltzdiff.geometry import signed_volume
    from boltzdiff.models.energy import refine_levels

    torch.manual_seed(0)
    grid = make_grid(make_schedule({"kind": "vp", "t_min": 1e-6}), N_LEVELS, spacing="logsnr")
    g = torch.Generator().manual_seed(2)
    # a CH-like centre with bonds ~0.15 nm plus two far atoms, small thermal noise
    base = torch.tensor(
        [[0, 0, 0], [0.15, 0, -0.05], [-0.075, 0.13, -0.05], [-0.075, -0.13, -0.05], [0.5, 0.3, 0.2], [-0.4, 0.1, 0.6]],
        dtype=torch.float64,
    )
    data = remove_com(base + 0.005 * torch.randn(4000, 6, 3, generator=g, dtype=torch.float64)).reshape(4000, -1)
    model = build_pairmlp_energy(
        grid, 6, 3, sigma_data=float(data.std()), width=8, depth=1, chiral_quads=[(0, 1, 2, 3)], chiral_norm=True
    ).double()
    net = model.net
    net.set_pair_stats(data)
    v0 = signed_volume(data.reshape(-1, 6, 3), 0, 1, 2, 3)
    torch.testing.assert_close(net.chiral_v2, (v0**2).mean().reshape(1))
    means = []
    for lv in range(N_LEVELS):
        lvl = torch.full((4000,), lv)
        xt, _ = grid.noise(data, lvl)
        z = signed_volume((xt / model.a2[lv].sqrt()).reshape(-1, 6, 3), 0, 1, 2, 3) / net.chiral_sd(lvl)[:, 0]
        assert 0.6 < float(z.pow(2).mean().sqrt()) < 1.4, (lv, float(z.pow(2).mean().sqrt()))
        means.append(float(z.mean()))
    assert abs(means[0]) > 0.95 and abs(means[-1]) < 0.1, means
    torch.nn.init.normal_(net.inp.weight, std=1.0)
    torch.nn.init.normal_(net.out.weight, std=0.5)
    x = _configs(4, 6)
    e0 = _e(model, x, 1)
    rot = random_rotations(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(_e(model, x @ rot.transpose(-1, -2), 1), e0, atol=1e-5, rtol=0)
    assert (_e(model, -x, 1) - e0).abs().min() > 1e-6
    fine = refine_levels(model, 2)
    torch.testing.assert_close(_e(fine, x, 2), e0, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="chiral_norm"):
        from boltzdiff.systems import load_system
        from boltzdiff.train import build_model

        cfg = TrainConfig(network="pairmlp", pairmlp={"chiral_norm": "yes"})
        build_model(cfg, make_grid(make_schedule(None), 4), torch.zeros(66), 0.3, load_system("alanine_dipeptide"))


def test_build_model_uses_pairmlp_for_molecules_only(tmp_path):
    from boltzdiff.systems import load_system
    from boltzdiff.train import build_grid, build_model

    aldp = load_system("alanine_dipeptide")
    assert chiral_quads_of(aldp) == [tuple(ALDP_CHIRAL_QUADS[0])]
    cfg = TrainConfig(system="alanine_dipeptide", network="pairmlp", width=16, depth=1).validate()
    model = build_model(cfg, build_grid(cfg), torch.zeros(66), 0.2, aldp)
    assert model.net.quads == [tuple(ALDP_CHIRAL_QUADS[0])]
    lj = load_system("lj13")
    with pytest.raises(ConfigError, match="pairmlp"):
        build_model(TrainConfig(system="lj13", network="pairmlp"), build_grid(cfg), torch.zeros(39), 0.5, lj)
    with pytest.raises(ConfigError, match="network"):
        TrainConfig(network="gnn").validate()


def test_lj_cluster_model_treats_particles_as_identical():
    """LJ13 carries a topology (for PDB output) but its particles are identical: the EGNN built for it must be
    permutation invariant (it once gave every LJ atom its own type because a topology was present)."""
    from boltzdiff.systems import load_system
    from boltzdiff.train import build_grid, build_model

    lj = load_system("lj13")
    cfg = TrainConfig(system="lj13", network="egnn", egnn={"hidden": 8, "n_layers": 2}).validate()
    torch.manual_seed(0)
    model = build_model(cfg, build_grid(cfg), torch.zeros(39), 0.5, lj).double()
    assert int(model.net.types.max()) == 0
    torch.nn.init.normal_(model.net.readout.weight, std=0.5)
    x = _configs(3, 13)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_e(model, x[:, perm], 5), _e(model, x, 5), atol=1e-5, rtol=0)


def test_positive_stiffness_option_starts_at_the_given_value_and_rejects_bad_options():
    from boltzdiff.systems import load_system
    from boltzdiff.train import build_grid, build_model

    aldp = load_system("alanine_dipeptide")
    cfg = TrainConfig(system="alanine_dipeptide", network="pairmlp", width=16, depth=1, pairmlp={"stiffness_init": 1.0})
    model = build_model(cfg.validate(), build_grid(cfg), torch.zeros(66), 0.2, aldp).double()
    x = torch.as_tensor(aldp.positions, dtype=torch.float64).reshape(1, 66).repeat(3, 1)
    x = x + 0.01 * torch.randn(3, 66, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model.net.set_pair_stats(x)
    net = model.net
    lv = torch.tensor([0, 5, 9])
    xt = x / model.a2[lv].sqrt()[:, None]
    z = net.standardised_distances(xt, lv)
    # the MLP head is zero at initialisation: the network term is exactly 1/2 sum z^2 (stiffness 1)
    torch.testing.assert_close(net(xt, model.c_noise[lv], lv), 0.5 * (z * z).sum(-1))
    with pytest.raises(ConfigError, match="pairmlp"):
        build_model(
            TrainConfig(system="alanine_dipeptide", network="pairmlp", pairmlp={"hidden": 3}),
            build_grid(cfg),
            torch.zeros(66),
            0.2,
            aldp,
        )


def test_precond_scale_widens_the_preconditioning_gaussian_only():
    """``precond_scale: s`` builds a2_t = alpha_t^2 (s sigma_data)^2 + sigma_t^2 in the energy and in the pair
    net, i.e. the same model as ``precond_scale: 1`` with an s-times wider sigma_data (the losses keep the
    data's sigma); bad values are one-line errors naming the field."""
    from boltzdiff.systems import load_system
    from boltzdiff.train import build_grid, build_model

    aldp = load_system("alanine_dipeptide")
    small = dict(system="alanine_dipeptide", network="pairmlp", width=16, depth=1)
    cfg = TrainConfig(**small, precond_scale=3.0).validate()
    grid = build_grid(cfg)
    model = build_model(cfg, grid, torch.zeros(66), 0.2, aldp).double()
    a2 = grid.alpha.double() ** 2 * 0.6**2 + grid.sigma.double() ** 2
    assert torch.allclose(model.a2, a2) and torch.allclose(model.net.a2.double(), a2)
    wide = build_model(TrainConfig(**small), grid, torch.zeros(66), 0.6, aldp).double()
    wide.load_state_dict(model.state_dict())
    x = torch.randn(5, 66, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.3
    with torch.no_grad():
        for lv in (0, grid.n // 2, grid.n - 1):
            assert torch.allclose(wide.energy(x, lv), model.energy(x, lv))
    for bad in (0, -1.0, "wide", True, float("nan")):
        with pytest.raises(ConfigError, match="field 'precond_scale'"):
            TrainConfig(precond_scale=bad).validate()


@pytest.mark.parametrize("factor", [2, 3])
def test_refined_levels_keep_the_trained_ones_and_are_exact_between_them_for_a_zero_network(factor):
    """``refine_levels``: level i of the model is level ``factor * i`` of the refined one (same energy, same
    f); in between, a zero network is still exactly the Gaussian marginal ``N(0, a_t^2)`` at the new t, and
    the network's per-level buffers follow the new grid."""
    from boltzdiff.models.energy import refine_levels

    model = _model()
    model.f.data = torch.randn(N_LEVELS, dtype=model.f.dtype)
    fine = refine_levels(model, factor)
    g = fine.grid
    assert g.n == factor * (N_LEVELS - 1) + 1
    torch.testing.assert_close(g.t[::factor], model.grid.t, rtol=0, atol=0)
    assert torch.all(g.log_snr[1:] < g.log_snr[:-1])
    x = _configs(5, 7)
    for i in range(N_LEVELS):
        torch.testing.assert_close(_e(fine, x, factor * i), _e(model, x, i), rtol=0, atol=0)
    torch.testing.assert_close(fine.log_norm()[::factor], model.log_norm(), rtol=0, atol=0)
    assert model.grid.n == N_LEVELS and model.a2.shape[0] == N_LEVELS  # the original is untouched
    sd2 = float((model.a2[0] - model.grid.sigma[0] ** 2) / model.grid.alpha[0] ** 2)
    torch.testing.assert_close(fine.net.a2, g.alpha**2 * sd2 + g.sigma**2)
    torch.testing.assert_close(fine.net.sigma, g.sigma)
    zero = refine_levels(_model(perturb=False), factor)
    xf = x.reshape(5, -1)
    for j in (1, factor + 1, g.n - 2):
        a2 = g.alpha[j] ** 2 * sd2 + g.sigma[j] ** 2
        expected = 0.5 * (xf**2).sum(-1) / a2 + 10.5 * torch.log(2 * torch.pi * a2)
        torch.testing.assert_close(zero.energy(xf, j), expected)


def test_refine_rejects_bad_factors_and_other_energies():
    from boltzdiff.models.energy import refine_levels
    from boltzdiff.models.exact import ExactMixtureEnergy
    from boltzdiff.targets.gmm import GaussianMixture

    assert refine_levels(_model(), 1) is not None
    with pytest.raises(ConfigError, match="refine: expected an integer >= 1"):
        refine_levels(_model(), 0)
    exact = ExactMixtureEnergy(GaussianMixture([1.0], [[0.0, 0.0]], [1.0]), make_grid(make_schedule(None), 8))
    with pytest.raises(ConfigError, match="refine: needs a trained Gaussian-preconditioned energy"):
        refine_levels(exact, 2)


def test_torsion_features_are_the_dihedral_and_rotation_invariant():
    """sin/cos inputs equal mdtraj-convention dihedrals (boltzdiff.geometry.dihedral), are invariant under rigid
    motions, flip the sine under reflection, and stay finite (with finite gradients) for collinear atoms."""
    from boltzdiff.geometry import dihedral
    from boltzdiff.models.pairmlp import torsion_features
    from boltzdiff.systems import load_system
    from boltzdiff.train import build_grid, build_model

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, 3, generator=g, dtype=torch.float64)
    quads = [(0, 1, 2, 3), (1, 2, 3, 4)]
    f = torsion_features(x, quads, eps=1e-12)
    for k, q in enumerate(quads):
        phi = dihedral(x, q)
        torch.testing.assert_close(f[:, 2 * k], torch.sin(phi), atol=1e-9, rtol=0)
        torch.testing.assert_close(f[:, 2 * k + 1], torch.cos(phi), atol=1e-9, rtol=0)
    rot = random_rotations(16, 3, generator=g, dtype=torch.float64)
    moved = x @ rot.transpose(-1, -2) + torch.randn(16, 1, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torsion_features(moved, quads), torsion_features(x, quads), atol=1e-9, rtol=0)
    mirrored = torsion_features(-x, quads)
    torch.testing.assert_close(mirrored[:, 0::2], -f[:, 0::2], atol=1e-6, rtol=0)
    line = torch.zeros(1, 5, 3, dtype=torch.float64)
    line[0, :, 0] = torch.arange(5.0)
    line.requires_grad_(True)
    torsion_features(line, quads).sum().backward()
    assert torch.isfinite(line.grad).all()
    aldp = load_system("alanine_dipeptide")
    cfg = TrainConfig(system="alanine_dipeptide", network="pairmlp", width=16, depth=1, pairmlp={"torsions": "cvs"})
    model = build_model(cfg.validate(), build_grid(cfg), torch.zeros(66), 0.2, aldp)
    assert model.net.torsions == [(4, 6, 8, 14), (6, 8, 14, 16)]
    for bad in ("phi", [[0, 1, 2]], [[0, 1, 2, 99]]):
        with pytest.raises(ConfigError, match="pairmlp.torsions"):
            build_model(
                TrainConfig(system="alanine_dipeptide", network="pairmlp", pairmlp={"torsions": bad}),
                build_grid(cfg), torch.zeros(66), 0.2, aldp,
            )
