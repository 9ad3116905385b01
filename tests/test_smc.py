"""Diffusion SMC over levels, resampling and weights, checked against exact answers (no learning).

The "model" is the exact noised mixture (:class:`ExactMixtureEnergy`, f = 0), or a deliberately wrong but
still normalised one (other mode weights), so the true normaliser is known: Z = 1 for every run below.
Unbiasedness is checked with the z-score of the mean of exp(log Z) over independent seeds (the SMC estimator
of Z itself is unbiased; log Z is not), and mode weights with the z-score of their mean over independent
seeds.
"""

import math
import warnings

import numpy as np
import pytest
import torch

from boltzdiff.errors import ConfigError, NonFiniteEnergyError
from boltzdiff.models.base import LevelEnergy
from boltzdiff.models.energy import PreconditionedEnergy
from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers import MCMCConfig, SMCConfig, kish_ess, smc, systematic_resample
from boltzdiff.samplers.diagnostics import weighted_mode_weights
from boltzdiff.samplers.resampling import multinomial_resample
from boltzdiff.targets.gmm import GaussianMixture

Z_MAX = 3.0


@pytest.fixture(scope="module")
def gmm3():
    return GaussianMixture([0.2, 0.5, 0.3], [[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [0.5, 1.0, 0.7])


@pytest.fixture(scope="module")
def grid128():
    return make_grid(VPSchedule(), 128)


def wrong_model(gmm, grid):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ExactMixtureEnergy(gmm, grid, weights=torch.tensor([0.6, 0.2, 0.2]))


# -- resampling and ESS
# -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [systematic_resample, multinomial_resample])
def test_resampling_is_unbiased(fn):
    g = torch.Generator().manual_seed(0)
    log_w = torch.log(torch.tensor([0.01, 0.3, 0.05, 0.2, 0.14, 0.1, 0.15, 0.05], dtype=torch.float64))
    n, R = 8, 4000
    counts = torch.stack([torch.bincount(fn(log_w, n, generator=g), minlength=n) for _ in range(R)]).double()
    expected = n * torch.softmax(log_w, 0)
    se = counts.std(0) / math.sqrt(R)
    z = (counts.mean(0) - expected) / se
    assert z.abs().max() < Z_MAX, z
    if fn is systematic_resample:  # each particle is copied floor(n W) or ceil(n W) times
        assert ((counts >= torch.floor(expected)) & (counts <= torch.ceil(expected))).all()


def test_systematic_resampling_drops_zero_weights():
    log_w = torch.tensor([0.0, -math.inf, 1.0, -math.inf], dtype=torch.float64)
    idx = systematic_resample(log_w, 1000, generator=torch.Generator().manual_seed(0))
    assert set(idx.tolist()) <= {0, 2}


def test_kish_ess():
    assert kish_ess(torch.zeros(10)) == pytest.approx(1.0)
    assert kish_ess(torch.tensor([0.0] + [-math.inf] * 9)) == pytest.approx(0.1)
    lw = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    w = torch.exp(lw)
    assert kish_ess(lw) == pytest.approx(float(w.sum() ** 2 / (w**2).sum() / 1000), rel=1e-10)
    assert kish_ess(lw + 1e5) == pytest.approx(kish_ess(lw), rel=1e-10)  # no overflow: log-space
    assert kish_ess(torch.full((5,), -math.inf)) == 0.0


# -- exactness of the weights
# ------------------------------------------------------------------------------------
def test_weights_are_exactly_constant_when_the_kernel_is_the_exact_posterior():
    """For a Gaussian level energy the 'gaussian' kernel is the exact reverse transition: every incremental
    weight is zero (up to round-off), which pins the sign and content of each term of the weight formula."""
    gmm = GaussianMixture([1.0], [[1.0, -0.5, 2.0]], [0.4])
    grid = make_grid(VPSchedule(), 64)
    r = smc(
        ExactMixtureEnergy(gmm, grid),
        500,
        SMCConfig(kernel_variance="model"),
        generator=torch.Generator().manual_seed(0),
    )
    assert r.log_w.dtype == torch.float64
    assert r.log_w.abs().max() < 1e-8
    assert abs(r.log_Z) < 1e-8 and r.ess == pytest.approx(1.0) and r.n_resample == 0


def test_untrained_preconditioned_model_float32():
    """A zero network is exactly the noised Gaussian N(alpha mu, a^2): weights constant up to float32
    round-off."""
    torch.manual_seed(0)
    from boltzdiff.models.energy import build_mlp_energy

    grid = make_grid(VPSchedule(), 64, "logsnr")
    model = build_mlp_energy(grid, torch.tensor([0.5, -1.0]), 0.7, width=16, depth=1).eval()
    assert isinstance(model, PreconditionedEnergy)
    r = smc(model, 300, SMCConfig(kernel_variance="model"), generator=torch.Generator().manual_seed(1))
    assert r.x.dtype == torch.float32 and r.log_w.dtype == torch.float64
    assert r.log_w.abs().max() < 1e-3 and r.ess > 0.999
    assert r.n_model_evals == 300 * 64


@pytest.mark.parametrize("ess_threshold", [0.0, 0.3, 1.0])
def test_log_Z_estimate_is_unbiased(gmm3, grid128, ess_threshold):
    """Z-score of mean exp(log Z) over 20 seeds; a coarse 12-level sub-grid and a plain ancestral kernel make
    the weights far from uniform, and resampling never / adaptively / at every step."""
    model = wrong_model(gmm3, grid128)
    zs = []
    for seed in range(20):
        r = smc(
            model,
            400,
            SMCConfig(levels=12, kernel="ancestral", ess_threshold=ess_threshold),
            generator=torch.Generator().manual_seed(seed),
        )
        zs.append(math.exp(r.log_Z))
    zs = np.array(zs)
    assert zs.std() > 1e-3  # a non-trivial check
    z = (zs.mean() - 1.0) / (zs.std(ddof=1) / math.sqrt(len(zs)))
    assert abs(z) < Z_MAX, (zs.mean(), z)


def test_ess_stays_high_with_exact_energies(gmm3, grid128):
    r = smc(
        ExactMixtureEnergy(gmm3, grid128),
        2000,
        SMCConfig(ess_threshold=0.0),
        generator=torch.Generator().manual_seed(0),
    )
    assert r.n_resample == 0
    assert r.ess > 0.8 and float(r.ess_trace.min()) > 0.8
    assert r.ess_trace.shape == (128,)
    assert abs(r.log_Z) < 0.05
    assert r.n_model_evals == 2000 * 128 and r.n_target_evals == 0


def test_smc_mode_weights_match_exact_within_3_se(gmm3, grid128):
    """SMC on the exact level energies: the mean over 12 seeds of the weighted mode weights matches the
    truth."""
    model = ExactMixtureEnergy(gmm3, grid128)
    est = np.array(
        [
            weighted_mode_weights(gmm3, r.x, r.log_w)
            for r in (
                smc(model, 500, SMCConfig(levels=48), generator=torch.Generator().manual_seed(s)) for s in range(12)
            )
        ]
    )
    z = (est.mean(0) - gmm3.weights.numpy()) / (est.std(0, ddof=1) / math.sqrt(len(est)))
    assert np.abs(z).max() < Z_MAX, z


def assert_weights_and_z_unbiased(est, zs, gmm):
    """Mean weighted mode weights over seeds within Z_MAX standard errors of the truth, and E[Z] = 1 likewise."""
    z = (est.mean(0) - gmm.weights.numpy()) / (est.std(0, ddof=1) / math.sqrt(len(est)))
    assert np.abs(z).max() < Z_MAX, (est.mean(0), z)
    zz = (zs.mean() - 1.0) / (zs.std(ddof=1) / math.sqrt(len(zs)))
    assert abs(zz) < Z_MAX


def test_to_target_corrects_a_wrong_model(gmm3, grid128):
    """A model with wrong mode weights, annealed on to the exact target energy: weighted mode weights (mean
    over 12 seeds) within 3 standard errors of the truth, Z = 1 unbiased, and target evaluations counted."""
    model = wrong_model(gmm3, grid128)
    est, zs = [], []
    for s in range(12):
        r = smc(
            model,
            500,
            SMCConfig(levels=32, n_bridge=8, bridge_mcmc=MCMCConfig("mala", n_steps=2, step_size=0.3)),
            generator=torch.Generator().manual_seed(s),
            target=gmm3,
        )
        est.append(weighted_mode_weights(gmm3, r.x, r.log_w))
        zs.append(math.exp(r.log_Z))
    est, zs = np.array(est), np.array(zs)
    assert_weights_and_z_unbiased(est, zs, gmm3)
    # the model alone is wrong: its level-0 mode weight for mode 0 is 0.6, the target's 0.2
    assert abs(est.mean(0)[0] - 0.6) > 0.2
    assert r.n_target_evals == 500 * (1 + 8 * 2) and r.lambdas.shape == (9,)
    assert r.acceptance is not None and 0.2 < r.acceptance <= 1.0


@pytest.mark.parametrize("to_target", [True, False])
def test_no_resampling_after_the_final_reweighting(gmm3, grid128, to_target):
    """The last reweighting (one bridge jump from a wrong model to the target, or the last level with an ESS
    threshold that every step falls below) must leave the weights as they are: resampling there would reset
    them and make the final ESS read 1. The final ESS is the trace's last entry and below the threshold."""
    model = wrong_model(gmm3, grid128)
    kw = dict(n_bridge=1, ess_threshold=0.9) if to_target else dict(ess_threshold=1.0)
    target = gmm3 if to_target else None
    r = smc(model, 400, SMCConfig(levels=16, **kw), target=target, generator=torch.Generator().manual_seed(3))
    assert r.ess == pytest.approx(float(r.ess_trace[-1]), abs=1e-12)
    assert r.ess == pytest.approx(kish_ess(r.log_w), abs=1e-12)
    if to_target:  # weights 0.6 / 0.2 / 0.2 -> 0.2 / 0.5 / 0.3 in one jump: the ESS falls below the threshold
        assert r.ess < 0.9
    else:  # resampling after every step whose ESS is below 1, but not after the last one
        below = int((r.ess_trace < 1.0).sum())
        assert r.ess < 1.0 and r.n_resample == below - 1


def test_mcmc_rejuvenation_keeps_weights_consistent(gmm3, grid128):
    model = wrong_model(gmm3, grid128)
    est = []
    for s in range(8):
        r = smc(
            model,
            400,
            SMCConfig(levels=24, mcmc=MCMCConfig("hmc", n_steps=1, n_leapfrog=3)),
            generator=torch.Generator().manual_seed(s),
        )
        est.append(weighted_mode_weights(model.gmm, r.x, r.log_w))
    est = np.array(est)
    z = (est.mean(0) - model.gmm.weights.numpy()) / (est.std(0, ddof=1) / math.sqrt(len(est)))
    assert np.abs(z).max() < Z_MAX, z
    assert r.acceptance is not None and r.step_size is not None


def test_log_weights_finite_for_10k_particles():
    """10^4 particles in 32-D on a coarse sub-grid with a wrong model: float64 log-weights stay finite."""
    gmm = GaussianMixture([2 / 3, 1 / 3], [[1.0] * 32, [-1.0] * 32], 0.25)
    grid = make_grid(VPSchedule(), 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ExactMixtureEnergy(gmm, grid, weights=torch.tensor([0.5, 0.5]))
    r = smc(
        model,
        10_000,
        SMCConfig(levels=16, kernel="ancestral", ess_threshold=0.0, n_bridge=2, bridge_mcmc=MCMCConfig("mala", 0)),
        generator=torch.Generator().manual_seed(0),
        target=gmm,
    )
    assert r.log_w.dtype == torch.float64 and r.log_w.shape == (10_000,)
    assert torch.isfinite(r.log_w).all() and math.isfinite(r.log_Z)
    assert r.log_w.abs().max() > 50  # large log-weights, handled without exponentiating
    assert 0.0 < r.ess <= 1.0 and r.n_nonfinite == 0


# -- bad input and non-finite energies
# ---------------------------------------------------------------------------
class NaNWhere(LevelEnergy):
    """An exact level energy that returns NaN where ``x[:, 0] > cut``."""

    def __init__(self, base, cut):
        super().__init__()
        self.base, self.cut, self.grid, self.dim = base, cut, base.grid, base.dim

    def energy(self, x, level):
        e = self.base.energy(x, level)
        return torch.where(x[:, 0] > self.cut, torch.full_like(e, float("nan")), e)

    def log_norm(self):
        return self.base.log_norm()


def test_nan_energies_get_zero_weight_and_are_counted(gmm3, grid128):
    model = NaNWhere(ExactMixtureEnergy(gmm3, grid128), cut=2.0)  # kills most of mode 1 (mean x = 3)
    r = smc(model, 1000, SMCConfig(levels=32, ess_threshold=0.0), generator=torch.Generator().manual_seed(0))
    dead = ~torch.isfinite(r.log_w)
    assert r.n_nonfinite == int(dead.sum()) > 0
    assert torch.isfinite(r.log_w[~dead]).all() and (r.x[~dead, 0] <= 2.0).all()
    assert 0 < r.ess < 1


def test_all_nan_fails_with_a_clear_error(gmm3, grid128):
    model = NaNWhere(ExactMixtureEnergy(gmm3, grid128), cut=-1e9)
    with pytest.raises(NonFiniteEnergyError, match="every particle"):
        smc(model, 100, SMCConfig(levels=8), generator=torch.Generator().manual_seed(0))


def test_nan_target_energies_are_counted(gmm3, grid128):
    class Cut(GaussianMixture):
        def _energy(self, x):
            u = super()._energy(x)
            return torch.where(x[:, 1] > 2.0, torch.full_like(u, float("inf")), u)

    tgt = Cut(gmm3.weights, gmm3.means, gmm3.std)
    r = smc(
        ExactMixtureEnergy(gmm3, grid128),
        500,
        SMCConfig(levels=16, n_bridge=2, ess_threshold=0.0),
        generator=torch.Generator().manual_seed(0),
        target=tgt,
    )
    assert r.n_nonfinite > 0 and r.n_nonfinite == int((~torch.isfinite(r.log_w)).sum())


@pytest.mark.parametrize(
    "kw",
    [
        dict(n=0),
        dict(n=10, ess_threshold=1.5),
        dict(n=10, levels=1),
        dict(n=10, levels=[0, 5]),
        dict(n=10, kernel="nope"),
        dict(n=10, resampler="x"),
        dict(n=10, kernel_variance="x"),
    ],
)
def test_bad_arguments(gmm3, grid128, kw):
    n = kw.pop("n")
    with pytest.raises(ConfigError):
        smc(ExactMixtureEnergy(gmm3, grid128), n, SMCConfig(**kw), generator=torch.Generator().manual_seed(0))


def test_target_dimension_mismatch(gmm3, grid128):
    other = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], 1.0)
    with pytest.raises(ConfigError, match="dimension"):
        smc(ExactMixtureEnergy(gmm3, grid128), 10, target=other)


# -- adaptive bridge ----------------------------------------------------------------------------------------
def test_conditional_ess_exact_values():
    from boltzdiff.samplers.smc import conditional_ess

    # uniform current weights: CESS = (mean w)^2 / mean(w^2)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert conditional_ess(torch.zeros(4, dtype=torch.float64), w.log()) == pytest.approx(
        float(w.mean() ** 2 / (w**2).mean()), rel=1e-12
    )
    # constant increments: CESS = 1 whatever the current weights; non-finite entries are left out
    lw = torch.tensor([0.0, -1.0, 2.0, -math.inf], dtype=torch.float64)
    assert conditional_ess(lw, torch.full((4,), 3.7, dtype=torch.float64)) == pytest.approx(1.0)
    inc = torch.tensor([0.5, 0.5, 0.5, math.inf], dtype=torch.float64)
    assert conditional_ess(torch.zeros(4, dtype=torch.float64), inc) == pytest.approx(1.0)
    # current weights W = (0.25, 0.75), increments w = (1, 3): (0.25 + 2.25)^2 / (0.25 + 6.75)
    lw = torch.tensor([0.25, 0.75], dtype=torch.float64).log()
    inc = torch.tensor([1.0, 3.0], dtype=torch.float64).log()
    assert conditional_ess(lw, inc) == pytest.approx(2.5**2 / 7.0, rel=1e-12)


