import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from _recipes import SMALL_GMM_TRAIN

from boltzdiff import train as train_mod
from boltzdiff.cli import main
from boltzdiff.config import TrainConfig
from boltzdiff.errors import ConfigError
from boltzdiff.train import load_run, train

SMALL = SMALL_GMM_TRAIN


def small_cfg(**kw):
    return TrainConfig(**{**SMALL, **kw})


def test_train_writes_a_complete_run_dir(tmp_path):
    res = train(small_cfg(), tmp_path / "r", progress=False)
    for f in (
        "config.yaml",
        "run_info.json",
        "ckpt.pt",
        "model.pt",
        "metrics.jsonl",
        "train_summary.json",
        "system.yaml",
    ):
        assert (tmp_path / "r" / f).is_file(), f
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert info["seed"] == 0 and info["config"]["steps"] == 12 and "torch" in info["versions"]
    assert "git_commit" in info
    assert res.steps == 12
    assert float(res.model.f[-1]) == 0.0  # gauge
    run = load_run(tmp_path / "r")
    x = torch.randn(5, 32)
    assert torch.allclose(run.model.energy(x, 3), res.model.energy(x, 3))


@pytest.mark.parametrize("head", ["inner", "inner+scalar", "scalar"])
def test_mlp_head_round_trips_and_old_run_dirs_load_without_it(tmp_path, head):
    import yaml

    res = train(small_cfg(steps=4, mlp_head=head), tmp_path / "r", progress=False)
    assert res.model.net.out.out_features == {"inner": 32, "inner+scalar": 33, "scalar": 1}[head]
    if head == "inner":  # a run dir written before the option existed has no such key in config.yaml
        cfg_file = tmp_path / "r" / "config.yaml"
        raw = yaml.safe_load(cfg_file.read_text())
        del raw["mlp_head"]
        cfg_file.write_text(yaml.safe_dump(raw))
    run = load_run(tmp_path / "r")
    x = torch.randn(5, 32)
    assert torch.allclose(run.model.energy(x, 3), res.model.energy(x, 3))


def test_monitor_values_land_in_the_metrics_records(tmp_path):
    seen = []

    def monitor(step, model, ema_model):
        seen.append(step)
        assert ema_model is not model
        return {"f_last": float(model.f[-1].detach()), "step_seen": step}

    train(small_cfg(steps=100), tmp_path / "r", progress=False, monitor=monitor)
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert seen == [50, 100] == [r["step"] for r in recs] == [r["step_seen"] for r in recs]
    assert all(r["f_last"] == 0.0 for r in recs)  # gauge applied before the monitor sees the model


def test_learning_rate_schedule_warms_up_then_decays_to_lr_final():
    for lo in (0.0, 0.1, 1.0):
        f = train_mod._lr_lambda(small_cfg(steps=1000, lr_warmup=100, lr_final=lo))
        assert f(0) == pytest.approx(0.01)  # linear warm-up
        assert f(99) == pytest.approx(lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * 0.099)))  # warm-up done
        assert f(500) == pytest.approx(lo + (1 - lo) * 0.5)  # cosine midpoint
        assert f(1000) == pytest.approx(lo)
        assert all(f(s) >= f(s + 1) - 1e-12 for s in range(100, 1000))
    assert train_mod._lr_lambda(small_cfg(cosine_decay=False, lr_warmup=1))(500) == 1.0
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ConfigError, match="lr_final"):
            small_cfg(lr_final=bad).validate()


def test_tail_average_is_the_uniform_mean_of_the_later_steps():
    lin = torch.nn.Linear(1, 1)
    avg = train_mod.EMA(lin, 0.9, average_from_step=4)
    seen = []
    for step in range(10):
        with torch.no_grad():
            lin.weight.fill_(float(step**2))
        seen.append(float(step**2))
        avg.update(lin, step)
        if step == 3:  # before the start: the EMA, warmed up as (1 + step) / (10 + step)
            assert float(avg.model.weight) != pytest.approx(sum(seen[:4]) / 4)
    assert float(avg.model.weight) == pytest.approx(sum(seen[4:]) / 6)
    assert avg.n_avg == 6
    for bad in (1.0, -0.1, True, "half"):
        with pytest.raises(ConfigError, match="average_from"):
            small_cfg(average_from=bad).validate()


