"""Rao-Blackwellised torsion-state probabilities (boltzdiff.analysis.torsion_rb) against exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzdiff.analysis.free_energy import (
    free_energy_profile,
    free_energy_profile_from_probabilities,
    two_state_delta_f,
)
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


def test_orbit_profile_is_the_exact_binned_von_mises_law_for_every_particle():
    """With profile_edges, each particle's row is its phi distribution over the bins given its orbit: for
    u = -kappa cos(phi - mu) the exact binned von Mises law, whatever the particle (second-order rule); the
    state probability from the same call is unchanged, and the weighted mean of the rows gives the exact
    F(phi) from a handful of particles, where a histogram of 20 particles leaves most bins empty."""
    kappa, mu = 3.0, 0.4
    edges = np.linspace(-np.pi, np.pi, 37)
    exact = np.array([_exact(kappa, mu, a, b) for a, b in zip(edges[:-1], edges[1:])])
    x = _chains(20, 0)
    e = _von_mises_energy(kappa, mu)
    res = torsion_state_probability(e, x, BONDS, 5, DIHEDRAL, _dihedral_np, 0.0, 2.0, 360, profile_edges=edges)
    plain = torsion_state_probability(e, x, BONDS, 5, DIHEDRAL, _dihedral_np, 0.0, 2.0, 360)
    assert plain.profile_p is None and np.array_equal(res.p, plain.p)
    assert res.profile_p.shape == (20, 36) and np.allclose(res.profile_p.sum(1), 1.0, atol=1e-12)
    assert np.abs(res.profile_p - exact).max() < 1e-4
    log_w = np.random.default_rng(3).normal(size=20)  # any weights: every row is the same law
    prof = free_energy_profile_from_probabilities(res.profile_p, edges, log_w, n_bootstrap=50, rng=0)
    f_exact = -np.log(exact) + np.log(exact.max())
    assert np.abs(prof.f_b - f_exact).max() < 1e-3
    assert np.nanmax(prof.se_b) < 1e-3  # every bootstrap replicate is the same law too
    assert np.isinf(free_energy_profile(_dihedral_np(x), log_w, bins=edges, n_bootstrap=0).f_b).sum() > 10


def test_profile_from_one_hot_probabilities_is_the_weighted_histogram():
    rng = np.random.default_rng(5)
    phi = rng.vonmises(0.5, 1.0, size=400)
    log_w = rng.normal(size=400)
    edges = np.linspace(-np.pi, np.pi, 25)
    one_hot = np.eye(24)[np.searchsorted(edges, phi, side="right") - 1]
    a = free_energy_profile(phi, log_w, bins=edges, n_bootstrap=0)
    b = free_energy_profile_from_probabilities(one_hot, edges, log_w, n_bootstrap=200, rng=1)
    assert np.allclose(a.p_b, b.p_b, atol=1e-12) and np.array_equal(np.isinf(a.f_b), np.isinf(b.f_b))
    # the particle bootstrap's spread matches the histogram's own bootstrap (200 replicates each: the SE
    # estimates agree to ~10 %; 30 % allowed)
    c = free_energy_profile(phi, log_w, bins=edges, n_bootstrap=200, rng=2)
    ok = np.isfinite(c.se_b) & np.isfinite(b.se_b) & (c.p_b > 0.02)
    assert np.allclose(b.se_b[ok], c.se_b[ok], rtol=0.3)
    # lineage clusters: copies of one ancestor move together, so the bands widen
    lin = np.repeat(np.arange(100), 4)
    d = free_energy_profile_from_probabilities(one_hot[np.repeat(np.arange(100), 4)], edges, None, 200, 3, lin)
    e = free_energy_profile_from_probabilities(one_hot[np.repeat(np.arange(100), 4)], edges, None, 200, 3)
    ok = np.isfinite(d.se_b) & np.isfinite(e.se_b) & (d.p_b > 0.02)
    assert np.median(d.se_b[ok] / e.se_b[ok]) > 1.5  # ~2 (sqrt of 4 copies)
    with pytest.raises(ValueError, match="shape"):
        free_energy_profile_from_probabilities(one_hot[:, :5], edges)
    with pytest.raises(ValueError, match="summing to 1"):
        free_energy_profile_from_probabilities(one_hot * 0.5, edges)


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
    with pytest.raises(ConfigError, match="profile_edges"):
        torsion_state_probability(e, x, BONDS, 5, DIHEDRAL, _dihedral_np, 0.0, 1.0, profile_edges=[0.0, 1.0])


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
    from boltzdiff.geometry import fix_chirality, reference_chirality
    from boltzdiff.systems import chiral_quads_of, load_system

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
