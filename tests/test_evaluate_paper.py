"""The high-dimensional mixture systems (standardised), and the DiffCLF paper's figures in `boltzdiff evaluate`:
the excess classification loss in the paper's units (summed over the levels of a chain), the per-level mode-weight
errors, and the MMD² of the model's samples against exact ones."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from _recipes import SMALL_GMM_TRAIN

from boltzdiff.cli import main
from boltzdiff.errors import ConfigError
from boltzdiff.evaluate import evaluate_mixture, noising_chains
from boltzdiff.evaluate_paper import mmd2_unbiased, model_mmd_report
from boltzdiff.models import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.systems import load_system
from boltzdiff.systems.builders import gaussian_mixture_from_spec
from boltzdiff.targets.gmm import GaussianMixture

SOFTPLUS1 = math.log1p(math.e)
UNEQUAL = [0.30, 0.20, 0.15, 0.10, 0.08, 0.07, 0.05, 0.05]


def exact_moments(g: GaussianMixture) -> tuple[torch.Tensor, float]:
    """Mean and isotropic variance, from the centred form (no cancellation), float64."""
    mean = g.weights @ g.means
    var = (g.weights * (((g.means - mean) ** 2).sum(-1) + g.dim * g.std**2)).sum() / g.dim
    return mean, float(var)


# ------------------------------------------------------------------------------------------------------------
# systems
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, dim, weights",
    [("gmm40_128d", 128, [1 / 40] * 40)] + [(f"gmm_unequal_{d}d", d, UNEQUAL) for d in (32, 64, 128)],
)
def test_high_dimensional_systems_are_standardised_mixtures_of_the_stated_construction(name, dim, weights):
    s = load_system(name)
    g = s.target
    K = len(weights)
    assert (g.dim, g.n_components) == (dim, K)
    assert torch.allclose(g.weights, torch.tensor(weights, dtype=torch.float64), rtol=0, atol=1e-15)
    assert min(g.weights) == pytest.approx(0.05 if K == 8 else 1 / 40)
    mean, var = exact_moments(g)
    assert float(mean.abs().max()) < 1e-10 and var == pytest.approx(1.0, abs=1e-10)
    # the same spec without the standardisation: means uniform in [-40, 40]^d (seed 0), variance softplus(1);
    # the shipped mixture is its image under x -> (x - mu) / s
    spec = {k: v for k, v in s.spec.items() if k != "standardize"}
    raw = gaussian_mixture_from_spec(spec)
    assert float(raw.means.min()) >= -40 and float(raw.means.max()) <= 40
    assert torch.allclose(raw.std**2, torch.full((K,), SOFTPLUS1, dtype=torch.float64), rtol=1e-14)
    mu, sd = raw.data_moments()
    assert sd == pytest.approx(math.sqrt(exact_moments(raw)[1]), rel=1e-12)
    assert torch.allclose(g.means, (raw.means - mu) / sd, rtol=0, atol=1e-12)
    assert torch.allclose(g.std, raw.std / sd, rtol=1e-14)
    train = s.run_defaults["train"]
    assert (train["width"], train["depth"], train["n_levels"], train["k"]) == (256, 3, 64, 4)


def test_standardize_is_an_exact_affine_map_and_refuses_non_booleans():
    spec = dict(kind="gaussian_mixture", weights=[0.2, 0.8], means=[[3.0, -1.0, 5.0], [10.0, 2.0, 0.5]], std=[0.5, 2])
    g = gaussian_mixture_from_spec({**spec, "standardize": True})
    mean, var = exact_moments(g)
    assert float(mean.abs().max()) < 1e-12 and var == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(g.std[1] / g.std[0], torch.tensor(4.0, dtype=torch.float64))
    plain = gaussian_mixture_from_spec({**spec, "standardize": False})
    assert torch.equal(plain.means, gaussian_mixture_from_spec(spec).means)
    for bad in ("yes", 1, None, [True]):
        with pytest.raises(ConfigError, match=r"field 'standardize' expected true or false"):
            gaussian_mixture_from_spec({**spec, "standardize": bad}, where="s.yaml")


# ------------------------------------------------------------------------------------------------------------
# the excess classification loss in the paper's units
# ------------------------------------------------------------------------------------------------------------
def small():
    return GaussianMixture([0.7, 0.3], [[1.0] * 4, [-1.0] * 4], 0.3)


class ShiftedF(ExactMixtureEnergy):
    """Exact energies with the log-normalisers ``g`` instead of 0."""

    def __init__(self, gmm, grid, g):
        super().__init__(gmm, grid)
        self.g = g

    def log_norm(self):
        return self.g


KW = dict(n_chains=16, n_samples=100, n_samples_lowest=500, n_chains_fit=128, seed=3)


def test_exact_model_has_zero_excess_in_both_units():
    gmm, grid = small(), make_grid(VPSchedule(), 24, "logsnr")
    ev = evaluate_mixture(ExactMixtureEnergy(gmm, grid), gmm, **KW)
    assert ev.n_levels == 24
    assert ev.clf_excess == 0.0 and ev.clf_excess_paper == 0.0 and ev.clf_excess_paper_se == 0.0
    # the post-hoc f is fitted on other chains: near 0 (it cannot beat the exact f by more than its sampling error)
    assert ev.clf_excess_paper_fitted_f == 24 * ev.clf_excess_fitted_f
    assert abs(ev.clf_excess_paper_fitted_f) < 24 * 0.01
    assert len(ev.mode_weight_error_per_level) == 24 and ev.mode_weight_error_per_level[0] == ev.mode_weight_error
    # exact IS weights: each level's error is a few binomial SE of its exact samples at most
    se = [math.sqrt(0.21 / n) for n in [500] + [100] * 23]
    assert all(e < 5 * s for e, s in zip(ev.mode_weight_error_per_level, se))


def test_shifted_log_normalisers_cost_the_closed_form_excess():
    """Exact energies with f = g: each element at level i costs g_i + log sum_b softmax_b(log p_tb(x)) e^{-g_b}
    over the exact model; computed here from log p_t directly on the same chains."""
    gmm, grid = small(), make_grid(VPSchedule(), 24, "logsnr")
    g = torch.randn(24, dtype=torch.float64, generator=torch.Generator().manual_seed(7)) * 0.5
    ev = evaluate_mixture(ShiftedF(gmm, grid, g), gmm, **KW)
    chains = noising_chains(gmm, grid, KW["n_chains"], torch.Generator().manual_seed(KW["seed"]))  # the scored ones
    N, C, _ = chains.shape
    lp = torch.stack(
        [gmm.log_prob_t(chains.reshape(N * C, -1), grid.alpha[b], grid.sigma[b]) for b in range(N)], -1
    ).reshape(N, C, N)
    post = torch.softmax(lp, -1)
    per_element = g[:, None] + torch.log((post * torch.exp(-g)).sum(-1))  # (N, C)
    expected = float(per_element.mean())
    assert expected > 0.01
    assert ev.clf_excess == pytest.approx(expected, rel=1e-4, abs=1e-6)  # energies are evaluated in float32
    assert ev.clf_excess_paper == 24 * ev.clf_excess  # exactly: the same number times N
    assert ev.clf_excess_paper == pytest.approx(float(per_element.sum(0).mean()), rel=1e-4)
    assert ev.clf_excess > 3 * ev.clf_excess_se and ev.clf_excess_paper_se == 24 * ev.clf_excess_se
    # the fitted f undoes a shift of f exactly (same fit chains as the exact model's)
    ev0 = evaluate_mixture(ExactMixtureEnergy(gmm, grid), gmm, **KW)
    assert ev.clf_excess_paper_fitted_f == pytest.approx(ev0.clf_excess_paper_fitted_f, abs=1e-5)
    # a constant shift is a gauge: no excess
    flat = evaluate_mixture(ShiftedF(gmm, grid, torch.full((24,), 2.5, dtype=torch.float64)), gmm, **KW)
    assert abs(flat.clf_excess_paper) < 1e-5


def test_wrong_weights_show_in_every_low_levels_mode_weight_error():
    gmm, grid = small(), make_grid(VPSchedule(), 24, "logsnr")
    wrong = ExactMixtureEnergy(gmm, grid, weights=torch.tensor([0.1, 0.9], dtype=torch.float64))
    ev = evaluate_mixture(wrong, gmm, **KW)
    err = np.array(ev.mode_weight_error_per_level)
    assert err[0] == ev.mode_weight_error == pytest.approx(0.6, abs=0.05)
    assert np.all(err[:8] > 0.45)  # the modes stay apart at the low levels, so the model's weights show there


# ------------------------------------------------------------------------------------------------------------
# MMD²
# ------------------------------------------------------------------------------------------------------------
def test_mmd_of_identical_sets_is_zero_up_to_its_diagonal_and_two_gaussians_differ():
    gen = torch.Generator().manual_seed(0)
    n = 300
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    same = mmd2_unbiased(x, x, bandwidth=1.0)
    assert -2 / n <= same <= 0  # unbiased MMD² of a set with itself: the kernel's mean lies in [0, 1]
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    null = [mmd2_unbiased(torch.randn(n, 2, generator=gen), torch.randn(n, 2, generator=gen), 1.0) for _ in range(20)]
    shifted = mmd2_unbiased(x, y + 3.0, bandwidth=1.0)
    assert shifted > 0.3 and shifted > 50 * np.std(null)


def test_mmd_between_exact_sample_sets_is_consistent_with_zero():
    """The unbiased MMD² has mean 0 when both sets come from the target: z-score of its mean over 40 independent
    pairs (n = 150 in 4-D, bandwidth 1.5)."""
    gmm, gen = small(), torch.Generator().manual_seed(11)
    v = np.array([mmd2_unbiased(gmm.sample(150, gen), gmm.sample(150, gen), 1.5) for _ in range(40)])
    z = v.mean() / (v.std(ddof=1) / math.sqrt(len(v)))
    assert abs(z) < 4 and v.std() > 0


def test_model_mmd_report_separates_a_wrong_model_from_the_floor():
    gmm, grid = small(), make_grid(VPSchedule(), 32, "logsnr")
    good = model_mmd_report(ExactMixtureEnergy(gmm, grid), gmm, n=400, seed=1)
    wrong = ExactMixtureEnergy(gmm, grid, weights=torch.tensor([0.1, 0.9], dtype=torch.float64))
    bad = model_mmd_report(wrong, gmm, n=400, seed=1)
    assert good["mmd_n"] == 400 and good["mmd_n_nonfinite"] == 0 and good["mmd_sampler"] == "reverse_sde"
    assert good["mmd_bandwidth"] == bad["mmd_bandwidth"] > 0  # fixed by the exact samples, the same for both
    assert abs(good["mmd_exact_floor"]) < 5 * good["mmd_exact_floor_sd"]
    assert bad["mmd"] > 20 * bad["mmd_exact_floor_sd"] and bad["mmd"] > 10 * abs(good["mmd"])
    # the samples' own mode weights: the exact energy's within 4 binomial SE (n 400), the wrong one's at 0.1/0.9
    assert good["reverse_sde_mode_weight_error"] < 4 * math.sqrt(0.21 / 400)
    assert np.allclose(bad["reverse_sde_mode_weights"], [0.1, 0.9], atol=4 * math.sqrt(0.09 / 400))


# ------------------------------------------------------------------------------------------------------------
# boltzdiff evaluate
# ------------------------------------------------------------------------------------------------------------
def test_cli_evaluate_writes_the_paper_figures(tmp_path, capsys):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in SMALL_GMM_TRAIN.items() if k != "system"}))
    rd = tmp_path / "run"
    assert main(["train", "--system", "gmm2_unbalanced", "--config", str(cfg), "--out", str(rd), "--no-progress"]) == 0
    argv = ["evaluate", str(rd), "--n-chains", "4", "--n-samples", "50", "--smc-particles", "0"]
    assert main(argv + ["--mmd-samples", "1"]) == 2
    assert "--mmd-samples" in capsys.readouterr().err
    assert main(argv + ["--mmd-samples", "60"]) == 0
    ev = json.loads((rd / "eval.json").read_text())
    assert ev["n_levels"] == 16 and ev["clf_excess_paper"] == 16 * ev["clf_excess"]
    assert ev["clf_excess_paper_fitted_f"] == 16 * ev["clf_excess_fitted_f"]
    per_level = ev["mode_weight_error_per_level"]
    assert len(per_level) == 16 and per_level[0] == ev["mode_weight_error"]
    assert ev["mmd_n"] == 60 and math.isfinite(ev["mmd"]) and ev["mmd_bandwidth"] > 0
    assert main(argv) == 0 and "mmd" not in json.loads((rd / "eval.json").read_text())  # off by default
