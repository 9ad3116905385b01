"""Safety and crash-recovery guarantees: no code runs from a crafted checkpoint, --redo never deletes outside a
run directory, --resume refuses changed settings, Ctrl-C during training leaves a checkpoint to resume from."""

import json
import os
import pickle
import signal

import pytest
import torch
import yaml
from _recipes import SMALL_GMM_TRAIN, TINY_DW4_RUN, make_system

from boltzdiff import train as train_mod
from boltzdiff.cli import main
from boltzdiff.config import TrainConfig
from boltzdiff.errors import ConfigError
from boltzdiff.train import load_run, train
from boltzdiff.train_resume import TrainingInterrupted

SMALL = SMALL_GMM_TRAIN


class _RunsCode:
    """Unpickling this object would create the marker file (what a crafted checkpoint could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_model_file_is_refused_without_running_its_code(tmp_path, capsys):
    train(TrainConfig(**SMALL), tmp_path / "r", progress=False)
    marker = tmp_path / "pwned"
    with open(tmp_path / "r" / "model.pt", "wb") as fh:
        pickle.dump({"state_dict": _RunsCode(marker), "meta": None}, fh)
    with pytest.raises(ConfigError, match="model.pt"):
        load_run(tmp_path / "r")
    assert not marker.exists()
    rc = main(["sample", str(tmp_path / "r"), "--n", "8", "--out", str(tmp_path / "s.npz")])
    assert rc == 2 and not marker.exists() and not (tmp_path / "s.npz").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.pt" in err[0]


def test_a_crafted_checkpoint_is_refused_on_resume(tmp_path):
    train(TrainConfig(**{**SMALL, "steps": 4}), tmp_path / "r", progress=False)
    marker = tmp_path / "pwned"
    torch.save({"model": _RunsCode(marker)}, tmp_path / "r" / "ckpt.pt")
    with pytest.raises(ConfigError, match="ckpt.pt"):
        train(TrainConfig(**{**SMALL, "steps": 8}), tmp_path / "r", resume=True, progress=False)
    assert not marker.exists()


def test_redo_in_a_folder_that_is_no_run_deletes_nothing(tmp_path, capsys):
    d = tmp_path / "mine"
    (d / "train").mkdir(parents=True)
    (d / "train" / "notes.txt").write_text("keep me")
    (d / "report.md").write_text("my report")
    rc = main(["run", "gmm2_unbalanced", "--redo", "train", "--out", str(d), "--no-progress"])
    assert rc == 2
    assert (d / "train" / "notes.txt").read_text() == "keep me" and (d / "report.md").read_text() == "my report"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pipeline.json" in err[0]
    # without --redo the folder is not taken for a run either (its train/ would pass for a finished stage)
    rc = main(["run", "gmm2_unbalanced", "--out", str(d), "--no-progress"])
    assert rc == 2 and sorted(p.name for p in d.iterdir()) == ["report.md", "train"]


def test_run_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["run", "gmm2_unbalanced", "--out", str(f), "--no-progress"]) == 2
    assert f.read_text() == "x" and "is a file" in capsys.readouterr().err


def test_resume_refuses_a_changed_recipe_and_records_a_safe_change(tmp_path):
    train(TrainConfig(**{**SMALL, "steps": 8}), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.002"):
        train(TrainConfig(**{**SMALL, "steps": 8, "lr": 2e-3}), tmp_path / "r", resume=True, progress=False)
    res = train(TrainConfig(**{**SMALL, "steps": 12}), tmp_path / "r", resume=True, progress=False)
    assert res.steps == 12
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["steps"] == 12
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert info["resumes"][-1]["changes"] == {"steps": [8, 12]}


def test_ctrl_c_during_training_checkpoints_the_last_step_and_resumes_to_the_same_model(tmp_path, monkeypatch):
    ref = train(TrainConfig(**SMALL), tmp_path / "ref", progress=False)
    real = train_mod.draw_levels
    calls = {"n": 0}

    def interrupt_once(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # during the 6th step, between two checkpoints (every 4 steps)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "draw_levels", interrupt_once)
    with pytest.raises(TrainingInterrupted) as exc:
        train(TrainConfig(**SMALL), tmp_path / "r", progress=False)
    assert exc.value.step == 6
    assert torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)["step"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.setattr(train_mod, "draw_levels", real)
    res = train(TrainConfig(**SMALL), tmp_path / "r", resume=True, progress=False)
    for (n, a), (_, b) in zip(ref.model.state_dict().items(), res.model.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), n


def test_interrupted_train_command_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    def stop(*a, **k):
        raise TrainingInterrupted(3, tmp_path / "r" / "ckpt.pt")

    monkeypatch.setattr(train_mod, "train", stop)
    rc = main(["train", "--system", "gmm2_unbalanced", "--steps", "5", "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 130
    assert "step 3" in err and "--resume" in err and "boltzdiff train --system gmm2_unbalanced" in err


@pytest.mark.parametrize(
    "run_yaml, match",
    [
        ("presets: {quik: {train: {steps: 5}}}", "did you mean 'quick'"),
        ("presets: {quick: {sampel: {n: 5}}}", "did you mean 'sample'"),
        ("presets: {quick: {sample: {nn: 3}}}", "did you mean 'n'"),
        ("presets: {quick: {train: {stesp: 3}}}", "did you mean 'steps'"),
        ("trian: {steps: 3}", "did you mean 'train'"),
        ("presets: [quick]", "presets"),
        ("presets: {quick: {sample: 5}}", "presets.quick.sample"),
    ],
)
def test_typos_in_run_yaml_are_refused_before_anything_runs(tmp_path, capsys, run_yaml, match):
    import shutil
    from pathlib import Path

    import boltzdiff.systems as systems

    src = Path(systems.SYSTEMS_DIR) / "gmm2_unbalanced" / "system.yaml"
    d = tmp_path / "sys"
    d.mkdir()
    shutil.copy(src, d / "system.yaml")
    (d / "run.yaml").write_text(run_yaml + "\n")
    rc = main(["run", str(d), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_degenerate_run_is_flagged_and_fails_unless_allowed(tmp_path, capsys):
    """One ancestor for every particle, weights collapsed before the final resampling and a mean energy of
    2.5e5 kT against a reference near -20: `ess` alone would read 1. The analysis flags it, the report says so
    and `boltzdiff run` exits 3 unless --allow-degenerate."""
    import numpy as np

    sysdir = make_system(tmp_path, "dw4", TINY_DW4_RUN)
    out = tmp_path / "run"
    assert main(["run", str(sysdir), "--out", str(out), "--no-progress"]) == 0
    healthy = json.loads((out / "analysis.json").read_text())
    assert healthy["sanity"] == {"ok": True, "flags": []}
    # the same run, degenerate: every particle one exploded copy of the first, from one lineage
    with np.load(out / "samples.npz") as z:
        x = np.repeat(z["x"][:1] * 60.0, len(z["x"]), axis=0)
        arrays = {k: z[k] for k in z.files}
    arrays.update(x=x, log_w=np.zeros(len(x)), lineage=np.zeros(len(x), dtype=np.int64))
    np.savez(out / "samples.npz", **arrays)
    summ = json.loads((out / "samples.json").read_text())
    summ.update(n_lineages=1, ess_trace=[*summ["ess_trace"][:-1], 1e-4], ess=1.0)
    (out / "samples.json").write_text(json.dumps(summ))
    rc = main(["run", str(sysdir), "--out", str(out), "--redo", "analyze", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and "degenerate run" in err[-1] and "--allow-degenerate" in err[-1]
    res = json.loads((out / "analysis.json").read_text())
    assert res["sanity"]["ok"] is False and len(res["sanity"]["flags"]) == 3, res["sanity"]
    assert res["mean_energy_kT"] > 1e4
    assert "Degenerate run" in (out / "report.md").read_text()
    rc = main(["run", str(sysdir), "--out", str(out), "--redo", "analyze", "--allow-degenerate", "--no-progress"])
    assert rc == 0
