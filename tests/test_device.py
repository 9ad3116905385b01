"""The same code on an accelerator: `--device cuda` end to end, and device results equal to CPU ones.

Skipped where no GPU is visible (the CI machines). ``BOLTZDIFF_TEST_DEVICE=cpu pytest tests/test_device.py`` runs
the module on the CPU against itself, which checks the tests; on a GPU machine they run against ``cuda``.

What must agree with the CPU, and how closely:
- a trained model's energies and scores, loaded onto the device: float32 networks, 1e-4 relative;
- an SMC run of the exact mixture energy (float64; all random numbers come from a CPU generator, so both devices
  draw the same noise): log Z and the weighted mode weights to 1e-6. A systematic-resampling index could in
  principle flip on a 1e-15 difference; with these seeds it does not, and a flip would show as a large gap.
"""

import json
import os

import numpy as np
import pytest
import torch
import yaml
from _recipes import ALDP_HOT_REFERENCE, ALDP_PAIRMLP_TRAIN, TINY_TRAIN, make_system

from boltzdiff.cli import main
from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers import MCMCConfig, SMCConfig, smc
from boltzdiff.samplers.diagnostics import weighted_mode_weights
from boltzdiff.targets.gmm import GaussianMixture
from boltzdiff.train import load_run

DEVICE = os.environ.get("BOLTZDIFF_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no GPU (set BOLTZDIFF_TEST_DEVICE=cpu to self-check)")


def run_on_device(sysdir, out):
    assert main(["run", str(sysdir), "--out", str(out), "--device", DEVICE, "--no-progress"]) == 0
    cfg = yaml.safe_load((out / "train" / "config.yaml").read_text())
    assert cfg["device"] == DEVICE
    return json.loads((out / "analysis.json").read_text())


def assert_model_matches_cpu(run_dir, x_cpu, levels):
    """Energies and scores of the run's model on the device equal those on the CPU (float32: 1e-4 relative)."""
    cpu, dev = load_run(run_dir, device="cpu").model, load_run(run_dir, device=DEVICE).model
    for lv in levels:
        e_cpu = cpu.energy(x_cpu, lv)
        x_dev = x_cpu.to(DEVICE)
        e_dev = dev.energy(x_dev, lv)
        assert e_dev.device.type == torch.device(DEVICE).type
        scale = 1.0 + e_cpu.abs().max()
        assert torch.allclose(e_dev.cpu(), e_cpu, rtol=0, atol=1e-4 * float(scale)), lv
        s_cpu = cpu.score(x_cpu, lv)
        s_dev = dev.score(x_dev, lv).cpu()
        assert torch.allclose(s_dev, s_cpu, rtol=0, atol=1e-4 * float(1.0 + s_cpu.abs().max())), lv


def test_mixture_run_on_device_matches_cpu(tmp_path):
    d = tmp_path / "mix"
    d.mkdir()
    (d / "system.yaml").write_text("kind: gaussian_mixture\nweights: [0.7, 0.3]\nmeans: [[1, 1], [-1, -1]]\nstd: 0.3\n")
    (d / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "train": {**TINY_TRAIN, "width": 16, "depth": 1},
                "presets": {"quick": {"sample": {"n": 128, "n_bridge": 2, "mcmc_steps": 2}}},
            }
        )
    )
    res = run_on_device(d, tmp_path / "run")
    assert 0 < res["ess"] <= 1 and np.isfinite(res["mode_weights"]).all()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    assert_model_matches_cpu(tmp_path / "run" / "train", x, [0, 5, 11])


def test_dw4_egnn_run_on_device_matches_cpu(tmp_path):
    sysdir = make_system(
        tmp_path,
        "dw4",
        {
            "train": {**TINY_TRAIN, "network": "egnn", "egnn": {"hidden": 8, "n_layers": 1}},
            "presets": {
                "quick": {
                    "reference": {"n_steps": 200, "n_chains": 8, "burn_in": 50, "save_every": 10, "step_size": 0.05},
                    "sample": {"n": 64, "n_bridge": 2, "mcmc_steps": 1},
                }
            },
        },
    )
    res = run_on_device(sysdir, tmp_path / "run")
    assert 0 < res["ess"] <= 1 and res["n_target_evals"] > 0
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    x = (x.reshape(32, 4, 2) - x.reshape(32, 4, 2).mean(1, keepdim=True)).reshape(32, 8)
    assert_model_matches_cpu(tmp_path / "run" / "train", x, [0, 6, 11])


def test_alanine_dipeptide_run_on_device(tmp_path):
    """MD -> pair-distance model with target score matching, trained on the device -> SMC with MALA moves and a
    stratified adaptive bridge to the OpenMM energy (evaluated on the CPU) -> analysis."""
    sysdir = make_system(
        tmp_path,
        "alanine_dipeptide",
        {
            "train": ALDP_PAIRMLP_TRAIN,
            "presets": {
                "quick": {
                    "reference": ALDP_HOT_REFERENCE,
                    "sample": {
                        "n": 48,
                        "n_runs": 2,
                        "mcmc_steps": 2,
                        "bridge_cess": 0.9,
                        "max_bridge": 6,
                        "bridge_strata": {"cv": "phi", "edges": [0.0, 2.0]},
                    },
                }
            },
        },
    )
    res = run_on_device(sysdir, tmp_path / "run")
    assert res["n_target_evals"] >= 48 and 0 < res["ess"] <= 1
    assert np.isfinite(res["mean_energy_kT"])
    x = torch.as_tensor(np.load(tmp_path / "run" / "reference" / "positions.npy")[:16]).reshape(16, -1).float()
    x = x - x.reshape(16, -1, 3).mean(1, keepdim=True).repeat(1, 22, 1).reshape(16, -1)
    assert_model_matches_cpu(tmp_path / "run" / "train", x, [0, 5, 11])


def test_exact_mixture_smc_on_device_equals_cpu():
    gmm = GaussianMixture([0.2, 0.5, 0.3], [[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [0.5, 1.0, 0.7])
    grid = make_grid(VPSchedule(), 64)
    out = {}
    for dev in ("cpu", DEVICE):
        model = ExactMixtureEnergy(gmm, grid, weights=torch.tensor([0.6, 0.2, 0.2])).to(dev)
        r = smc(
            model,
            512,
            SMCConfig(levels=16, mcmc=MCMCConfig("mala", n_steps=2), n_bridge=4),
            generator=torch.Generator().manual_seed(3),
            target=gmm,
        )
        assert r.x.device.type == torch.device(dev).type or r.x.device.type == "cpu"
        mw = weighted_mode_weights(gmm, r.x.cpu().double(), r.log_w.cpu().double())
        out[dev] = (r.log_Z, np.asarray(mw, dtype=float))
    (lz_cpu, mw_cpu), (lz_dev, mw_dev) = out["cpu"], out[DEVICE]
    assert abs(lz_cpu - lz_dev) < 1e-6, (lz_cpu, lz_dev)
    assert np.abs(mw_cpu - mw_dev).max() < 1e-6, (mw_cpu, mw_dev)
