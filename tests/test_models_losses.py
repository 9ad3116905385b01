import math

import pytest
import torch

from boltzdiff.losses import (
    clf_from_logits,
    clf_logits,
    diffclf_binary_loss,
    diffclf_loss,
    draw_levels,
    dsm_loss,
    dsm_only_loss,
)
from boltzdiff.models import ExactMixtureEnergy, LevelEnergy, build_mlp_energy
from boltzdiff.noise import VESchedule, VPSchedule, make_grid
from boltzdiff.targets.gmm import GaussianMixture

torch.set_default_dtype(torch.float32)


def gmm3():
    return GaussianMixture([0.5, 0.3, 0.2], [[-2.0, 0.0, 1.0], [1.5, 1.0, 0.0], [0.5, -2.5, -1.0]], 0.5)


@pytest.mark.parametrize("sched", [VPSchedule(), VESchedule(1e-2, 10.0)])
def test_zero_network_gives_the_exact_gaussian_marginal(sched):
    grid = make_grid(sched, 16, "logsnr")
    mu = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    sd = 1.7
    torch.set_default_dtype(torch.float64)
    try:
        x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
        for n_fourier, head in ((0, "inner"), (8, "inner"), (0, "inner+scalar"), (8, "scalar")):
            m = build_mlp_energy(grid, mu, sd, width=16, depth=1, input_fourier=n_fourier, head=head)
            for i in (0, 7, 15):
                var = grid.alpha[i] ** 2 * sd**2 + grid.sigma[i] ** 2
                ref = torch.distributions.Normal(grid.alpha[i] * mu, torch.sqrt(var)).log_prob(x).sum(-1)
                assert torch.allclose(-m.energy(x, i), ref, atol=1e-10)
                assert torch.allclose(m.log_q(x, i), ref, atol=1e-10)  # f = 0: normalised
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("n_fourier,head", [(0, "inner"), (16, "inner"), (0, "inner+scalar"), (0, "scalar")])
def test_model_score_is_minus_grad_energy(n_fourier, head):
    grid = make_grid(VPSchedule(), 8)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    try:
        m = build_mlp_energy(grid, torch.zeros(3), 1.0, width=16, depth=2, input_fourier=n_fourier, head=head)
        for p in m.net.out.parameters():
            torch.nn.init.normal_(p, std=0.3)
        x = torch.randn(4, 3)
        s = m.score(x, 3)
        h = 1e-5
        fd = torch.zeros_like(x)
        for j in range(3):
            e = torch.zeros_like(x)
            e[:, j] = h
            fd[:, j] = -(m.energy(x + e, 3) - m.energy(x - e, 3)) / (2 * h)
        assert torch.allclose(s, fd, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_default_dtype(torch.float32)


def test_only_a_scalar_head_lets_the_energy_move_at_the_data_mean():
    """The vector term <NN(x~), x~> vanishes at x~ = 0: whatever the weights, E(alpha_t mu, t) is the Gaussian
    marginal's value there, so a mode at the data mean cannot be made deeper or shallower. The scalar head can."""
    grid = make_grid(VPSchedule(), 8)
    mu, sd = torch.tensor([0.5, -1.0]), 1.3
    for head in ("inner", "inner+scalar", "scalar"):
        torch.manual_seed(1)
        m = build_mlp_energy(grid, mu, sd, width=16, depth=2, head=head)
        g = build_mlp_energy(grid, mu, sd, width=16, depth=2)  # untrained: the Gaussian marginal
        with torch.no_grad():
            for p in m.net.out.parameters():
                p.normal_(std=1.0)
        for i in (0, 4, 7):
            centre = (grid.alpha[i] * mu)[None]
            away = centre + 0.7
            assert not torch.allclose(m.energy(away, i), g.energy(away, i), atol=1e-3)
            assert torch.allclose(m.energy(centre, i), g.energy(centre, i), atol=1e-5) is (head == "inner")


def test_gauge_sets_noisiest_level_to_zero():
    grid = make_grid(VPSchedule(), 8)
    m = build_mlp_energy(grid, torch.zeros(2), 1.0, width=8, depth=1)
    with torch.no_grad():
        m.f.copy_(torch.arange(8.0))
    m.apply_gauge()
    assert float(m.f.detach()[-1]) == 0 and torch.allclose(m.f.detach(), torch.arange(8.0) - 7)


def test_draw_levels_are_distinct_and_in_range():
    g = torch.Generator().manual_seed(0)
    for mode in ("uniform", "local", "mixed"):
        lv = draw_levels(5000, 20, 4, g, mode, window=3)
        assert lv.shape == (5000, 4) and lv.min() >= 0 and lv.max() < 20
        s = lv.sort(-1).values
        assert not (s[:, 1:] == s[:, :-1]).any()
    # uniform draws cover every level equally often: chi-square with 19 dof, 0.1% critical value 43.8
    lv = draw_levels(20000, 20, 4, g, "uniform").reshape(-1)
    c = torch.bincount(lv, minlength=20).double()
    chi2 = float(((c - c.mean()) ** 2 / c.mean()).sum())
    assert chi2 < 43.8


class Shifted(LevelEnergy):
    """A level energy shifted by a constant c plus a per-level g_i, with f shifted by -g_i."""

    def __init__(self, base, c, g):
        super().__init__()
        self.base, self.c, self.g, self.grid, self.dim = base, c, g, base.grid, base.dim

    def energy(self, x, level):
        lv = self._levels(x, level)
        return self.base.energy(x, lv) + self.c + self.g.to(x)[lv]

    def log_norm(self):
        return self.base.log_norm() - self.g.to(self.base.log_norm())


def test_diffclf_invariant_to_constant_energy_shift_and_gauge():
    torch.set_default_dtype(torch.float64)
    try:
        gmm = gmm3()
        grid = make_grid(VPSchedule(), 12, "logsnr")
        exact = ExactMixtureEnergy(gmm, grid)
        gen = torch.Generator().manual_seed(0)
        x0 = gmm.sample(64, gen)
        levels = draw_levels(64, 12, 4, gen)
        x = grid.alpha[levels][..., None] * x0[:, None] + grid.sigma[levels][..., None] * torch.randn(
            64, 4, 3, generator=gen
        )
        base = clf_from_logits(clf_logits(exact, x, levels))
        g = torch.randn(12, generator=gen, dtype=torch.float64) * 5
        shifted = Shifted(exact, 7.5, g)
        assert float(clf_from_logits(clf_logits(shifted, x, levels))) == pytest.approx(float(base), abs=1e-10)
        # a shift of the energy at one level *without* the matching f changes the loss
        wrong = Shifted(exact, 0.0, g)
        wrong.log_norm = exact.log_norm
        assert abs(float(clf_from_logits(clf_logits(wrong, x, levels))) - float(base)) > 1e-3
    finally:
        torch.set_default_dtype(torch.float32)


def test_diffclf_loss_matches_explicit_logits_and_binary_form():
    torch.set_default_dtype(torch.float64)
    try:
        grid = make_grid(VPSchedule(), 10)
        torch.manual_seed(0)
        m = build_mlp_energy(grid, torch.zeros(3), 1.0, width=16, depth=1)
        for p in m.net.out.parameters():
            torch.nn.init.normal_(p, std=0.2)
        with torch.no_grad():
            m.f.copy_(torch.randn(10))
        x0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
        levels = draw_levels(8, 10, 3, torch.Generator().manual_seed(2))
        out = diffclf_loss(m, x0, levels, 1.0, lambda_clf=1.0, generator=torch.Generator().manual_seed(3))
        # the same noise, recomputed with the k^2 logits in one call
        eps = torch.randn((8, 3, 3), generator=torch.Generator().manual_seed(3))
        x = grid.alpha[levels][..., None] * x0[:, None] + grid.sigma[levels][..., None] * eps
        ref = clf_from_logits(clf_logits(m, x, levels))
        assert float(out.total.detach() - out.dsm) == pytest.approx(float(ref.detach()), rel=1e-10)
        assert out.n_energy_evals == 8 * 9
        # binary DiffCLF equals the multi-level loss at k = 2
        lv2 = levels[:, :2]
        x2 = x[:, :2]
        binary = diffclf_binary_loss(m, x2[:, 0], x2[:, 1], lv2[:, 0], lv2[:, 1])
        multi = clf_from_logits(clf_logits(m, x2, lv2))
        assert float(binary.detach()) == pytest.approx(float(multi.detach()), rel=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


def test_tweedie_denoiser_of_the_exact_gaussian_model_is_the_posterior_mean():
    """For Gaussian data the zero-network model's denoiser is E[x0 | x_t]; the DSM loss is then minimal."""
    torch.set_default_dtype(torch.float64)
    try:
        grid = make_grid(VPSchedule(), 10)
        mu, sd = torch.tensor([1.0, -2.0]), 0.7
        m = build_mlp_energy(grid, mu, sd, width=8, depth=1)
        gen = torch.Generator().manual_seed(0)
        xt = torch.randn(5, 2, generator=gen)
        for i in (0, 4, 9):
            a, s = grid.alpha[i], grid.sigma[i]
            post = mu + a * sd**2 / (a**2 * sd**2 + s**2) * (xt - a * mu)
            x0_hat = (xt + s**2 * m.score(xt, i)) / a
            assert torch.allclose(x0_hat, post, atol=1e-8)
        # expected EDM-weighted DSM of the optimum: lambda * posterior variance = 1 + ... exactly computable
        x0 = mu + sd * torch.randn(200_000, 2, generator=gen)
        lv = torch.full((200_000,), 5)
        loss = float(dsm_loss(m, x0, lv, sd, generator=gen).detach())
        a, s = grid.alpha[5], grid.sigma[5]
        sbar2 = (s / a) ** 2
        post_var = sd**2 * s**2 / (a**2 * sd**2 + s**2)
        expected = float((sbar2 + sd**2) / (sbar2 * sd**2) * post_var)
        assert loss == pytest.approx(expected, rel=0.01)
    finally:
        torch.set_default_dtype(torch.float32)


def test_dsm_only_baseline_uses_equal_dsm_terms():
    grid = make_grid(VPSchedule(), 10)
    m = build_mlp_energy(grid, torch.zeros(3), 1.0, width=8, depth=1)
    x0 = torch.randn(6, 3)
    lv = draw_levels(6, 10, 4)
    a = dsm_only_loss(m, x0, lv, 1.0)
    b = diffclf_loss(m, x0, lv, 1.0)
    assert a.n_dsm_terms == b.n_dsm_terms == 24
    assert math.isfinite(float(a.total.detach())) and math.isfinite(float(b.total.detach()))


def test_input_fourier_config_auto_and_validation():
    from boltzdiff.config import TrainConfig
    from boltzdiff.errors import ConfigError
    from boltzdiff.train import resolve_input_fourier

    assert resolve_input_fourier("auto", 2) == 64 and resolve_input_fourier("auto", 32) == 0
    assert TrainConfig().input_fourier == 0  # off by default: they hurt broad modes and high dimension
    from boltzdiff.commands._common import resolve_train_config

    g40 = resolve_train_config("gmm40_2d", None, {})
    assert g40.input_fourier == 64  # its run.yaml turns them on, with the scalar head and a 3x wider Gaussian
    assert g40.mlp_head == "scalar" and g40.precond_scale == 3.0
    assert resolve_train_config("gmm2_unbalanced", None, {}).input_fourier == 0
    assert resolve_input_fourier(5, 32) == 5
    TrainConfig(input_fourier=0).validate()
    for bad in (-1, "many", True):
        with pytest.raises(ConfigError, match="input_fourier"):
            TrainConfig(input_fourier=bad).validate()
    # the keyword also survives a YAML merge (a run.yaml, or a run directory's saved config)
    from boltzdiff.config import merge_config

    assert merge_config(TrainConfig(), {"input_fourier": "auto"}, "run.yaml").input_fourier == "auto"
    with pytest.raises(ConfigError, match="run.yaml: field 'input_fourier'"):
        merge_config(TrainConfig(), {"input_fourier": "many"}, "run.yaml").validate()


# -- target score matching -------------------------------------------------------------------------------
def _tsm_per_sample_grads(level: int, tsm_scale, n: int = 20000, theta0: float = 1.3):
    """Per-sample d(loss)/d(theta) for the 1-D Gaussian model E(x_t) = x_t^2 / (2 (alpha^2 theta^2 +
    sigma^2)) on data x0 ~ N(0, 1) (exact score of the data: -x0), with or without TSM."""
    from types import SimpleNamespace

    from boltzdiff.losses import _dsm_terms

    grid = make_grid(VPSchedule(), 32)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64)
    a, s = float(grid.alpha[level]), float(grid.sigma[level])
    xt = (a * x0 + s * torch.randn(n, 1, generator=g, dtype=torch.float64)).requires_grad_(True)
    theta = torch.full((n,), theta0, dtype=torch.float64, requires_grad=True)
    energy = xt[:, 0] ** 2 / (2 * (a**2 * theta**2 + s**2))
    lv = torch.full((n,), level)
    model = SimpleNamespace(grid=grid)
    terms = _dsm_terms(model, x0, xt, lv, energy, 1.0, score0=-x0, tsm_scale=tsm_scale)
    (gt,) = torch.autograd.grad(terms.sum(), theta)
    return gt


@pytest.mark.parametrize("level", [0, 12])
def test_tsm_gradient_is_unbiased_and_quieter_at_low_noise(level):
    """TSM changes the regression target, not its conditional mean: the expected gradient of a wrong model's
    loss equals DSM's (paired z-score < 4 over 20 000 samples), with far less variance at the lowest level."""
    g_dsm = _tsm_per_sample_grads(level, None)
    g_tsm = _tsm_per_sample_grads(level, 0.1)
    diff = g_tsm - g_dsm
    z = diff.mean() / (diff.std() / math.sqrt(diff.numel()))
    assert abs(float(z)) < 4.0, float(z)
    # the wrong model has a real gradient, which TSM resolves at every level (DSM only at level 12)
    assert abs(float(g_tsm.mean())) > 5 * float(g_tsm.std() / math.sqrt(g_tsm.numel()))
    if level == 0:
        assert float(g_tsm.var()) < 0.01 * float(g_dsm.var())
        assert abs(float(g_dsm.mean())) < 5 * float(g_dsm.std() / math.sqrt(g_dsm.numel()))


@pytest.mark.parametrize("level", [0, 12, 31])
def test_tsm_weight_multiplies_each_term_by_its_closed_form_and_keeps_the_minimiser(level):
    """``tsm_weight = w`` multiplies every per-sample term by ``1 + w tsm^4 / (sbar^2 (sbar^2 + tsm^2))``
    (exactly), so the exact model (theta = 1, the data's own variance) still has zero expected gradient."""
    from types import SimpleNamespace

    from boltzdiff.config import TrainConfig
    from boltzdiff.errors import ConfigError
    from boltzdiff.losses import _dsm_terms

    grid = make_grid(VPSchedule(), 32)
    g = torch.Generator().manual_seed(4)
    n, tsm, w = 20000, 0.1, 2.0
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64)
    a, s = float(grid.alpha[level]), float(grid.sigma[level])
    xt = (a * x0 + s * torch.randn(n, 1, generator=g, dtype=torch.float64)).requires_grad_(True)
    theta = torch.ones(n, dtype=torch.float64, requires_grad=True)
    lv = torch.full((n,), level)
    model = SimpleNamespace(grid=grid)

    def terms(weight):
        energy = xt[:, 0] ** 2 / (2 * (a**2 * theta**2 + s**2))
        return _dsm_terms(model, x0, xt, lv, energy, 1.0, score0=-x0, tsm_scale=tsm, tsm_weight=weight)

    plain, weighted = terms(0.0), terms(w)
    sbar2 = (s / a) ** 2
    factor = 1 + w * tsm**4 / (sbar2 * (sbar2 + tsm**2))
    assert torch.allclose(weighted, plain * factor, rtol=1e-12, atol=0)
    (gt,) = torch.autograd.grad(weighted.sum(), theta)
    assert abs(float(gt.mean())) < 4 * float(gt.std() / math.sqrt(n))
    for bad, msg in ((-1.0, "tsm_weight"), ("a lot", "tsm_weight")):
        with pytest.raises(ConfigError, match=msg):
            TrainConfig(tsm_scale=0.005, tsm_weight=bad).validate()
    with pytest.raises(ConfigError, match="tsm_scale.*'auto'"):
        TrainConfig(tsm_scale="sometimes").validate()


