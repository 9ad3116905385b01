"""The full-covariance (Fisher matrix) reverse kernel of the SMC, checked against exact answers.

Levels are exact and normalised (f = 0, Z = 1): a Gaussian with very different variances per coordinate, the
situation of a molecule whose bonds are ~100x stiffer than its torsions.
"""

import math

import numpy as np
import pytest
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.geometry import random_rotations
from boltzdiff.models.base import LevelEnergy
from boltzdiff.models.exact import DiagonalGaussianEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers import SMCConfig, smc
from boltzdiff.samplers.sde import (
    ReverseMove,
    fisher_curvature,
    hessian_curvature,
    level_hessians,
    matrix_move,
    particle_frames,
    shrunk_second_moment,
)

Z_MAX = 3.0


@pytest.fixture(scope="module")
def aniso():
    grid = make_grid(VPSchedule(t_min=1e-5), 48, "logsnr")
    v = torch.logspace(-5, -0.5, 12, dtype=torch.float64)  # std from 0.003 to 0.56
    return DiagonalGaussianEnergy(grid, v)


def _rotate_particles(x, rot):
    m = rot.shape[-1]
    return (x.reshape(x.shape[0], -1, m) @ rot.transpose(-1, -2)).reshape(x.shape)


def test_matrix_move_samples_and_scores_the_rotated_gaussian():
    """``log_density`` is the multivariate normal with covariance ``A U diag(std^2) U^T A^T`` (``A``: the
    per-particle rotation), and agrees with ``sample`` (whose standard-normal input it inverts)."""
    g = torch.Generator().manual_seed(0)
    B, n, m = 5, 4, 3
    d = n * m
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    std = torch.rand(d, generator=g, dtype=torch.float64) + 0.1
    rot = random_rotations(B, m, generator=g, dtype=torch.float64)
    mean = torch.randn(B, d, generator=g, dtype=torch.float64)
    mv = ReverseMove(mean, std, torch.tensor(1.0), torch.tensor(1.0), basis=basis, rot=rot)
    eps = torch.randn(B, d, generator=g, dtype=torch.float64)
    x = mv.sample(eps)
    want = -0.5 * (eps**2).sum(-1) - torch.log(std).sum() - 0.5 * d * math.log(2 * math.pi)
    logm = mv.log_density(x)
    torch.testing.assert_close(logm, want, rtol=0, atol=1e-10)
    for i in range(B):
        A = torch.block_diag(*[rot[i].T] * n)  # x_atom = rot^T y_atom
        cov = A @ basis @ torch.diag(std**2) @ basis.T @ A.T
        ref = torch.distributions.MultivariateNormal(mean[i], covariance_matrix=cov).log_prob(x[i])
        assert float(logm[i]) == pytest.approx(float(ref), abs=1e-9)


def test_matrix_kernel_recovers_the_exact_posterior_of_an_anisotropic_gaussian(aniso):
    """With exact samples and scores of level l, the kernel's variances are the exact posterior ones, ``(s^2 /
    a^2)(1 - s^2 / V_l)`` per coordinate; the error allowed is 5 standard errors of the Fisher matrix's
    eigenvalues (relative SE sqrt(2 / n))."""
    grid, n = aniso.grid, 40_000
    g = torch.Generator().manual_seed(1)
    for i_to in (5, 20, 35):
        i_from = i_to + 1
        V = aniso.level_var(i_from)
        x = torch.randn(n, aniso.dim, generator=g, dtype=torch.float64) * V.sqrt()
        score = -x / V
        mv = matrix_move(grid, i_to, i_from, x, score, fisher_curvature(score))
        a, s = grid.transition_coeffs(i_to, i_from)
        exact = torch.sort((s**2 / a**2) * (1 - s**2 / V)).values
        got = torch.sort(mv.std**2).values
        tol = 5 * math.sqrt(2 / n) * (s**4 / a**2 / V).max()  # d(std^2) = (s^2/a^2) s^2 dlambda
        assert (got - exact).abs().max() < tol, (i_to, (got - exact).abs().max(), tol)
        torch.testing.assert_close(mv.mean, (x + s**2 * score) / a)


