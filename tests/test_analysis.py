"""The analysis layer against exact answers (fixed seeds; each tolerance is stated next to its check)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from boltzdiff.analysis import (
    clean_log_weights,
    distance_histogram,
    free_energy_profile,
    free_energy_surface,
    jensen_shannon,
    kish_ess_trace,
    normalized_weights,
    pairwise_distances,
    pmf_rmse,
    two_state_delta_f,
    wasserstein_1,
    weighted_histogram_1d,
    weighted_histogram_2d,
    weighted_mean,
    weighted_var,
    wrap_angle,
)
from boltzdiff.analysis.free_energy import bootstrap_indices
from boltzdiff.analysis.report import (
    plot_distance_histograms,
    plot_energy_histograms,
    plot_ess_trace,
    plot_free_energy_profiles,
    plot_ramachandran,
    write_json_atomic,
    write_report_md,
)
from boltzdiff.samplers.resampling import kish_ess


def delta_f_phi(phi, log_w=None, n_bootstrap: int = 200, rng=None):
    """ΔF of the state 0 < phi < 2 (phi wrapped) against the rest, as a system's ``states`` declares it."""
    from boltzdiff.analysis.states import CVInterval, delta_f_states

    return delta_f_states(CVInterval("phi", 0.0, 2.0).contains(phi), None, log_w, n_bootstrap=n_bootstrap, rng=rng)


# ------------------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------------------
def test_ess_known_weights():
    n = 50
    assert kish_ess(np.zeros(n)) == pytest.approx(1.0, abs=1e-14)
    # equal weights with a huge offset: no overflow
    assert kish_ess(np.full(n, 1e4)) == pytest.approx(1.0, abs=1e-12)
    one = np.full(n, -np.inf)
    one[7] = 3.0
    assert kish_ess(one) == pytest.approx(1.0 / n, abs=1e-14)
    # (1 + 2 + 3 + 4)^2 / (4 * (1 + 4 + 9 + 16)) = 100 / 120
    assert kish_ess(np.log([1.0, 2.0, 3.0, 4.0]) - 800.0) == pytest.approx(100 / 120, rel=1e-12)
    assert kish_ess(np.full(4, -np.inf)) == 0.0
    # log-normal weights, log w ~ N(0, s^2): ESS -> E[w]^2 / E[w^2] = exp(-s^2); n = 2e5 gives ~1% noise
    rng = np.random.default_rng(0)
    s = 0.7
    assert kish_ess(rng.normal(0, s, 200_000)) == pytest.approx(math.exp(-(s**2)), rel=0.03)
    np.testing.assert_allclose(kish_ess_trace(np.zeros((3, 10))), np.ones(3))


def test_weights_moments_and_cleaning():
    lw = np.log([1.0, 3.0])
    np.testing.assert_allclose(normalized_weights(lw), [0.25, 0.75])
    assert weighted_mean([2.0, 6.0], lw) == pytest.approx(5.0)
    assert weighted_var([2.0, 6.0], lw) == pytest.approx(0.25 * 9 + 0.75 * 1)
    # a zero-weight overflowed value is ignored
    assert weighted_mean([1.0, np.inf], [0.0, -np.inf]) == 1.0
    with pytest.raises(ValueError):
        kish_ess([0.0, np.nan])
    c = clean_log_weights([0.0, np.nan, np.inf, -np.inf])
    assert c.n_invalid == 2 and c.n_zero == 3
    assert kish_ess(c.log_w_n) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        normalized_weights([-np.inf, -np.inf])


# ------------------------------------------------------------------------------------------------------------
# histograms and profiles of a known density
# ------------------------------------------------------------------------------------------------------------
KAPPA = 2.0


def _von_mises_reweighted(n: int, seed: int, kappa: float = KAPPA):
    """Uniform proposal on [-pi, pi) reweighted to a von Mises(0, kappa): log w = kappa cos x."""
    x = np.random.default_rng(seed).uniform(-math.pi, math.pi, n)
    return x, kappa * np.cos(x)


