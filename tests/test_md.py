"""Reference runs: Langevin MD (temperature, resume, blow-up), MCMC (exactness, resume), CLI, CVs."""

import json
import math

import numpy as np
import pytest
import torch

import boltzdiff
from boltzdiff.cv import distance_histogram, interatomic_distances, phi_psi
from boltzdiff.reference.chains import ChainConfig, run_chains
from boltzdiff.reference.frames import SimulationBlowUpError
from boltzdiff.reference.md import MDConfig, run_md
from boltzdiff.systems import System
from boltzdiff.targets.base import Target


@pytest.fixture(scope="module")
def aldp():
    return boltzdiff.load_system("alanine_dipeptide")


def test_md_keeps_temperature_near_300K(aldp, tmp_path):
    # 25 ps at 1 fs, frames every 50 fs; the first 5 ps are discarded as equilibration.
    res = run_md(aldp, tmp_path / "md", MDConfig(ns=0.025, save_every_ps=0.05, seed=1), progress=False)
    temps = res.extras["temperatures"][100:]
    dof = 3 * 22 - 3  # no constraints, centre-of-mass motion removed
    sd = 300.0 * math.sqrt(2.0 / dof)  # canonical spread of the instantaneous temperature (~53 K)
    # Tolerance: kinetic energy decorrelates in ~1/(2 gamma) = 0.5 ps; counting one independent sample per ps
    # (20 over 20 ps) is conservative, and 4 standard errors leaves a false-alarm rate below 1e-4.
    n_eff = 20
    assert abs(temps.mean() - 300.0) < 4 * sd / math.sqrt(n_eff)
    assert 0.6 * sd < temps.std() < 1.5 * sd
    # the saved energies are the system's reduced energies of the saved frames
    u = aldp.target.energy(torch.as_tensor(res.positions[-5:], dtype=torch.float64)).numpy()
    assert np.allclose(u, res.energies[-5:], atol=1e-3)  # frames are stored as float32


def test_md_resume_continues_exactly(aldp, tmp_path):
    cfg = dict(save_every_ps=0.1, seed=3, checkpoint_every=10)
    full = run_md(aldp, tmp_path / "full", MDConfig(ns=0.004, **cfg), progress=False)
    run_md(aldp, tmp_path / "part", MDConfig(ns=0.002, **cfg), progress=False)
    prog = json.loads((tmp_path / "part" / "progress.json").read_text())
    assert prog["checkpoint_frame"] == 20 and prog["completed"]
    resumed = run_md(aldp, tmp_path / "part", MDConfig(ns=0.004, **cfg), progress=False)
    assert resumed.n_frames == 40
    assert np.array_equal(resumed.positions, full.positions)
    assert np.allclose(resumed.energies, full.energies)
    # the trajectory loads in mdtraj with the written topology
    import mdtraj

    traj = mdtraj.load(str(tmp_path / "part" / "trajectory.dcd"), top=str(tmp_path / "part" / "topology.pdb"))
    assert traj.n_frames == 40 and np.allclose(traj.xyz, resumed.positions, atol=1e-5)
    info = json.loads((tmp_path / "part" / "run_info.json").read_text())
    assert info["seed"] == 3 and "versions" in info
    # a different setting on the same folder is refused
    with pytest.raises(boltzdiff.ConfigError, match="timestep_fs"):
        run_md(aldp, tmp_path / "part", MDConfig(ns=0.004, timestep_fs=2.0, **cfg), progress=False)


def test_md_blow_up_reports_step_and_keeps_good_frames(tmp_path):
    vac = boltzdiff.load_system("alanine_dipeptide", "vacuum")
    with pytest.raises(SimulationBlowUpError, match=r"blew up .* within steps \d+-\d+") as e:
        # 4 fs without constraints: the X-H bonds blow up within a few tens of steps (deterministically)
        cfg = MDConfig(ns=1.0, timestep_fs=4.0, save_every_ps=0.008, seed=0)
        run_md(vac, tmp_path / "boom", cfg, progress=False)
    assert "\n" not in str(e.value)
    pos = np.load(tmp_path / "boom" / "positions.npy")
    en = np.load(tmp_path / "boom" / "energies.npy")
    assert len(pos) == len(en) >= 1 and np.isfinite(pos).all() and np.isfinite(en).all()
    assert f"kept {len(pos)} good frames" in str(e.value)


class _Harmonic(Target):
    """u = |x - mean(x)|^2 / 2 for n particles in d dimensions: COM-free, E[u] = (n - 1) d / 2 exactly."""

    def __init__(self, n=5, d=2):
        super().__init__(n * d, (n, d))

    def _energy(self, x):
        p = x.reshape(x.shape[0], *self.event_shape)
        return 0.5 * ((p - p.mean(1, keepdim=True)) ** 2).sum((1, 2))


@pytest.mark.parametrize("method", ["mala", "rw"])
def test_mcmc_samples_the_target(tmp_path, method):
    sys_ = System(
        name="harm", kind="test", target=_Harmonic(), spec={}, positions=np.zeros((5, 2)), temperature=1
    )
    cfg = ChainConfig(
        n_steps=3000, burn_in=500, n_chains=64, save_every=10, step_size=0.1, method=method, seed=0
    )
    res = run_chains(sys_, tmp_path / method, cfg, progress=False)
    assert res.positions.shape == (300 * 64, 5, 2)
    assert np.abs(res.positions.mean(1)).max() < 1e-5  # centre of mass stays at 0
    # E[u] = 4; chains are correlated, so allow 5 standard errors with a conservative n_eff
    sd = math.sqrt(4.0)  # u ~ Gamma(shape 4, scale 1) -> sd 2
    n_eff = 64 * 30
    assert abs(res.energies.mean() - 4.0) < 5 * sd / math.sqrt(n_eff)
    assert 0.1 < res.acceptance < 0.95