def test_next_bridge_lambda_hits_the_requested_cess():
    from boltzdiff.samplers.smc import conditional_ess, next_bridge_lambda

    g = torch.Generator().manual_seed(0)
    delta = torch.randn(1000, generator=g, dtype=torch.float64) * 30.0  # u - E varies by tens of kT
    lw = torch.zeros(1000, dtype=torch.float64)
    lam = next_bridge_lambda(lw, delta, 0.2, 0.9)
    assert 0.2 < lam < 1.0
    assert conditional_ess(lw, -(lam - 0.2) * delta) == pytest.approx(0.9, abs=1e-6)
    # small mismatch: one step to the end
    assert next_bridge_lambda(lw, delta * 1e-3, 0.5, 0.9) == 1.0


def test_adaptive_bridge_corrects_a_wrong_model_and_takes_more_steps_for_a_worse_one(gmm3, grid128):
    """Adaptive bridge to the exact target: Z = 1 and mode weights unbiased (z-scores over 10 seeds), and the
    number of steps grows with the model-target mismatch (an exact model needs one step)."""
    model = wrong_model(gmm3, grid128)
    est, zs, steps = [], [], []
    for s in range(10):
        r = smc(
            model,
            500,
            SMCConfig(levels=32, bridge_cess=0.9, bridge_mcmc=MCMCConfig("mala", n_steps=2, step_size=0.3)),
            generator=torch.Generator().manual_seed(s),
            target=gmm3,
        )
        est.append(weighted_mode_weights(gmm3, r.x, r.log_w))
        zs.append(math.exp(r.log_Z))
        steps.append(len(r.lambdas) - 1)
        assert r.lambdas[0] == 0.0 and r.lambdas[-1] == 1.0 and torch.all(torch.diff(r.lambdas) > 0)
    est, zs = np.array(est), np.array(zs)
    assert_weights_and_z_unbiased(est, zs, gmm3)
    assert min(steps) >= 2
    exact = smc(
        ExactMixtureEnergy(gmm3, grid128),
        500,
        SMCConfig(levels=32, bridge_cess=0.9),
        generator=torch.Generator().manual_seed(0),
        target=gmm3,
    )
    assert len(exact.lambdas) == 2  # u - E is constant: one step reaches lambda = 1