def _vm_bin_mass(edges, kappa=KAPPA):
    return np.diff(stats.vonmises.cdf(edges, kappa))


def test_weighted_histogram_of_known_density():
    n, n_bins = 40_000, 30
    x, lw = _von_mises_reweighted(n, seed=1)
    h = weighted_histogram_1d(x, lw, bins=n_bins, periodic=True)
    p_true = _vm_bin_mass(h.edges)
    assert h.p_b.sum() == pytest.approx(1.0) and h.mass_in_range == pytest.approx(1.0)
    # delta-method SE of the self-normalised estimate of each bin mass: sum_n w_n^2 (1_b(x_n) - p_b)^2
    w = normalized_weights(lw)
    onehot = np.searchsorted(h.edges, x, side="right")[:, None] - 1 == np.arange(n_bins)[None, :]
    se = np.sqrt(np.sum(w[:, None] ** 2 * (onehot - h.p_b[None, :]) ** 2, axis=0))
    z = (h.p_b - p_true) / se
    # 30 z-scores: each |z| < 4 (P(any exceeds) ~ 2e-3), chi^2 / dof < 2 (P ~ 1e-3 for dof 29)
    assert np.max(np.abs(z)) < 4.0
    assert np.sum(z**2) / (n_bins - 1) < 2.0


def test_free_energy_profile_of_known_density_and_bootstrap_se():
    n, n_bins = 40_000, 25  # odd: one bin is centred on the peak, so the min-shift bin is well defined
    x, lw = _von_mises_reweighted(n, seed=2)
    prof = free_energy_profile(x, lw, bins=n_bins, n_bootstrap=200, rng=3)
    f_true = -np.log(_vm_bin_mass(prof.edges))
    f_true -= f_true.min()
    m = int(np.argmin(prof.f_b))
    assert prof.f_b[m] == 0.0 and m == n_bins // 2
    others = np.arange(n_bins) != m
    # the exact profile spans 2 kappa = 4 kT; every bin within 4 bootstrap SEs
    assert np.all(np.abs(prof.f_b - f_true)[others] < 4 * prof.se_b[others])
    # the bootstrap SE of F_b = ln S_m - ln S_b (S_b = sum of the weights in bin b) against the delta method,
    # Var = C_bb / S_b^2 + C_mm / S_m^2 - 2 C_bm / (S_b S_m), C the sample covariance of w_n 1_b(x_n) (x n):
    # within 20% (200 replicates give ~5% noise on an SE)
    w = normalized_weights(lw)
    b_n = np.searchsorted(prof.edges, x, side="right") - 1
    y = np.stack([w * (b_n == b) for b in range(n_bins)], axis=1)
    s_b = y.sum(0)
    c = (y - s_b / n).T @ (y - s_b / n)
    var = np.diag(c) / s_b**2 + c[m, m] / s_b[m] ** 2 - 2 * c[:, m] / (s_b * s_b[m])
    ratio = prof.se_b[others] / np.sqrt(var[others])
    assert np.all((ratio > 0.8) & (ratio < 1.2)), ratio
    assert np.all(prof.lo_b[others] < prof.f_b[others]) and np.all(prof.f_b[others] < prof.hi_b[others])


def test_histogram_2d_and_surface():
    rng = np.random.default_rng(4)
    phi = rng.uniform(-math.pi, math.pi, 20_000)
    psi = rng.uniform(-math.pi, math.pi, 20_000)
    # weights depending only on phi: the 2-D mass factorises as p(phi-bin) * 1/n_psi
    lw = KAPPA * np.cos(phi)
    h = weighted_histogram_2d(phi + 2 * math.pi, psi, lw, bins=(12, 6))  # wrapped back to [-pi, pi)
    assert h.p_xy.shape == (12, 6) and h.p_xy.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(h.p_xy.sum(1), _vm_bin_mass(h.edges_x), atol=0.01)
    s = free_energy_surface(phi, psi, lw, bins=10, n_bootstrap=5, rng=0)
    assert s.f_xy.shape == (10, 10) and np.nanmin(s.f_xy) == 0.0 and np.isfinite(s.se_xy).all()


