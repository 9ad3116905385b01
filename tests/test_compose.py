"""Composition of level energies: product, mixture and tempering, checked against analytic mixtures."""

import math

import numpy as np
import pytest
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VESchedule, VPSchedule, make_grid
from boltzdiff.samplers import MixtureEnergy, ProductEnergy, SMCConfig, TemperedEnergy, compose, reverse_sde, smc
from boltzdiff.samplers.diagnostics import mixture_of, total_variation, weighted_mode_weights
from boltzdiff.targets.gmm import GaussianMixture

Z_MAX = 3.0


@pytest.fixture(scope="module")
def pair():
    a = GaussianMixture([0.7, 0.3], [[-2.0, 0.0], [2.0, 0.0]], 1.0, name="a")
    b = GaussianMixture([0.4, 0.6], [[-2.0, 0.5], [2.0, -0.5]], 0.8, name="b")
    return a, b


@pytest.fixture(scope="module")
def grid():
    return make_grid(VPSchedule(), 128)


def noised(g: GaussianMixture, alpha, sigma) -> GaussianMixture:
    return GaussianMixture(g.weights, alpha * g.means, torch.sqrt(alpha**2 * g.std**2 + sigma**2))


def log_overlap(a: GaussianMixture, b: GaussianMixture) -> float:
    """log int p_a p_b dx for isotropic mixtures."""
    v = a.std[:, None] ** 2 + b.std[None, :] ** 2
    d2 = ((a.means[:, None] - b.means[None]) ** 2).sum(-1)
    lw = (
        torch.log(a.weights)[:, None]
        + torch.log(b.weights)[None]
        - 0.5 * d2 / v
        - 0.5 * a.dim * torch.log(2 * math.pi * v)
    )
    return float(torch.logsumexp(lw.reshape(-1), 0))


def test_product_and_mixture_energies(pair, grid):
    a, b = pair
    ea, eb = ExactMixtureEnergy(a, grid), ExactMixtureEnergy(b, grid)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    lv = torch.randint(0, grid.n, (50,), generator=torch.Generator().manual_seed(1))
    prod = ProductEnergy([ea, eb])
    assert torch.allclose(prod.energy(x, lv), ea.energy(x, lv) + eb.energy(x, lv))
    mix = MixtureEnergy([ea, eb], [1.0, 3.0])
    for k in (0, 40, 127):
        exact = mixture_of([noised(a, grid.alpha[k], grid.sigma[k]), noised(b, grid.alpha[k], grid.sigma[k])], [1, 3])
        assert torch.allclose(mix.energy(x, k), exact.energy(x), atol=1e-10)
        assert torch.allclose(mix.log_q(x, k), -exact.energy(x), atol=1e-10)  # f = 0: normalised at every level
    temp = TemperedEnergy(ea, 2.0)
    assert torch.allclose(temp.energy(x, 3), 2.0 * ea.energy(x, 3))
    assert prod.n_models == 2 and mix.n_models == 2 and temp.n_models == 1


def test_product_smc_reproduces_exact_product_weights(pair, grid):
    """SMC with E_a + E_b at every level ends at p_a p_b / Z: mode weights of 10 seeds within 3 standard
    errors of ``GaussianMixture.product`` (which has unequal weights here), their TV <= 0.05, and the SMC
    estimate of log Z matches log int p_a p_b at level 0 (z-score of mean exp(log Z - exact))."""
    a, b = pair
    prod = ProductEnergy([ExactMixtureEnergy(a, grid), ExactMixtureEnergy(b, grid)])
    exact = a.product(b)
    w_exact = exact.weights.numpy()
    assert abs(w_exact[0] - w_exact[3]) > 0.1  # unequal weights
    log_z = log_overlap(noised(a, grid.alpha[0], grid.sigma[0]), noised(b, grid.alpha[0], grid.sigma[0]))
    est, ratios = [], []
    for s in range(10):
        r = smc(prod, 1000, SMCConfig(levels=64), generator=torch.Generator().manual_seed(s))
        est.append(weighted_mode_weights(exact, r.x, r.log_w))
        ratios.append(math.exp(r.log_Z - log_z))
    est, ratios = np.array(est), np.array(ratios)
    z = (est.mean(0) - w_exact) / (est.std(0, ddof=1) / math.sqrt(len(est)))
    assert np.abs(z).max() < Z_MAX, (est.mean(0), w_exact, z)
    assert total_variation(est.mean(0), w_exact) <= 0.05
    zz = (ratios.mean() - 1) / (ratios.std(ddof=1) / math.sqrt(len(ratios)))
    assert abs(zz) < Z_MAX, ratios
    assert r.n_model_evals == 2 * 1000 * 64  # two component models per composed evaluation


