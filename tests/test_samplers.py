"""Reverse diffusion (SDE / probability-flow ODE), sampler helpers, diagnostics, and the sample/compose
CLI."""

import json
import math
import types

import numpy as np
import pytest
import torch

from boltzdiff.cli import main
from boltzdiff.errors import ConfigError
from boltzdiff.models.energy import build_mlp_energy
from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VESchedule, VPSchedule, make_grid
from boltzdiff.samplers import noisiest_gaussian, probability_flow_ode, resolve_levels, reverse_sde
from boltzdiff.samplers.diagnostics import mode_report, total_variation, weighted_mode_weights
from boltzdiff.targets.gmm import GaussianMixture

Z_MAX = 3.0


@pytest.fixture(scope="module")
def gmm3():
    return GaussianMixture([0.2, 0.5, 0.3], [[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [0.5, 1.0, 0.7])


def test_resolve_levels():
    assert resolve_levels(10) == list(range(10))
    assert resolve_levels(128, 5) == [0, 32, 64, 95, 127]
    assert resolve_levels(10, [9, 0, 4]) == [0, 4, 9]
    for bad in (1, 11, [1, 9], [0, 5]):
        with pytest.raises(ConfigError):
            resolve_levels(10, bad)


def test_noisiest_gaussian():
    grid = make_grid(VPSchedule(), 16)
    m = build_mlp_energy(grid, torch.tensor([1.0, 2.0]), 0.5, width=8, depth=1)
    mean, std = noisiest_gaussian(m)
    assert torch.allclose(mean, grid.alpha[-1] * torch.tensor([1.0, 2.0], dtype=torch.float64), atol=1e-6)
    assert float(std) == pytest.approx(math.sqrt(float(grid.alpha[-1] ** 2 * 0.25 + grid.sigma[-1] ** 2)), rel=1e-5)
    ve = make_grid(VESchedule(sigma_max=10.0), 16)
    g = GaussianMixture([1.0], [[0.0, 0.0]], 1.0)
    mean, std = noisiest_gaussian(ExactMixtureEnergy(g, ve))
    assert float(std) == pytest.approx(math.sqrt(1 + 100), rel=1e-6)


@pytest.mark.parametrize("sampler", ["sde", "sde-fisher", "ode"])
def test_reverse_diffusion_of_a_gaussian(sampler):
    """Exact score of N(m, 0.3^2): the 'gaussian' SDE kernel is the exact reverse transition (z-test of the
    moments); the first-order ODE integrator on 128 levels is within 1% (its discretisation error)."""
    g = GaussianMixture([1.0], [[1.0, -2.0]], 0.3)
    grid = make_grid(VPSchedule(), 128)
    model = ExactMixtureEnergy(g, grid)
    gen = torch.Generator().manual_seed(0)
    n = 4000
    if sampler == "sde":
        r = reverse_sde(model, n, generator=gen, kernel_variance="model")
    elif sampler == "sde-fisher":  # kernel variance fitted to the samples' Fisher information at each step
        r = reverse_sde(model, n, generator=gen)
    else:
        r = probability_flow_ode(model, n, generator=gen)
    assert r.x.shape == (n, 2) and r.n_nonfinite == 0 and r.n_model_evals == n * 127
    assert torch.equal(r.log_w, torch.zeros(n, dtype=torch.float64))
    v0 = float(grid.alpha[0] ** 2 * 0.09 + grid.sigma[0] ** 2)
    m0 = grid.alpha[0] * g.means[0]
    if sampler.startswith("sde"):
        z_mean = (r.x.mean(0) - m0) / math.sqrt(v0 / n)
        z_var = (r.x.var(0) - v0) / (v0 * math.sqrt(2 / (n - 1)))
        assert z_mean.abs().max() < Z_MAX and z_var.abs().max() < Z_MAX
    else:
        assert torch.allclose(r.x.mean(0), m0, atol=0.01 * math.sqrt(v0) + 4 * math.sqrt(v0 / n))
        assert torch.allclose(
            r.x.std(0), torch.tensor(math.sqrt(v0), dtype=torch.float64), rtol=0.01 + 4 / math.sqrt(2 * n)
        )


def test_reverse_sde_mode_weights_with_exact_scores(gmm3):
    """Independent samples: mode weights within 3 delta-method standard errors, on a 64-level sub-grid."""
    model = ExactMixtureEnergy(gmm3, make_grid(VPSchedule(), 128))
    r = reverse_sde(model, 4000, generator=torch.Generator().manual_seed(0), levels=64)
    rep = mode_report(gmm3, r.x)
    z = (np.array(rep["estimated"]) - gmm3.weights.numpy()) / np.array(rep["stderr"])
    assert np.abs(z).max() < Z_MAX, z
    for kernel in ("ancestral", "em"):
        r = reverse_sde(model, 500, generator=torch.Generator().manual_seed(0), levels=32, kernel=kernel)
        assert torch.isfinite(r.x).all()


def test_smc_mode_report(gmm3):
    from boltzdiff.samplers.diagnostics import smc_mode_report

    model = ExactMixtureEnergy(gmm3, make_grid(VPSchedule(), 32))
    rep = smc_mode_report(model, gmm3, 300, torch.Generator().manual_seed(0), to_target=True, n_bridge=2)
    assert len(rep["estimated"]) == 3 and rep["n_target_evals"] > 0 and 0 < rep["ess"] <= 1


def test_weighted_mode_weights(gmm3):
    x, lab = gmm3.sample_with_labels(3000, torch.Generator().manual_seed(0))
    w = weighted_mode_weights(gmm3, x)
    assert w.sum() == pytest.approx(1.0) and total_variation(w, gmm3.weights) < 0.05
    # re-weighting towards mode 0 only: a weight of -inf drops samples; NaN coordinates are ignored
    log_w = torch.where(lab == 0, 0.0, -math.inf).double()
    x_nan = x.clone()
    x_nan[lab != 0] = float("nan")
    assert weighted_mode_weights(gmm3, x_nan, log_w, hard=True) == pytest.approx([1.0, 0.0, 0.0])
    assert total_variation([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5)


# -- CLI ----------------------------------------------------------------------------------------------
def _fake_runs(monkeypatch, tmp_path, gmms):
    """Run dirs whose 'trained model' is the exact level energy of each mixture (load_run is replaced)."""
    grid = make_grid(VPSchedule(), 32)
    runs = {}
    for name, g in gmms.items():
        d = tmp_path / name
        d.mkdir()
        runs[str(d)] = types.SimpleNamespace(
            model=ExactMixtureEnergy(g, grid),
            system=types.SimpleNamespace(name=name, target=g),
            run_dir=d,
            config={},
        )

    def fake_load_run(run_dir, ema=True, device="cpu"):
        if str(run_dir) not in runs:
            raise ConfigError(f"run dir {run_dir} has no trained model")
        return runs[str(run_dir)]

    import boltzdiff.train

    monkeypatch.setattr(boltzdiff.train, "load_run", fake_load_run)
    return [str(tmp_path / n) for n in gmms]


@pytest.mark.parametrize(
    "argv",
    [
        ["--sampler", "smc"],
        ["--sampler", "smc", "--to-target", "--mcmc-steps", "1", "--bridge-steps", "2"],
        ["--sampler", "smc", "--kernel-variance", "matrix"],
        ["--sampler", "sde"],
        ["--sampler", "ode", "--levels", "8"],
    ],
)
def test_cli_sample(monkeypatch, tmp_path, gmm3, argv):
    (run,) = _fake_runs(monkeypatch, tmp_path, {"g3": gmm3})
    out = tmp_path / "s.npz"
    assert main(["sample", run, "--n", "200", "--out", str(out), "--no-progress", *argv]) == 0
    data = np.load(out)
    assert data["x"].shape == (200, 2) and data["log_w"].shape == (200,) and data["log_w"].dtype == np.float64
    summ = json.loads(out.with_suffix(".json").read_text())
    assert 0 < summ["ess"] <= 1 and summ["n_model_evals"] > 0
    assert ("--to-target" in argv) == (summ["n_target_evals"] > 0)
    assert len(summ["modes"]["estimated"]) == 3
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left


def test_cli_compose(monkeypatch, tmp_path):
    a = GaussianMixture([0.7, 0.3], [[-2.0, 0.0], [2.0, 0.0]], 1.0)
    b = GaussianMixture([0.4, 0.6], [[-2.0, 0.5], [2.0, -0.5]], 0.8)
    c = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], 1.0)
    ra, rb, rc = _fake_runs(monkeypatch, tmp_path, {"a": a, "b": b, "c": c})
    out = tmp_path / "c.npz"
    assert main(["compose", ra, rb, "--op", "product", "--n", "300", "--out", str(out), "--no-progress"]) == 0
    summ = json.loads(out.with_suffix(".json").read_text())
    assert len(summ["modes"]["exact"]) == 4 and summ["n_model_evals"] == 2 * 300 * 32
    assert (
        main(
            [
                "compose",
                ra,
                rb,
                "--op",
                "mixture",
                "--weights",
                "1,3",
                "--n",
                "300",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(out.with_suffix(".json").read_text())["weights"] == [1.0, 3.0]


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["compose", "{a}", "{c}", "--op", "product", "--n", "10"], "dimension"),
        (["compose", "{a}", "{a}", "--op", "product", "--weights", "1,2", "--n", "10"], "--weights"),
        (["compose", "{a}", "{a}", "--op", "mixture", "--weights", "1,x", "--n", "10"], "--weights"),
        (["sample", "{a}", "--n", "0"], "--n"),
        (["sample", "{a}", "--n", "5", "--sampler", "sde", "--to-target"], "--to-target"),
        (["sample", "{missing}", "--n", "5"], "does not exist"),
        (["sample", "{empty}", "--n", "5"], "no trained model"),
        (["sample", "{a}", "--n", "5", "--refine", "0"], "--refine: expected an integer >= 1"),
        (["sample", "{a}", "--n", "5", "--sampler", "sde", "--kernel-variance", "matrix"], "settings of --sampler smc"),
        (["sample", "{a}", "--n", "5", "--refine", "2"], "refine: needs a trained Gaussian-preconditioned energy"),
    ],
)
def test_cli_bad_input_is_one_line(monkeypatch, tmp_path, capsys, argv, msg):
    a = GaussianMixture([1.0], [[0.0, 0.0]], 1.0)
    c = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], 1.0)
    ra, rc = _fake_runs(monkeypatch, tmp_path, {"a": a, "c": c})
    (tmp_path / "empty").mkdir()
    paths = dict(a=ra, c=rc, missing=str(tmp_path / "nope"), empty=str(tmp_path / "empty"))
    argv = [s.format(**paths) for s in argv] + ["--out", str(tmp_path / "o.npz"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_cli_run_dir_without_checkpoint_uses_real_load_run(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--n", "5", "--out", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trained model" in err[0]


@pytest.mark.slow
def test_cli_end_to_end_with_a_real_training_run(tmp_path):
    """`boltzdiff train` (2 steps) then `sample --sampler smc --to-target` and `compose` on the real run dir."""
    run = tmp_path / "run"
    assert (
        main(
            ["train", "--system", "gmm40_2d", "--steps", "2", "--batch-size", "16", "--out", str(run), "--no-progress"]
        )
        == 0
    )
    out = tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                str(run),
                "--n",
                "64",
                "--levels",
                "8",
                "--to-target",
                "--bridge-steps",
                "2",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    summ = json.loads(out.with_suffix(".json").read_text())
    assert summ["n_target_evals"] > 0 and len(summ["modes"]["exact"]) == 40
    assert (
        main(
            [
                "compose",
                str(run),
                str(run),
                "--op",
                "mixture",
                "--n",
                "32",
                "--levels",
                "8",
                "--out",
                str(tmp_path / "c.npz"),
                "--no-progress",
            ]
        )
        == 0
    )