def test_adaptive_bridge_stops_at_max_bridge(gmm3, grid128):
    r = smc(
        wrong_model(gmm3, grid128),
        200,
        SMCConfig(levels=16, bridge_cess=0.999, max_bridge=3, bridge_mcmc=MCMCConfig("mala", n_steps=1, step_size=0.3)),
        generator=torch.Generator().manual_seed(0),
        target=gmm3,
    )
    assert len(r.lambdas) == 4 and r.lambdas[-1] == 1.0
    with pytest.raises(ConfigError, match="bridge_cess"):
        smc(wrong_model(gmm3, grid128), 10, SMCConfig(bridge_cess=1.5), target=gmm3)


# -- stratified resampling on the bridge
# ---------------------------------------------------------------------------------
def test_stratified_resampling_keeps_each_stratum_weight_and_is_unbiased():
    from boltzdiff.samplers.resampling import stratified_resample

    g = torch.Generator().manual_seed(0)
    w = torch.tensor([0.01, 0.3, 0.05, 0.2, 0.14, 0.1, 0.15, 0.05], dtype=torch.float64)
    log_w = torch.log(w) + 7.0  # any scale
    labels = torch.tensor([0, 1, 0, 1, 1, 2, 2, 2])
    n, R = 8, 4000
    W = w / w.sum()
    expected = torch.zeros(n, dtype=torch.float64)  # per particle: E[total normalised weight of its copies]
    acc = torch.zeros(R, n, dtype=torch.float64)
    for r in range(R):
        idx, lw = stratified_resample(log_w, labels, generator=g)
        assert torch.logsumexp(lw, 0) == pytest.approx(math.log(n), abs=1e-12)  # mean weight 1
        for s in (0, 1, 2):  # exact: each stratum keeps its count and its share of the weight
            assert int((labels[idx] == s).sum()) == int((labels == s).sum())
            share = float(torch.exp(torch.logsumexp(lw[labels[idx] == s], 0) - math.log(n)))
            assert share == pytest.approx(float(W[labels == s].sum()), rel=1e-12)
        acc[r].index_add_(0, idx, torch.exp(lw) / n)
    expected = W
    z = (acc.mean(0) - expected) / (acc.std(0) / math.sqrt(R)).clamp(min=1e-12)
    assert z.abs().max() < Z_MAX, z
    # a stratum whose particles all have zero weight gives its slots to the others
    dead = log_w.clone()
    dead[labels == 2] = -math.inf
    idx, lw = stratified_resample(dead, labels, generator=g)
    assert idx.numel() == n and not bool((labels[idx] == 2).any()) and torch.isfinite(lw).all()


