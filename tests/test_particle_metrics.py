"""Particle-system metrics (boltzdiff.analysis.particles): 1-D W1/W2 from quantile functions, histogram TV,
distance metrics, against closed forms and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtri
from scipy.stats import norm

from boltzdiff.analysis.compare import wasserstein_1
from boltzdiff.analysis.particles import (
    histogram_quantiles,
    histogram_tv,
    load_reference_summary,
    particle_metrics,
    sample_quantiles,
    wasserstein,
)


def _gauss_quantiles(mu, sigma, n):
    """``n`` equally weighted points at the Gaussian's quantiles ``(k + 1/2) / n``."""
    return mu + sigma * ndtri((np.arange(n) + 0.5) / n)


def test_w1_w2_of_gaussian_quantiles_closed_forms():
    n = 4001
    a, b = _gauss_quantiles(0.3, 1.0, n), _gauss_quantiles(-1.2, 1.0, n)
    # equal widths: the quantile functions differ by the constant shift everywhere
    assert wasserstein(a, b, 1) == pytest.approx(1.5, abs=1e-12)
    assert wasserstein(a, b, 2) == pytest.approx(1.5, abs=1e-12)
    # different widths: W2^2 = dmu^2 + dsigma^2 * mean(z_k^2) exactly for these points (sum z_k = 0), and
    # -> dmu^2 + dsigma^2 for the Gaussians themselves
    c = _gauss_quantiles(-1.2, 2.5, n)
    z = ndtri((np.arange(n) + 0.5) / n)
    assert wasserstein(a, c, 2) ** 2 == pytest.approx(1.5**2 + 1.5**2 * np.mean(z**2), rel=1e-12)
    assert wasserstein(a, c, 2) ** 2 == pytest.approx(1.5**2 + 1.5**2, rel=2e-3)
    # W1 <= W2, and W1 >= |dmu| (Jensen)
    assert 1.5 - 1e-12 <= wasserstein(a, c, 1) <= wasserstein(a, c, 2)


def test_histogram_reference_of_a_gaussian():
    """A fine histogram of N(2, 0.5^2) (exact bin masses) against Gaussian-quantile samples of N(2.4, 0.5^2): the
    histogram's quantile function is uniform within bins, so W1 ~ 0.4 up to the bin width."""
    edges = np.linspace(-1.0, 5.0, 1201)
    p = np.diff(norm.cdf(edges, 2.0, 0.5))
    s = _gauss_quantiles(2.4, 0.5, 20001)
    assert wasserstein(s, {"edges": edges, "p": p}, 1) == pytest.approx(0.4, abs=2e-3)
    assert wasserstein({"edges": edges, "p": p}, s, 2) == pytest.approx(0.4, abs=2e-3)
    # a histogram against itself shifted by whole bins: exactly the shift
    assert wasserstein({"edges": edges, "p": p}, {"edges": edges + 0.25, "p": p}, 1) == pytest.approx(0.25, abs=1e-12)
    assert wasserstein({"edges": edges, "p": p}, {"edges": edges + 0.25, "p": p}, 2) == pytest.approx(0.25, abs=1e-12)


def test_hand_computed_cases():
    assert wasserstein([0.0], [1.0], 1) == pytest.approx(1.0)
    # {0, 1} vs {0.5}: |Q_A - Q_B| = 0.5 everywhere
    assert wasserstein([0.0, 1.0], [0.5], 1) == pytest.approx(0.5, abs=1e-15)
    assert wasserstein([0.0, 1.0], [0.5], 2) == pytest.approx(0.5, abs=1e-15)
    # a point mass at 0 vs uniform on [0, 1] (one-bin histogram): W1 = 1/2, W2 = sqrt(1/3)
    h = {"edges": [0.0, 1.0], "p": [1.0]}
    assert wasserstein([0.0], h, 1) == pytest.approx(0.5, abs=1e-15)
    assert wasserstein([0.0], h, 2) == pytest.approx(math.sqrt(1 / 3), abs=1e-15)
    # uniform [0, 1] vs point mass at 1/2: int |q - 1/2| = 1/4 (the linear difference changes sign mid-segment)
    assert wasserstein(h, [0.5], 1) == pytest.approx(0.25, abs=1e-15)
    assert wasserstein(h, [0.5], 2) == pytest.approx(math.sqrt(1 / 12), abs=1e-15)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        wasserstein([0.0], [1.0], 3)


