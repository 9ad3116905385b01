"""End-to-end smoke runs of `boltzdiff run` on tiny settings (DW4 and a small mixture), resume, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from _recipes import ALDP_HOT_REFERENCE, ALDP_PAIRMLP_TRAIN, TINY_DW4_RUN, TINY_TRAIN, make_system, tiny_aldp_run

from boltzdiff.cli import main
from boltzdiff.systems import SYSTEMS_DIR


def test_dw4_end_to_end_and_resume(tmp_path):
    sysdir = make_system(tmp_path, "dw4", TINY_DW4_RUN)
    out = tmp_path / "run"
    assert main(["run", str(sysdir), "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "analysis.json").read_text())
    for key in ("ess", "mean_energy_kT", "n_target_evals", "energy_w1_reweighted", "n_zero_weight"):
        assert key in res, key
    assert 0 < res["ess"] <= 1 and res["n_target_evals"] > 0
    with np.load(out / "samples.npz") as z:
        assert z["x"].shape == (64, 8) and z["log_w"].dtype == np.float64
        assert np.allclose(z["x"].reshape(64, 4, 2).mean(1), 0, atol=1e-9)  # centred
    assert (out / "report.md").read_text().count(".png") >= 2
    # every stage is skipped on a rerun; a removed analysis is redone from the saved samples
    mtime = (out / "samples.npz").stat().st_mtime
    (out / "analysis.json").unlink()
    assert main(["run", str(sysdir), "--out", str(out), "--no-progress"]) == 0
    assert (out / "samples.npz").stat().st_mtime == mtime and (out / "analysis.json").exists()
    # the same model sampled with the matrix kernel (per-particle Kabsch frames, EGNN Hessians) through one
    # inserted level between every two trained ones
    from boltzdiff.pipeline import stage_sample
    from boltzdiff.systems import load_system

    out2 = tmp_path / "run_matrix"
    out2.mkdir()
    (out2 / "train").symlink_to(out / "train")
    settings = json.loads((out / "pipeline.json").read_text())["settings"]
    settings["sample"].update(kernel_variance="matrix", refine=2)
    stage_sample(load_system(str(sysdir)), out2, settings, progress=False, seed=0)
    summ = json.loads((out2 / "samples.json").read_text())
    assert summ["n_levels"] == 2 * (TINY_TRAIN["n_levels"] - 1) + 1 and 0 < summ["ess"] <= 1
    assert summ["n_model_evals"] > 64 * summ["n_levels"]  # the Hessians are counted
    # a run directory of another system is refused
    mix = tmp_path / "mix.yaml"
    mix.write_text("kind: gaussian_mixture\nweights: [0.7, 0.3]\nmeans: [[1, 1], [-1, -1]]\nstd: 0.3\n")
    assert main(["run", str(mix), "--out", str(out), "--no-progress"]) == 2


def test_mixture_end_to_end(tmp_path):
    d = tmp_path / "mix"
    d.mkdir()
    (d / "system.yaml").write_text("kind: gaussian_mixture\nweights: [0.7, 0.3]\nmeans: [[1, 1], [-1, -1]]\nstd: 0.3\n")
    (d / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "train": {**TINY_TRAIN, "width": 16, "depth": 1},
                "presets": {"quick": {"sample": {"n": 128, "n_bridge": 2}}},
            }
        )
    )
    out = tmp_path / "run"
    assert main(["run", str(d), "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "analysis.json").read_text())
    assert len(res["mode_weights"]) == 2 and res["true_mode_weights"] == pytest.approx([0.7, 0.3])
    assert 0 < res["ess"] <= 1
    # the DSM-only comparison: --loss dsm is recorded; resuming that directory with another loss is refused
    out_dsm = tmp_path / "run_dsm"
    assert main(["run", str(d), "--out", str(out_dsm), "--loss", "dsm", "--no-progress"]) == 0
    cfg = yaml.safe_load((out_dsm / "train" / "config.yaml").read_text())
    assert cfg["loss"] == "dsm"
    assert main(["run", str(d), "--out", str(out_dsm), "--no-progress"]) == 0  # resume keeps dsm
    assert main(["run", str(d), "--out", str(out_dsm), "--loss", "diffclf", "--no-progress"]) == 2


def test_changed_settings_of_a_finished_stage_are_refused_until_redone(tmp_path, capsys):
    d = tmp_path / "mix"
    d.mkdir()
    (d / "system.yaml").write_text("kind: gaussian_mixture\nweights: [0.7, 0.3]\nmeans: [[1, 1], [-1, -1]]\nstd: 0.3\n")
    run_yaml = {"train": {**TINY_TRAIN, "width": 16, "depth": 1}, "presets": {"quick": {"sample": {"n": 64}}}}
    (d / "run.yaml").write_text(yaml.safe_dump(run_yaml))
    out = tmp_path / "run"
    assert main(["run", str(d), "--out", str(out), "--no-progress"]) == 0
    model_mtime = (out / "train" / "model.pt").stat().st_mtime
    # a changed sample setting: the finished sample stage is not silently reused
    run_yaml["presets"]["quick"]["sample"]["n"] = 96
    (d / "run.yaml").write_text(yaml.safe_dump(run_yaml))
    capsys.readouterr()
    assert main(["run", str(d), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sample settings changed" in err and "sample.n: 64 -> 96" in err and "--redo sample" in err
    assert len(err.splitlines()) == 1
    assert main(["run", str(d), "--out", str(out), "--no-progress", "--redo", "sample"]) == 0
    with np.load(out / "samples.npz") as z:
        assert z["x"].shape[0] == 96
    assert (out / "train" / "model.pt").stat().st_mtime == model_mtime  # training kept
    assert json.loads((out / "pipeline.json").read_text())["settings"]["sample"]["n"] == 96
    assert main(["run", str(d), "--out", str(out), "--no-progress"]) == 0  # now consistent: plain resume
    # a changed training setting needs the train stage redone (--redo sample is not enough), then all after it
    run_yaml["train"]["steps"] = 24
    (d / "run.yaml").write_text(yaml.safe_dump(run_yaml))
    assert main(["run", str(d), "--out", str(out), "--no-progress", "--redo", "sample"]) == 2
    assert "train.steps: 20 -> 24" in capsys.readouterr().err
    assert main(["run", str(d), "--out", str(out), "--no-progress", "--redo", "train"]) == 0
    assert yaml.safe_load((out / "train" / "config.yaml").read_text())["steps"] == 24
    assert (out / "train" / "model.pt").stat().st_mtime != model_mtime


def test_settings_diff_ignores_the_device_and_keys_the_run_did_not_record():
    from boltzdiff.pipeline import _changed

    old = {"train": {"steps": 10, "device": "cpu"}, "sample": {"n": 4}}
    new = {"train": {"steps": 10, "device": "cuda", "lr": 1e-3}, "sample": {"n": 4, "n_runs": 2}}
    assert _changed(old, new) == []
    new["sample"]["n"] = 8
    assert _changed(old, new) == ["sample.n: 4 -> 8"]


def test_analyze_bad_input(tmp_path, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    assert "not a `boltzdiff run` directory" in capsys.readouterr().err
    (tmp_path / "pipeline.json").write_text(
        json.dumps(
            {
                "system": "dw4",
                "system_path": str(SYSTEMS_DIR / "dw4" / "system.yaml"),
                "variant": None,
                "preset": "quick",
            }
        )
    )
    assert main(["analyze", str(tmp_path)]) == 2
    assert "no samples.npz" in capsys.readouterr().err


def test_com_restraint_only_touches_the_centre_of_mass():
    import torch

    from boltzdiff import load_system
    from boltzdiff.targets.base import ComRestrained

    t = load_system("dw4").target
    r = ComRestrained(t, var=0.5)
    x = torch.randn(6, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    xc = x - x.mean(1, keepdim=True)
    assert torch.allclose(r.energy(xc), t.energy(xc), atol=1e-10)  # no change on centred configurations
    shift = torch.tensor([0.3, -0.7], dtype=torch.float64)
    # a translation changes u' by exactly n |shift|^2 / (2 var) and leaves u unchanged
    assert torch.allclose(
        r.energy(xc + shift) - r.energy(xc), torch.full((6,), 4 * 0.58 / (2 * 0.5), dtype=torch.float64)
    )
    assert torch.allclose(t.energy(xc + shift), t.energy(xc), atol=1e-10)


@pytest.mark.slow
def test_alanine_dipeptide_end_to_end_tiny(tmp_path):
    """MD -> EGNN (DSM warm-up + DiffCLF) -> SMC bridged to the OpenMM energy -> free-energy analysis."""
    sysdir = make_system(
        tmp_path,
        "alanine_dipeptide",
        tiny_aldp_run({"ns": 0.004, "save_every_ps": 0.05}, final_mcmc_steps=3, final_hmc_steps=2),
    )
    out = tmp_path / "run"
    assert main(["run", str(sysdir), "--out", str(out), "--no-progress", "--allow-degenerate"]) == 0
    res = json.loads((out / "analysis.json").read_text())
    # the learned energy alone, scored against the reference frames on the 72-bin grid, with its own figure
    mo = res["model_only"]
    assert len(mo["phi_grid_rad"]) == 72 and mo["state"]["name"] == "phi_pos" and np.isfinite(mo["rmse_kT"])
    assert res["model_only_rmse_kT"] == mo["rmse_kT"] and (out / "model_only.png").is_file()
    assert res["sanity"]["ok"] is False  # 16 particles per run are flagged as degenerate (--allow-degenerate)
    # two independent SMC runs of 16 particles, pooled; ΔF's error bar from the runs
    smc = json.loads((out / "samples.json").read_text())
    assert smc["n_runs"] == 2 and len(smc["runs"]) == 2 and smc["n"] == 32
    # three torsion + MALA sweeps at the target after the bridge, each one target evaluation per particle twice
    assert res["n_final_mcmc"] == 3 and 0.0 <= res["final_torsion_acceptance"] <= 1.0
    # then two HMC trajectories of three leapfrog steps each
    assert res["n_final_hmc"] == 2 and 0.0 <= res["final_hmc_acceptance"] <= 1.0
    assert all(r["n_final_hmc"] == 2 and r["final_hmc_acceptance"] is not None for r in smc["runs"])
    # <u> from each particle's energy averaged over both HMC states, the final states' own mean beside it
    assert res["mean_energy_states"] == 2 and np.isfinite(res["mean_energy_final_states_kT"])
    assert all(r["n_target_evals"] >= 16 * (1 + 2 * 2 + 1 + 3 * 2 + 2 * 3) for r in smc["runs"])
    assert smc["n_target_evals"] == sum(r["n_target_evals"] for r in smc["runs"])
    with np.load(out / "samples.npz") as z:
        assert z["run"].tolist() == [0] * 16 + [1] * 16 and z["x"].shape[0] == 32
        assert z["u_average"].shape == (32,)
        # <u>'s error bar is the jackknife over the two runs: half the difference of their own weighted means
        from boltzdiff.systems import load_system

        u = load_system(str(sysdir)).target.energy(torch.as_tensor(z["x"])).double().numpy()
        lw = np.where(np.isfinite(u), z["log_w"], -np.inf)
        w = [np.exp(lw[r] - lw[r].max()) for r in (slice(0, 16), slice(16, 32))]
        means = [
            np.sum(wr * np.nan_to_num(u[r], posinf=0.0)) / wr.sum() for wr, r in zip(w, (slice(0, 16), slice(16, 32)))
        ]
        assert res["mean_energy_se_kT"] == pytest.approx(abs(means[0] - means[1]) / 2, rel=1e-6)
        # lineage labels are distinct across the runs, and each run's labels number its own lineages
        lin = z["lineage"]
        assert set(lin[:16]).isdisjoint(lin[16:]) and lin[:16].max() < 16 <= lin[16:].min()
        assert [np.unique(lin[:16]).size, np.unique(lin[16:]).size] == [r["n_lineages"] for r in smc["runs"]]
    assert res["n_lineages"] == min(r["n_lineages"] for r in smc["runs"])
    # the basin's own lineage count, per run: at most the run's, and 0 where a run has no basin particle
    assert len(res["basin_lineages_runs"]) == 2 and res["basin_lineages"] == min(res["basin_lineages_runs"])
    assert all(0 <= b <= r["n_lineages"] for b, r in zip(res["basin_lineages_runs"], smc["runs"]))
    assert res["delta_f_se_method"] == "jackknife over 2 independent SMC runs"
    assert len(res["delta_f_runs_kT"]) == 2
    # ΔF integrates each particle's basin probability over its rotation about the phi bond (71 more angles
    # each); those target energies count in the budget, and the plain count is kept beside it
    assert res["rao_blackwell_angles"] == 72 and res["rao_blackwell_evals"] == 32 * 71
    assert res["n_target_evals"] == smc["n_target_evals"] + 32 * 71
    assert "delta_f_indicator_kT" in res and "torsion_rb" in res["delta_f_estimator"]
    p_basin = np.load(out / "basin_probability.npy")  # per particle, in samples.npz's order
    assert p_basin.shape == (32,) and np.all((p_basin >= 0) & (p_basin <= 1))
    # F(phi) from the same orbits: each particle's phi distribution over the 36 bins, rows summing to 1, and
    # the profile in analysis.json is their weighted mean (finite wherever an orbit reaches, so everywhere
    # but clashes), the count's RMSE kept beside it
    p_prof = np.load(out / "phi_profile_probability.npy")
    assert p_prof.shape == (32, 36) and np.allclose(p_prof.sum(1), 1.0, atol=1e-5)
    assert (
        len(res["f_phi_kT"]) == 36
        and len(res["f_phi_edges"]) == 37
        and min(f for f in res["f_phi_kT"] if f is not None) == 0.0
    )
    assert "rotation" in res["f_phi_estimator"] and "pmf_rmse_count_kT" in res
    for key in (
        "ess",
        "delta_f_kT",
        "delta_f_se_kT",
        "mean_energy_kT",
        "n_target_evals",
        "pmf_rmse_kT",
        "ramachandran_js",
        "n_mirrored",
        "md_delta_f_kT",
    ):
        assert key in res, key
    assert res["n_target_evals"] >= 32 * 2
    for png in ("ramachandran.png", "free_energy_phi.png", "energy_hist.png", "ess_trace.png"):
        assert (out / png).stat().st_size > 1000, png


@pytest.mark.slow
def test_alanine_dipeptide_hot_reference_pairmlp_tsm_adaptive_bridge(tmp_path):
    """The hot-data ALDP recipe (the former quick preset) in miniature: 500 K MD -> pair-distance
    model with target score matching (data temperature taken from the MD) -> SMC with an adaptive bridge to the
    300 K energy -> analysis that does not score the samples against the 500 K data."""
    import yaml

    sysdir = make_system(
        tmp_path,
        "alanine_dipeptide",
        {
            "train": ALDP_PAIRMLP_TRAIN,
            "presets": {
                "quick": {
                    "reference": ALDP_HOT_REFERENCE,
                    "sample": {"n": 32, "mcmc_steps": 1, "bridge_cess": 0.9, "max_bridge": 6},
                }
            },
        },
    )
    out = tmp_path / "run"
    assert main(["run", str(sysdir), "--out", str(out), "--no-progress", "--allow-degenerate"]) == 0
    cfg = yaml.safe_load((out / "train" / "config.yaml").read_text())
    assert cfg["data_temperature"] == 500.0 and cfg["tsm_scale"] == 0.005
    res = json.loads((out / "analysis.json").read_text())
    assert res["reference_temperature_K"] == 500.0
    assert "md_delta_f_kT" in res and "delta_f_kT" in res
    assert "pmf_rmse_kT" not in res and "energy_w1_reweighted" not in res
    smc = json.loads((out / "samples.json").read_text())
    assert 1 <= smc["n_bridge"] <= 6


@pytest.mark.parametrize("n_runs", ["four", 3, 0, True])
def test_sample_stage_rejects_bad_n_runs_before_loading_anything(tmp_path, n_runs):
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_sample
    from boltzdiff.systems import load_system

    settings = {"train": {}, "sample": {"n": 32, "mcmc_steps": 0, "n_runs": n_runs}}
    with pytest.raises(ConfigError, match="sample.n_runs: expected a positive divisor of sample.n=32"):
        stage_sample(load_system("dw4"), tmp_path, settings, progress=False, seed=0)
    assert not (tmp_path / "samples.npz").exists()


@pytest.mark.parametrize("value", ["low", -0.1, 0, True, 0.05])
def test_sample_stage_rejects_bad_strata_max_sigma_before_loading_anything(tmp_path, value):
    """A non-positive or non-numeric noise scale, or one without bridge_strata (the last case), is a one-line
    error naming the setting."""
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_sample
    from boltzdiff.systems import load_system

    settings = {"train": {}, "sample": {"n": 32, "mcmc_steps": 0, "strata_max_sigma": value}}
    with pytest.raises(ConfigError, match="sample.strata_max_sigma: expected a positive noise scale"):
        stage_sample(load_system("dw4"), tmp_path, settings, progress=False, seed=0)
    assert not (tmp_path / "samples.npz").exists()


@pytest.mark.parametrize("value", ["full", 1])
def test_sample_stage_rejects_a_bad_kernel_variance_before_loading_anything(tmp_path, value):
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_sample
    from boltzdiff.systems import load_system

    settings = {"train": {}, "sample": {"n": 32, "mcmc_steps": 0, "kernel_variance": value}}
    with pytest.raises(ConfigError, match="sample.kernel_variance: expected 'fisher', 'matrix' or 'model'"):
        stage_sample(load_system("dw4"), tmp_path, settings, progress=False, seed=0)
    assert not (tmp_path / "samples.npz").exists()


def test_interrupted_sample_stage_resumes_at_the_next_smc_run(tmp_path, monkeypatch):
    """Each finished SMC run is checkpointed: after an interruption only the missing runs are redone, the result
    is identical to an uninterrupted stage, and a checkpoint made with other settings is not reused."""

    import boltzdiff.samplers
    from boltzdiff.config import TrainConfig
    from boltzdiff.pipeline import stage_sample
    from boltzdiff.systems import load_system
    from boltzdiff.train import train

    system = load_system("gmm2_unbalanced")
    cfg = TrainConfig(steps=3, n_levels=8, width=8, depth=1, k=2, n_data=200, checkpoint_every=3, lr_warmup=1)
    train(cfg, tmp_path / "a" / "train", progress=False)
    shutil.copytree(tmp_path / "a" / "train", tmp_path / "b" / "train")
    settings = {"train": {}, "sample": {"n": 24, "n_bridge": 2, "mcmc_steps": 0, "n_runs": 3}}
    stage_sample(system, tmp_path / "a", settings, progress=False, seed=0, workers=1)

    real_smc, calls, fail_at = boltzdiff.samplers.smc, [], [2]

    class Interrupted(Exception):
        pass

    def interrupted_smc(*a, **kw):
        calls.append(1)
        if len(calls) in fail_at:
            raise Interrupted  # e.g. the job was killed
        return real_smc(*a, **kw)

    monkeypatch.setattr(boltzdiff.samplers, "smc", interrupted_smc)
    b = tmp_path / "b"
    with pytest.raises(Interrupted):
        stage_sample(system, b, settings, progress=False, seed=0, workers=1)
    assert (b / "sample_runs" / "run0.pt").is_file() and not (b / "samples.npz").exists()
    c = tmp_path / "c"
    shutil.copytree(tmp_path / "a" / "train", c / "train")
    shutil.copytree(b / "sample_runs", c / "sample_runs")
    calls.clear()
    fail_at.clear()
    stage_sample(system, b, settings, progress=False, seed=0, workers=1)
    assert len(calls) == 2  # runs 1 and 2; run 0 was restored
    assert not (b / "sample_runs").exists()
    with np.load(tmp_path / "a" / "samples.npz") as za, np.load(b / "samples.npz") as zb:
        for key in ("x", "log_w", "run"):
            assert np.array_equal(za[key], zb[key]), key

    # run0.pt was made with seed 0: a stage with seed 1 reruns it instead of reusing it
    calls.clear()
    stage_sample(system, c, settings, progress=False, seed=1, workers=1)
    assert len(calls) == 3


def test_smc_runs_in_worker_processes_equal_the_runs_in_one_process(tmp_path):
    """``workers``: the independent SMC runs side by side in processes give the same particles and weights bit
    for bit as one process running them in turn (each run has its own generator)."""
    from boltzdiff.config import TrainConfig
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_sample
    from boltzdiff.systems import load_system
    from boltzdiff.train import train

    system = load_system("gmm2_unbalanced")
    cfg = TrainConfig(steps=3, n_levels=8, width=8, depth=1, k=2, n_data=200, checkpoint_every=3, lr_warmup=1)
    train(cfg, tmp_path / "a" / "train", progress=False)
    shutil.copytree(tmp_path / "a" / "train", tmp_path / "b" / "train")
    settings = {"train": {}, "sample": {"n": 24, "n_bridge": 2, "mcmc_steps": 1, "n_runs": 3}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count, so that the arithmetic is the same
    try:
        stage_sample(system, tmp_path / "a", settings, progress=False, seed=0, workers=1)
    finally:
        torch.set_num_threads(threads)
    b = tmp_path / "b"
    with pytest.raises(ConfigError, match="--workers: expected a positive number of processes"):
        stage_sample(system, b, settings, progress=False, seed=0, workers=0)
    stage_sample(system, b, settings, progress=False, seed=0, workers=2)
    assert not (b / "sample_runs").exists()
    with np.load(tmp_path / "a" / "samples.npz") as za, np.load(b / "samples.npz") as zb:
        for key in ("x", "log_w", "run", "lineage"):
            assert np.array_equal(za[key], zb[key]), key
    ja = json.loads((tmp_path / "a" / "samples.json").read_text())
    jb = json.loads((b / "samples.json").read_text())
    assert [r["log_Z"] for r in ja["runs"]] == [r["log_Z"] for r in jb["runs"]]


def test_several_trained_models_each_sample_their_block_of_smc_runs(tmp_path):
    """train.n_models 2: two models on the same data with seeds 0 and 1000 (train/ and train_models/1/); with
    4 SMC runs, runs 0-1 sample the first and runs 2-3 the second, bit for bit as a one-model stage on the
    second model gives its runs 2-3; worker processes give the same; labels and bad counts are checked."""
    import yaml

    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_sample, stage_train
    from boltzdiff.systems import load_system

    system = load_system("gmm2_unbalanced")
    tiny = dict(steps=3, n_levels=8, width=8, depth=1, k=2, n_data=200, checkpoint_every=3, lr_warmup=1)
    a = tmp_path / "a"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count, so that the arithmetic is the same
    try:
        stage_train(system, a, {"train": dict(tiny, n_models=2, seed=0)}, None, progress=False, workers=1)
    finally:
        torch.set_num_threads(threads)
    seeds = [yaml.safe_load((d / "config.yaml").read_text())["seed"] for d in (a / "train", a / "train_models" / "1")]
    assert seeds == [0, 1000] and not (a / "train_models" / "2").exists()
    sample = {"n": 32, "n_bridge": 2, "mcmc_steps": 1, "n_runs": 4}
    settings = {"train": dict(tiny, n_models=2), "sample": sample}
    torch.set_num_threads(1)  # the workers' thread count, so that the arithmetic is the same
    try:
        stage_sample(system, a, settings, progress=False, seed=0, workers=1)
        b = tmp_path / "b"  # the second model alone
        shutil.copytree(a / "train_models" / "1", b / "train")
        stage_sample(system, b, {"train": {}, "sample": sample}, progress=False, seed=0, workers=1)
    finally:
        torch.set_num_threads(threads)
    c = tmp_path / "c"
    shutil.copytree(a / "train", c / "train")
    shutil.copytree(a / "train_models", c / "train_models")
    stage_sample(system, c, settings, progress=False, seed=0, workers=2)
    with np.load(a / "samples.npz") as za, np.load(b / "samples.npz") as zb, np.load(c / "samples.npz") as zc:
        assert za["model"].tolist() == [0] * 16 + [1] * 16 and za["run"].tolist() == np.repeat(range(4), 8).tolist()
        assert "model" not in zb.files
        for key in ("x", "log_w"):
            assert np.array_equal(za[key][16:], zb[key][16:]), key
            assert not np.array_equal(za[key][:16], zb[key][:16]), key  # the first model's runs differ
            assert np.array_equal(za[key], zc[key]), key
    smc = json.loads((a / "samples.json").read_text())
    assert smc["n_models"] == 2 and [r["model"] for r in smc["runs"]] == [0, 0, 1, 1]
    # the same two trainings in worker processes (one thread each, as the first were): the same models
    e = tmp_path / "e"
    stage_train(system, e, {"train": dict(tiny, n_models=2, seed=0)}, None, progress=False, workers=2)
    from boltzdiff.train import load_run

    stage_train(system, e, {"train": dict(tiny, n_models=2, seed=0)}, None, progress=False)  # all there: a no-op
    for d in ("train", "train_models/1"):
        wa, we = (load_run(p / d).model.state_dict() for p in (a, e))
        assert wa.keys() == we.keys() and len(wa) > 2
        assert all(torch.equal(wa[k], we[k]) for k in wa), d
    wa, wb = (load_run(a / d).model.state_dict() for d in ("train", "train_models/1"))
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)  # two seeds, two models
    for bad, msg in (
        ({"train": dict(n_models=3), "sample": sample}, "sample.n_runs: expected a multiple of train.n_models=3"),
        ({"train": dict(n_models=0), "sample": sample}, "train.n_models: expected a positive number of models"),
        ({"train": dict(n_models="2"), "sample": sample}, "train.n_models: expected a positive number of models"),
    ):
        with pytest.raises(ConfigError, match=msg):
            stage_sample(system, tmp_path / "d", bad, progress=False, seed=0)
    with pytest.raises(ConfigError, match="train.n_models: expected a positive number of models"):
        stage_train(system, tmp_path / "d", {"train": dict(tiny, n_models=True)}, None, progress=False)
    assert not (tmp_path / "d").exists()


def test_boltzdiff_train_ignores_the_pipelines_n_models_in_run_yaml(tmp_path):
    """``train.n_models`` in a system's run.yaml is for `boltzdiff run`; `boltzdiff train` (one model) reads the
    rest of the section and does not call it an unknown field."""
    from boltzdiff.commands._common import resolve_train_config
    from boltzdiff.errors import ConfigError

    sysdir = make_system(tmp_path, "gmm2_unbalanced", {"train": {"steps": 7, "n_models": 3}})
    assert resolve_train_config(str(sysdir), None, {}).steps == 7
    bad = make_system(tmp_path / "b", "gmm2_unbalanced", {"train": {"steps": 7, "n_model": 3}})
    with pytest.raises(ConfigError, match="unknown field 'n_model'"):
        resolve_train_config(str(bad), None, {})


def test_reference_md_replicas_from_several_start_structures(tmp_path):
    """reference.starts: one MD replica per structure; the phi > 0 structure's replica starts in that basin (which
    300 K MD from the default structure does not reach), and the frames are concatenated for training."""
    from boltzdiff.cv import phi_psi
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_reference
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide")
    settings = {"reference": {"ns": 0.002, "save_every_ps": 0.1, "starts": [None, "alanine-dipeptide-phi-pos.pdb"]}}
    stage_reference(system, tmp_path, settings, progress=False)
    ref = tmp_path / "reference"
    pos = np.load(ref / "positions.npy")
    assert pos.shape == (40, 22, 3) and np.load(ref / "energies.npy").shape == (40,)
    phi, _ = phi_psi(pos, **system.spec["cvs"])
    assert np.all(phi[:20] < 0) and np.all((phi[20:] > 0) & (phi[20:] < 2.0))
    prog = json.loads((ref / "progress.json").read_text())
    assert prog["completed"] and [r["frames"] for r in prog["replicas"]] == [20, 20]
    assert prog["settings"]["temperature"] == 300.0
    # rerunning finds the stage done; a missing structure file is a one-line error before any MD
    stage_reference(system, tmp_path, settings, progress=False)
    bad = {"reference": {"ns": 0.002, "starts": [None, "nope.pdb"]}}
    with pytest.raises(ConfigError, match="reference.starts: structure file .*nope.pdb does not exist"):
        stage_reference(system, tmp_path / "b", bad, progress=False)
    with pytest.raises(ConfigError, match="reference.starts: expected a non-empty list"):
        stage_reference(system, tmp_path / "c", {"reference": {"starts": "x.pdb"}}, progress=False)


def test_bridge_strata_labels_follow_phi_and_bad_specs_are_one_line_errors():
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import cv_strata
    from boltzdiff.reference.frames import read_start_structure
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide")
    labels = cv_strata(system, {"cv": "phi", "edges": [0.0, 2.0]})
    x0 = torch.as_tensor(np.asarray(system.positions)).reshape(1, -1)  # phi = -1.35: below 0
    x1 = torch.as_tensor(read_start_structure(system, "alanine-dipeptide-phi-pos.pdb")).reshape(1, -1)  # +0.95
    mirrored = x1.reshape(-1, 3) * torch.tensor([1.0, 1.0, -1.0])  # D-Ala has phi -0.95; mapped back first
    assert labels(torch.cat([x0, x1, mirrored.reshape(1, -1)])).tolist() == [0, 1, 1]
    # mirror: false labels the configurations as they are (a chiral model's noisy hand is noise)
    raw = cv_strata(system, {"cv": "phi", "edges": [0.0, 2.0], "mirror": False})
    assert raw(torch.cat([x0, x1, mirrored.reshape(1, -1)])).tolist() == [0, 1, 0]
    assert cv_strata(system, None) is None
    # a list of specs labels the cells of their product: phi in 3 intervals x psi in 2 -> phi_bin * 2 + psi_bin
    both = cv_strata(system, [{"cv": "phi", "edges": [0.0, 2.0]}, {"cv": "psi", "edges": [0.0]}])
    # psi: -0.26 (shipped structure), +0.51 (the phi > 0 start, see boltzdiff/systems/alanine_dipeptide)
    assert both(torch.cat([x0, x1])).tolist() == [0 * 2 + 0, 1 * 2 + 1]
    # wrap: the arcs below 0 and above 2 are one stratum (label 0), the basin 0 < phi < 2 the other
    wrapped = cv_strata(system, {"cv": "phi", "edges": [0.0, 2.0], "wrap": True})
    assert wrapped(torch.cat([x0, x1])).tolist() == [0, 1]
    # phi = -1.35 lies above the last edge: the third interval without wrap, the first with it
    assert cv_strata(system, {"cv": "phi", "edges": [-2.0, -1.5]})(x0).tolist() == [2]
    assert cv_strata(system, {"cv": "phi", "edges": [-2.0, -1.5], "wrap": True})(x0).tolist() == [0]
    for bad, msg in (
        ([{"cv": "phi", "edges": [0.0]}, {"cv": "omega", "edges": [0.0]}], "cv 'omega' is not among"),
        ({"cv": "omega", "edges": [0.0]}, "cv 'omega' is not among the system's cvs"),
        ({"cv": "phi"}, "expected {cv: NAME, edges"),
        ({"cv": "phi", "edges": ["a"]}, "edges must be numbers"),
        ({"cv": "phi", "edges": [0.0, 2.0], "wrap": "yes"}, "wrap: true"),
        ({"cv": "phi", "edges": [0.0, 2.0], "mirror": "no"}, "mirror: true"),
    ):
        with pytest.raises(ConfigError, match=msg):
            cv_strata(system, bad)


@pytest.mark.parametrize("value", ["half", -0.1, 1.5, True, 0.2])
def test_sample_stage_rejects_bad_strata_min_share_before_loading_anything(tmp_path, value):
    """Not a share in [0, 1], or a share without bridge_strata (the last case): a one-line error naming it."""
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_sample
    from boltzdiff.systems import load_system

    settings = {"train": {}, "sample": {"n": 32, "mcmc_steps": 0, "strata_min_share": value}}
    with pytest.raises(ConfigError, match="sample.strata_min_share: expected a share"):
        stage_sample(load_system("dw4"), tmp_path, settings, progress=False, seed=0)
    assert not (tmp_path / "samples.npz").exists()


def test_hand_restricted_target_keeps_one_enantiomer_with_its_exact_energy_and_force():
    """The restricted target equals the force field (energy and force) for the reference hand, is +inf for the
    mirror image (which the unrestricted force field scores the same), and needs declared chiral centres."""
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import sampling_target
    from boltzdiff.reference.frames import read_start_structure
    from boltzdiff.systems import load_system
    from boltzdiff.targets.base import HandRestricted

    system = load_system("alanine_dipeptide", variant="vacuum")

    class _Model:  # sampling_target reads only the model's level-0 preconditioning variance
        a2 = torch.tensor([0.25])

    t = sampling_target(system, _Model(), restrict_chirality=True)
    assert isinstance(t, HandRestricted)
    x0 = torch.as_tensor(np.asarray(system.positions)).reshape(1, -1)
    x1 = torch.as_tensor(read_start_structure(system, "alanine-dipeptide-phi-pos.pdb")).reshape(1, -1)
    x = torch.cat([x0, x1]).double()
    x = (x.reshape(2, -1, 3) - x.reshape(2, -1, 3).mean(1, keepdim=True)).reshape(2, -1)
    free = sampling_target(system, _Model())
    torch.testing.assert_close(t.energy(x), free.energy(x))
    torch.testing.assert_close(t.force(x), free.force(x))
    torch.testing.assert_close(free.energy(-x), free.energy(x))  # the force field cannot tell the hands apart
    assert torch.isinf(t.energy(-x)).all()
    with pytest.raises(ConfigError, match="declares no chiral_quads"):
        sampling_target(load_system("dw4"), _Model(), restrict_chirality=True)


def test_sample_stage_rejects_a_final_resample_without_sweeps(tmp_path):
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_sample
    from boltzdiff.systems import load_system

    for sample in ({"final_resample": True}, {"final_resample": "yes", "final_mcmc_steps": 5}):
        settings = {"train": {}, "sample": {"n": 32, "mcmc_steps": 0, **sample}}
        with pytest.raises(ConfigError, match="sample.final_resample: expected true or false, and true only with"):
            stage_sample(load_system("dw4"), tmp_path, settings, progress=False, seed=0)


def test_sample_stage_rejects_a_non_boolean_restrict_chirality_before_loading_anything(tmp_path):
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_sample
    from boltzdiff.systems import load_system

    settings = {"train": {}, "sample": {"n": 32, "mcmc_steps": 0, "restrict_chirality": "yes"}}
    with pytest.raises(ConfigError, match="sample.restrict_chirality: expected true or false"):
        stage_sample(load_system("dw4"), tmp_path, settings, progress=False, seed=0)


def test_reference_by_metadynamics_resamples_the_frames_by_their_weights(tmp_path):
    from boltzdiff.cv import dihedrals
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import stage_reference
    from boltzdiff.samplers.resampling import kish_ess
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide", variant="vacuum")
    rs = {"method": "metad", "build_ns": 0.003, "ns": 0.005, "save_every_ps": 0.1, "seed": 3, "segment_ps": 2}
    stage_reference(system, tmp_path, {"reference": rs}, progress=False)
    ref = tmp_path / "reference"
    pos, frames = np.load(ref / "positions.npy"), np.load(ref / "metad" / "frames.npy")
    log_w = np.load(ref / "metad" / "log_weights.npy")
    prog = json.loads((ref / "progress.json").read_text())
    assert prog["completed"] and prog["frames"] == len(pos) == len(frames) == 50
    assert abs(prog["weights_ess"] - kish_ess(torch.as_tensor(log_w))) < 1e-12 and prog["weights_ess"] < 1
    # every training frame is one of the biased frames; systematic resampling copies frame i
    # floor(n W_i) or ceil(n W_i) times
    idx = [int(np.flatnonzero((frames == p).all(axis=(1, 2)))[0]) for p in pos]
    counts = np.bincount(idx, minlength=len(frames))
    w = np.exp(log_w - log_w.max())
    nw = len(frames) * w / w.sum()
    assert np.all(counts >= np.floor(nw) - 1e-9) and np.all(counts <= np.ceil(nw) + 1e-9)
    assert prog["frames_distinct"] == int((counts > 0).sum())
    # the energies are the target's at the training frames
    e = system.target.energy(torch.as_tensor(pos[:5].reshape(5, -1), dtype=torch.float64)).numpy()
    assert np.allclose(np.load(ref / "energies.npy")[:5], e)
    assert dihedrals(pos[:1], [[4, 6, 8, 14]]).shape == (1, 1)
    # bad settings are one-line errors naming the field
    for bad, field in [
        ({"method": "umbrella"}, "reference.method"),
        ({"method": "metad", "nss": 1.0}, "unknown setting"),
        ({"method": "metad", "temperature": 500.0}, "reference.temperature"),
        ({"method": "metad", "cvs": ["phi", "omega"]}, "reference.cvs"),
        ({"method": "metad", "weight_power": 1.5}, r"reference.weight_power: expected a number in \[0, 1\]"),
        ({"method": "metad", "weight_power": "half"}, "reference.weight_power: expected a number"),
        ({"method": "md", "weight_power": 0.5}, "reference.weight_power: only with method: metad"),
    ]:
        with pytest.raises(ConfigError, match=field):
            stage_reference(system, tmp_path / "bad", {"reference": bad}, progress=False)
    assert not (ref / "train_positions.npy").exists() and "train_frames_distinct" not in prog
    assert prog["weight_power"] == 1.0


def test_a_tempered_metad_training_set_resamples_by_a_power_of_the_weights(tmp_path):
    """reference.weight_power g: the training frames are copied floor or ceil of n w_i^g / sum w^g times (the
    systematic resampling bound), g = 0 keeps every frame once, g = 1 writes no separate set; the reference stage
    then hands the tempered set to training while positions.npy stays the Boltzmann one."""
    from boltzdiff.pipeline import training_data_path, write_tempered_training_set

    rng = np.random.default_rng(5)
    frames = np.arange(40, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    log_w = rng.normal(scale=2.0, size=40)
    assert write_tempered_training_set(tmp_path, frames, log_w, 1.0, 0) == {}
    assert training_data_path(tmp_path) == tmp_path / "positions.npy"
    for g in (0.0, 0.5):
        info = write_tempered_training_set(tmp_path, frames, log_w, g, 0)
        assert training_data_path(tmp_path) == tmp_path / "train_positions.npy"
        t = np.load(tmp_path / "train_positions.npy")
        counts = np.bincount(t[:, 0, 0].astype(int), minlength=40)
        nw = 40 * np.exp(g * log_w) / np.exp(g * log_w).sum()
        assert len(t) == 40 and np.all(counts >= np.floor(nw) - 1e-9) and np.all(counts <= np.ceil(nw) + 1e-9)
        assert info["train_frames_distinct"] == int((counts > 0).sum())
        if g == 0.0:
            assert counts.tolist() == [1] * 40 and info["train_weights_ess"] == pytest.approx(1.0)


def test_a_run_directory_resumes_from_another_working_directory_and_refuses_another_system(tmp_path, monkeypatch):
    """A system given as a relative path is recorded absolute, so the run is recognised when resumed by an
    absolute path (or from elsewhere); a different system file is refused with both paths named."""
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import _check_run_dir
    from boltzdiff.systems import load_system

    for name, w in (("a", 0.7), ("b", 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "system.yaml").write_text(
            f"kind: gaussian_mixture\nweights: [{w}, {1 - w:.1f}]\nmeans: [[1.0], [-1.0]]\nstd: 0.3\n"
        )
    monkeypatch.chdir(tmp_path)
    rel = load_system("a")  # a folder relative to the working directory
    assert rel.path.is_absolute() and rel.path == (tmp_path / "a" / "system.yaml").resolve()
    out = tmp_path / "run"
    out.mkdir()
    meta = {"system": rel.name, "system_path": str(rel.path), "variant": None, "preset": "quick"}
    (out / "pipeline.json").write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path / "b")
    _check_run_dir(out, load_system(tmp_path / "a"), "quick")  # the same file by an absolute path: accepted
    _check_run_dir(out, load_system("../a/system.yaml"), "quick")  # and by another relative one
    with pytest.raises(ConfigError, match=r"holds a run of system 'a' \(.*a/system.yaml.*not of .*b/system.yaml"):
        _check_run_dir(out, load_system(tmp_path / "b"), "quick")


def _orphan_probe(fake_parent: int) -> None:  # runs in a spawned process
    import time

    from boltzdiff.pipeline import exit_with_parent

    exit_with_parent(fake_parent, every_s=0.05)
    time.sleep(60)


def test_smc_worker_exits_once_its_parent_is_gone():
    """The watchdog of an SMC worker process: when the parent pid it was given is no longer its parent (the
    parent was killed and the worker re-parented), the worker ends itself instead of running on."""
    import multiprocessing as mp
    import os

    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_orphan_probe, args=(os.getpid() + 999_999,))  # never this child's parent
    proc.start()
    proc.join(timeout=30)
    alive = proc.is_alive()
    if alive:
        proc.terminate()
    assert not alive and proc.exitcode == 1


def test_torsion_moves_of_a_system_and_bad_specs_are_one_line_errors():
    """``sample.torsion: {bonds: cvs}`` rotates about the central bonds of alanine dipeptide's phi and psi (the
    smaller side: phi moves the acetyl cap and the N-H, psi the N-methyl cap and the carbonyl O); ``auto`` finds
    every rotatable bond; bad specs name the field."""
    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import torsion_spec
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide")
    moves, steps = torsion_spec(system, {"bonds": "cvs"}, 100)
    assert steps == 0 and moves.n_moves == 2
    top = system.topology
    assert sorted(map(sorted, moves.axes.tolist())) == [[6, 8], [8, 14]]
    moved = [{top.atom(i).residue.name for i in m.nonzero().flatten().tolist()} for m in moves.masks]
    assert moved == [{"ACE", "ALA"}, {"NME", "ALA"}]  # the acetyl cap + ALA N-H; the N-methyl cap + ALA C=O
    assert moves.masks.sum(1).tolist() == [7, 7]
    auto, _ = torsion_spec(system, {"bonds": "auto", "width": 1.0, "bridge_steps": 2}, 0)
    assert auto.n_moves > moves.n_moves and auto.width == 1.0
    assert torsion_spec(system, None, 0) == (None, 0)
    for bad, final, msg in (
        ({"bonds": "cvs"}, -1, "sample.final_mcmc_steps: expected an integer >= 0"),
        ({"bonds": "rings"}, 0, "sample.torsion.bonds: expected 'cvs', 'auto'"),
        ({"bonds": [[0, 21]]}, 0, "not bonded"),
        ({"bonds": "cvs", "width": 7.0}, 0, r"torsion width: expected an angle in \(0, pi\]"),
        ({"bonds": "cvs", "bridge_steps": -2}, 0, "sample.torsion.bridge_steps"),
        ({"bonds": "cvs", "angle": 1}, 0, "sample.torsion: expected {bonds"),
    ):
        with pytest.raises(ConfigError, match=msg):
            torsion_spec(system, bad, final)
    with pytest.raises(ConfigError, match="not a molecule with a topology"):
        torsion_spec(load_system("dw4"), {"bonds": "auto"}, 0)


def test_run_seed_redraws_the_reference_data_and_seed_zero_keeps_the_presets():
    """`boltzdiff run --seed S` adds S to the preset's reference seed (independent repeats draw their own data);
    seed 0 leaves the settings as the preset wrote them (no seed key added where there was none)."""
    from boltzdiff.pipeline import resolve_settings
    from boltzdiff.systems import load_system

    aldp = load_system("alanine_dipeptide")
    assert resolve_settings(aldp, "quick")["reference"]["seed"] == 21
    s3 = resolve_settings(aldp, "quick", seed=3)
    assert s3["reference"]["seed"] == 24 and s3["train"]["seed"] == 3
    dw4 = load_system("dw4")
    base = resolve_settings(dw4, "quick")["reference"]
    assert resolve_settings(dw4, "quick", seed=5)["reference"]["seed"] == int(base.get("seed", 0)) + 5
    # everything but the reference seed is the same as with seed 0
    s5 = resolve_settings(dw4, "quick", seed=5)
    assert {k: v for k, v in s5["reference"].items() if k != "seed"} == {k: v for k, v in base.items() if k != "seed"}
