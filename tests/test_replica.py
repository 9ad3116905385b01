"""Replica exchange over the diffusion levels, checked against exact answers (no learning).

The "model" is the exact noised mixture (:class:`ExactMixtureEnergy`, every level normalised, f = 0) or a
deliberately wrong but still normalised one (other mode weights), optionally with the exact target as the
coldest rung; so every log-normaliser difference is 0. Statistical checks use z-scores whose standard errors
come from the spread over independent chains (each chain's time average carries its own autocorrelation).
"""

import math
import warnings

import numpy as np
import pytest
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.models.base import LevelEnergy
from boltzdiff.models.exact import DiagonalGaussianEnergy, ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers import MCMCConfig, replica_exchange
from boltzdiff.samplers.bennett import bar, bar_groups
from boltzdiff.samplers.mcmc import EvalCounter
from boltzdiff.samplers.replica import _Ladder, replica_cost, rounds_for_budget, swap_phase
from boltzdiff.targets.gmm import GaussianMixture

Z_MAX = 3.5
TRUE_W = np.array([0.6, 0.3, 0.1])
WRONG_W = torch.tensor([0.2, 0.4, 0.4], dtype=torch.float64)


@pytest.fixture(scope="module")
def gmm():
    # three well-separated modes: plain MALA at level 0 cannot move between them
    return GaussianMixture(TRUE_W, [[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]], [0.6, 0.8, 0.5])


@pytest.fixture(scope="module")
def grid16():
    return make_grid(VPSchedule(), 16)


@pytest.fixture(scope="module")
def run_exact(gmm, grid16):
    torch.set_num_threads(1)
    return replica_exchange(ExactMixtureEnergy(gmm, grid16), 256, 200, seed=1)


@pytest.fixture(scope="module")
def run_wrong_to_target(gmm, grid16):
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrong = ExactMixtureEnergy(gmm, grid16, weights=WRONG_W)
    return replica_exchange(wrong, 256, 200, target=gmm, keep_rungs=True, seed=2)


class Counting(LevelEnergy):
    """Wraps a level energy, counting the rows of every energy call; ``shift`` adds ``c_i`` at level i and
    reports ``f = -c`` (so log q is unchanged and the raw log-normalisers are ``-c``)."""

    def __init__(self, base, shift=None):
        super().__init__()
        self.base, self.grid, self.dim, self.rows = base, base.grid, base.dim, 0
        self.c = torch.zeros(base.grid.n, dtype=torch.float64) if shift is None else shift

    def energy(self, x, level):
        lv = self._levels(x, level)
        self.rows += x.shape[0]
        return self.base.energy(x, lv) + self.c[lv].to(x)

    def log_norm(self):
        return -self.c


class CountingTarget:
    def __init__(self, target):
        self.target, self.dim, self.rows = target, target.dim, 0

    def energy(self, x):
        self.rows += x.shape[0]
        return self.target.energy(x)


class SameEverywhere(LevelEnergy):
    """``E(x, t) = |x|^2 / 2`` at every level."""

    def __init__(self, grid, dim=2):
        super().__init__()
        self.grid, self.dim = grid, dim

    def energy(self, x, level):
        return 0.5 * (x.double() ** 2).sum(-1).to(x.dtype)

    def log_norm(self):
        return torch.zeros(self.grid.n, dtype=torch.float64)


# -- BAR ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mu,s,n_f,n_r", [(1.0, 1.5, 4000, 3000), (2.5, 0.6, 2000, 2500)])
def test_bar_matches_closed_form_and_pymbar(mu, s, n_f, n_r):
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=n_f), mu + s * rng.normal(size=n_r)
    u0, u1 = (lambda x: 0.5 * x**2), (lambda x: 0.5 * (x - mu) ** 2 / s**2)
    w_f, w_r = u1(x0) - u0(x0), u0(x1) - u1(x1)
    d, se = bar(w_f, w_r)
    exact = -math.log(s)  # F_1 - F_0 = -log(Z_1 / Z_0) = -log s
    assert abs(d - exact) < Z_MAX * se, (d, exact, se)
    pymbar = pytest.importorskip("pymbar")
    ref = pymbar.other_estimators.bar(w_f, w_r)
    assert d == pytest.approx(ref["Delta_f"], abs=1e-9)
    assert se == pytest.approx(ref["dDelta_f"], rel=1e-6)


