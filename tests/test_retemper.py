"""A finished `boltzdiff run` sampled at another temperature (`boltzdiff sample RUN_DIR --temperature T`): the
run's models and recipe, the exact target at T, reference frames reweighted to T, the analysis at T."""

import json

import numpy as np
import pytest
import torch
from _recipes import make_system, tiny_aldp_run

from boltzdiff.cli import main
from boltzdiff.systems import load_system


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny alanine-dipeptide run with metadynamics training data (so the raw frames and weights exist)."""
    tmp = tmp_path_factory.mktemp("retemper")
    metad = {"method": "metad", "build_ns": 0.002, "ns": 0.004, "save_every_ps": 0.1, "segment_ps": 2, "seed": 3}
    sysdir = make_system(tmp, "alanine_dipeptide", tiny_aldp_run(metad, final_mcmc_steps=2))
    out = tmp / "run"
    assert main(["run", str(sysdir), "--out", str(out), "--no-progress", "--allow-degenerate"]) == 0
    return sysdir, out


def test_a_run_sampled_at_another_temperature_ends_at_the_tempered_target(tiny_run, capsys):
    sysdir, run = tiny_run
    at = run / "at_360K"
    rc = main(["sample", str(run), "--temperature", "360", "--seed", "5", "--no-progress"])
    assert rc == 0 and "ΔF at 360 K" in capsys.readouterr().out
    meta = json.loads((at / "pipeline.json").read_text())
    assert meta["temperature_K"] == 360.0 and meta["source_run"] == str(run.resolve())
    assert abs(meta["beta"] - 300.0 / 360.0) < 1e-12 and meta["seed"] == 5
    info_run = json.loads((at / "run_info.json").read_text())
    assert info_run["seed"] == 5 and info_run["config"]["temperature_K"] == 360.0
    res = json.loads((at / "analysis.json").read_text())
    assert res["temperature_K"] == 360.0 and "model_only" not in res and "delta_f_kT" in res
    # the models are the source run's, copied without checkpoints
    assert (at / "train" / "model.pt").read_bytes() == (run / "train" / "model.pt").read_bytes()
    assert not (at / "train" / "ckpt.pt").exists()
    # reference frames at T: raw metadynamics frames, weight exp(log w + (1 - beta) u), energies beta u
    info = json.loads((at / "reference" / "tempered.json").read_text())
    frames = np.load(run / "reference" / "metad" / "frames.npy")
    assert info["n_frames"] == len(frames) and info["n_target_evals"] == len(frames) and 0 < info["ess_fraction"] <= 1
    system = load_system(str(sysdir))
    pos, e_t = np.load(at / "reference" / "positions.npy"), np.load(at / "reference" / "energies.npy")
    u = system.target.energy(torch.as_tensor(pos.reshape(len(pos), -1), dtype=torch.float64)).numpy()
    assert np.allclose(e_t, (300.0 / 360.0) * u, rtol=1e-6, atol=1e-6)
    # systematic resampling copies raw frame i floor or ceil of n W_i times
    u_raw = system.target.energy(torch.as_tensor(frames.reshape(len(frames), -1), dtype=torch.float64)).numpy()
    lw = np.load(run / "reference" / "metad" / "log_weights.npy") + (1 - 300.0 / 360.0) * u_raw
    w = np.exp(lw - lw.max())
    nw = len(frames) * w / w.sum()
    idx = [int(np.flatnonzero((frames == p).all(axis=(1, 2)))[0]) for p in pos]
    counts = np.bincount(idx, minlength=len(frames))
    assert np.all(counts >= np.floor(nw) - 1e-6) and np.all(counts <= np.ceil(nw) + 1e-6)
    # the new evaluations (sampling, the rotation integral, the frames' energies) are counted, nothing else
    smc = json.loads((at / "samples.json").read_text())
    assert res["n_target_evals"] == smc["n_target_evals"] + res.get("rao_blackwell_evals", 0) + len(frames)
    # the sampled energies are those of the target at T: the particles' mean reduced energy is beta u
    with np.load(at / "samples.npz") as z:
        x, log_w = torch.as_tensor(z["x"], dtype=torch.float64), z["log_w"]
    u_s = system.target.energy(x).numpy() * (300.0 / 360.0)
    ok = np.isfinite(u_s) & np.isfinite(log_w)
    w = np.exp(log_w[ok] - log_w[ok].max())
    assert np.sum(w * u_s[ok]) / np.sum(w) == pytest.approx(res["mean_energy_kT"], rel=1e-6)
    # `boltzdiff analyze` reads the directory at its temperature and gives the same ΔF
    first = res["delta_f_kT"]
    assert main(["analyze", str(at), "--no-progress"]) in (0, 3)
    again = json.loads((at / "analysis.json").read_text())
    assert again["temperature_K"] == 360.0 and again["delta_f_kT"] == pytest.approx(first, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give --temperature"),
        (["--temperature", "0"], "--temperature"),
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "-5"], "--temperature"),
        (["--temperature", "330", "--n", "10"], "--n"),
        (["--temperature", "330", "--out", "x.npz"], "--out"),
    ],
)
def test_bad_requests_for_a_run_directory_are_one_line_errors(tiny_run, capsys, extra, message):
    _, run = tiny_run
    before = sorted(p.name for p in run.iterdir())
    assert main(["sample", str(run), *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == before


def test_an_out_dir_of_another_temperature_or_run_is_refused(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    at = run / "at_360K"
    if not at.exists():
        assert main(["sample", str(run), "--temperature", "360", "--no-progress"]) == 0
    assert main(["sample", str(run), "--temperature", "330", "--out", str(at), "--no-progress"]) == 2
    assert "at 360.0 K, not" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "f.txt").write_text("x")
    assert main(["sample", str(run), "--temperature", "330", "--out", str(tmp_path / "junk"), "--no-progress"]) == 2
    assert "choose another --out" in capsys.readouterr().err
    # a run at a temperature is not itself re-tempered
    assert main(["sample", str(at), "--temperature", "330", "--no-progress"]) == 2
    assert "already a run at another temperature" in capsys.readouterr().err


def test_worker_processes_rebuild_the_system_at_its_temperature(tmp_path):
    """The sample stage's SMC runs rebuild the system in spawned processes from the job: a tempered system
    must come back tempered (else the runs would sample the source temperature while the analysis weighs at T)."""
    from boltzdiff.pipeline.workers import job_of, system_of
    from boltzdiff.samplers.tempering import tempered_system

    system = load_system("alanine_dipeptide")
    tsys, beta = tempered_system(system, 345.0)
    x = torch.as_tensor(np.asarray(system.positions).reshape(1, -1), dtype=torch.float64)
    u = float(system.target.energy(x))
    again = system_of(job_of(tsys, tmp_path, {}, 1))
    assert again.temperature == 345.0 and float(again.target.energy(x)) == pytest.approx(beta * u, rel=1e-9)
    plain = system_of(job_of(system, tmp_path, {}, 1))
    assert plain.temperature == system.temperature and float(plain.target.energy(x)) == pytest.approx(u, rel=1e-9)