def test_stratified_resampling_with_a_minimum_share_gives_a_minor_stratum_more_particles_unbiasedly():
    from boltzdiff.samplers.resampling import stratified_resample

    g = torch.Generator().manual_seed(1)
    n, R = 20, 4000
    labels = torch.tensor([1] + [0] * (n - 1))  # one particle in stratum 1
    w = torch.linspace(1.0, 2.0, n, dtype=torch.float64)
    w[0] = 0.3
    log_w = torch.log(w)
    W = w / w.sum()
    acc = torch.zeros(R, n, dtype=torch.float64)
    for r in range(R):
        idx, lw = stratified_resample(log_w, labels, generator=g, min_share=0.25)
        assert idx.numel() == n and int((labels[idx] == 1).sum()) == 5  # the floor: 25 % of 20
        share = float(torch.exp(torch.logsumexp(lw[labels[idx] == 1], 0) - math.log(n)))
        assert share == pytest.approx(float(W[0]), rel=1e-12)  # its weight is unchanged
        acc[r].index_add_(0, idx, torch.exp(lw) / n)
    z = (acc.mean(0) - W) / (acc.std(0) / math.sqrt(R)).clamp(min=1e-12)
    assert z.abs().max() < Z_MAX, z
    # more strata than 1 / min_share: an equal share each
    labels3 = torch.tensor([0] * 18 + [1, 2])
    idx, _ = stratified_resample(log_w, labels3, generator=g, min_share=0.5)
    assert sorted(int((labels3[idx] == s).sum()) for s in range(3)) == [6, 7, 7]