def test_bar_spread_over_seeds_matches_its_error():
    # many independent problems in one call: their mean is unbiased, their spread matches the asymptotic SE
    rng = np.random.default_rng(1)
    G, n = 400, 300
    x0, x1 = rng.normal(size=(G, n)), 1.0 + 2.0 * rng.normal(size=(G, n))
    w_f, w_r = 0.125 * (x0 - 1) ** 2 - 0.5 * x0**2, 0.5 * x1**2 - 0.125 * (x1 - 1) ** 2
    g = np.repeat(np.arange(G), n)
    d, se = bar_groups(w_f.ravel(), g, w_r.ravel(), g, G)
    exact = -math.log(2.0)
    assert abs(d.mean() - exact) < Z_MAX * d.std() / math.sqrt(G)
    assert d.std() == pytest.approx(se.mean(), rel=0.15)
    assert all(abs(bar(w_f[k], w_r[k])[0] - d[k]) < 1e-9 for k in range(3))  # same as one at a time


def test_bar_degenerate_inputs():
    assert all(math.isnan(v) for v in bar([], [0.1, 0.2]))
    d, _ = bar([0.3, np.inf, np.nan], [-0.3, -0.3])  # non-finite works are dropped
    assert d == pytest.approx(0.3, abs=1e-9)


# -- the mixture ------------------------------------------------------------------------------------------------
def test_mode_weights_match_the_mixture(run_exact, gmm):
    w, se = run_exact.mode_weights(gmm)
    z = (w - TRUE_W) / se
    assert np.all(np.abs(z) < Z_MAX), (w, se, z)
    assert run_exact.rung_labels[0] == "level 0" and len(run_exact.rung_labels) == 16
    assert run_exact.x.shape == (150, 256, 2) and run_exact.samples().shape == (150 * 256, 2)


def test_log_normaliser_differences_are_zero(run_exact):
    r = run_exact
    z = r.log_Z_diff / r.log_Z_diff_se.clamp(min=1e-4)
    assert torch.all(z.abs() < 4.0), z
    assert torch.all(r.log_Z_diff.abs() < 0.02), r.log_Z_diff
    assert abs(r.log_Z_span) < Z_MAX * r.log_Z_span_se, (r.log_Z_span, r.log_Z_span_se)
    assert torch.all(r.f_diff == 0)


def test_acceptances_and_round_trips(run_exact):
    r = run_exact
    assert torch.all((r.swap_acceptance > 0) & (r.swap_acceptance <= 1)), r.swap_acceptance
    assert torch.all((r.mala_acceptance - 0.574).abs() < 0.1), r.mala_acceptance  # adapted, then frozen
    assert torch.all(r.step_size > 0)
    assert r.round_trips > 256  # walkers go up to the noisiest level and back, many times
    s = r.summary()
    assert s["n_model_evals"] == r.n_model_evals and len(s["swap_acceptance"]) == 15


def test_exact_target_rung_corrects_a_wrong_model(run_wrong_to_target, gmm):
    r = run_wrong_to_target
    assert r.rung_labels[:2] == ["target", "level 0"]
    w, se = r.mode_weights(gmm)  # the target rung: the true weights, whatever the model's
    assert np.all(np.abs((w - TRUE_W) / se) < Z_MAX), (w, se)
    # the level-0 rung keeps the model's (wrong) weights
    x0 = r.x_rungs[:, 1]
    resp = gmm.responsibilities(x0.reshape(-1, 2)).reshape(x0.shape[0], x0.shape[1], -1).mean(0)
    w0, se0 = resp.mean(0).numpy(), (resp.std(0) / math.sqrt(resp.shape[0])).numpy()
    assert np.all(np.abs((w0 - WRONG_W.numpy()) / se0) < Z_MAX), (w0, se0)
    assert torch.equal(r.x_rungs[:, 0], r.x)
    # every level is normalised, and so is the target: all differences are 0
    assert torch.all((r.log_Z_diff / r.log_Z_diff_se.clamp(min=1e-4)).abs() < 4.0), r.log_Z_diff
    assert 0 < float(r.swap_acceptance[0]) < 0.95  # the wrong level 0 and the target disagree
    assert r.n_target_evals > 0


