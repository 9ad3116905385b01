"""`boltzdiff sample --temperature T`: the model trained at the system's temperature as the proposal, SMC ending
at the exact target at T (boltzdiff.samplers.tempering)."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from boltzdiff.cli import main
from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers import MCMCConfig, SMCConfig, mode_report, smc
from boltzdiff.samplers.tempering import TemperedTarget, tempered_mixture, tempered_mixture_weights
from boltzdiff.targets.gmm import GaussianMixture

WEIGHTS, MEANS, STD = [0.7, 0.3], [[-3.0, -3.0], [3.0, 3.0]], [0.3, 0.6]


def test_tempered_weights_closed_form():
    """w^beta s^{d(1-beta)}, normalised: beta = 1 keeps the weights; equal widths give w^beta; and the closed form
    matches p^beta integrated over each half-plane numerically."""
    assert np.allclose(tempered_mixture_weights(WEIGHTS, STD, 2, 1.0), WEIGHTS)
    w = tempered_mixture_weights([0.6, 0.4], 0.5, 7, 0.5)
    assert np.allclose(w, np.sqrt([0.6, 0.4]) / np.sqrt([0.6, 0.4]).sum())
    gmm = GaussianMixture(WEIGHTS, MEANS, STD)
    g = np.linspace(-9, 9, 721)
    xx, yy = np.meshgrid(g, g)
    pts = torch.as_tensor(np.stack([xx.ravel(), yy.ravel()], 1))
    for beta in (0.5, 2.0):
        p = torch.exp(-beta * gmm.energy(pts)).numpy()
        first = (xx.ravel() + yy.ravel()) < 0
        share = p[first].sum() / p.sum()
        assert share == pytest.approx(tempered_mixture_weights(WEIGHTS, STD, 2, beta)[0], abs=1e-6)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_smc_from_the_exact_model_ends_at_the_tempered_weights(beta):
    """The exact noised energy at T_sys as the proposal, the bridge to beta * u: the weighted mode weights
    match the closed-form tempered weights (0.433/0.567 at beta = 0.5, 0.956/0.044 at beta = 2; the proposal
    has 0.7/0.3) within 5 standard errors (floor 0.01). Fixed seed."""
    gmm = GaussianMixture(WEIGHTS, MEANS, STD)
    model = ExactMixtureEnergy(gmm, make_grid(VPSchedule(), 16, "logsnr"))
    cfg = SMCConfig(n_bridge=24, bridge_mcmc=MCMCConfig("mala", n_steps=3))
    res = smc(model, 3000, cfg, generator=torch.Generator().manual_seed(0), target=TemperedTarget(gmm, beta))
    rep = mode_report(tempered_mixture(gmm, beta), res.x, res.log_w)
    want = tempered_mixture_weights(WEIGHTS, STD, 2, beta)
    assert np.allclose(rep["exact"], want)
    z = np.abs(np.array(rep["estimated"]) - want) / np.maximum(rep["stderr"], 0.01)
    assert np.all(z < 5), (rep, z)


def _mixture_run(tmp_path):
    sysdir = tmp_path / "gmm2d"
    sysdir.mkdir()
    spec = dict(kind="gaussian_mixture", dim=2, weights=WEIGHTS, means=MEANS, std=STD)
    (sysdir / "system.yaml").write_text(yaml.safe_dump(spec))
    cfg = dict(steps=30, batch_size=64, n_levels=12, width=16, depth=1, k=2, n_data=2000, checkpoint_every=30)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rd = tmp_path / "run"
    argv = ["train", "--system", str(sysdir / "system.yaml"), "--config", str(tmp_path / "c.yaml")]
    assert main([*argv, "--out", str(rd), "--no-progress"]) == 0
    return rd


def test_sample_cli_temperature(tmp_path, capsys):
    """A short-trained mixture model sampled at T = 2 (beta = 0.5): the summary records the temperatures and the
    closed-form tempered weights as the exact ones; bad temperatures are one-line errors with exit 2."""
    rd = _mixture_run(tmp_path)
    out = tmp_path / "s.npz"
    argv = ["sample", str(rd), "--n", "400", "--temperature", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    summ = json.loads(out.with_suffix(".json").read_text())
    assert summ["temperature"] == 2.0 and summ["system_temperature"] == 1.0 and summ["beta"] == 0.5
    assert summ["to_target"] is True
    assert np.allclose(summ["modes"]["exact"], tempered_mixture_weights(WEIGHTS, STD, 2, 0.5))
    assert summ["n_target_evals"] > 0 and math.isfinite(summ["ess"])
    capsys.readouterr()
    for bad in ("0", "-1", "nan", "inf"):
        rc = main(["sample", str(rd), "--n", "10", "--temperature", bad, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "--temperature: expected a positive finite temperature" in err[0], err