def test_mcmc_resume_continues_exactly(tmp_path):
    dw4 = boltzdiff.load_system("dw4")
    base = dict(burn_in=50, n_chains=8, save_every=10, seed=4, checkpoint_every=3)
    full = run_chains(dw4, tmp_path / "full", ChainConfig(n_steps=200, **base), progress=False)
    run_chains(dw4, tmp_path / "part", ChainConfig(n_steps=100, **base), progress=False)
    res = run_chains(dw4, tmp_path / "part", ChainConfig(n_steps=200, **base), progress=False)
    assert res.positions.shape == (20 * 8, 4, 2)
    assert np.array_equal(res.positions, full.positions)
    assert np.allclose(
        dw4.target.energy(torch.as_tensor(res.positions[:8], dtype=torch.float64)).numpy(),
        res.energies[:8],
        atol=1e-4,
    )


def test_simulate_cli_md_and_mcmc(tmp_path):
    from boltzdiff.cli import main

    out = tmp_path / "aldp"
    assert (
        main(
            [
                "simulate",
                "alanine_dipeptide",
                "--ns",
                "0.002",
                "--save-every-ps",
                "0.1",
                "--out",
                str(out),
                "--no-progress",
                "--seed",
                "7",
            ]
        )
        == 0
    )
    assert np.load(out / "positions.npy").shape == (20, 22, 3)
    assert np.load(out / "positions.npy").dtype == np.float32
    assert (out / "checkpoint.chk").is_file() and (out / "state.xml").is_file()
    assert (
        main(
            [
                "simulate",
                "lj13",
                "--steps",
                "40",
                "--burn-in",
                "20",
                "--chains",
                "4",
                "--save-every",
                "10",
                "--out",
                str(tmp_path / "lj"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "lj" / "positions.npy").shape == (16, 13, 3)
    assert main(["simulate", "alanine_dipeptide", "--ns", "-1", "--out", str(tmp_path / "neg"), "--no-progress"]) == 2


def test_cvs(aldp):
    phi, psi = phi_psi(aldp.positions[None].repeat(3, 0), **aldp.spec["cvs"])  # no topology needed for dihedrals
    assert phi.shape == (3,) and np.allclose(phi, aldp.spec["reference_dihedrals"]["phi"], atol=1e-3)
    x = np.random.default_rng(0).standard_normal((10, 4, 2))
    d = interatomic_distances(x)
    assert d.shape == (10, 6) and np.isclose(d[0, 0], np.linalg.norm(x[0, 0] - x[0, 1]))
    h, edges = distance_histogram(x, bins=20, range=(0, 8))
    assert h.shape == (20,) and np.isclose((h * np.diff(edges)).sum(), 1.0)
    hw, _ = distance_histogram(x, bins=20, range=(0, 8), weights=np.r_[np.ones(5), np.zeros(5)])
    h5, _ = distance_histogram(x[:5], bins=20, range=(0, 8))
    assert np.allclose(hw, h5)


def test_md_on_the_lj_openmm_system(tmp_path):
    lj = boltzdiff.load_system("lj13")
    # reduced units: mass 1, eps 1 kJ/mol, r_m 1 nm -> time unit 1 ps; 5 fs steps are small
    cfg = MDConfig(ns=0.01, timestep_fs=5.0, save_every_ps=0.5, seed=2)
    res = run_md(lj, tmp_path / "ljmd", cfg, progress=False)
    assert res.positions.shape == (20, 13, 3)
    u = lj.target.energy(torch.as_tensor(res.positions, dtype=torch.float64)).numpy()
    assert np.allclose(u, res.energies, atol=1e-3)  # OpenMM reduced energies == torch target (float32 frames)
    from boltzdiff.cli import main

    out = tmp_path / "cli"
    args = [
        "simulate",
        "lj13",
        "--engine",
        "md",
        "--ns",
        "0.002",
        "--timestep-fs",
        "5",
        "--save-every-ps",
        "0.5",
    ]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    assert np.load(out / "positions.npy").shape == (4, 13, 3)
    bad = ["simulate", "alanine_dipeptide", "--engine", "mcmc", "--out", str(tmp_path / "x"), "--no-progress"]
    assert main(bad) == 2


def test_md_checkpoints_on_time_as_well_as_frames(aldp, tmp_path, monkeypatch):
    """A run shorter than one checkpoint interval in frames still checkpoints when the time interval passes
    (here 0 s: after every frame), so a crash loses at most that much."""
    import boltzdiff.reference.md as md_mod

    real, calls = md_mod.kinetic_temperature, {"n": 0}

    def crash_on_fourth(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("crash")
        return real(*a, **k)

    monkeypatch.setattr(md_mod, "kinetic_temperature", crash_on_fourth)
    cfg = MDConfig(ns=0.002, save_every_ps=0.1, seed=3, checkpoint_every=1000, checkpoint_every_s=0.0)
    with pytest.raises(RuntimeError, match="crash"):
        run_md(aldp, tmp_path / "md", cfg, progress=False)
    prog = json.loads((tmp_path / "md" / "progress.json").read_text())
    assert prog["checkpoint_frame"] == 3 and not prog["completed"]
    monkeypatch.setattr(md_mod, "kinetic_temperature", real)
    assert run_md(aldp, tmp_path / "md", cfg, progress=False).n_frames == 20