@pytest.mark.parametrize(
    "max_sigma, min_share, first_seed, denoised",
    [(None, 0.0, 0, False), (0.5, 0.0, 100, False), (0.5, 0.3, 200, False), (2.0, 0.3, 300, True)],
)
def test_bridge_strata_keep_the_minor_mode_and_stay_unbiased(gmm3, grid128, max_sigma, min_share, first_seed, denoised):
    """A model that gives mode 0 weight 0.6 where the target has 0.2, bridged with resampling inside
    strata (which mode's half-plane a particle is in): target mode weights and Z = 1 unbiased over seeds; the
    particle count per stratum does not change on the bridge. With ``strata_max_sigma`` the levels with sigma
    <= 0.5 resample within the strata too, and the same holds; with ``strata_min_share`` every stratum keeps at
    least that share of the particles (less what MCMC moves out), and the same holds; and with
    ``strata_denoised`` (labels of the denoised estimates, from sigma <= 2 where the noisy positions say little)
    as well."""
    model = wrong_model(gmm3, grid128)

    def strata(x):  # mode 0 at (-3, 0), mode 1 at (3, 0), mode 2 at (0, 4)
        return torch.where(x[:, 1] > 2.0, 2, torch.where(x[:, 0] < 0, 0, 1))

    est, zs = [], []
    for s in range(first_seed, first_seed + (10 if max_sigma is None else 12)):
        r = smc(
            model,
            500,
            SMCConfig(
                levels=32,
                n_bridge=4,
                ess_threshold=1.0,
                bridge_strata=strata,
                strata_max_sigma=max_sigma,
                strata_min_share=min_share,
                strata_denoised=denoised,
                bridge_mcmc=MCMCConfig("mala", n_steps=1, step_size=0.05),
            ),
            generator=torch.Generator().manual_seed(s),
            target=gmm3,
        )
        if min_share:
            counts = torch.bincount(strata(r.x), minlength=3).double() / 500
            assert float(counts.min()) > min_share - 0.05, counts
        else:  # the model's allocation (~0.6 in mode 0) survives; only the weights carry the correction to 0.2
            assert float((strata(r.x) == 0).double().mean()) > 0.45
        est.append(weighted_mode_weights(gmm3, r.x, r.log_w))
        zs.append(math.exp(r.log_Z))
    est, zs = np.array(est), np.array(zs)
    assert_weights_and_z_unbiased(est, zs, gmm3)


