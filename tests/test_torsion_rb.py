"""Rao-Blackwellised torsion-state probabilities (boltzdiff.analysis.torsion_rb) against exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzdiff.analysis.free_energy import two_state_delta_f
from boltzdiff.analysis.torsion_rb import _cell_overlap, torsion_state_probability
from boltzdiff.errors import ConfigError

# a bent 5-atom chain: 0-1-2-3-4, the dihedral 0-1-2-3 is the state's; rotating about 1-2 moves 0 (the smaller side)
BONDS = [(0, 1), (1, 2), (2, 3), (3, 4)]
DIHEDRAL = (0, 1, 2, 3)


def _dihedral_np(x: np.ndarray) -> np.ndarray:
    p = x.reshape(-1, 5, 3)
    b0, b1, b2 = p[:, 0] - p[:, 1], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2]
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1n).sum(-1, keepdims=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdims=True) * b1n
    return np.arctan2((np.cross(b1n, v) * w).sum(-1), (v * w).sum(-1))


def _von_mises_energy(kappa: float, mu: float):
    def energy(x: torch.Tensor) -> torch.Tensor:
        phi = torch.as_tensor(_dihedral_np(x.numpy()))
        return -kappa * torch.cos(phi - mu)

    return energy


def _exact(kappa: float, mu: float, lo: float, hi: float) -> float:
    a = np.linspace(-np.pi, np.pi, 2_000_001)
    f = np.exp(kappa * np.cos(a - mu))
    inside = (a > lo) & (a < hi)
    return float(np.trapezoid(f * inside, a) / np.trapezoid(f, a))


def _chains(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.normal(size=(n, 5, 3)) * 0.15, axis=1)).reshape(n, 15)


def test_von_mises_dihedral_matches_the_exact_integral_for_every_particle():
    """u = -kappa cos(phi - mu): given its orbit, a particle's phi follows the von Mises law whatever the rest
    of the chain, so every particle gets the same exact probability, and the rule converges to it."""
    kappa, mu, lo, hi = 3.0, 0.4, 0.0, 2.0
    exact = _exact(kappa, mu, lo, hi)
    x = _chains(20, 0)
    errs = {}
    for m in (24, 72, 360):
        res = torsion_state_probability(_von_mises_energy(kappa, mu), x, BONDS, 5, DIHEDRAL, _dihedral_np, lo, hi, m)
        assert res.n_evals == 20 * (m - 1) and res.n_unresolved == 0
        assert np.allclose(res.angle, _dihedral_np(x))
        errs[m] = float(np.abs(res.p - exact).max())
    assert errs[72] < 2e-3
    assert errs[360] < errs[72] / 10  # second order: 5x finer spacing, ~25x smaller error


def test_flat_energy_gives_the_state_s_share_of_the_circle_exactly():
    x = _chains(7, 1)
    res = torsion_state_probability(lambda y: torch.zeros(len(y)), x, BONDS, 5, DIHEDRAL, _dihedral_np, -1.0, 0.3, 9)
    assert np.allclose(res.p, 1.3 / (2 * np.pi), atol=1e-12)


def test_negated_angle_convention_mirrors_the_state():
    """An analysis that reports -phi (mirror images mapped back) gets the state at -phi: the sign of the
    rotation's effect on the angle is read from angle_of, not assumed."""
    kappa, mu = 2.0, 1.0
    x = _chains(5, 2)
    res = torsion_state_probability(
        _von_mises_energy(kappa, mu), x, BONDS, 5, DIHEDRAL, lambda y: -_dihedral_np(y), 0.0, 2.0, 180
    )
    assert np.allclose(res.p, _exact(kappa, mu, -2.0, 0.0), atol=1e-4)
    assert np.allclose(res.angle, -_dihedral_np(x))


