import math

import pytest
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.noise import VESchedule, VPSchedule, make_grid, make_schedule


def test_vp_alpha_matches_numerical_integral_of_beta():
    s = VPSchedule(0.1, 20.0)
    t = torch.tensor([0.05, 0.3, 0.7, 0.99], dtype=torch.float64)
    for ti in t:
        u = torch.linspace(0, float(ti), 20001, dtype=torch.float64)
        beta = 0.1 + u * (20.0 - 0.1)
        integral = torch.trapezoid(beta, u)
        assert float(s.alpha(ti)) == pytest.approx(math.exp(-0.5 * float(integral)), rel=1e-8)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), atol=1e-14)


@pytest.mark.parametrize("sched", [VPSchedule(), VESchedule(1e-3, 10.0)])
@pytest.mark.parametrize("spacing", ["linear", "logsnr"])
def test_grid_monotone_and_log_snr_spacing(sched, spacing):
    g = make_grid(sched, 32, spacing)
    assert torch.all(g.log_snr[1:] < g.log_snr[:-1])  # index 0 is the cleanest level
    if spacing == "logsnr":
        d = g.log_snr[1:] - g.log_snr[:-1]
        assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-8)


@pytest.mark.parametrize("sched", [VPSchedule(), VESchedule(1e-3, 10.0)])
def test_transitions_compose_to_the_marginal(sched):
    """x_j from x_i by the transition has the closed-form marginal: coefficients compose exactly."""
    g = make_grid(sched, 16, "logsnr")
    for i, j, k in [(0, 3, 9), (2, 5, 15)]:
        a_ij, s_ij = g.transition_coeffs(i, j)
        a_jk, s_jk = g.transition_coeffs(j, k)
        a_ik, s_ik = g.transition_coeffs(i, k)
        assert float(a_ij * a_jk) == pytest.approx(float(a_ik), rel=1e-12)
        assert float(a_jk**2 * s_ij**2 + s_jk**2) == pytest.approx(float(s_ik**2), rel=1e-10)
        # from data (alpha_0, sigma_0) to level k gives (alpha_k, sigma_k)
        a0k, s0k = g.transition_coeffs(0, k)
        assert float(a0k * g.alpha[0]) == pytest.approx(float(g.alpha[k]), rel=1e-12)
        assert float(a0k**2 * g.sigma[0] ** 2 + s0k**2) == pytest.approx(float(g.sigma[k] ** 2), rel=1e-10)


def test_forward_log_density_is_gaussian():
    g = make_grid(VPSchedule(), 8)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = g.forward_step(x, 2, 5, generator=gen)
    a, s = g.transition_coeffs(2, 5)
    ref = torch.distributions.Normal(a * x, s).log_prob(y).sum(-1)
    assert torch.allclose(g.forward_log_density(y, x, 2, 5), ref, atol=1e-10)


def test_bad_schedule_specs():
    with pytest.raises(ConfigError, match="schedule.kind"):
        make_schedule({"kind": "cosine"})
    with pytest.raises(ConfigError, match="unexpected field"):
        make_schedule({"kind": "vp", "beta": 3})
    with pytest.raises(ConfigError, match="n_levels"):
        make_grid(VPSchedule(), 1)
