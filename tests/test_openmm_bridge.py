"""The OpenMM bridge: agreement with direct OpenMM, forces, autograd, bad configurations, workers."""

import logging

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

import boltzdiff
from boltzdiff.errors import ConfigError
from boltzdiff.targets.openmm import OpenMMBridge, OpenMMTarget, kT_kjmol


@pytest.fixture(scope="module")
def aldp():
    s = boltzdiff.load_system("alanine_dipeptide")
    yield s
    s.target.close()


def _configs(s, b=12, scale=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return s.positions[None] + scale * rng.standard_normal((b, *s.positions.shape))


def _direct(s, x):
    """Energies (kJ/mol) and forces (kJ/mol/nm) with a plain OpenMM Context."""
    ctx = openmm.Context(
        s.extras["openmm_system"],
        openmm.VerletIntegrator(0.001),
        openmm.Platform.getPlatformByName("Reference"),
    )
    e, f = [], []
    for p in x:
        ctx.setPositions(p * unit.nanometer)
        st = ctx.getState(getEnergy=True, getForces=True)
        e.append(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        f.append(st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(e), np.array(f)


def test_kT():
    # R * 300 K = 2.494 kJ/mol
    assert kT_kjmol(300.0) == pytest.approx(8.314462618e-3 * 300.0, rel=1e-9)


@pytest.mark.parametrize("n_workers", [0, 2])
def test_bridge_matches_direct_openmm(aldp, n_workers):
    x = _configs(aldp, 9)
    e_ref, f_ref = _direct(aldp, x)
    with OpenMMBridge(aldp.extras["openmm_system"], 300.0, n_workers=n_workers) as br:
        res = br.evaluate(x)
        kt = br.kT
        assert np.abs(res.energy * kt - e_ref).max() < 1e-4  # kJ/mol
        assert np.abs(res.forces * kt - f_ref).max() < 1e-4  # kJ/mol/nm
        assert not res.bad.any()
        # flat (B, 3n) input and energy-only calls agree
        res2 = br.evaluate(x.reshape(9, -1), forces=False)
        assert res2.forces is None and np.array_equal(res2.energy, res.energy)
        if n_workers:
            assert len(br._procs) == 2 and all(p.is_alive() for p in br._procs)
            procs = list(br._procs)
    if n_workers:
        assert not any(p.is_alive() for p in procs)  # close() stopped the workers


def test_forces_match_finite_differences(aldp):
    x = torch.as_tensor(_configs(aldp, 1, seed=3))
    f = aldp.target.force(x)[0]
    h = 1e-5
    rng = np.random.default_rng(0)
    for i, k in zip(rng.integers(0, 22, 12), rng.integers(0, 3, 12)):
        xp, xm = x.clone(), x.clone()
        xp[0, i, k] += h
        xm[0, i, k] -= h
        fd = -(aldp.target.energy(xp) - aldp.target.energy(xm)).item() / (2 * h)
        assert fd == pytest.approx(f[i, k].item(), rel=1e-4, abs=1e-3)


def test_autograd_gives_minus_force(aldp):
    x = torch.as_tensor(_configs(aldp, 4, seed=4)).requires_grad_(True)
    u = aldp.target.energy(x)
    assert u.shape == (4,) and u.dtype == torch.float64
    w = torch.arange(1.0, 5.0, dtype=torch.float64)
    (g,) = torch.autograd.grad((w * u).sum(), x)
    f = aldp.target.force(x.detach())
    assert torch.allclose(g, -w[:, None, None] * f, rtol=1e-10, atol=1e-10)
    e2, f2 = aldp.target.energy_and_force(x.detach())
    assert torch.allclose(e2, u.detach()) and torch.allclose(f2, f)
    # no silent zero Hessian: differentiating the gradient again raises
    with pytest.raises(RuntimeError, match="second derivatives are not available"):
        torch.autograd.grad(aldp.target.energy(x).sum(), x, create_graph=True)
    # float32 inputs work too and give float32 out
    assert aldp.target.energy(x.detach().float()).dtype == torch.float32


def test_bad_configurations_reported_not_passed_on(aldp, caplog):
    x = _configs(aldp, 4, seed=5)
    x[1, 0] = np.nan  # NaN coordinates
    x[2, 1] = x[2, 0]  # two atoms on top of each other: infinite / huge energy
    with caplog.at_level(logging.WARNING, logger="boltzdiff.targets.openmm"):
        res = aldp.target.bridge.evaluate(x)
    assert res.bad.tolist() == [False, True, True, False]
    assert np.isposinf(res.energy[1]) and np.isposinf(res.energy[2])
    assert np.isfinite(res.energy[[0, 3]]).all()
    assert np.all(res.forces[1:3] == 0) and np.isfinite(res.forces).all()
    assert "2 of 4 configurations" in caplog.text
    # the cap option returns the cap instead of +inf
    with OpenMMBridge(aldp.extras["openmm_system"], 300.0, energy_cap=1e3, bad_energy="cap") as br:
        r = br.evaluate(x)
        assert r.energy[1] == 1e3 and r.energy[2] == 1e3


def test_wrong_shapes_raise_config_error(aldp):
    with pytest.raises(ConfigError, match=r"expected positions of shape \(B, 66\)"):
        aldp.target.energy(torch.zeros(2, 21, 3))
    with pytest.raises(ConfigError, match="expected shape"):
        aldp.target.bridge.evaluate(np.zeros((2, 10)))
    with pytest.raises(ConfigError, match="expected shape"):
        aldp.target.bridge.evaluate(np.zeros((2, 44, 3)))  # as many numbers as 4 configurations, wrong layout
    with pytest.raises(ConfigError, match="n_workers"):
        OpenMMBridge(aldp.extras["openmm_system"], 300.0, n_workers=-1)


def test_unknown_platform_is_config_error(aldp):
    br = OpenMMBridge(aldp.extras["openmm_system"], 300.0, platform="NoSuchPlatform")
    with pytest.raises(ConfigError, match="unknown OpenMM platform 'NoSuchPlatform'"):
        br.evaluate(aldp.positions[None])
    br2 = OpenMMBridge(aldp.extras["openmm_system"], 300.0, platform="NoSuchPlatform", n_workers=1)
    with pytest.raises(ConfigError, match="worker failed to start"):
        br2.evaluate(aldp.positions[None])
    assert br2._procs == []


def test_target_with_workers_matches_in_process(aldp):
    x = torch.as_tensor(_configs(aldp, 7, seed=6))
    with OpenMMTarget(aldp.extras["openmm_system"], 300.0, n_workers=2) as t:
        assert torch.allclose(t.energy(x), aldp.target.energy(x), rtol=0, atol=1e-10)
        assert torch.allclose(t.force(x), aldp.target.force(x), rtol=0, atol=1e-8)
        # fewer configurations than workers
        assert torch.allclose(t.energy(x[:1]), aldp.target.energy(x[:1]), atol=1e-10)


def test_dead_worker_is_reported_and_pool_restarts(aldp):
    x = _configs(aldp, 4, seed=7)
    with OpenMMBridge(aldp.extras["openmm_system"], 300.0, n_workers=2) as br:
        e0 = br.evaluate(x).energy
        br._procs[0].kill()
        br._procs[0].join()
        with pytest.raises(RuntimeError, match="worker process exited"):
            br.evaluate(x)
        assert br._procs == []
        assert np.array_equal(br.evaluate(x).energy, e0)  # a fresh pool on the next call