# -- the swap rule --------------------------------------------------------------------------------------------
def test_identical_rungs_accept_every_swap():
    grid = make_grid(VPSchedule(), 2)
    r = replica_exchange(SameEverywhere(grid), 64, 20, burn_in=0, seed=0)
    assert torch.all(r.swap_acceptance == 1.0)
    assert r.log_Z_diff.abs().max() < 1e-12


def test_swap_acceptance_is_the_metropolis_ratio():
    # the same pair of configurations in every chain: the accepted fraction is min(1, exp(log ratio))
    grid = make_grid(VPSchedule(), 2)
    model = DiagonalGaussianEnergy(grid, [0.3, 0.3])  # level 0: variance ~0.3, level 1: ~1
    lad = _Ladder(model, [0, 1], None, EvalCounter())
    C = 20000
    x = torch.cat([torch.tensor([[0.1, 0.3]]).repeat(C, 1), torch.tensor([[1.2, -0.4]]).repeat(C, 1)]).double()
    state = lad.evaluate(x, torch.arange(2).repeat_interleave(C))
    e00, e11 = float(model.energy(x[:1], 0)), float(model.energy(x[C:C + 1], 1))
    e01, e10 = float(model.energy(x[C:C + 1], 0)), float(model.energy(x[:1], 1))
    p = min(1.0, math.exp(e00 + e11 - e01 - e10))
    assert 0.05 < p < 0.95
    a, _ = swap_phase(lad, x, state, torch.tensor([0]), C, torch.Generator().manual_seed(0))
    frac = float(a.double().mean())
    assert abs(frac - p) < Z_MAX * math.sqrt(p * (1 - p) / C), (frac, p)
    # the swapped walkers carry their energy and score at their new rung
    fresh = lad.evaluate(x, torch.arange(2).repeat_interleave(C))
    assert torch.allclose(state.log_prob, fresh.log_prob) and torch.allclose(state.grad, fresh.grad)


def test_swaps_leave_exact_samples_exact():
    # exact draws at two rungs with different variances stay exact under swaps alone (detailed balance);
    # accepting every swap would mix the variances to ~ (v0 + v1) / 2 at both
    grid = make_grid(VPSchedule(), 2)
    model = DiagonalGaussianEnergy(grid, [0.05, 0.05])
    v0, v1 = model.level_var(0), model.level_var(1)
    g = torch.Generator().manual_seed(3)
    C = 20000
    x = torch.cat([torch.randn(C, 2, generator=g, dtype=torch.float64) * v.sqrt() for v in (v0, v1)])
    lad = _Ladder(model, [0, 1], None, EvalCounter())
    state = lad.evaluate(x, torch.arange(2).repeat_interleave(C))
    a, _ = swap_phase(lad, x, state, torch.tensor([0]), C, g)
    assert 0.05 < float(a.double().mean()) < 0.9
    for r, v in ((0, v0), (1, v1)):
        m2 = x[r * C : (r + 1) * C] ** 2  # (C, 2): E[x^2] = v per coordinate, Var[x^2] = 2 v^2
        z = (m2.mean(0) - v) / (math.sqrt(2) * v / math.sqrt(C))
        assert torch.all(z.abs() < Z_MAX), z


