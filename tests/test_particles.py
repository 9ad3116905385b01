"""LJ-n and DW4 targets: definitions, torch == OpenMM, force == -grad energy, invariances."""

import math

import numpy as np
import pytest
import torch

import boltzdiff
from boltzdiff.geometry import random_rotate
from boltzdiff.targets.openmm import OpenMMTarget
from boltzdiff.targets.particles import (
    LJ_OPENMM_TEMPERATURE,
    DoubleWell,
    LennardJonesCluster,
    lennard_jones_openmm_system,
)


def _jitter(system, b, scale, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.as_tensor(system.positions, dtype=torch.float64)
    return x0 + scale * torch.randn((b, *x0.shape), generator=gen, dtype=torch.float64)


def test_lj_definition_unique_pairs_and_oscillator():
    t = LennardJonesCluster(2, 3)
    # two particles at the pair minimum r = r_m = 1: pair energy -1 (counted once), oscillator 1/2 * 2 * 0.5^2
    x = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]], dtype=torch.float64)
    assert t.energy(x).item() == pytest.approx(-1.0 + 0.25, abs=1e-12)
    t2 = LennardJonesCluster(3, 3, oscillator_scale=0.0, temperature=2.0)
    x3 = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0.0, 2.0, 0]]], dtype=torch.float64)
    r = [1.0, 2.0, math.sqrt(5.0)]
    expected = sum(r_**-12 - 2 * r_**-6 for r_ in r) / 2.0
    assert t2.energy(x3).item() == pytest.approx(expected, rel=1e-12)


def test_lj_openmm_temperature_gives_kT_of_one_kjmol():
    from boltzdiff.targets.openmm import kT_kjmol

    assert kT_kjmol(LJ_OPENMM_TEMPERATURE) == pytest.approx(1.0, rel=1e-12)


def test_dw4_definition():
    t = DoubleWell()
    x = torch.tensor([[[0.0, 0], [4.0, 0], [4.0, 3.0], [0.0, 3.0]]], dtype=torch.float64)
    d = np.array([4.0, 5.0, 3.0, 3.0, 5.0, 4.0]) - 4.0  # all six pair distances minus d0
    assert t.energy(x).item() == pytest.approx(float((-4 * d**2 + 0.9 * d**4).sum()), rel=1e-12)
    assert t.dim == 8 and t.event_shape == (4, 2)


@pytest.mark.parametrize("name", ["lj13", "lj55", "lj13_unique", "lj55_unique"])
def test_torch_lj_equals_openmm_lj(name):
    s = boltzdiff.load_system(name)
    assert s.target.pair_sum == ("unique" if name.endswith("_unique") else "ordered")
    x = _jitter(s, 16, 0.05)
    n = s.target.n_particles
    with OpenMMTarget(lennard_jones_openmm_system(n, pair_sum=s.target.pair_sum), LJ_OPENMM_TEMPERATURE) as omm:
        assert torch.allclose(omm.energy(x), s.target.energy(x), rtol=1e-9, atol=1e-8)
        assert torch.allclose(omm.force(x), s.target.force(x), rtol=1e-7, atol=1e-6)
    # the system's own factory and temperature give the same thing
    with OpenMMTarget(s.extras["openmm_system_factory"](), s.extras["openmm_temperature_K"]) as omm:
        assert torch.allclose(omm.energy(x), s.target.energy(x), rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("name,scale", [("lj13", 0.05), ("lj13_unique", 0.05), ("dw4", 0.3)])
def test_force_is_minus_grad_by_finite_differences(name, scale):
    s = boltzdiff.load_system(name)
    x = _jitter(s, 3, scale, seed=1)
    f = s.target.force(x)
    h = 1e-6
    fd = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            for k in range(x.shape[2]):
                xp, xm = x.clone(), x.clone()
                xp[b, i, k] += h
                xm[b, i, k] -= h
                fd[b, i, k] = -(s.target.energy(xp[b : b + 1]) - s.target.energy(xm[b : b + 1])).item() / (
                    2 * h
                )
    assert torch.allclose(f, fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,scale", [("lj13", 0.05), ("lj55", 0.03), ("dw4", 0.3)])
def test_invariance_rotation_translation_permutation(name, scale):
    s = boltzdiff.load_system(name)
    x = _jitter(s, 8, scale, seed=2)
    u = s.target.energy(x)
    gen = torch.Generator().manual_seed(5)
    rot = random_rotate(x, generator=gen)
    assert torch.allclose(s.target.energy(rot), u, rtol=1e-10, atol=1e-8)
    shift = x + 10 * torch.randn(8, 1, x.shape[-1], generator=gen, dtype=x.dtype)
    assert torch.allclose(s.target.energy(shift), u, rtol=1e-10, atol=1e-8)
    perm = torch.randperm(x.shape[1], generator=gen)
    assert torch.allclose(s.target.energy(x[:, perm]), u, rtol=1e-10, atol=1e-8)
    # flat (B, dim) input gives the same energies
    assert torch.allclose(s.target.energy(x.reshape(8, -1)), u)
    # a reflection is also a symmetry here (no chirality in a pair potential)
    assert torch.allclose(s.target.energy(-x), u, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("name", ["lj13", "lj55", "lj13_unique", "lj55_unique", "dw4"])
def test_load_particle_systems(name):
    s = boltzdiff.load_system(name)
    assert s.temperature == 1.0 and s.extras["reduced_units"]
    assert s.positions.shape == s.target.event_shape
    u = s.target.energy(torch.as_tensor(s.positions)[None])
    assert u.shape == (1,) and torch.isfinite(u).all()
    # the shipped initial positions are local minima (up to the PDB's 1e-4 nm rounding): small forces, much
    # smaller than after a 0.05 jitter
    f0 = s.target.force(torch.as_tensor(s.positions)[None]).abs().max()
    assert f0 < 0.5 and f0 < 0.1 * s.target.force(_jitter(s, 1, 0.05)).abs().max()
    if name.startswith("lj"):
        assert s.topology.n_atoms == s.target.n_particles