def test_ledoit_wolf_shrinkage_keeps_isotropic_isotropic_and_anisotropic_anisotropic():
    g = torch.Generator().manual_seed(2)
    n, d = 500, 30
    W = torch.full((n,), 1.0 / n, dtype=torch.float64)
    iso = torch.randn(n, d, generator=g, dtype=torch.float64)
    S = shrunk_second_moment(iso, W)
    ev = torch.linalg.eigvalsh(S)
    assert float(ev.max() / ev.min()) < 1.2  # raw sample eigenvalues spread ~ (1 +- sqrt(d/n))^2: 1.6 / 0.57
    raw = torch.linalg.eigvalsh((iso.T @ iso) / n)
    assert float(raw.max() / raw.min()) > 2.0
    scale = torch.logspace(-2, 0, d, dtype=torch.float64)
    S = shrunk_second_moment(iso * scale, W)
    raw = ((iso * scale).T @ (iso * scale)) / n
    gam = float((torch.diag(S)[-1] - raw[-1, -1]) / (torch.trace(raw) / d - raw[-1, -1]))
    assert gam < 0.05  # strongly anisotropic: barely shrunk
    big = scale**2 > scale.pow(2).mean()  # the stiff directions, which set the kernel's variances
    assert torch.allclose(torch.diag(S)[big].sqrt(), scale[big], rtol=0.1)


class SpringChainLevels(LevelEnergy):
    """A rotation-invariant chain of ``n`` particles in 3-D with stiff bonds (length ``alpha``, noised width
    ``sqrt(alpha^2 b^2 + 2 sigma^2)``) inside a soft Gaussian: as anisotropic as a molecule at low noise
    (bonds ~100x stiffer than the rest), but not an exact diffusion (its noisy levels are inconsistent), so
    it serves the geometric checks only."""

    def __init__(self, grid, n=5, b=0.01):
        super().__init__()
        self.grid, self.n, self.b, self.dim = grid, n, b, 3 * n

    def energy(self, x, level):
        lv = self._levels(x, level)
        al, sg = self.grid.alpha[lv].to(x), self.grid.sigma[lv].to(x)
        xs = x.reshape(x.shape[0], self.n, 3)
        xs = xs - xs.mean(1, keepdim=True)
        r = (xs[:, 1:] - xs[:, :-1]).norm(dim=-1)
        kb = 1.0 / (al**2 * self.b**2 + 2 * sg**2)
        return 0.5 * (kb[:, None] * (r - al[:, None]) ** 2).sum(-1) + 0.5 * (xs**2).sum((1, 2)) / (al**2 + sg**2)

    def log_norm(self):
        return torch.zeros(self.grid.n, dtype=torch.float64)


@pytest.fixture(scope="module")
def chain():
    return SpringChainLevels(make_grid(VPSchedule(t_min=1e-5), 48, "logsnr"))