# -- counting -------------------------------------------------------------------------------------------------
def test_evaluation_count_matches_a_hand_count(gmm, grid16):
    model, tgt = Counting(ExactMixtureEnergy(gmm, grid16)), CountingTarget(gmm)
    r = replica_exchange(
        model, 3, 5, levels=[0, 5, 10, 15], target=tgt, mcmc=MCMCConfig("mala", n_steps=2), swap_every=2, seed=0,
    )
    # 5 rungs (target + 4 levels), 3 chains. Descent: (1 evaluation + 1 MALA step) x 3 per rung.
    # Rounds: 5 x 2 MALA steps x 3 per rung. Swaps after rounds 2 and 4: pairs (0,1), (2,3), then (1,2), (3,4),
    # 2 x 3 cross evaluations each; the pair (target, level 0) makes 3 of them at the target.
    model_hand = 4 * 6 + 4 * 30 + (3 + 6) + (6 + 6)
    target_hand = 6 + 30 + 3
    assert (r.n_model_evals, r.n_target_evals) == (model_hand, target_hand) == (165, 39)
    assert (model.rows, tgt.rows) == (model_hand, target_hand)  # what the energies actually saw
    assert replica_cost(4, 3, 5, target=True, n_steps=2, swap_every=2) == dict(model=165, target=39)


def test_cost_formula_and_budget(gmm, grid16):
    model = Counting(ExactMixtureEnergy(gmm, grid16))
    r = replica_exchange(model, 4, 7, levels=6, descent_steps=3, seed=0)
    assert r.levels == [0, 3, 6, 9, 12, 15]
    assert r.n_model_evals == model.rows == replica_cost(6, 4, 7, descent_steps=3)["model"]
    budget = 50_000
    n = rounds_for_budget(16, 32, budget, target=True)
    assert replica_cost(16, 32, n, target=True)["model"] <= budget < replica_cost(16, 32, n + 1, target=True)["model"]
    assert rounds_for_budget(16, 32, 10) == 0


def test_learned_normalisers_are_separated_from_the_raw_ones(grid16):
    # energies shifted by c_i with f = -c: the swaps do not see the shift, BAR's raw differences are -(dc)
    c = torch.linspace(0.0, 3.0, 16, dtype=torch.float64) ** 2
    model = Counting(DiagonalGaussianEnergy(grid16, [0.5, 2.0]), shift=c)
    r = replica_exchange(model, 64, 200, seed=4)
    assert torch.allclose(r.f_diff, -(c[1:] - c[:-1]))
    err = r.log_Z_diff - r.f_diff
    assert torch.all((err / r.log_Z_diff_se.clamp(min=1e-4)).abs() < 4.0), err
    assert abs(float(err.sum())) < Z_MAX * r.log_Z_span_se
    assert err.abs().max() < 0.01


# -- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(n_chains=0), "n_chains"),
        (dict(n_rounds=0), "n_rounds"),
        (dict(levels=[0, 7, 16]), "levels"),
        (dict(levels=[-1, 15]), "levels"),
        (dict(levels=[0, 9, 9, 15]), "levels"),
        (dict(levels=[0, 9, 4, 15]), "levels"),
        (dict(levels=[0, 9]), "levels"),
        (dict(levels=1), "levels"),
        (dict(swap_every=0), "swap_every"),
        (dict(burn_in=10), "burn_in"),
        (dict(mcmc=MCMCConfig("hmc", n_steps=1)), "mcmc"),
        (dict(mcmc=MCMCConfig("mala", n_steps=0)), "mcmc"),
        (dict(seed=1, generator=torch.Generator()), "seed"),
    ],
)
def test_bad_input_is_a_config_error(gmm, grid16, kw, field):
    args = dict(n_chains=2, n_rounds=10) | kw
    n_chains, n_rounds = args.pop("n_chains"), args.pop("n_rounds")
    with pytest.raises(ConfigError, match=field):
        replica_exchange(ExactMixtureEnergy(gmm, grid16), n_chains, n_rounds, **args)


def test_target_of_another_dimension_is_a_config_error(gmm, grid16):
    other = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], 1.0)
    with pytest.raises(ConfigError, match="target"):
        replica_exchange(ExactMixtureEnergy(gmm, grid16), 2, 4, target=other)