def test_tsm_scale_auto_is_a_mixture_s_narrowest_component_and_nothing_elsewhere(tmp_path):
    from boltzdiff.config import TrainConfig
    from boltzdiff.systems import load_system
    from boltzdiff.train import resolve_tsm_scale

    spec = "kind: gaussian_mixture\nweights: [0.5, 0.5]\nmeans: [[0, 0], [3, 3]]\nstd: [0.5, 0.2]\n"
    (tmp_path / "mix.yaml").write_text(spec)
    mix = load_system(str(tmp_path / "mix.yaml"))
    assert TrainConfig().tsm_scale == "auto" and TrainConfig().validate().tsm_weight == 1.0
    assert resolve_tsm_scale("auto", mix) == pytest.approx(0.2)
    assert resolve_tsm_scale("auto", load_system("gmm2_unbalanced")) == pytest.approx(0.25)
    assert resolve_tsm_scale("auto", load_system("dw4")) is None
    assert resolve_tsm_scale(0.01, mix) == 0.01 and resolve_tsm_scale(None, mix) is None


def test_data_scores_rescale_forces_to_the_data_temperature():
    from boltzdiff.systems import load_system
    from boltzdiff.train import data_scores

    dw4 = load_system("dw4")
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    x = x.to(torch.get_default_dtype())
    x_kept, g = data_scores(dw4, x)
    f = dw4.target.force(x.double()).to(x.dtype)
    torch.testing.assert_close(g, f)
    assert x_kept.shape == x.shape
    if dw4.temperature is not None:
        _, g2 = data_scores(dw4, x, data_temperature=2 * dw4.temperature)
        torch.testing.assert_close(g2, 0.5 * f)