def test_strata_max_sigma_needs_bridge_strata(gmm3, grid128):
    with pytest.raises(ConfigError, match="strata_max_sigma"):
        smc(wrong_model(gmm3, grid128), 10, SMCConfig(levels=8, strata_max_sigma=0.5))
    with pytest.raises(ConfigError, match="strata_min_share"):
        smc(wrong_model(gmm3, grid128), 10, SMCConfig(levels=8, strata_min_share=0.2))
    with pytest.raises(ConfigError, match="strata_denoised"):
        smc(wrong_model(gmm3, grid128), 10, SMCConfig(levels=8, strata_denoised=True))


def test_log_Z_trace_ends_at_log_Z_and_counts_killed_particles(gmm3, grid128):
    """The running log Z (one entry per reweighting, like the ESS trace) ends at the run's estimate, across
    resamplings; the killed-particle trace is cumulative and ends at n_nonfinite."""

    class Cut(ExactMixtureEnergy):  # NaN energies right of x0 = 4 at the lowest level only
        def energy(self, x, level):
            e = super().energy(x, level)
            lv = int(level) if not torch.is_tensor(level) or level.dim() == 0 else int(level[0])
            return torch.where((x[:, 0] > 4.0) & (lv == 0), torch.full_like(e, math.nan), e)

    model = Cut(gmm3, grid128)
    r = smc(model, 400, SMCConfig(levels=16, ess_threshold=0.9), generator=torch.Generator().manual_seed(5))
    assert len(r.log_Z_trace) == len(r.ess_trace) == len(r.killed_trace)
    assert r.log_Z_trace[-1] == pytest.approx(r.log_Z, abs=1e-12)
    assert r.n_resample > 0 and r.n_nonfinite > 0
    assert r.killed_trace == sorted(r.killed_trace) and r.killed_trace[-1] == r.n_nonfinite
    s = r.summary()
    assert s["log_Z_trace"][-1] == pytest.approx(r.log_Z, abs=1e-4) and s["killed_trace"][-1] == r.n_nonfinite