def test_weighted_equals_unweighted_on_duplicated_samples():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=7), rng.normal(1.0, 2.0, size=5)
    counts = np.array([1, 3, 2, 5, 1, 4, 2])
    dup = np.repeat(x, counts)
    for p in (1, 2):
        assert wasserstein((x, np.log(counts)), y, p) == pytest.approx(wasserstein(dup, y, p), abs=1e-12)
    # zero weights drop samples; unnormalised log-weights are fine
    lw = np.r_[np.log(counts) + 7.0, -np.inf]
    assert wasserstein((np.r_[x, 99.0], lw), y, 1) == pytest.approx(wasserstein(dup, y, 1), abs=1e-12)
    # the same number as the project's CDF-based W1
    w = rng.normal(size=7)
    assert wasserstein((x, w), (y, None), 1) == pytest.approx(wasserstein_1(x, y, w), abs=1e-12)


def test_quantile_functions():
    q = sample_quantiles([3.0, 1.0, 2.0], np.log([1.0, 2.0, 1.0]))
    np.testing.assert_allclose(q.q, [0, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(q.lo, [1.0, 2.0, 3.0])
    h = histogram_quantiles([0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 3.0])  # the empty bin is skipped
    np.testing.assert_allclose(h.q, [0, 0.25, 1.0])
    np.testing.assert_allclose(h.lo, [0.0, 2.0])
    np.testing.assert_allclose(h.hi, [1.0, 3.0])
    with pytest.raises(ValueError):
        histogram_quantiles([0.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        sample_quantiles([0.0, np.inf])


def test_histogram_tv():
    p = np.array([0.2, 0.3, 0.5, 0.0])
    assert histogram_tv(p, p) == 0.0
    assert histogram_tv(p, 10 * p) == pytest.approx(0.0, abs=1e-15)  # normalised first
    assert histogram_tv([1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 3.0]) == 1.0
    assert histogram_tv([1.0, 0.0], [0.5, 0.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        histogram_tv([1.0], [1.0, 0.0])


def test_particle_metrics_against_samples_and_a_histogram(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4, 3))
    u = rng.normal(size=200)
    # against itself: zero distances (W2 up to rounding: equal weights 1/n from log-weights 0 differ from 1/n in
    # the last bit, which leaves slivers of q ~ 1e-16 wide where the quantiles differ by O(1); W2 ~ sqrt(1e-16))
    m = particle_metrics(u, x, None, ref_energy=u, ref_distances=x, distance_edges=np.linspace(0, 8, 81))
    assert m["energy_w1"] == pytest.approx(0.0, abs=1e-14) and m["energy_w2"] == pytest.approx(0.0, abs=1e-7)
    assert m["distance_w2"] == pytest.approx(0.0, abs=1e-7) and m["distance_tv"] == pytest.approx(0.0, abs=1e-14)
    # weights: keeping only the first half is the same as passing the first half
    lw = np.r_[np.zeros(100), np.full(100, -np.inf)]
    a = particle_metrics(u, x, lw, ref_energy=u[100:] + 1.0, ref_distances=x[100:], prefix="ref_")
    b = particle_metrics(u[:100], x[:100], None, ref_energy=u[100:] + 1.0, ref_distances=x[100:], prefix="ref_")
    for k in ("ref_energy_w1", "ref_energy_w2", "ref_distance_w2", "ref_distance_tv"):
        assert a[k] == pytest.approx(b[k], abs=1e-12), k
    assert a["ref_energy_w1_unweighted"] == pytest.approx(wasserstein(u, u[100:] + 1.0, 1), abs=1e-12)
    # a non-finite energy gets weight zero
    u2 = u.copy()
    u2[0] = np.nan
    c = particle_metrics(u2, x, None, ref_energy=u)
    assert c["energy_w1"] == pytest.approx(wasserstein(u[1:], u, 1), abs=1e-12)
    # a summary-style histogram reference: its bins are used for the TV
    edges = np.linspace(0, 8, 161)
    d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)[:, *np.triu_indices(4, 1)].ravel()
    hist = {"edges": edges.tolist(), "p": np.histogram(d, edges)[0].tolist()}
    m = particle_metrics(u, x, None, ref_distances=hist)
    assert m["distance_tv"] == pytest.approx(0.0, abs=1e-14) and m["distance_w2"] < 0.05 / 2
    f = tmp_path / "ref.json"
    assert load_reference_summary(f) is None
    f.write_text('{"energy_hist": {"edges": [0, 1], "p": [1]}, "distance_hist": {"edges": [0, 1], "p": [1]}}')
    assert load_reference_summary(f)["energy_hist"]["p"] == [1]
    f.write_text('{"energy_hist": {"edges": [0, 1]}}')
    with pytest.raises(ValueError, match="energy_hist"):
        load_reference_summary(f)


def _fake_lj_run(tmp_path, summary: dict | None):
    """A run directory of a 4-particle LJ system: samples (half of them with weight), reference frames, and
    optionally a reference summary beside the system.yaml."""
    import json

    sysdir = tmp_path / "lj4"
    sysdir.mkdir()
    (sysdir / "system.yaml").write_text("kind: lennard_jones\nn_particles: 4\ntemperature: 1.0\npair_sum: ordered\n")
    if summary is not None:
        (sysdir / "reference_summary.json").write_text(json.dumps(summary))
    out = tmp_path / "run"
    (out / "reference").mkdir(parents=True)
    rng = np.random.default_rng(3)
    base = np.array([[0.0, 0, 0], [1.0, 0, 0], [0.5, 0.87, 0], [0.5, 0.29, 0.82]])
    x = base + 0.05 * rng.standard_normal((64, 4, 3))
    ref = base + 0.05 * rng.standard_normal((80, 4, 3))
    np.savez(out / "samples.npz", x=x.reshape(64, 12), log_w=np.r_[np.zeros(32), np.full(32, -np.inf)])
    (out / "samples.json").write_text(
        json.dumps({"n_target_evals": 10, "n_model_evals": 5, "runs": [{"ess_before_final_resample": 0.4}]})
    )
    meta = {"system": "lj4", "system_path": str(sysdir / "system.yaml"), "variant": None, "preset": "quick"}
    (out / "pipeline.json").write_text(json.dumps(meta))
    np.save(out / "reference" / "positions.npy", ref.astype(np.float32))
    from boltzdiff import load_system

    u_ref = load_system(sysdir).target.energy(torch.as_tensor(ref.astype(np.float32).astype(np.float64))).numpy()
    np.save(out / "reference" / "energies.npy", u_ref)
    return out, x, ref, u_ref


def test_analyze_stage_reports_particle_metrics(tmp_path):
    """analysis.json and report.md of a particle run carry energy W2 and distance W2/TV against the run's
    reference and, when the system has a matching reference summary, against the summary."""
    import json

    from boltzdiff import load_system
    from boltzdiff.pipeline.analyze import analyze_run

    edges = np.linspace(-8.0, 2.0, 41)
    d_edges = np.linspace(0.0, 3.0, 61)
    summary = {
        "system": {"name": "lj4", "n_particles": 4, "pair_sum": "ordered", "temperature": 1.0},
        "mean_energy_kT": -5.0,
        "energy_hist": {"edges": edges.tolist(), "p": np.ones(40).tolist()},
        "distance_hist": {"edges": d_edges.tolist(), "p": np.ones(60).tolist()},
    }
    out, x, ref, u_ref = _fake_lj_run(tmp_path, summary)
    res = analyze_run(out, progress=False)
    target = load_system(tmp_path / "lj4").target
    u = target.energy(torch.as_tensor(x)).numpy()
    assert res["ess_before_final_resample"] == 0.4
    assert res["energy_w2_reweighted"] == pytest.approx(wasserstein(u[:32], u_ref, 2), abs=1e-9)
    assert res["energy_w1_reweighted"] == pytest.approx(wasserstein(u[:32], u_ref, 1), abs=1e-9)
    assert res["energy_w2_unweighted"] == pytest.approx(wasserstein(u, u_ref, 2), abs=1e-9)
    ref_d = np.linalg.norm(ref[:, :, None] - ref[:, None], axis=-1)[:, *np.triu_indices(4, 1)].ravel()
    d = np.linalg.norm(x[:32, :, None] - x[:32, None], axis=-1)[:, *np.triu_indices(4, 1)].ravel()
    assert res["distance_w2_reweighted"] == pytest.approx(wasserstein(d, ref_d, 2), abs=1e-6)  # float32 frames
    assert 0 < res["distance_tv_reweighted"] < 1
    # against the (flat) summary histograms
    assert res["summary_energy_w1_reweighted"] == pytest.approx(wasserstein(u[:32], summary["energy_hist"], 1))
    assert res["summary_distance_tv_reweighted"] == pytest.approx(
        histogram_tv(np.histogram(d, d_edges)[0], np.ones(60)), abs=1e-12
    )
    assert res["summary_mean_energy_kT"] == -5.0
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["summary_distance_w2_reweighted"] == pytest.approx(res["summary_distance_w2_reweighted"])
    report = (out / "report.md").read_text()
    for key in ("energy_w2_reweighted", "distance_tv_reweighted", "summary_energy_w2_reweighted"):
        assert f"| {key} |" in report
    # a summary of another convention is skipped, with the reason
    summary["system"]["pair_sum"] = "unique"
    (tmp_path / "lj4" / "reference_summary.json").write_text(json.dumps(summary))
    res = analyze_run(out, progress=False)
    assert "summary_energy_w1_reweighted" not in res and "pair_sum" in res["reference_summary_skipped"]


@pytest.mark.parametrize("name", ["lj13", "lj55"])
def test_shipped_reference_summaries_describe_their_systems_and_converged(name):
    """The summaries shipped beside lj13/lj55 are found for the shipped systems, their histograms are normalised
    with (almost) nothing outside, the mean lies inside the quantiles, and independent halves of the chains agree
    (|z| < 3) with no drift between the production's halves."""
    import boltzdiff
    from boltzdiff.analysis.particles import find_reference_summary

    summary, why = find_reference_summary(boltzdiff.load_system(name))
    assert why is None and summary is not None and summary["system"]["name"] == name
    assert summary["system"]["pair_sum"] == "ordered"
    for h in ("energy_hist", "distance_hist"):
        p = np.asarray(summary[h]["p"])
        assert len(summary[h]["edges"]) == len(p) + 1
        assert abs(p.sum() + summary[h]["mass_outside"] - 1) < 1e-5  # p is rounded when written
        assert summary[h]["mass_outside"] < 1e-3
    q = summary["energy_quantiles_kT"]
    assert q["1%"] < q["50%"] < q["99%"] and q["5%"] < summary["mean_energy_kT"] < q["95%"]
    assert abs(summary["halves"]["z"]) < 3 and abs(summary["drift"]["z"]) < 3
    assert summary["mean_energy_se_kT"] < 0.01 * abs(summary["mean_energy_kT"])