def test_wrap_angle():
    np.testing.assert_allclose(
        wrap_angle([math.pi, -math.pi, 3 * math.pi / 2, 0.1]), [-math.pi, -math.pi, -math.pi / 2, 0.1]
    )


# ------------------------------------------------------------------------------------------------------------
# ΔF
# ------------------------------------------------------------------------------------------------------------
def test_delta_f_two_state_known_populations():
    rng = np.random.default_rng(5)
    n, p_a = 20_000, 0.25
    in_a = rng.random(n) < p_a
    phi = np.where(in_a, rng.uniform(0.05, 1.95, n), rng.uniform(-3.1, -0.1, n))
    d = delta_f_phi(phi, n_bootstrap=300, rng=6)
    truth = -math.log(p_a / (1 - p_a))  # ln 3
    se_exact = 1 / math.sqrt(n * p_a * (1 - p_a))  # delta method for the log-odds of a binomial
    assert abs(d.delta_f - truth) < 4 * se_exact
    assert d.se == pytest.approx(se_exact, rel=0.15)  # bootstrap SE of 300 replicates: ~4% noise
    # phi outside (0, 2) but with positive sign (2 < phi < pi) is "elsewhere"; phi exactly 2 too
    assert delta_f_phi(np.array([1.0, 2.5, 2.0, -1.0]), n_bootstrap=0).delta_f == pytest.approx(math.log(3))
    # weighted: uniform states, state A weighted by e^c -> ΔF = -c exactly
    lw = np.where(in_a, 1.3, 0.0)
    d_w = two_state_delta_f(in_a, lw, n_bootstrap=0)
    assert d_w.delta_f == pytest.approx(-1.3 - math.log(in_a.mean() / (1 - in_a.mean())), abs=1e-12)
    # an empty state gives an infinite ΔF, not an exception
    assert delta_f_phi(np.array([-1.0, -2.0]), n_bootstrap=10, rng=0).delta_f == math.inf


def test_bootstrap_coverage_weighted_delta_f():
    """Over 200 seeded replicates, estimate ± 1 SE covers the exact ΔF in 68.3% ± 3 binomial sigmas (9.9%)."""
    kappa, n, n_rep = 1.0, 400, 200
    p_a = stats.vonmises.cdf(2.0, kappa) - stats.vonmises.cdf(0.0, kappa)
    truth = -math.log(p_a / (1 - p_a))
    covered = 0
    for r in range(n_rep):
        x, lw = _von_mises_reweighted(n, seed=1000 + r, kappa=kappa)
        d = delta_f_phi(x, lw, n_bootstrap=200, rng=r)
        covered += abs(d.delta_f - truth) <= d.se
    frac = covered / n_rep
    band = 3 * math.sqrt(0.6827 * 0.3173 / n_rep)
    assert abs(frac - 0.6827) < band, frac


def _sticky_two_state_chains(n_chains, n, a, b, rng):
    """Markov chains on {A, B}: A->B with prob a, B->A with prob b; stationary P(A) = b / (a + b)."""
    s = np.empty((n_chains, n), dtype=bool)
    s[:, 0] = rng.random(n_chains) < b / (a + b)
    u = rng.random((n_chains, n))
    for t in range(1, n):
        prev = s[:, t - 1]
        s[:, t] = np.where(prev, u[:, t] >= a, u[:, t] < b)
    return s