def test_mixture_composition_sampled_by_reverse_sde(pair, grid):
    """The mixture of normalised level energies is the exact noised mixture, so even plain reverse diffusion
    recovers its mode weights (independent samples: delta-method standard errors)."""
    a, b = pair
    mix = compose([ExactMixtureEnergy(a, grid), ExactMixtureEnergy(b, grid)], "mixture", weights=[0.25, 0.75])
    exact = mixture_of([a, b], [0.25, 0.75])
    r = reverse_sde(mix, 4000, generator=torch.Generator().manual_seed(0))
    resp = exact.responsibilities(r.x.double())
    est, se = resp.mean(0), resp.std(0) / math.sqrt(4000)
    z = (est - exact.weights) / se
    assert z.abs().max() < Z_MAX, z


def test_tempered_gaussian_halves_the_variance(grid):
    g = GaussianMixture([1.0], [[1.0, -1.0]], 0.5)
    r = smc(
        TemperedEnergy(ExactMixtureEnergy(g, grid), 2.0),
        4000,
        SMCConfig(levels=64),
        generator=torch.Generator().manual_seed(0),
    )
    W = torch.softmax(r.log_w, 0)
    ess_n = r.ess * 4000
    v0 = 0.25 + float(grid.sigma[0]) ** 2  # level-0 variance (alpha_0 ~ 1)
    mean = (W[:, None] * r.x).sum(0)
    var = (W[:, None] * (r.x - mean) ** 2).sum(0)
    z_mean = (mean - float(grid.alpha[0]) * g.means[0]) / math.sqrt(v0 / 2 / ess_n)
    z_var = (var - v0 / 2) / (v0 / 2 * math.sqrt(2 / ess_n))
    assert z_mean.abs().max() < Z_MAX and z_var.abs().max() < Z_MAX, (z_mean, z_var)


def test_refuses_different_dims_or_grids(pair, grid):
    a, _ = pair
    c = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], 1.0)
    with pytest.raises(ConfigError, match="dimension"):
        ProductEnergy([ExactMixtureEnergy(a, grid), ExactMixtureEnergy(c, grid)])
    with pytest.raises(ConfigError, match="level grids"):
        MixtureEnergy([ExactMixtureEnergy(a, grid), ExactMixtureEnergy(a, make_grid(VPSchedule(), 64))])
    with pytest.raises(ConfigError, match="level grids"):
        ProductEnergy([ExactMixtureEnergy(a, grid), ExactMixtureEnergy(a, make_grid(VESchedule(), 128))])


def test_bad_composition_arguments(pair, grid):
    a, b = pair
    ms = [ExactMixtureEnergy(a, grid), ExactMixtureEnergy(b, grid)]
    with pytest.raises(ConfigError):
        MixtureEnergy(ms, [1.0])
    with pytest.raises(ConfigError):
        MixtureEnergy(ms, [1.0, -1.0])
    with pytest.raises(ConfigError):
        compose(ms, "product", weights=[1, 2])
    with pytest.raises(ConfigError):
        compose(ms, "sum")
    with pytest.raises(ConfigError):
        TemperedEnergy(ms[0], 0.0)