def test_level_hessians_are_the_exact_and_finite_difference_hessians(aniso, chain):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, aniso.dim, generator=g, dtype=torch.float64)
    H = level_hessians(aniso, 7, x)
    torch.testing.assert_close(H, torch.diag_embed(1 / aniso.level_var(7)).expand(3, -1, -1), rtol=1e-10, atol=0)
    x = torch.randn(2, chain.dim, generator=g, dtype=torch.float64)
    H = level_hessians(chain, 30, x)
    h = 1e-5
    for j in range(chain.dim):  # column j: central difference of the gradient along coordinate j
        e = torch.zeros_like(x)
        e[:, j] = h
        fd = (chain.score(x - e, 30) - chain.score(x + e, 30)) / (2 * h)
        torch.testing.assert_close(H[:, :, j], fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("particles", [None, (4, 3)])
def test_smc_with_the_matrix_kernel_is_unbiased(aniso, particles):
    """Z = 1: z-score of mean exp(log Z) over 12 seeds. With per-particle frames (this density is not
    rotation-invariant, so they only blur the curvature) the kernel is rotated by each particle's alignment,
    which must keep the weights exact too. Without frames the matrix kernel's summed log-weight variance is at
    most a third of the isotropic Fisher kernel's (measured: ~1/8)."""
    zs, var_m, var_i = [], [], []
    for seed in range(12):
        r = smc(
            aniso,
            400,
            SMCConfig(kernel_variance="matrix", particles=particles, hessian_samples=4),
            generator=torch.Generator().manual_seed(seed),
        )
        zs.append(math.exp(r.log_Z))
        var_m.append(sum(v**2 for v in r.inc_sd_trace[1:]))
        if seed < 3:
            ri = smc(aniso, 400, SMCConfig(kernel_variance="fisher"), generator=torch.Generator().manual_seed(seed))
            var_i.append(sum(v**2 for v in ri.inc_sd_trace[1:]))
    zs = np.array(zs)
    assert zs.std() > 1e-4
    z = (zs.mean() - 1.0) / (zs.std(ddof=1) / math.sqrt(len(zs)))
    assert abs(z) < Z_MAX, (zs.mean(), z)
    if particles is None:
        assert np.median(var_m) < np.median(var_i) / 3, (np.median(var_m), np.median(var_i))


def test_matrix_move_is_equivariant_under_rotations_of_each_particle(chain):
    """Rotating every configuration (and its score) by its own rotation rotates its kernel with it: the
    rotated proposal has the same log-density under the rotated kernel, and the variances do not change."""
    g = torch.Generator().manual_seed(3)
    B, n, m = 300, 5, 3
    grid = chain.grid
    base = torch.cumsum(torch.randn(n, m, generator=g, dtype=torch.float64), 0)
    x = (base + 0.05 * torch.randn(B, n, m, generator=g, dtype=torch.float64)).reshape(B, -1)
    x = _rotate_particles(x, random_rotations(B, m, generator=g, dtype=torch.float64))
    log_w = torch.randn(B, generator=g, dtype=torch.float64)
    q = random_rotations(B, m, generator=g, dtype=torch.float64)
    moves = []
    for xx in (x, _rotate_particles(x, q)):
        rot = particle_frames(xx, log_w, (n, m))
        curv = hessian_curvature(chain, 11, xx, log_w, rot, 8, torch.Generator().manual_seed(9))
        moves.append(matrix_move(grid, 10, 11, xx, chain.score(xx, 11), curv, rot))
    mv, mq = moves
    torch.testing.assert_close(mq.std, mv.std, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(mq.mean, _rotate_particles(mv.mean, q), rtol=1e-8, atol=1e-10)
    y = mv.sample(torch.randn(B, n * m, generator=g, dtype=torch.float64))
    torch.testing.assert_close(mq.log_density(_rotate_particles(y, q)), mv.log_density(y), rtol=1e-7, atol=1e-7)


def test_particle_frames_align_rotated_copies():
    """Rotated copies of one configuration all come out identical in the common frame."""
    g = torch.Generator().manual_seed(4)
    n, m = 7, 3
    conf = torch.randn(1, n * m, generator=g, dtype=torch.float64)
    x = _rotate_particles(conf.expand(50, -1), random_rotations(50, m, generator=g, dtype=torch.float64))
    rot = particle_frames(x, torch.zeros(50, dtype=torch.float64), (n, m))
    y = _rotate_particles(x, rot)
    torch.testing.assert_close(y, y[:1].expand_as(y), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "kw", [dict(particles=(5, 3)), dict(kernel="ancestral"), dict(particles=(4, 3, 1)), dict(hessian_samples=0)]
)
def test_bad_matrix_kernel_arguments(aniso, kw):
    with pytest.raises(ConfigError):
        smc(aniso, 10, SMCConfig(kernel_variance="matrix", **kw), generator=torch.Generator().manual_seed(0))