def test_block_bootstrap_for_correlated_samples():
    """Sticky chain (autocorrelation time ~ 39 steps): the i.i.d. bootstrap underestimates the SE badly; the
    block bootstrap (L = 400) matches the spread over independent chains within 30%."""
    rng = np.random.default_rng(7)
    chains = _sticky_two_state_chains(60, 4000, a=0.035, b=0.015, rng=rng)
    est, se_iid, se_block = [], [], []
    for c, s in enumerate(chains):
        est.append(two_state_delta_f(s, n_bootstrap=0).delta_f)
        se_iid.append(two_state_delta_f(s, n_bootstrap=100, rng=c).se)
        se_block.append(two_state_delta_f(s, n_bootstrap=100, rng=c, block_length=400).se)
    spread = np.std(est, ddof=1)
    assert np.mean(se_iid) < 0.4 * spread
    assert np.mean(se_block) == pytest.approx(spread, rel=0.3)


def test_bootstrap_indices_block_structure():
    idx = bootstrap_indices(10, 3, rng=0, block_length=4)
    assert idx.shape == (3, 10)
    d = np.diff(idx, axis=1) % 10
    # within a block (positions 0-3, 4-7, 8-9) consecutive indices differ by one (mod n)
    assert np.all(d[:, [0, 1, 2, 4, 5, 6, 8]] == 1)


# ------------------------------------------------------------------------------------------------------------
# comparisons
# ------------------------------------------------------------------------------------------------------------
def test_pmf_rmse_offset_and_population():
    f_ref = np.array([0.0, 1.0, 2.0, np.inf, 4.0])
    f = f_ref + 3.0
    f[0] = np.inf  # unpopulated in the model: excluded
    c = pmf_rmse(f, f_ref)
    assert c.rmse == pytest.approx(0.0, abs=1e-12) and c.offset == pytest.approx(3.0) and c.n_bins == 3
    # noise +-d on two bins: after removing the mean offset, the RMSE is d
    g = np.array([0.0, 1.5, 1.5, 3.0])
    c2 = pmf_rmse(g, np.array([0.0, 1.0, 2.0, 3.0]))
    assert c2.offset == pytest.approx(0.0) and c2.rmse == pytest.approx(math.sqrt(0.5 / 4))
    assert pmf_rmse(g, np.array([0.0, 1.0, 2.0, 3.0]), f_max=1.5).n_bins == 2
    assert math.isnan(pmf_rmse([np.inf], [0.0]).rmse)


def test_jensen_shannon_limits():
    rng = np.random.default_rng(8)
    p = rng.random((6, 6))
    assert jensen_shannon(p, 3 * p) == pytest.approx(0.0, abs=1e-14)
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[:2] = 1.0
    b[2:] = 1.0
    assert jensen_shannon(a, b) == pytest.approx(math.log(2))
    q = rng.random((6, 6))
    js = jensen_shannon(p, q)
    assert 0 < js < math.log(2) and js == pytest.approx(jensen_shannon(q, p))


def test_wasserstein_1():
    rng = np.random.default_rng(9)
    a = rng.normal(size=500)
    assert wasserstein_1(a, a + 0.7) == pytest.approx(0.7, abs=1e-12)
    b = rng.normal(size=300) * 2
    lwa, lwb = rng.normal(size=500), rng.normal(size=300)
    ref = stats.wasserstein_distance(a, b, np.exp(lwa), np.exp(lwb))
    assert wasserstein_1(a, b, lwa, lwb) == pytest.approx(ref, rel=1e-10)
    # integer weights = repeated samples; zero weights drop (even infinite) values
    assert wasserstein_1([0.0, 1.0, np.inf], [0.0, 0.0, 1.0], [math.log(2), 0.0, -np.inf]) == pytest.approx(0.0)


def test_pairwise_distances_and_histogram():
    x = np.zeros((2, 3, 2))
    x[:, 1, 0] = 1.0
    x[:, 2, 1] = 2.0
    d = pairwise_distances(x)
    np.testing.assert_allclose(d[0], [1.0, 2.0, math.sqrt(5)])
    h = distance_histogram(x, bins=4, range=(0.0, 4.0))
    np.testing.assert_allclose(h.p_b, [0.0, 1 / 3, 2 / 3, 0.0])


