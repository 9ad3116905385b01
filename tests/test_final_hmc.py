"""HMC trajectories at the exact target after the bridge (``SMCConfig.final_hmc_steps``).

They move the particles and nothing else: the weights are the bridge's, bit for bit, and the target stays
invariant, so a weighted average over the moved particles is still the target's (checked on an anisotropic
Gaussian with a closed-form answer)."""

from __future__ import annotations

import math

import pytest
import torch

from boltzdiff.errors import ConfigError

SIGMAS = torch.tensor([0.03, 0.1, 0.3, 0.6, 1.0, 1.0], dtype=torch.float64)


class StiffGaussian:
    """``u(x) = sum x_i^2 / (2 sigma_i^2)``: a target whose modes differ 30x in width, like a molecule's bond
    stretches and its soft collective modes."""

    dim = len(SIGMAS)

    def energy(self, x):
        return 0.5 * (x.double() ** 2 / SIGMAS**2).sum(-1)


def _model():
    from boltzdiff.models.exact import ExactMixtureEnergy
    from boltzdiff.noise import VPSchedule, make_grid
    from boltzdiff.targets.gmm import GaussianMixture

    # a model of one width for all directions: far too wide in the stiff ones
    return ExactMixtureEnergy(GaussianMixture([1.0], [[0.0] * len(SIGMAS)], [1.0]), make_grid(VPSchedule(), 24))


