"""LJ-n pair-sum conventions: ``pair_sum: ordered`` (bgflow's sum over i != j, the public LJ13/LJ55 test sets)
and ``unique`` (i < j), checked against an independent numpy double loop, the known LJ13 global minimum, finite
differences and the OpenMM version."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

import boltzdiff
from boltzdiff.errors import ConfigError
from boltzdiff.targets.openmm import OpenMMTarget
from boltzdiff.targets.particles import LJ_OPENMM_TEMPERATURE, LennardJonesCluster

#: the LJ13 global minimum (Mackay icosahedron) of sum_{i<j} 4 eps [(s/r)^12 - (s/r)^6], in eps (Cambridge
#: Cluster Database); the same number for eps [(r_m/r)^12 - 2 (r_m/r)^6] with r_m = 2^(1/6) s
LJ13_GLOBAL_MINIMUM = -44.326801


def numpy_lj(x, pair_sum, eps=1.0, rm=1.0, c=1.0, temperature=1.0):
    """Reduced LJ energies ``(B,)`` of ``x: (B, n, 3)``, written out with an explicit double loop over i != j
    (bgflow's ordered sum; half of it for unique pairs) and the harmonic centre term."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(len(x))
    for b, p in enumerate(x):
        pair = 0.0
        for i in range(len(p)):
            for j in range(len(p)):
                if i != j:
                    r = math.sqrt(sum((p[i, k] - p[j, k]) ** 2 for k in range(3)))
                    pair += eps * ((rm / r) ** 12 - 2.0 * (rm / r) ** 6)
        if pair_sum == "unique":
            pair *= 0.5
        centre = p.mean(0)
        osc = 0.5 * c * sum(float(((q - centre) ** 2).sum()) for q in p)
        out[b] = (pair + osc) / temperature
    return out


def _configs(n, b, seed):
    """``b`` configurations of ``n`` particles: a jittered lattice (no overlapping pairs) plus a random scale."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n].astype(np.float64)
    x = 1.1 * g[None] + 0.15 * rng.standard_normal((b, n, 3))
    return x * rng.uniform(0.9, 1.3, (b, 1, 1)) + rng.standard_normal((b, 1, 3))


@pytest.mark.parametrize("pair_sum", ["ordered", "unique"])
@pytest.mark.parametrize("n,eps,rm,c,temperature", [(13, 1.0, 1.0, 1.0, 1.0), (7, 0.7, 1.3, 0.4, 2.5)])
def test_energy_matches_an_independent_double_loop(pair_sum, n, eps, rm, c, temperature):
    x = _configs(n, 6, seed=n)
    t = LennardJonesCluster(n, 3, eps=eps, rm=rm, oscillator_scale=c, temperature=temperature, pair_sum=pair_sum)
    u = t.energy(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(u, numpy_lj(x, pair_sum, eps, rm, c, temperature), rtol=1e-10, atol=1e-10)


def test_ordered_pair_term_is_twice_the_unique_one():
    x = torch.as_tensor(_configs(13, 8, seed=3))
    o, u = LennardJonesCluster(13, pair_sum="ordered"), LennardJonesCluster(13, pair_sum="unique")
    torch.testing.assert_close(o.pair_energy(x), 2.0 * u.pair_energy(x), rtol=1e-14, atol=1e-12)
    torch.testing.assert_close(o.oscillator_energy(x), u.oscillator_energy(x), rtol=0, atol=0)
    # the shipped systems: lj13 is the field's (ordered) convention, lj13_unique the earlier one
    a, b = boltzdiff.load_system("lj13").target, boltzdiff.load_system("lj13_unique").target
    torch.testing.assert_close(a.energy(x) - b.energy(x), u.pair_energy(x), rtol=1e-12, atol=1e-10)
    # two particles at r = r_m: pair energy -2 (ordered) vs -1 (unique); oscillator 1/2 * 2 * 0.5^2
    x2 = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]], dtype=torch.float64)
    assert LennardJonesCluster(2, pair_sum="ordered").energy(x2).item() == pytest.approx(-2.0 + 0.25, abs=1e-14)
    assert LennardJonesCluster(2, pair_sum="unique").energy(x2).item() == pytest.approx(-1.0 + 0.25, abs=1e-14)


@pytest.mark.parametrize("pair_sum", ["ordered", "unique"])
def test_force_is_minus_grad_by_central_differences(pair_sum):
    t = LennardJonesCluster(13, pair_sum=pair_sum)
    x = torch.as_tensor(_configs(13, 2, seed=5))
    f = t.force(x).reshape(2, -1)
    h, flat = 1e-6, x.reshape(2, -1)
    fd = torch.zeros_like(flat)
    for k in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, k] = h
        fd[:, k] = -(t.energy(flat + e) - t.energy(flat - e)) / (2 * h)
    torch.testing.assert_close(f, fd, rtol=1e-6, atol=1e-5)


def _icosahedron(radius: float) -> np.ndarray:
    """13 particles: the centre and the 12 vertices of a regular icosahedron at ``radius`` (centroid 0)."""
    phi = (1 + math.sqrt(5)) / 2
    v = []
    for s1 in (-1, 1):
        for s2 in (-1, 1):
            v += [(0, s1, s2 * phi), (s1, s2 * phi, 0), (s2 * phi, 0, s1)]
    v = np.array(v, dtype=np.float64)
    return np.vstack([np.zeros(3), radius * v / np.linalg.norm(v, axis=1, keepdims=True)])


def test_ordered_lj13_at_the_icosahedral_global_minimum():
    """The Mackay icosahedron, its radius found by a 1-D minimisation, reaches the known LJ13 minimum:
    -44.3268 with unique pairs, twice that with ordered pairs; with the centre term, the ordered energy's own
    optimum radius is a stationary point (zero forces by symmetry) below the pair minimum + its centre term."""
    pair_only = {p: LennardJonesCluster(13, oscillator_scale=0.0, pair_sum=p) for p in ("unique", "ordered")}

    def e(t, r):
        return t.energy(torch.as_tensor(_icosahedron(r))[None]).item()

    best = minimize_scalar(
        lambda r: e(pair_only["unique"], r), bounds=(0.8, 1.2), method="bounded", options={"xatol": 1e-10}
    )
    assert best.fun == pytest.approx(LJ13_GLOBAL_MINIMUM, abs=1e-5)
    assert e(pair_only["ordered"], best.x) == pytest.approx(2 * LJ13_GLOBAL_MINIMUM, abs=2e-5)
    # the ordered target with its oscillator (c = 1; centroid at the centre: 1/2 * 12 r^2)
    t = boltzdiff.load_system("lj13").target
    opt = minimize_scalar(lambda r: e(t, r), bounds=(0.8, 1.2), method="bounded", options={"xatol": 1e-10})
    # minimising over r can only lower the energy at the pair term's optimum radius, and the pair term is never
    # below its global minimum (-83.0896 at r = 0.96216, measured)
    assert 2 * LJ13_GLOBAL_MINIMUM + 6.0 * opt.x**2 - 1e-4 <= opt.fun <= 2 * LJ13_GLOBAL_MINIMUM + 6.0 * best.x**2
    assert opt.x < best.x  # the centre term pulls the shell in
    assert opt.fun == pytest.approx(numpy_lj(_icosahedron(opt.x)[None], "ordered")[0], abs=1e-10)
    assert t.force(torch.as_tensor(_icosahedron(opt.x))[None]).abs().max() < 1e-6
    # the shipped start structure is a (higher) local minimum of the same energy
    s = boltzdiff.load_system("lj13")
    u0 = t.energy(torch.as_tensor(s.positions)[None]).item()
    assert opt.fun - 1e-6 <= u0 < 0.5 * opt.fun


@pytest.mark.parametrize("pair_sum", ["ordered", "unique"])
def test_openmm_system_agrees_with_torch(tmp_path, pair_sum):
    """The builder's OpenMM factory and temperature give the torch target's reduced energies and forces, also at
    another eps, rm, oscillator scale and reduced temperature."""
    p = tmp_path / "system.yaml"
    p.write_text(
        "kind: lennard_jones\nn_particles: 7\neps: 0.8\nrm: 1.2\noscillator_scale: 0.5\n"
        f"temperature: 0.6\npair_sum: {pair_sum}\n"
    )
    s = boltzdiff.load_system(p)
    assert s.target.pair_sum == pair_sum
    x = torch.as_tensor(1.2 * _configs(7, 5, seed=11))
    assert s.extras["openmm_temperature_K"] == pytest.approx(0.6 * LJ_OPENMM_TEMPERATURE, rel=1e-14)
    with OpenMMTarget(s.extras["openmm_system_factory"](), s.extras["openmm_temperature_K"]) as omm:
        torch.testing.assert_close(omm.energy(x), s.target.energy(x), rtol=1e-9, atol=1e-8)
        torch.testing.assert_close(omm.force(x), s.target.force(x), rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(s.target.energy(x).numpy(), numpy_lj(x, pair_sum, 0.8, 1.2, 0.5, 0.6), rtol=1e-10)


def test_pair_sum_field_default_and_errors(tmp_path):
    p = tmp_path / "system.yaml"
    base = "kind: lennard_jones\nn_particles: 4\ntemperature: 1.0\n"
    p.write_text(base)
    assert boltzdiff.load_system(p).target.pair_sum == "unique"  # specs without the field keep their energies
    p.write_text(base + "pair_sum: null\n")
    assert boltzdiff.load_system(p).target.pair_factor == 1.0
    for bad in ("both", "Ordered", "2", "[ordered]", "{a: 1}", "true"):
        p.write_text(base + f"pair_sum: {bad}\n")
        with pytest.raises(ConfigError) as e:
            boltzdiff.load_system(p)
        msg = str(e.value)
        assert "\n" not in msg and str(p) in msg and "field 'pair_sum' expected one of ordered, unique" in msg
    with pytest.raises(ValueError, match="pair_sum"):
        LennardJonesCluster(4, pair_sum="all")