@pytest.mark.parametrize("average_from", [None, 0.25])
def test_interrupted_run_resumes_to_the_same_model(tmp_path, monkeypatch, average_from):
    ref = train(small_cfg(average_from=average_from), tmp_path / "ref", progress=False)
    calls = {"n": 0}
    real = train_mod.draw_levels

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # after the checkpoint at step 4, before the one at step 8
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "draw_levels", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(average_from=average_from), tmp_path / "r", progress=False)
    assert torch.load(tmp_path / "r" / "ckpt.pt", weights_only=False)["step"] == 4
    monkeypatch.setattr(train_mod, "draw_levels", real)
    with pytest.raises(Exception, match="--resume"):
        train(small_cfg(average_from=average_from), tmp_path / "r", progress=False)
    res = train(small_cfg(average_from=average_from), tmp_path / "r", resume=True, progress=False)
    for (n, a), (_, b) in zip(ref.model.state_dict().items(), res.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_two_stage_and_dsm_runs(tmp_path):
    train(small_cfg(loss="dsm"), tmp_path / "dsm", progress=False)
    r = train(small_cfg(warmup_steps=6), tmp_path / "two", progress=False)
    rec = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert r.steps == 12 and rec[-1]["clf"] is not None


def run_cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--system", "nope", "--out", "X"], "unknown system 'nope'"),
        (
            ["train", "--system", "gmm2_unbalanced", "--steps", "0", "--out", "X"],
            "--steps: expected a positive integer",
        ),
        (
            ["train", "--system", "gmm2_unbalanced", "--data", "missing.npy", "--steps", "2", "--out", "X"],
            "missing.npy does not exist",
        ),
        (["evaluate", "no_such_run"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    rc, err = run_cli(capsys, *argv)
    assert rc == 2
    assert len(err) == 1 and match in err[0], err


def test_cli_bad_yaml_fields(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("kind: gaussian_mixture\nweights: [0.5, 0.5, 0.1]\nmeans: [[0], [1]]\nstd: 1\n")
    rc, err = run_cli(capsys, "train", "--system", "bad.yaml", "--out", "X")
    assert rc == 2 and len(err) == 1 and "'weights' has 3 entries" in err[0]
    (tmp_path / "neg.yaml").write_text("kind: gaussian_mixture\nweights: [0.5, 0.5]\nmeans: [[0], [1]]\nstd: -0.1\n")
    rc, err = run_cli(capsys, "train", "--system", "neg.yaml", "--out", "X")
    assert rc == 2 and "'std' must be positive" in err[0]
    (tmp_path / "run.yaml").write_text("stepz: 3\n")
    rc, err = run_cli(capsys, "train", "--system", "gmm2_unbalanced", "--config", "run.yaml", "--out", "X")
    assert rc == 2 and "unknown field 'stepz'" in err[0]


def test_cli_train_then_evaluate(tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in SMALL.items() if k != "system"}))
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--system",
                "gmm2_unbalanced",
                "--config",
                str(cfg),
                "--out",
                str(run_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["evaluate", str(run_dir), "--n-chains", "4", "--n-samples", "50", "--smc-particles", "100"]) == 0
    ev = json.loads((run_dir / "eval.json").read_text())
    for key in ("clf_excess", "log_ratio_std", "ess_per_level", "mode_weights", "true_mode_weights"):
        assert key in ev
    assert len(ev["log_ratio_std"]) == 16 and len(ev["mode_weights"]) == 2
    assert (run_dir / "eval.png").stat().st_size > 1000


def test_console_script_prints_no_traceback(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "boltzdiff.cli", "train", "--system", "nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1


@pytest.mark.slow
def test_diffclf_recovers_unbalanced_weights_where_dsm_only_does_not(tmp_path):
    """The mixture learning check: 2-D mixture of two equal-shape modes 9 std apart (weights 0.75 / 0.25).

    DiffCLF must put the lowest level's mode weights within 0.03 of the truth; DSM-only (which learns no
    relative offset between separated modes) must miss by more than 0.1. Both scored by importance weights on
    exact samples (`evaluate_mixture`), seed-fixed. ~1-2 min on 2 CPU cores.
    """
    from boltzdiff.evaluate import evaluate_mixture

    spec = tmp_path / "mix.yaml"
    spec.write_text("kind: gaussian_mixture\nweights: [0.75, 0.25]\nmeans: [[1, 1], [-1, -1]]\nstd: 0.3\n")
    errors = {}
    for loss in ("diffclf", "dsm"):
        cfg = TrainConfig(
            system=str(spec),
            loss=loss,
            steps=1500,
            batch_size=128,
            n_levels=16,
            width=64,
            depth=2,
            lr_warmup=50,
            n_data=20000,
            checkpoint_every=1500,
            seed=0,
        )
        train(cfg, tmp_path / loss, progress=False)
        run = load_run(tmp_path / loss)
        ev = evaluate_mixture(run.model, run.system.target, n_chains=8, n_samples=1000, seed=1)
        errors[loss] = ev.mode_weight_error
    assert errors["diffclf"] <= 0.03, errors
    assert errors["dsm"] > 0.1, errors