# ------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------
def test_json_atomic_and_report(tmp_path):
    p = write_json_atomic(
        tmp_path / "analysis.json",
        {"ess": np.float32(0.5), "n": np.int64(3), "a": np.arange(2), "bad": float("nan")},
    )
    d = json.loads(p.read_text())
    assert d == {"ess": 0.5, "n": 3, "a": [0, 1], "bad": None}
    assert [f.name for f in tmp_path.iterdir()] == ["analysis.json"]  # no temp file left behind
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "analysis.json", {"x": object()})
    assert json.loads(p.read_text()) == d  # old content survives a failed write
    assert [f.name for f in tmp_path.iterdir()] == ["analysis.json"]

    rng = np.random.default_rng(10)
    phi, psi = rng.uniform(-3, 3, 500), rng.uniform(-3, 3, 500)
    lw = np.cos(phi)
    prof = free_energy_profile(phi, lw, bins=20, n_bootstrap=10, rng=0)
    figs = [
        ("Ramachandran", plot_ramachandran(phi, psi, phi, psi, lw, tmp_path / "rama.png", bins=20)),
        ("F(phi)", plot_free_energy_profiles({"model": prof}, tmp_path / "fphi.png")),
        (
            "energies",
            plot_energy_histograms(
                {"MD": (phi, None), "rw": (np.append(phi, np.inf), np.append(lw, 0))}, tmp_path / "u.png"
            ),
        ),
        (
            "ESS",
            plot_ess_trace(np.linspace(1, 0.2, 10), tmp_path / "ess.png", resample_t=np.arange(10) % 3 == 0),
        ),
        (
            "distances",
            plot_distance_histograms({"ref": distance_histogram(rng.normal(size=(5, 4, 3)))}, tmp_path / "dist.png"),
        ),
    ]
    for _, png in figs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = write_report_md(tmp_path / "report.md", "ALDP", {"ess": 0.123456, "delta_f_kT": 1.5, "x": None}, figs)
    text = r.read_text()
    assert "| ess | 0.1235 |" in text and "![F(phi)](fphi.png)" in text and text.startswith("# ALDP")


def test_pooling_independent_runs_by_their_normalising_constants():
    """Plain importance sampling split into runs: weights normalised per run and scaled by each run's Z
    estimate (its mean weight) are the raw weights again up to one constant, so pooled = one big run."""
    from boltzdiff.analysis.weights import pool_runs

    rng = np.random.default_rng(3)
    x = rng.normal(size=3000)
    log_w = -0.5 * (x - 0.5) ** 2 + 0.5 * x**2  # N(0.5, 1) target over a N(0, 1) proposal, unnormalised
    run = np.repeat([0, 1, 2], [500, 1000, 1500])
    log_z = [np.log(np.mean(np.exp(log_w[run == r]))) for r in range(3)]
    pooled = pool_runs(log_w, run, log_z)
    assert np.allclose(pooled - pooled[0], log_w - log_w[0], atol=1e-10)
    # a run's Z scales its share: doubling run 2's Z doubles its total weight relative to the others
    p2 = pool_runs(log_w, run, [log_z[0], log_z[1], log_z[2] + np.log(2.0)])
    share = lambda lw, r: np.exp(lw[run == r]).sum() / np.exp(lw).sum()  # noqa: E731
    s0, s2 = share(pooled, 2), share(p2, 2)
    assert s2 / (1 - s2) == pytest.approx(2 * s0 / (1 - s0), rel=1e-10)
    with pytest.raises(ValueError, match="run labels"):
        pool_runs(log_w, run[:-1], log_z)


