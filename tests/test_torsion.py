"""Torsion moves (boltzdiff.samplers.torsion): exact geometry, a volume-preserving involution, and the exact
torsion distribution of a chain whose only soft degree of freedom is one dihedral."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.geometry import signed_volume
from boltzdiff.samplers.mcmc import TargetDensity
from boltzdiff.samplers.torsion import rotatable_bonds, rotate_about_bonds, side_of_bond, torsion_moves, torsion_step
from boltzdiff.targets.base import Target

# a branched 6-atom molecule: 0-1-2-3 chain, 4 on atom 1, 5 on atom 2 (so 1 and 2 are "chiral-like" centres)
BONDS = [(0, 1), (1, 2), (2, 3), (1, 4), (2, 5)]


def dihedral(x3: torch.Tensor, a: int, b: int, c: int, d: int) -> torch.Tensor:
    b0, b1, b2 = x3[:, a] - x3[:, b], x3[:, c] - x3[:, b], x3[:, d] - x3[:, c]
    b1n = b1 / b1.norm(dim=-1, keepdim=True)
    v = b0 - (b0 * b1n).sum(-1, keepdim=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdim=True) * b1n
    return torch.atan2((torch.cross(b1n, v, dim=-1) * w).sum(-1), (v * w).sum(-1))


def molecule(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(
        [[-1.2, 0.8, 0.0], [0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [2.3, 1.1, 0.3], [-0.3, -0.9, 0.8], [1.9, -0.8, -0.7]],
        dtype=torch.float64,
    )
    return (base + 0.1 * torch.randn(batch, 6, 3, generator=g, dtype=torch.float64)).reshape(batch, -1)


def bond_lengths(x3: torch.Tensor, bonds) -> torch.Tensor:
    return torch.stack([(x3[:, a] - x3[:, b]).norm(dim=-1) for a, b in bonds], -1)


def test_rotatable_bonds_skip_terminal_atoms_and_rings():
    assert rotatable_bonds(BONDS, 6) == [(1, 2)]
    ring = [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4)]  # a triangle with a two-atom tail
    assert side_of_bond(ring, 5, 0, 1) is None
    assert rotatable_bonds(ring, 5) == [(2, 3)]
    with pytest.raises(ConfigError, match="ring"):
        torsion_moves(ring, 5, about=[(0, 1)])
    with pytest.raises(ConfigError, match="not bonded"):
        torsion_moves(BONDS, 6, about=[(0, 3)])
    with pytest.raises(ConfigError, match="moves nothing"):
        torsion_moves(BONDS, 6, about=[(0, 1)])


def test_the_smaller_side_moves():
    mv = torsion_moves([(0, 1), (1, 2), (2, 3), (3, 4), (3, 5)], 6, about=[(1, 2)])
    # side of 1: {0, 1}; side of 2: {2, 3, 4, 5}: atom 0 rotates about the axis 2 -> 1
    assert mv.axes.tolist() == [[2, 1]]
    assert mv.masks[0].nonzero().flatten().tolist() == [0]


def test_rotation_is_exact_on_the_geometry_and_its_own_inverse():
    mv = torsion_moves(BONDS, 6)
    x = molecule(64)
    theta = torch.linspace(-math.pi, math.pi, 64, dtype=torch.float64)
    which = torch.zeros(64, dtype=torch.long)
    y = rotate_about_bonds(x, mv, which, theta)
    x3, y3 = x.reshape(-1, 6, 3), y.reshape(-1, 6, 3)
    # every bond length and the mean position are kept; the dihedral about the bond turns by exactly theta
    torch.testing.assert_close(bond_lengths(y3, BONDS), bond_lengths(x3, BONDS), atol=1e-12, rtol=0)
    torch.testing.assert_close(y3.mean(1), x3.mean(1), atol=1e-12, rtol=0)
    turn = torch.remainder(dihedral(y3, 0, 1, 2, 3) - dihedral(x3, 0, 1, 2, 3) + math.pi, 2 * math.pi) - math.pi
    wrapped = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(turn.abs(), wrapped.abs(), atol=1e-9)
    # handedness at both centres is kept (a rotation, never a reflection)
    for c, a, b, d in [(1, 0, 2, 4), (2, 1, 3, 5)]:
        assert torch.equal(signed_volume(y3, c, a, b, d) > 0, signed_volume(x3, c, a, b, d) > 0)
    # the same bond and -theta take the configuration back: the proposal is symmetric
    torch.testing.assert_close(rotate_about_bonds(y, mv, which, -theta), x, atol=1e-12, rtol=0)


def test_rotation_preserves_volume():
    """|det d(rotate)/dx| = 1 for a fixed bond and angle, so Metropolis-Hastings needs no Jacobian."""
    mv = torsion_moves(BONDS, 6)
    x = molecule(1, seed=3)[0]
    for th in (0.4, 2.9, -1.7):

        def f(v, th=th):
            return rotate_about_bonds(v[None], mv, torch.zeros(1, dtype=torch.long), torch.tensor([th]))[0]

        jac = torch.autograd.functional.jacobian(f, x)
        assert abs(float(torch.linalg.det(jac)) - 1.0) < 1e-9


class ChainTorsion(Target):
    """A 6-atom molecule whose reduced energy is ``V(phi) = 2 cos(phi - 1) + cos(3 phi)`` of the 0-1-2-3
    dihedral alone: torsion moves never change its bonds or angles, so phi's exact distribution is
    ``exp(-V(phi)) / Z`` on the circle."""

    def __init__(self):
        super().__init__(18, (6, 3))

    def _energy(self, x):
        phi = dihedral(x.reshape(-1, 6, 3), 0, 1, 2, 3)
        return 2 * torch.cos(phi - 1) + torch.cos(3 * phi)


def test_torsion_moves_sample_the_exact_dihedral_distribution():
    tgt = ChainTorsion()
    mv = torsion_moves(BONDS, 6)
    grid = np.linspace(-np.pi, np.pi, 200001)
    p = np.exp(-(2 * np.cos(grid - 1) + np.cos(3 * grid)))
    exact = float(np.trapezoid(p * (grid > 0), grid) / np.trapezoid(p, grid))
    n = 4000
    x3 = molecule(1, seed=1).reshape(1, 6, 3).expand(n, 6, 3)
    x = x3.reshape(n, -1).clone()
    dens = TargetDensity(tgt)
    state = dens.evaluate(x)
    g = torch.Generator().manual_seed(0)
    acc_all = []
    for _ in range(60):
        x, state, acc = torsion_step(dens, x, state, mv, g)
        acc_all.append(float(acc.double().mean()))
    phi = dihedral(x.reshape(n, 6, 3), 0, 1, 2, 3).numpy()
    frac = float((phi > 0).mean())
    z = (frac - exact) / math.sqrt(exact * (1 - exact) / n)
    assert abs(z) < 4, (frac, exact, z)  # 4000 independent chains, 60 steps each (mixing in ~5)
    assert 0.2 < np.mean(acc_all) < 0.9
    # the state carried along is the density at the returned points
    torch.testing.assert_close(state.log_prob, dens.evaluate(x).log_prob)


class TorsionChain(Target):
    """A 4-atom chain 0-1-2-3: harmonic bonds (1.5, k 200) and angles (1.9 rad, k 50), the dihedral potential
    ``V(phi) = 2 cos(phi - 1) + cos(3 phi)`` and a weak restraint on the mean position (so that the density is
    normalisable). Bonds, angles and the mean do not depend on phi, so phi's exact marginal is
    ``exp(-V(phi)) / Z`` on the circle."""

    def __init__(self):
        super().__init__(12, (4, 3))

    def _energy(self, x):
        x3 = x.reshape(-1, 4, 3)
        bonds = torch.stack([(x3[:, i + 1] - x3[:, i]).norm(dim=-1) for i in range(3)], -1)
        ang = []
        for i in range(2):
            a, b = x3[:, i] - x3[:, i + 1], x3[:, i + 2] - x3[:, i + 1]
            ang.append(torch.acos((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))))
        ang = torch.stack(ang, -1)
        phi = dihedral(x3, 0, 1, 2, 3)
        return (
            100 * ((bonds - 1.5) ** 2).sum(-1)
            + 25 * ((ang - 1.9) ** 2).sum(-1)
            + 2 * torch.cos(phi - 1)
            + torch.cos(3 * phi)
            + 0.5 * (x3.mean(1) ** 2).sum(-1)
        )


def chain_at(phi0: float) -> torch.Tensor:
    """The chain's ideal geometry (bonds 1.5, angles 1.9 rad) with dihedral ``phi0``, centred."""
    b, th = 1.5, 1.9
    p1, p2 = torch.zeros(3, dtype=torch.float64), torch.tensor([b, 0.0, 0.0], dtype=torch.float64)
    p0 = p1 + b * torch.tensor([-math.cos(th), math.sin(th), 0.0], dtype=torch.float64)
    d = torch.tensor([-math.cos(th), math.sin(th) * math.cos(phi0), math.sin(th) * math.sin(phi0)], dtype=torch.float64)
    p3 = p2 - b * d * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    x = torch.stack([p0, p1, p2, p3])
    return x - x.mean(0)


