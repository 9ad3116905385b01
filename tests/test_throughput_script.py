"""benchmarks/throughput.py and its profile helper: the timing windows, the Python-share arithmetic, a profiled
SMC run, and the script's smallest path (``--quick --only smc``, one process) writing its JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _recipes import SMALL_GMM_TRAIN

from boltzdiff.cli import main
from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers import SMCConfig, smc
from boltzdiff.targets.gmm import GaussianMixture

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tprof = _module("_throughput_profile")


def test_union_of_intervals_counts_overlaps_once_and_clips_to_the_window():
    spans = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (2.5, 2.7)]
    assert tprof.union_seconds(spans, 0.0, 10.0) == pytest.approx(4.0, abs=1e-12)
    assert tprof.union_seconds(spans, 1.5, 5.5) == pytest.approx(1.5 + 0.5, abs=1e-12)
    assert tprof.union_seconds([], 0.0, 1.0) == 0.0
    assert tprof.union_seconds([(2.0, 3.0)], 0.0, 1.0) == 0.0


def test_seconds_per_step_come_from_the_timed_windows_only():
    lay = dict(warm=2, window=3)  # steps: 2 warm + 3 DSM, 2 warm + 3 DiffCLF
    assert tprof.windows(lay) == {"dsm": (1, 4), "diffclf": (6, 9)}
    # warm-up steps cost 1 s, DSM 0.1 s, DiffCLF 0.25 s: the windows must see exactly 0.1 and 0.25
    cost = [1.0, 1.0, 0.1, 0.1, 0.1, 1.0, 1.0, 0.25, 0.25, 0.25]
    times = [sum(cost[: i + 1]) for i in range(len(cost))]
    got = tprof.sec_per_step(times, lay)
    assert got["dsm"] == pytest.approx(0.1, abs=1e-12) and got["diffclf"] == pytest.approx(0.25, abs=1e-12)
    with pytest.raises(RuntimeError, match="optimiser steps"):
        tprof.sec_per_step(times[:8], lay)


def test_python_share_and_its_profiler_correction():
    # profiled 1.2 s of which 1.0 s native; 100 events at 1 ms each, 50 nested in an operator, 50 top-level
    st = dict(native_s=1.0, n_events=100, n_nested=50)
    out = tprof._shares(1.2, st, 0.75, per_event=0.001)
    assert out["share_raw"] == pytest.approx(1 - 1.0 / 1.2, abs=1e-12)
    assert out["python_s"] == pytest.approx(0.2 - 0.05, abs=1e-12)  # the gaps less the top-level events' cost
    assert out["share_corrected"] == pytest.approx(0.15 / 0.75, abs=1e-12)  # over the plain wall
    assert tprof._shares(1.2, st, 0.1, per_event=0.001)["share_corrected"] == 1.0  # clamped
    assert tprof._shares(1.0, dict(native_s=1.2, n_events=0, n_nested=0), 1.0, per_event=0.0)["share_raw"] == 0.0


def test_profiled_smc_run_reports_shares_in_range():
    torch.set_num_threads(1)
    gmm = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.5, 0.5])
    model = ExactMixtureEnergy(gmm, make_grid(VPSchedule(), 16), weights=torch.tensor([0.5, 0.5]))

    def run():
        smc(model, 64, SMCConfig(), generator=torch.Generator().manual_seed(0))

    out = tprof.profile_smc(run)
    assert out["wall_s"] > 0 and 0 < out["native_s"] <= out["wall_s"] + 1e-9
    assert 0.0 <= out["share_raw"] <= 1.0 and 0.0 <= out["share_corrected"] <= 1.0
    assert out["n_events"] >= out["n_nested"] > 0


def test_quick_smc_path_writes_the_json(tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in SMALL_GMM_TRAIN.items() if k != "system"}))
    rd = tmp_path / "run"
    assert main(["train", "--system", "gmm2_unbalanced", "--config", str(cfg), "--out", str(rd), "--no-progress"]) == 0
    js = tmp_path / "tp.json"
    cmd = [sys.executable, str(BENCH / "throughput.py"), "--quick", "--only", "smc", "--models", "gmm", "--procs", "1"]
    cmd += ["--run", f"gmm={rd}", "--json", str(js), "--work", str(tmp_path / "work")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    d = json.loads(js.read_text())
    assert {"machine", "device", "command", "sections", "smc", "targets", "notes"} <= set(d)
    assert d["device"] == "cpu" and d["quick"] is True and d["sections"]["smc"]["repeats"] == 1
    assert "training" not in d and "profile" not in d and set(d["sections"]) == {"smc"}
    for kind, levels in (("model_only", 16), ("to_target", 16 + 4)):  # quick: 16 levels, 4 bridge steps
        row = d["smc"]["gmm"][kind]
        assert row["n"] == 512 and row["levels"] == levels
        assert row["1"]["median_particle_levels_per_s"] > 0 and len(row["1"]["particle_levels_per_s"]) == 1
        assert "2" not in row and "speedup" not in row
    assert "SMC particle-levels/s" in res.stdout