def test_jackknife_over_runs_of_a_mean_is_the_standard_error_of_the_run_means():
    """For a mean over equal-size runs the delete-one-run jackknife SE is exactly SD(run means) / sqrt(R)."""
    from boltzdiff.analysis.weights import jackknife_over_runs

    rng = np.random.default_rng(4)
    y = rng.normal(size=(5, 40)) + rng.normal(size=(5, 1))
    run = np.repeat(np.arange(5), 40)
    est, se = jackknife_over_runs(lambda m: y.reshape(-1)[m].mean(), run)
    assert est == pytest.approx(y.mean())
    assert se == pytest.approx(y.mean(1).std(ddof=1) / np.sqrt(5), rel=1e-12)
    assert np.isnan(jackknife_over_runs(lambda m: 1.0, np.zeros(10))[1])  # one run: no error bar
    assert np.isnan(jackknife_over_runs(lambda m: np.inf if not m[0] else 0.0, run)[1])


def test_leave_one_run_out_gives_the_estimate_without_each_run():
    """Runs in sorted label order, whatever order their particles come in; the jackknife SE from them."""
    from boltzdiff.analysis.weights import jackknife_se, leave_one_run_out

    y = np.array([1.0, 1.0, 4.0, 7.0, 7.0, 7.0])
    run = np.array([2, 2, 0, 5, 5, 5])  # runs 0, 2, 5 hold means 4, 1, 7
    loo = leave_one_run_out(lambda m: y[m].mean(), run)
    assert loo.tolist() == pytest.approx([(2 + 21) / 5, 25 / 4, 6 / 3])
    assert jackknife_se(loo) == pytest.approx(np.sqrt(2 / 3 * np.sum((loo - loo.mean()) ** 2)))
    assert np.isnan(jackknife_se(loo[:1])) and np.isnan(jackknife_se([1.0, np.nan]))
    # one run: nothing is left without it, and the estimate is never asked for an empty selection
    assert leave_one_run_out(lambda m: y[m].mean() if m.any() else 1 / 0, np.zeros(6)).size == 0


def test_top_lineage_share_sums_a_lineages_copies():
    from boltzdiff.analysis.weights import top_lineage_share

    lw = np.log(np.array([1.0, 1.0, 2.0, 4.0]))
    assert top_lineage_share(lw, [3, 3, 1, 0]) == pytest.approx(0.5)  # lineage 0 alone: 4 / 8
    assert top_lineage_share(lw, [3, 3, 3, 0]) == pytest.approx(0.5)  # lineage 3: (1 + 1 + 2) / 8
    assert top_lineage_share(lw, [3, 3, 0, 0]) == pytest.approx(0.75)
    # a zero-weight (non-finite) particle counts for nothing
    assert top_lineage_share(np.array([0.0, np.nan, 0.0]), [1, 2, 2]) == pytest.approx(0.5)
    assert np.isnan(top_lineage_share(np.array([np.nan, -np.inf]), [1, 2]))  # no weight anywhere


def test_runs_table_lists_every_run_and_only_with_several():
    from boltzdiff.analysis.pipeline_analysis import runs_table_md

    res = dict(
        delta_f_kT=3.06,
        delta_f_se_kT=1.13,
        delta_f_runs_kT=[4.21, 0.63, 4.8],
        basin_lineages_runs=[47, 13, 29],
        top_lineage_share_runs=[0.05, 0.26, 0.04],
        delta_f_loo_kT=[2.9, 4.3, None],
    )
    md = runs_table_md(res)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| run")]
    assert len(rows) == 3 and rows[1] == "| 1 | 0.63 | 13 | 0.26 | 4.3 |" and rows[2].endswith("| - |")
    assert "3.06 ± 1.13 kT" in md
    assert runs_table_md(dict(delta_f_runs_kT=[4.2])) is None and runs_table_md({}) is None
    # a column that does not match the runs is left out, not misaligned
    assert "basin lineages" not in runs_table_md(dict(res, basin_lineages_runs=[1]))