def test_energy_matching_is_zero_up_to_a_constant_and_reads_a_basin_offset_exactly():
    """The term is the batch variance of E(x, t_0) - u(x): 0 for any constant offset, and for an energy whose
    region x_0 > 0 is shifted by delta, exactly delta^2 p (1 - p) with p the batch's share in that region."""
    from boltzdiff.losses import LossOutput, with_energy_matching

    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u0 = (x0**2).sum(-1) / 2 + torch.sin(3 * x0[:, 1])

    class Stub(torch.nn.Module):
        def __init__(self, c, delta):
            super().__init__()
            self.c, self.delta = torch.nn.Parameter(torch.tensor(c, dtype=torch.float64)), delta

        def energy(self, x, lv):
            assert (lv == 0).all()  # the lowest level
            return (x**2).sum(-1) / 2 + torch.sin(3 * x[:, 1]) + self.c + self.delta * (x[:, 0] > 0).double()

    def base(model, x0, levels, sigma_data, **kw):
        z = torch.zeros((), dtype=torch.float64)
        return LossOutput(total=z, dsm=z, clf=None, n_dsm_terms=0, n_energy_evals=0)

    fn = with_energy_matching(base, 2.0)
    assert float(fn(Stub(7.5, 0.0), x0, None, 1.0, u0=u0).total.detach()) == pytest.approx(0.0, abs=1e-12)
    p = float((x0[:, 0] > 0).double().mean())
    out = fn(Stub(-1.0, 0.8), x0, None, 1.0, u0=u0)
    assert float(out.total.detach()) == pytest.approx(2.0 * 0.8**2 * p * (1 - p), rel=1e-10)
    assert out.n_energy_evals == 64
    assert float(with_energy_matching(base, 0.0)(Stub(0.0, 0.8), x0, None, 1.0, u0=u0).total.detach()) == 0.0  # off
    assert float(fn(Stub(0.0, 0.8), x0, None, 1.0).total.detach()) == 0.0  # no energies given: the loss as it is


