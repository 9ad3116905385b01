"""benchmarks/aldp_model_fidelity.py: its rows become `boltzdiff train` configs that carry the overrides."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import yaml

from boltzdiff.config import TrainConfig, merge_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "aldp_model_fidelity.py"


def _script():
    spec = importlib.util.spec_from_file_location("aldp_model_fidelity", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pipeline(tmp_path: Path) -> Path:
    train = dict(
        steps=3000, network="pairmlp", width=256, depth=3, n_levels=160, k=2, batch_size=128, lr=1e-3,
        warmup_steps=1000, lambda_clf=3.0, precond_scale=3.0, tsm_scale=0.005, seed=0, device="cpu",
    )  # fmt: skip
    p = tmp_path / "pipeline.json"
    p.write_text(json.dumps(dict(system="alanine_dipeptide", variant="implicit", settings=dict(train=train))))
    return p


def test_dry_run_writes_override_configs_and_prints_commands(tmp_path, capsys):
    mod = _script()
    work = tmp_path / "work"
    frames = tmp_path / "frames.npy"  # a dry run never reads it
    argv = ["--dry-run", "--rows", "diffclf_lclf1,dsm", "--seeds", "0,1", "--work", str(work)]
    argv += ["--pipeline", str(_pipeline(tmp_path)), "--frames", str(frames), "--energies", str(tmp_path / "u.npy")]
    assert mod.main(argv) == 0
    out = capsys.readouterr().out
    train_lines = [shlex.split(ln) for ln in out.splitlines() if " train " in ln]
    eval_lines = [shlex.split(ln) for ln in out.splitlines() if " evaluate " in ln]
    assert len(train_lines) == len(eval_lines) == 4
    assert all("--seed" in c and "--config" in c and str(frames) in c for c in train_lines)
    assert all("--reference-energies" in c for c in eval_lines)
    assert not any((work / d / "train").exists() for d in ("diffclf_lclf1_s0", "dsm_s1"))  # nothing ran

    cfg = yaml.safe_load((work / "diffclf_lclf1_s1" / "cfg.yaml").read_text())
    assert cfg["system"] == "alanine_dipeptide"
    tr = cfg["train"]
    assert tr["lambda_clf"] == 1.0  # the override
    assert tr["precond_scale"] == 3.0 and tr["warmup_steps"] == 1000  # the rest of the recipe
    assert tr["data"] == str(frames) and tr["data_temperature"] == 300.0
    assert "seed" not in tr  # each row's seed comes from --seed
    merge_config(TrainConfig(), tr, "cfg.yaml").validate()  # a valid training config

    dsm = yaml.safe_load((work / "dsm_s0" / "cfg.yaml").read_text())["train"]
    assert dsm["loss"] == "dsm" and dsm["lambda_clf"] == 3.0


def test_unknown_row_is_refused(tmp_path):
    mod = _script()
    try:
        mod.main(["--dry-run", "--rows", "nope", "--pipeline", str(_pipeline(tmp_path)), "--work", str(tmp_path)])
    except SystemExit as e:
        assert "unknown row" in str(e)
    else:
        raise AssertionError("an unknown row was accepted")


def test_pooled_row_trains_on_the_pooled_runs_frames(tmp_path):
    import numpy as np

    mod = _script()
    runs = []
    for i, n in enumerate((3, 5)):
        d = tmp_path / f"run{i}" / "reference"
        d.mkdir(parents=True)
        np.save(d / "positions.npy", np.full((n, 22, 3), float(i)))
        np.save(d / "energies.npy", np.zeros(n))
        runs.append(str(d.parent))
    work = tmp_path / "work"
    argv = ["--dry-run", "--rows", "diffclf_pooled", "--seeds", "0", "--work", str(work), "--pool-runs", *runs]
    argv += ["--pipeline", str(_pipeline(tmp_path)), "--frames", str(tmp_path / "f.npy")]
    assert mod.main(argv) == 0
    tr = yaml.safe_load((work / "diffclf_pooled_s0" / "cfg.yaml").read_text())["train"]
    pooled = np.load(tr["data"])
    assert pooled.shape == (8, 22, 3) and pooled[:3].max() == 0.0 and pooled[3:].min() == 1.0  # both runs, in order
    try:  # a pooled row without runs to pool is refused
        mod.main(["--dry-run", "--rows", "dsm_pooled", "--pipeline", str(_pipeline(tmp_path)), "--work", str(work)])
    except SystemExit as e:
        assert "--pool-runs" in str(e)
    else:
        raise AssertionError("a pooled row without --pool-runs was accepted")