def test_delta_f_over_models_is_the_jackknife_over_whole_models():
    """Three models, two runs each, equal weights: each model's ΔF is the log-odds of its own particles, the
    pooled ΔF without a model that of the other two's, and the SE the delete-one jackknife of those; the runs
    table then names each run's model and lists the models."""
    from boltzdiff.analysis.pipeline_analysis import delta_f_over_models, runs_table_md
    from boltzdiff.analysis.weights import jackknife_se

    basin, rest = 1.0, -2.0  # phi inside and outside the 0 < phi < 2 basin
    counts = [(10, 90), (20, 80), (5, 95)]  # (basin, rest) particles of models 0, 1, 2
    phi = np.concatenate([np.r_[np.full(b, basin), np.full(o, rest)] for b, o in counts])
    model = np.repeat([0, 1, 2], 100)
    run = np.tile(np.repeat([0, 1], 50), 3) + 2 * model  # runs 0-5, two per model
    out = delta_f_over_models((phi > 0) & (phi < 2), np.zeros(300), model, run, se_runs=0.1)

    def log_odds(b, o):
        return -np.log(b / o)

    assert out["delta_f_models_kT"] == pytest.approx([log_odds(*c) for c in counts], rel=1e-12)
    loo = [log_odds(25, 175), log_odds(15, 185), log_odds(30, 170)]
    assert out["delta_f_loo_models_kT"] == pytest.approx(loo, rel=1e-12)
    assert out["delta_f_se_kT"] == pytest.approx(jackknife_se(loo), rel=1e-12)
    assert out["delta_f_se_method"] == "jackknife over 3 independently trained models (6 SMC runs in all)"
    assert out["model_of_run"] == [0, 0, 1, 1, 2, 2] and out["delta_f_se_runs_kT"] == 0.1
    res = dict(out, delta_f_kT=log_odds(35, 265), delta_f_runs_kT=[2.0] * 6)
    md = runs_table_md(res)
    assert "jackknife over trained models" in md and "| 5 | 2 | 2 |" in md
    assert f"| 2 | {loo[2]:.3g} |" not in md and f"| 2 | {log_odds(5, 95):.3g} | {loo[2]:.3g} |" in md


def test_lineage_bootstrap_counts_copies_of_one_draw_once():
    """n independent two-state draws, each copied m times (as SMC resampling copies a particle): the particle
    bootstrap's SE shrinks like 1/sqrt(m); the cluster bootstrap over the draws keeps the exact SE of the
    log-odds, 1/sqrt(n p (1 - p)) (delta method), to its Monte-Carlo error (2000 replicates: ~1.6 %)."""
    rng = np.random.default_rng(7)
    n, m, p = 2000, 10, 0.3
    a = rng.random(n) < p
    p_hat = a.mean()
    exact = 1.0 / np.sqrt(n * p_hat * (1 - p_hat))
    copies = np.repeat(a, m)
    labels = np.repeat(np.arange(n), m)
    se_part = two_state_delta_f(copies, n_bootstrap=2000, rng=1).se
    se_clus = two_state_delta_f(copies, n_bootstrap=2000, rng=1, clusters=labels).se
    assert abs(se_clus / exact - 1) < 0.06  # ~4 Monte-Carlo SDs
    assert abs(se_part / (exact / np.sqrt(m)) - 1) < 0.06
    # the estimate itself does not depend on the clusters; one label per sample is the particle bootstrap
    same = two_state_delta_f(copies, clusters=labels, n_bootstrap=0).delta_f
    assert same == two_state_delta_f(a, n_bootstrap=0).delta_f
    se_one = two_state_delta_f(a, n_bootstrap=2000, rng=2, clusters=np.arange(n)).se
    assert abs(se_one / exact - 1) < 0.06
    with pytest.raises(ValueError, match="clusters"):
        two_state_delta_f(a, n_bootstrap=10, clusters=np.arange(n - 1))