def test_data_energies_rescale_to_the_data_temperature_and_energy_weight_is_validated():
    from boltzdiff.config import TrainConfig
    from boltzdiff.data import data_energies
    from boltzdiff.errors import ConfigError
    from boltzdiff.systems import load_system

    dw4 = load_system("dw4")
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    u = dw4.target.energy(x)
    torch.testing.assert_close(data_energies(dw4, x), u)
    if dw4.temperature is not None:
        torch.testing.assert_close(data_energies(dw4, x, data_temperature=2 * dw4.temperature), 0.5 * u)
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="energy_weight"):
            TrainConfig(energy_weight=bad).validate()


def test_training_with_energy_matching_adds_the_term_to_the_loss(tmp_path):
    """With energy_weight > 0 the recorded total exceeds DSM + lambda_clf * DiffCLF by the (non-negative) energy
    term on the same steps, and the run trains to the end; with 0 the total is exactly their sum."""
    import json

    from boltzdiff.config import TrainConfig
    from boltzdiff.train import train

    def last(weight, d):
        cfg = TrainConfig(
            system="gmm40_2d", n_data=256, steps=50, batch_size=32, n_levels=8, k=2, width=16, depth=1,
            lr_warmup=1, checkpoint_every=50, energy_weight=weight, seed=0,
        )  # fmt: skip
        train(cfg, tmp_path / d, progress=False)
        rec = [json.loads(ln) for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()][-1]
        return rec["loss"] - rec["dsm"] - cfg.lambda_clf * rec["clf"]

    assert abs(last(0.0, "off")) < 1e-5
    assert last(10.0, "on") > 1e-4