@pytest.mark.parametrize("sweeps, bridge_steps", [(0, 0), (40, 0), (40, 1)])
def test_final_sweeps_at_the_target_fix_a_basin_the_model_never_visits(sweeps, bridge_steps):
    """SMC from a one-Gaussian model that sits at phi = -2 (it never proposes phi > 0) to the chain's exact
    energy: the bridge alone cannot move any mass over to phi > 0, while torsion sweeps at the target after it
    give the exact basin probability, within 4 standard errors (those of the final weights' ESS)."""
    from boltzdiff.models.exact import ExactMixtureEnergy
    from boltzdiff.noise import VPSchedule, make_grid
    from boltzdiff.samplers import MCMCConfig, SMCConfig, smc
    from boltzdiff.targets.gmm import GaussianMixture

    x0 = chain_at(-2.0)
    assert abs(float(dihedral(x0[None], 0, 1, 2, 3)) + 2.0) < 1e-9
    model = ExactMixtureEnergy(GaussianMixture([1.0], [x0.reshape(-1).tolist()], [0.07]), make_grid(VPSchedule(), 32))
    tgt = TorsionChain()
    mv = torsion_moves([(0, 1), (1, 2), (2, 3)], 4)
    grid = np.linspace(-np.pi, np.pi, 200001)
    p = np.exp(-(2 * np.cos(grid - 1) + np.cos(3 * grid)))
    exact = float(np.trapezoid(p * (grid > 0), grid) / np.trapezoid(p, grid))
    n = 3000
    r = smc(
        model,
        n,
        SMCConfig(
            bridge_cess=0.9,
            bridge_mcmc=MCMCConfig("mala", n_steps=2, step_size=0.3),
            torsion=mv,
            bridge_torsion_steps=bridge_steps,
            final_mcmc_steps=sweeps,
        ),
        generator=torch.Generator().manual_seed(0),
        target=tgt,
    )
    w = torch.softmax(r.log_w, 0).numpy()
    phi = dihedral(r.x.reshape(n, 4, 3), 0, 1, 2, 3).numpy()
    frac = float((w * (phi > 0)).sum())
    if sweeps == 0:
        assert frac < exact - 0.1  # what the model barely proposed, importance weights cannot restore
        assert r.final_torsion_acceptance is None and r.n_final_mcmc == 0
        return
    ess_n = r.ess * n
    z = (frac - exact) / math.sqrt(exact * (1 - exact) / ess_n)
    assert abs(z) < 4, (frac, exact, z, r.ess)
    assert 0.05 < r.final_torsion_acceptance < 0.9 and r.n_final_mcmc == sweeps
    assert r.summary()["final_torsion_acceptance"] == r.final_torsion_acceptance
    assert (r.torsion_acceptance is None) == (bridge_steps == 0)
    # every sweep is one torsion move and one MALA step, each one target evaluation per particle
    assert r.n_target_evals >= n * (2 * sweeps + 1)


