"""`boltzdiff pool`: SMC runs of several run directories pooled by their normalising constants."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from boltzdiff.commands import pool


def _run_dir(path, p_basin, log_z, n_models=1, runs_per_model=2, rb=True):
    """A finished run directory as `boltzdiff run` leaves it, with every particle's basin probability
    ``p_basin[run]`` (``rb``) or a phi of 1.0 (basin) / -1.0 (rest) whose basin share is ``p_basin[run]``."""
    path.mkdir()
    n_runs = n_models * runs_per_model
    per = 100
    run = np.repeat(np.arange(n_runs), per)
    model = run // runs_per_model
    x = np.zeros((n_runs * per, 6))
    if rb:
        np.save(path / "basin_probability.npy", np.repeat(np.asarray(p_basin, dtype=float), per))
    else:
        k = np.round(np.asarray(p_basin) * per).astype(int)
        x[:, 0] = np.concatenate([np.where(np.arange(per) < kr, 1.0, -1.0) for kr in k])
    np.savez(path / "samples.npz", x=x, log_w=np.zeros(len(x)), run=run, model=model)
    (path / "samples.json").write_text(json.dumps({"runs": [{"log_Z": float(v)} for v in log_z]}))
    (path / "pipeline.json").write_text(json.dumps({"system_path": "unused"}))
    return path


def test_equal_runs_pool_to_the_mean_basin_share_and_models_are_counted(tmp_path):
    a = _run_dir(tmp_path / "a", [0.1, 0.3], [0.0, 0.0])
    b = _run_dir(tmp_path / "b", [0.2, 0.2], [0.0, 0.0])
    res = pool.pooled_delta_f([a, b])
    assert res["n_runs"] == 4 and res["n_models"] == 2
    assert res["basin"] == ["rotation integrated", "rotation integrated"]
    assert res["delta_f_kT"] == pytest.approx(-math.log(0.2 / 0.8))
    assert res["delta_f_models_kT"] == pytest.approx([-math.log(0.2 / 0.8)] * 2)
    assert res["delta_f_se_kT"] == pytest.approx(0.0, abs=1e-12)


def test_runs_are_weighted_by_their_normalising_constants(tmp_path):
    # run 1 has e times run 0's normalising constant: the pooled basin share is (0.1 + e 0.3) / (1 + e)
    a = _run_dir(tmp_path / "a", [0.1, 0.3], [0.0, 1.0], n_models=2, runs_per_model=1)
    res = pool.pooled_delta_f([a])
    p = (0.1 + math.e * 0.3) / (1 + math.e)
    assert res["delta_f_kT"] == pytest.approx(-math.log(p / (1 - p)))
    assert res["delta_f_models_kT"] == pytest.approx([-math.log(0.1 / 0.9), -math.log(0.3 / 0.7)])
    assert res["delta_f_se_kT"] > 0


def test_directories_without_basin_probabilities_count_particles_by_phi(tmp_path):
    a = _run_dir(tmp_path / "a", [0.25, 0.25], [0.0, 0.0], rb=False)
    res = pool.pooled_delta_f([a], state_of=lambda x: ((x[:, 0] > 0) & (x[:, 0] < 2), None))
    assert res["basin"] == ["count"]
    assert res["delta_f_kT"] == pytest.approx(-math.log(0.25 / 0.75))


def test_the_command_prints_and_writes_json(tmp_path, capsys):
    a = _run_dir(tmp_path / "a", [0.1, 0.3], [0.0, 0.0])
    b = _run_dir(tmp_path / "b", [0.2, 0.2], [0.0, 0.0])
    parser = argparse.ArgumentParser()
    pool.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "pooled.json"
    args = parser.parse_args(["pool", str(a), str(b), "--out", str(out)])
    assert args.func(args) == 0
    assert "4 SMC runs of 2 models" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["delta_f_kT"] == pytest.approx(-math.log(0.2 / 0.8))
    assert saved["run_dirs"] == [str(a), str(b)]


def test_a_directory_that_is_not_a_finished_run_is_a_one_line_error(tmp_path):
    from boltzdiff.errors import ConfigError

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="samples.npz|pipeline.json"):
        pool.pooled_delta_f([tmp_path / "empty"])