def test_distinct_ancestors_follow_the_genealogy_back():
    from boltzdiff.samplers.smc import distinct_ancestors

    # 6 particles; step 3: everyone copies particle 2 or 4; step 7: the survivors reshuffle among themselves
    parents = [(3, torch.tensor([2, 2, 4, 4, 4, 2])), (7, torch.tensor([0, 1, 1, 5, 5, 5]))]
    # final 0..5 <- {0, 1, 5} at step 7 <- {2} (0, 1, 5 all copy 2) at step 3
    assert distinct_ancestors(parents, 6) == [[3, 1], [7, 3]]
    assert distinct_ancestors([], 6) == []
    # with a resampling that keeps everyone, nothing coalesces
    assert distinct_ancestors([(0, torch.arange(5))], 5) == [[0, 5]]
    from boltzdiff.samplers.smc import lineage_labels

    assert lineage_labels(parents, 6).tolist() == [2, 2, 2, 2, 2, 2]
    assert lineage_labels([(3, torch.tensor([2, 2, 4, 4, 4, 2]))], 6).tolist() == [2, 2, 4, 4, 4, 2]
    assert lineage_labels([], 4).tolist() == [0, 1, 2, 3]


def test_smc_reports_the_lineages_its_particles_rest_on():
    """Resampling at every step of a long SMC on an exact mixture energy: lineages only ever coalesce going
    back, and the summary's n_lineages is the oldest count."""
    gmm = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [0.3, 0.3])
    model = ExactMixtureEnergy(gmm, make_grid(VPSchedule(), 32))
    res = smc(model, 500, SMCConfig(ess_threshold=1.0), generator=torch.Generator().manual_seed(0))
    assert res.n_resample == len(res.ancestors) > 10
    k = [c for _, c in res.ancestors]
    assert all(a <= b for a, b in zip(k, k[1:])) and 1 <= k[0] < 500 and k[-1] <= 500
    steps = [s for s, _ in res.ancestors]
    assert steps == sorted(steps) and steps[-1] < len(res.ess_trace)
    summ = res.summary()
    assert summ["n_lineages"] == k[0] and summ["ancestors"] == res.ancestors
    # one increment SD per step; the exact model's kernels are not exact, so the increments do spread
    assert len(summ["inc_sd_trace"]) == len(res.ess_trace) and min(summ["inc_sd_trace"]) >= 0
    assert max(summ["inc_sd_trace"]) > 0
    # each particle's lineage label is its ancestor at the first resampling
    assert res.lineage.shape == (500,) and torch.unique(res.lineage).numel() == k[0]