def test_final_resample_before_the_sweeps_keeps_the_basin_probability():
    """Resample-move after the bridge (``final_resample``): the same setting as above with 40 sweeps; the final
    weights are equal, the bridge's ESS is kept, and the basin probability is still the exact one within 4
    standard errors (counted on the bridge's effective sample size, the conservative count for the copies)."""
    from boltzdiff.models.exact import ExactMixtureEnergy
    from boltzdiff.noise import VPSchedule, make_grid
    from boltzdiff.samplers import MCMCConfig, SMCConfig, smc
    from boltzdiff.targets.gmm import GaussianMixture

    x0 = chain_at(-2.0)
    model = ExactMixtureEnergy(GaussianMixture([1.0], [x0.reshape(-1).tolist()], [0.07]), make_grid(VPSchedule(), 32))
    grid = np.linspace(-np.pi, np.pi, 200001)
    p = np.exp(-(2 * np.cos(grid - 1) + np.cos(3 * grid)))
    exact = float(np.trapezoid(p * (grid > 0), grid) / np.trapezoid(p, grid))
    n = 3000
    target = TorsionChain()
    kw = dict(
        bridge_cess=0.9,
        bridge_mcmc=MCMCConfig("mala", n_steps=2, step_size=0.3),
        torsion=torsion_moves([(0, 1), (1, 2), (2, 3)], 4),
        final_mcmc_steps=40,
    )
    plain = smc(model, n, SMCConfig(**kw), target=target, generator=torch.Generator().manual_seed(0))
    r = smc(model, n, SMCConfig(final_resample=True, **kw), target=target, generator=torch.Generator().manual_seed(0))
    # the same bridge (same seed): the ESS it left, then one more resampling and equal weights
    assert r.ess_before_final_resample == pytest.approx(plain.ess, rel=1e-12) and plain.ess < 0.99
    assert plain.ess_before_final_resample is None
    assert r.n_resample == plain.n_resample + 1 and r.ess == pytest.approx(1.0)
    assert torch.allclose(r.log_w, r.log_w[0].expand_as(r.log_w))
    assert r.summary()["ess_before_final_resample"] == r.ess_before_final_resample
    phi = dihedral(r.x.reshape(n, 4, 3), 0, 1, 2, 3).numpy()
    frac = float((phi > 0).mean())
    z = (frac - exact) / math.sqrt(exact * (1 - exact) / (r.ess_before_final_resample * n))
    assert abs(z) < 4, (frac, exact, z)
    with pytest.raises(ConfigError, match="final_resample"):
        smc(model, 10, SMCConfig(final_resample=True, **{**kw, "final_mcmc_steps": 0}), target=target)


def test_smc_checks_its_torsion_arguments():
    from boltzdiff.models.exact import ExactMixtureEnergy
    from boltzdiff.noise import VPSchedule, make_grid
    from boltzdiff.samplers import SMCConfig, smc
    from boltzdiff.targets.gmm import GaussianMixture

    model = ExactMixtureEnergy(GaussianMixture([1.0], [[0.0] * 12], [1.0]), make_grid(VPSchedule(), 8))
    with pytest.raises(ConfigError, match="final_mcmc_steps"):
        smc(model, 10, SMCConfig(final_mcmc_steps=5))
    with pytest.raises(ConfigError, match="bridge_torsion_steps"):
        smc(model, 10, SMCConfig(bridge_torsion_steps=1), target=TorsionChain())
    with pytest.raises(ConfigError, match="6 atoms"):
        smc(model, 10, SMCConfig(torsion=torsion_moves(BONDS, 6), final_mcmc_steps=1), target=TorsionChain())