def _run(n, seed, **kw):
    from boltzdiff.samplers import MCMCConfig, SMCConfig, smc

    cfg = SMCConfig(bridge_cess=0.9, bridge_mcmc=MCMCConfig("mala", n_steps=2, step_size=0.05), **kw)
    return smc(_model(), n, cfg, target=StiffGaussian(), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sweeps", [0, 3])
def test_final_hmc_moves_the_particles_and_keeps_the_weights(sweeps):
    n, steps, leap = 400, 4, 7
    plain = _run(n, 0, final_mcmc_steps=sweeps)
    r = _run(n, 0, final_mcmc_steps=sweeps, final_hmc_steps=steps, final_hmc_leapfrog=leap)
    assert torch.equal(r.log_w, plain.log_w) and r.log_Z == plain.log_Z
    assert not torch.allclose(r.x, plain.x)
    # every trajectory costs `leap` target evaluations per particle; without sweeps one more to start from
    assert r.n_target_evals - plain.n_target_evals == n * (steps * leap + (0 if sweeps else 1))
    assert r.n_final_hmc == steps and plain.n_final_hmc == 0 and plain.final_hmc_acceptance is None
    assert 0.2 < r.final_hmc_acceptance < 1.0
    s = r.summary()
    assert s["n_final_hmc"] == steps and s["final_hmc_acceptance"] == r.final_hmc_acceptance


def test_final_hmc_leaves_the_target_invariant():
    """Weighted <x_i^2> after 30 trajectories equals sigma_i^2 in every direction, soft and stiff, within 4
    standard errors (on the weights' effective sample size): a wrong acceptance ratio or a leapfrog that is not
    reversible would bias them."""
    n = 3000
    r = _run(n, 1, final_hmc_steps=30, final_hmc_leapfrog=10)
    w = torch.softmax(r.log_w, 0)
    ess = 1.0 / float((w**2).sum())
    m2 = (w[:, None] * r.x.double() ** 2).sum(0)
    # Var(x^2) = 2 sigma^4 for a Gaussian coordinate
    z = (m2 - SIGMAS**2) / (math.sqrt(2.0) * SIGMAS**2 / math.sqrt(ess))
    assert z.abs().max() < 4, (z, ess)


def test_final_hmc_settings_are_checked():
    from boltzdiff.config import SampleConfig
    from boltzdiff.samplers import SMCConfig, smc

    with pytest.raises(ConfigError, match="final_hmc_steps"):
        SMCConfig(final_hmc_steps=-1).validate()
    with pytest.raises(ConfigError, match="final_hmc_leapfrog"):
        SMCConfig(final_hmc_leapfrog=0).validate()
    with pytest.raises(ConfigError, match="need a target"):
        smc(_model(), 10, SMCConfig(final_hmc_steps=2))
    for field, bad in (("final_hmc_steps", -1), ("final_hmc_steps", 1.5), ("final_hmc_leapfrog", 0)):
        with pytest.raises(ConfigError, match=f"sample.{field}"):
            SampleConfig.from_dict({field: bad}).validate()


def test_final_hmc_average_is_the_mean_over_the_last_states():
    """``final_hmc_average=k`` changes nothing but adds each particle's energy averaged over its last k HMC
    states: with k = 1 that is the final state's energy, and with k = all the weighted mean of the averages
    equals the exact <u> = d / 2 within 4 standard errors (a biased average, such as one over leapfrog
    intermediates, would not)."""
    n = 400
    plain = _run(n, 2, final_hmc_steps=3, final_hmc_leapfrog=7)
    one = _run(n, 2, final_hmc_steps=3, final_hmc_leapfrog=7, final_hmc_average=1)
    assert plain.u_average is None and plain.summary()["n_final_hmc_average"] == 0
    assert torch.equal(one.x, plain.x) and torch.equal(one.log_w, plain.log_w)
    assert one.n_target_evals == plain.n_target_evals and one.summary()["n_final_hmc_average"] == 1
    torch.testing.assert_close(one.u_average, StiffGaussian().energy(one.x), rtol=1e-12, atol=1e-12)

    n = 3000
    r = _run(n, 3, final_hmc_steps=20, final_hmc_leapfrog=10, final_hmc_average=20)
    assert not torch.allclose(r.u_average, StiffGaussian().energy(r.x))
    w = torch.softmax(r.log_w, 0)
    mean = float((w * r.u_average).sum())
    se = math.sqrt(float((w**2 * (r.u_average - mean) ** 2).sum()))
    assert abs(mean - len(SIGMAS) / 2) < 4 * se, (mean, se)


def test_final_hmc_average_settings_are_checked():
    from boltzdiff.config import SampleConfig
    from boltzdiff.samplers import SMCConfig

    with pytest.raises(ConfigError, match="final_hmc_average"):
        SMCConfig(final_hmc_steps=2, final_hmc_average=3).validate()
    with pytest.raises(ConfigError, match="final_hmc_average"):
        SMCConfig(final_hmc_average=-1).validate()
    for bad in (-1, 1.5, 6):
        with pytest.raises(ConfigError, match="sample.final_hmc_average"):
            SampleConfig.from_dict({"final_hmc_steps": 5, "final_hmc_average": bad}).validate()


def test_analysis_reads_the_mean_energy_from_the_averaged_energies(tmp_path):
    """With ``u_average`` in samples.npz the analysis's <u> is its weighted mean (zero-weight particles left
    out), the final states' own mean is kept beside it, and a malformed array is refused with the file named."""
    import json
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from test_particle_metrics import _fake_lj_run

    from boltzdiff.pipeline.analyze import analyze_run

    out, x, _, _ = _fake_lj_run(tmp_path, None)
    z = dict(np.load(out / "samples.npz"))
    u_avg = np.linspace(-3.0, 1.0, len(x))
    np.savez(out / "samples.npz", **z, u_average=u_avg)
    summ = json.loads((out / "samples.json").read_text())
    (out / "samples.json").write_text(json.dumps(dict(summ, n_final_hmc_average=4)))
    res = analyze_run(out, progress=False)
    assert res["mean_energy_kT"] == pytest.approx(u_avg[:32].mean(), abs=1e-12)  # the last 32 have zero weight
    assert res["mean_energy_states"] == 4 and res["mean_energy_final_states_kT"] != res["mean_energy_kT"]
    np.savez(out / "samples.npz", **z, u_average=u_avg[:10])
    with pytest.raises(ConfigError, match="samples.npz: u_average"):
        analyze_run(out, progress=False)


def test_final_hmc_average_leaves_out_the_centre_of_mass_gauge():
    """On a particle target made proper by a centre-of-mass restraint (what the sample stage hands SMC), the
    averaged energy is the physical one: with k = 1 exactly the inner target's energy of the final state, which
    the analysis recomputes; the restraint alone would add ~1.5 kT (a mean of 3/2 for three COM coordinates)."""
    from boltzdiff.targets.base import ComRestrained, Target

    class Pair(Target):
        def __init__(self):
            super().__init__(6, (2, 3))

        def _energy(self, x):
            return StiffGaussian().energy(x)

    inner = Pair()
    target = ComRestrained(inner, 1.0)
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(target.energy(x) - target.gauge_energy(x), inner.energy(x))
    assert torch.equal(inner.gauge_energy(x), torch.zeros(5, dtype=torch.float64))
    from boltzdiff.samplers import MCMCConfig, SMCConfig, smc

    cfg = SMCConfig(
        bridge_cess=0.9,
        bridge_mcmc=MCMCConfig("mala", n_steps=2, step_size=0.05),
        final_hmc_steps=2,
        final_hmc_leapfrog=5,
        final_hmc_average=1,
    )
    r = smc(_model(), 200, cfg, target=target, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(r.u_average, inner.energy(r.x), rtol=1e-12, atol=1e-12)
    assert float((target.energy(r.x) - r.u_average).mean()) > 0.5
