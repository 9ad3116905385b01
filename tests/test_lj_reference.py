"""benchmarks/lj_reference.py: its autocorrelation estimate, and its MALA + parallel-tempering chains on a target
with a known mean energy."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import boltzdiff
from boltzdiff.targets.base import Target

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lj_reference.py"


def _script():
    spec = importlib.util.spec_from_file_location("lj_reference", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Harmonic(Target):
    """``u = 1/2 sum_i |x_i - mean|^2`` for ``n`` particles in 3-D: ``(n - 1) 3`` Gaussian degrees of freedom in
    the centre-free subspace, so ``<u> = 3 (n - 1) / 2`` and ``var u = 3 (n - 1) / 2``."""

    def __init__(self, n: int):
        super().__init__(3 * n, (n, 3))
        self.n_particles = n

    def _energy(self, x):
        p = x.reshape(-1, self.n_particles, 3)
        return 0.5 * ((p - p.mean(-2, keepdim=True)) ** 2).sum((-2, -1))


def _args(**kw):
    base = dict(
        chains=32, burn_in=300, steps=1000, save_every=5, step_size=0.3, temperatures="1", swap_every=5,
        init_noise=0.5, energy_range=[0.0, 20.0, 0.5], max_minutes=None, seed=0, relax_steps=0,
    )  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def test_integrated_autocorrelation_of_ar1_chains():
    mod = _script()
    rng = np.random.default_rng(0)
    phi, n, c = 0.8, 4000, 64
    e = np.zeros((n, c))
    for t in range(1, n):
        e[t] = phi * e[t - 1] + rng.standard_normal(c)
    assert mod.integrated_autocorrelation(e) == pytest.approx((1 + phi) / (1 - phi), rel=0.1)
    assert mod.integrated_autocorrelation(rng.standard_normal((n, c))) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("temperatures", ["1", "1,1.6,2.5"])
def test_chains_and_tempering_sample_a_known_mean_energy(temperatures):
    mod = _script()
    lj = boltzdiff.load_system("lj13")
    system = dataclasses.replace(lj, name="harmonic4", target=_Harmonic(4), positions=np.asarray(lj.positions)[:4])
    torch.set_num_threads(1)
    args = _args(temperatures=temperatures)
    r = mod.sample(system, args)
    res = mod.summarise(system, args, r)
    k = len(temperatures.split(","))
    assert res["n_target_evals"] == k * 32 * (300 + 1000 + 1)
    # <u> = 9/2 at rung 0 whatever the ladder; the SE is the spread of the 32 independent chains' means
    assert abs(res["mean_energy_kT"] - 4.5) < 4 * res["mean_energy_se_kT"] and res["mean_energy_se_kT"] < 0.1
    assert res["energy_sd_kT"] == pytest.approx(4.5**0.5, rel=0.05)
    assert abs(res["halves"]["z"]) < 4 and abs(res["drift"]["z"]) < 4
    assert res["energy_hist"]["mass_outside"] < 0.01 and sum(res["energy_hist"]["p"]) == pytest.approx(1, abs=1e-4)
    assert res["sampler"]["n_saves_per_chain"] == 200 and res["system"]["n_particles"] == 4
    if k > 1:
        assert all(0.2 < a < 1 for a in res["sampler"]["swap_acceptance"])
    json.dumps(res)  # plain JSON


def test_relaxed_starts_leave_no_frozen_chain():
    """With the LJ13 start structure and a 0.05 jitter (seed 0), chain 38 starts with two particles 0.73 r_m
    apart (energy +10 kT, gradient in the thousands) and MALA never accepts a move there; the relaxed starts
    are all near minima and every chain accepts."""
    from boltzdiff.reference.chains import _project, chain_step, relax_starts

    t = boltzdiff.load_system("lj13").target
    gen = torch.Generator().manual_seed(0)
    x0 = torch.as_tensor(np.asarray(boltzdiff.load_system("lj13").positions)).reshape(1, 13, 3)
    x = _project(x0 + 0.05 * torch.randn((64, 13, 3), generator=gen, dtype=torch.float64))
    assert t.energy(x)[38].item() == pytest.approx(10.1439, abs=1e-3)

    def accepted(x, n=40):
        xr = x.clone().requires_grad_(True)
        u = t.energy(xr)
        (g,) = torch.autograd.grad(u.sum(), xr)
        u, g, x, tot = u.detach(), _project(g), x.clone(), torch.zeros(len(x))
        for _ in range(n):
            x, u, g, acc = chain_step(t, x, u, g, 6e-4, "mala", gen)
            tot += acc
        return tot

    assert accepted(x)[38] == 0
    xr = relax_starts(t, x, 300)
    assert t.energy(xr).max().item() < -70 and accepted(xr).min() > 0


def test_reference_chains_relax_their_starts_so_that_no_chain_is_frozen(tmp_path):
    """`run_chains` with the jitter that froze chains 38 and 46 of LJ13 (0.05, seed 0): every chain moves."""
    import numpy as np

    from boltzdiff.reference.chains import ChainConfig, run_chains
    from boltzdiff.systems import load_system

    cfg = ChainConfig(n_steps=60, n_chains=64, burn_in=20, save_every=20, step_size=6e-4, init_noise=0.05, seed=0)
    res = run_chains(load_system("lj13"), tmp_path / "r", cfg, progress=False)
    e = np.asarray(res.energies).reshape(-1, 64)
    assert np.all(np.abs(e[-1] - e[0]) > 0), np.flatnonzero(e[-1] == e[0])
    assert e.max() < 0  # no start left in a clash