def test_clashing_rotations_get_zero_weight_and_are_counted():
    """Energies that are +inf on part of the orbit (a clash) drop out of both integrals."""
    x = _chains(4, 3)

    def energy(y):
        phi = torch.as_tensor(_dihedral_np(y.numpy()))
        return torch.where((phi > -0.5) & (phi < 0.5), torch.inf, torch.zeros_like(phi))

    res = torsion_state_probability(energy, x, BONDS, 5, DIHEDRAL, _dihedral_np, 0.5, 2.5, 720)
    assert res.n_nonfinite > 0
    assert np.allclose(res.p, 2.0 / (2 * np.pi - 1.0), atol=5e-3)  # the allowed arc is 2 pi - 1 long


def test_cell_overlap_wraps_around_the_circle():
    h = 0.2
    c = np.array([np.pi - 0.05, -np.pi + 0.05, 0.0, 1.0])
    assert np.allclose(_cell_overlap(c, h, 3.0, np.pi), [(np.pi - 3.0) / h, 0.25, 0.0, 0.0])
    assert np.allclose(_cell_overlap(c, h, -0.05, 0.05), [0.0, 0.0, 0.5, 0.0])


def test_bad_arguments_are_config_errors():
    x = _chains(2, 0)
    e = _von_mises_energy(1.0, 0.0)
    with pytest.raises(ConfigError, match="n_angles"):
        torsion_state_probability(e, x, BONDS, 5, DIHEDRAL, _dihedral_np, 0.0, 1.0, 1)
    with pytest.raises(ConfigError, match="shape"):
        torsion_state_probability(e, x[:, :9], BONDS, 5, DIHEDRAL, _dihedral_np, 0.0, 1.0)
    with pytest.raises(ConfigError, match="lo < hi"):
        torsion_state_probability(e, x, BONDS, 5, DIHEDRAL, _dihedral_np, 1.0, 0.0)


def test_two_state_delta_f_takes_probabilities():
    d = two_state_delta_f(np.array([0.5, 0.25]), None, n_bootstrap=0)
    assert d.delta_f == pytest.approx(-math.log(0.375 / 0.625)) and d.p_a == pytest.approx(0.375)
    # bools and 0/1 probabilities agree, bootstrap included
    m = np.random.default_rng(0).random(50) < 0.3
    a = two_state_delta_f(m, None, n_bootstrap=50, rng=1)
    b = two_state_delta_f(m.astype(float), None, n_bootstrap=50, rng=1)
    assert a.delta_f == b.delta_f and a.se == b.se
    with pytest.raises(ValueError, match="probabilities"):
        two_state_delta_f(np.array([0.5, 1.5]), None, n_bootstrap=0)


def test_alanine_dipeptide_mirror_image_gets_the_same_basin_probability():
    """OpenMM energies are mirror-symmetric and the analysis maps mirror images back (negating phi), so a
    configuration and its mirror image must get the same phi-basin probability; 36 and 144 angles agree."""
    from boltzdiff.cv import phi_psi
    from boltzdiff.models.egnn import chiral_quads_of, fix_chirality, reference_chirality
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide")
    n = system.target.event_shape[0]
    quads = chiral_quads_of(system)
    pos = torch.as_tensor(np.asarray(system.positions), dtype=torch.float64)
    sign = reference_chirality(pos[None], quads)
    cvs = system.spec["cvs"]

    def phi_of(y):
        ys = fix_chirality(torch.as_tensor(np.asarray(y).reshape(-1, n, 3)), quads, sign).x
        return phi_psi(ys.numpy(), system.topology, phi=cvs["phi"], psi=cvs["psi"])[0]

    x = pos.reshape(1, -1)
    x2 = torch.cat([x, (pos * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)).reshape(1, -1)])  # x -> -x
    bonds = [(b[0].index, b[1].index) for b in system.topology.bonds]
    r = {
        m: torsion_state_probability(system.target.energy, x2, bonds, n, cvs["phi"], phi_of, 0.0, 2.0, m)
        for m in (36, 144)
    }
    assert r[144].angle[0] == pytest.approx(r[144].angle[1], abs=1e-9)
    assert r[144].p[0] == pytest.approx(r[144].p[1], rel=1e-6, abs=1e-12)
    assert r[36].p[0] == pytest.approx(r[144].p[0], rel=0.05, abs=1e-4)
