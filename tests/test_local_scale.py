"""``local_scale``: the MLP energy's vector term scaled per level by ``a_t^2 / (alpha_t^2 rho^2 + sigma_t^2)``."""

import pytest
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.models import build_mlp_energy
from boltzdiff.models.energy import refine_levels
from boltzdiff.noise import VPSchedule, make_grid


def _pair(rho, head="inner"):
    grid = make_grid(VPSchedule(), 12, "logsnr")
    mu, sd = torch.tensor([0.2, -0.4, 1.0]), 1.5
    torch.manual_seed(0)
    plain = build_mlp_energy(grid, mu, sd, width=16, depth=2, head=head)
    scaled = build_mlp_energy(grid, mu, sd, width=16, depth=2, head=head, local_sigma=rho)
    with torch.no_grad():
        for p in plain.net.out.parameters():
            p.normal_(std=0.3, generator=torch.Generator().manual_seed(7))
    scaled.net.load_state_dict(plain.net.state_dict())
    return grid, mu, sd, plain, scaled


@pytest.mark.parametrize("head", ["inner", "inner+scalar", "scalar"])
def test_only_the_vector_term_is_multiplied_by_the_closed_form_factor(head):
    torch.set_default_dtype(torch.float64)
    try:
        rho = 0.05
        grid, mu, sd, plain, scaled = _pair(rho, head)
        zero = build_mlp_energy(grid, mu, sd, width=16, depth=2, head=head)  # the Gaussian part alone
        x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
        for i in range(grid.n):
            a2 = grid.alpha[i] ** 2 * sd**2 + grid.sigma[i] ** 2
            c = a2 / (grid.alpha[i] ** 2 * rho**2 + grid.sigma[i] ** 2)
            base = zero.energy(x, i)
            out = plain.net(((x - grid.alpha[i] * mu) / a2.sqrt()), plain.c_noise[[i] * 6])
            inner = (out[:, :3] * (x - grid.alpha[i] * mu) / a2.sqrt()).sum(-1) if head != "scalar" else 0.0
            scalar = out[:, -1] if head != "inner" else 0.0
            want = base + c * inner + scalar
            assert torch.allclose(scaled.energy(x, i), want, rtol=1e-10, atol=1e-9)
            assert torch.allclose(plain.energy(x, i), base + inner + scalar, rtol=1e-10, atol=1e-9)
        # the factor runs from about (sd / rho)^2 at the cleanest level to 1 at the noisiest
        assert 500 < scaled.c_net[0] < (sd / rho) ** 2 and scaled.c_net[-1] == pytest.approx(1.0, abs=1e-3)
    finally:
        torch.set_default_dtype(torch.float32)


def test_scaled_energy_keeps_score_equal_to_minus_grad_and_the_zero_network_limit():
    torch.set_default_dtype(torch.float64)
    try:
        grid, mu, sd, plain, scaled = _pair(0.1, "inner+scalar")
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
        for lv in (0, 5, 11):
            s = scaled.score(x, lv)
            h, fd = 1e-6, torch.zeros_like(x)
            for j in range(3):
                e = torch.zeros_like(x)
                e[:, j] = h
                fd[:, j] = -(scaled.energy(x + e, lv) - scaled.energy(x - e, lv)) / (2 * h)
            assert torch.allclose(s, fd, rtol=1e-5, atol=1e-4)
        zero = build_mlp_energy(grid, mu, sd, width=16, depth=2, local_sigma=0.1)
        ref = build_mlp_energy(grid, mu, sd, width=16, depth=2)
        assert torch.equal(zero.energy(x, 0), ref.energy(x, 0))  # zero-initialised: still the Gaussian marginal
    finally:
        torch.set_default_dtype(torch.float32)


def test_off_by_default_not_saved_and_kept_by_refinement():
    grid, mu, sd, plain, scaled = _pair(0.2)
    assert plain.c_net is None and "c_net" not in scaled.state_dict()  # older saved models load unchanged
    fine = refine_levels(scaled, 3)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    for i in (0, 4, 11):
        assert torch.allclose(fine.energy(x, 3 * i), scaled.energy(x, i), atol=1e-5)
    assert torch.allclose(fine.c_net, fine._net_scale(fine.grid), rtol=1e-5) and fine.c_net[1] < fine.c_net[0]
    with pytest.raises(ConfigError, match="local_scale"):
        build_mlp_energy(grid, mu, sd, local_sigma=-1.0)


def test_config_auto_resolves_to_the_mixture_width_and_other_networks_refuse_a_number():
    from boltzdiff.config import TrainConfig
    from boltzdiff.systems import load_system
    from boltzdiff.train import resolve_tsm_scale

    assert TrainConfig().local_scale is None
    TrainConfig(local_scale="auto").validate()
    assert resolve_tsm_scale("auto", load_system("gmm2_unbalanced")) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="field 'local_scale'"):
        TrainConfig(local_scale=0.0).validate()
    with pytest.raises(ConfigError, match="field 'local_scale'"):
        TrainConfig(local_scale=0.1, network="egnn").validate()
