"""MCMC kernels: MALA and HMC leave Gaussians invariant, adapt their step size, reject non-finite
proposals."""

import math

import pytest
import torch

from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers.mcmc import LevelDensity, MCMCConfig, TargetDensity, hmc, mala, run_mcmc
from boltzdiff.targets.base import Target
from boltzdiff.targets.gmm import GaussianMixture


class DiagGaussian(Target):
    """u(x) = sum (x - m)^2 / (2 v), anisotropic."""

    def __init__(self, mean, var):
        super().__init__(len(mean))
        self.m = torch.as_tensor(mean, dtype=torch.float64)
        self.v = torch.as_tensor(var, dtype=torch.float64)

    def _energy(self, x):
        return (0.5 * (x - self.m) ** 2 / self.v).sum(-1)

    def sample(self, n, generator=None):
        return self.m + self.v.sqrt() * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)


def _assert_moments(x, mean, var, z_max=4.0):
    """z-scores of the sample mean (se sqrt(v/n)) and variance (se v sqrt(2/(n-1))) per coordinate."""
    n = x.shape[0]
    z_mean = (x.mean(0) - mean) / torch.sqrt(var / n)
    z_var = (x.var(0) - var) / (var * math.sqrt(2.0 / (n - 1)))
    assert z_mean.abs().max() < z_max, z_mean
    assert z_var.abs().max() < z_max, z_var


@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_kernel_leaves_gaussian_invariant(kind):
    g = torch.Generator().manual_seed(1)
    tgt = DiagGaussian([1.0, -2.0, 0.5], [0.25, 1.0, 4.0])
    x0 = tgt.sample(4000, g)
    dens = TargetDensity(tgt)
    if kind == "mala":
        r = mala(dens, x0, n_steps=20, step_size=0.2, generator=g)
    else:
        r = hmc(dens, x0, n_steps=10, step_size=0.3, n_leapfrog=5, generator=g)
    assert 0.2 < r.acceptance < 1.0  # the Metropolis correction is active
    moved = (r.x != x0).any(-1).double().mean()
    assert moved > 0.9
    _assert_moments(r.x, tgt.m, tgt.v)


def test_unadjusted_langevin_would_fail_the_moment_check():
    """Power of the invariance check: the same step without the accept/reject inflates the variance."""
    g = torch.Generator().manual_seed(1)
    tgt = DiagGaussian([1.0, -2.0, 0.5], [0.25, 1.0, 4.0])
    x = tgt.sample(4000, g)
    h = 0.2
    for _ in range(20):
        x = x + h * tgt.force(x) + math.sqrt(2 * h) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    with pytest.raises(AssertionError):
        _assert_moments(x, tgt.m, tgt.v)


@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_invariant_at_a_noise_level_of_a_level_energy(kind):
    """On level k of an exact level energy, exact noised samples stay exact."""
    gmm = GaussianMixture([1.0], [[0.5, -1.0]], [0.3])
    grid = make_grid(VPSchedule(), 32)
    model = ExactMixtureEnergy(gmm, grid)
    k = 10
    a, s = grid.alpha[k], grid.sigma[k]
    g = torch.Generator().manual_seed(2)
    x0, _ = gmm.sample_with_labels(4000, g, a, s)
    var = a**2 * 0.09 + s**2
    cfg = MCMCConfig(
        kind,
        n_steps=10,
        step_size=0.3 * float(var) if kind == "mala" else 0.5 * float(var.sqrt()),
        adapt=False,
    )
    r = run_mcmc(LevelDensity(model, k), x0, cfg, generator=g)
    _assert_moments(r.x, a * gmm.means[0], var.expand(2))


@pytest.mark.parametrize("kind,target", [("mala", 0.574), ("hmc", 0.65)])
def test_step_size_adapts_towards_target_acceptance(kind, target):
    g = torch.Generator().manual_seed(3)
    tgt = DiagGaussian([0.0] * 10, [1.0] * 10)
    x = tgt.sample(1000, g)
    cfg = MCMCConfig(kind, n_steps=60, step_size=5.0, adapt=True)  # far too large a start
    r = run_mcmc(TargetDensity(tgt), x, cfg, generator=g)
    late = sum(r.acceptance_trace[-20:]) / 20
    assert abs(late - target) < 0.1
    assert cfg.step_size == r.step_size < 5.0


def test_non_finite_proposals_are_rejected():
    class Walled(Target):
        def _energy(self, x):
            u = 0.5 * (x**2).sum(-1)
            return torch.where(x[:, 0] > 0.5, torch.full_like(u, float("nan")), u)

    g = torch.Generator().manual_seed(4)
    x = -torch.rand(500, 2, generator=g, dtype=torch.float64)
    r = mala(TargetDensity(Walled(2)), x, n_steps=30, step_size=0.3, generator=g)
    assert torch.isfinite(r.x).all()
    assert (r.x[:, 0] <= 0.5).all()
    assert torch.isfinite(r.state.log_prob).all()
