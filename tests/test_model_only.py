"""Model-only evaluation (boltzdiff.analysis.model_only, boltzdiff evaluate on systems with a dihedral CV).

The exact answers come from a 2-D Gaussian mixture whose CV is the angle atan2(x1, x0): its marginal over the
72 angle bins is integrated numerically, the exact noised energy (ExactMixtureEnergy) plays the model, and exact
samples play the reference frames. Tolerances are z-scores on fixed seeds.
"""

import json

import numpy as np
import pytest
import torch

from boltzdiff.analysis.model_only import (
    DIHEDRAL_EDGES,
    N_DIHEDRAL_BINS,
    aligned_rmse,
    chain_profile,
    in_interval,
    model_chains,
    model_only_profile,
)
from boltzdiff.cli import main
from boltzdiff.models.base import LevelEnergy
from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.targets.gmm import GaussianMixture

ANGLES = np.array([0.8, 2.6, -1.8])  # the components' directions; state A = (-0.1, 1.7) holds the first only
STATE = (-0.1, 1.7)


def mixture() -> GaussianMixture:
    means = 3.0 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1)
    return GaussianMixture([0.5, 0.3, 0.2], means, [0.35, 0.5, 0.3])


def grid():
    return make_grid(VPSchedule(), 16, "logsnr")


def angle(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.arctan2(x[:, 1], x[:, 0])


def exact_angle_profile(gmm: GaussianMixture, alpha: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The noised mixture's exact F over the angle bins (kT, minimum 0) and bin probabilities (midpoint rule in
    polar coordinates: 40 angles per bin, 1500 radii up to 8)."""
    n_sub, n_r, r_max = 40, 1500, 8.0
    nb = len(DIHEDRAL_EDGES) - 1
    dth = (DIHEDRAL_EDGES[1] - DIHEDRAL_EDGES[0]) / n_sub
    th = DIHEDRAL_EDGES[0] + dth * (np.arange(nb * n_sub) + 0.5)
    dr = r_max / n_r
    r = dr * (np.arange(n_r) + 0.5)
    pts = np.stack([np.outer(np.cos(th), r), np.outer(np.sin(th), r)], -1).reshape(-1, 2)
    p = torch.exp(gmm.log_prob_t(torch.as_tensor(pts), alpha, sigma)).numpy().reshape(len(th), n_r)
    mass = (p * r).sum(1) * dr * dth
    pb = mass.reshape(nb, n_sub).sum(1)
    f = -np.log(pb)
    return f - f.min(), pb


def chi2_per_dof(f_est, f_exact, var_b, mask) -> float:
    """Aligned squared deviations over their variances, per degree of freedom."""
    d = (f_est[mask] - f_est[mask].mean()) - (f_exact[mask] - f_exact[mask].mean())
    return float(np.sum(d**2 / var_b[mask]) / (mask.sum() - 1))


def reference_frames(n: int, seed: int):
    gmm = mixture()
    x, _ = gmm.sample_with_labels(n, torch.Generator().manual_seed(seed))
    return gmm, x, gmm.energy(x).double().numpy()


def test_exact_energy_reproduces_the_exact_marginal():
    """(a) With E_theta exact, estimator A's F(angle) is the exact level-0 marginal: RMSE ~ its noise, and the
    deviations are consistent with each bin's ESS (chi^2 per dof within 5 of its own spread)."""
    gmm, x, u = reference_frames(20000, 0)
    g = grid()
    exact = ExactMixtureEnergy(gmm, g)
    e = exact.energy(x, 0).double().numpy()
    prof = model_only_profile(angle(x), e, u, state=STATE)
    f_ex, _ = exact_angle_profile(gmm, float(g.alpha[0]), float(g.sigma[0]))
    mask = np.isfinite(prof.f_model) & (prof.f_reference <= 6.0)
    assert mask.sum() > 20
    dof = mask.sum() - 1
    assert chi2_per_dof(prof.f_model, f_ex, 1.0 / np.maximum(prof.bin_ess, 1e-9), mask) < 1 + 5 * np.sqrt(2 / dof)
    rm = aligned_rmse(prof.f_model, f_ex)
    noise = float(np.sqrt(np.mean(1.0 / prof.bin_ess[mask])))
    assert rm["rmse_kT"] < 2 * noise and prof.rmse["rmse_kT"] < 0.01  # model vs the same frames: ~ exact
    assert prof.region_offset == pytest.approx(0.0, abs=0.01)
    assert len(prof.f_model) == N_DIHEDRAL_BINS == 72 and prof.ess_fraction > 0.99


class _PlusInState(LevelEnergy):
    """The exact energy plus ``delta`` where the angle lies in ``STATE`` (a model with a known ΔF error)."""

    def __init__(self, exact: ExactMixtureEnergy, delta: float):
        super().__init__()
        self.exact, self.delta, self.grid, self.dim = exact, float(delta), exact.grid, exact.dim

    def energy(self, x, level):
        a = torch.atan2(x[:, 1], x[:, 0])
        return self.exact.energy(x, level) + self.delta * ((a > STATE[0]) & (a < STATE[1])).to(x.dtype)

    def log_norm(self):
        return self.exact.log_norm()


@pytest.mark.parametrize("delta", [1.0, -0.7])
def test_a_known_mode_weight_error_shows_as_the_region_offset(delta):
    """(b) The first component's log-weight shifted by +delta puts delta more weight on state A: the model-only
    ΔF is the reference's minus delta (within 0.02 kT: the components leak < 1e-6 across the state's edges and
    the level-0 noise is tiny), and it matches the wrong mixture's exact ΔF within 5 standard errors. An energy
    raised by delta on A gives the offset +delta exactly."""
    gmm, x, u = reference_frames(20000, 1)
    g = grid()
    w = gmm.weights.clone()
    w[0] *= np.exp(delta)
    wrong = ExactMixtureEnergy(gmm, g, weights=w / w.sum())
    cv = angle(x)
    prof = model_only_profile(cv, wrong.energy(x, 0).double().numpy(), u, state=STATE)
    assert prof.region_offset == pytest.approx(-delta, abs=0.02)
    wn = (w / w.sum()).numpy()
    df_exact = -np.log(wn[0] / wn[1:].sum())
    n_a = in_interval(cv, *STATE).sum()
    se = np.sqrt(1 / n_a + 1 / (len(cv) - n_a))
    assert abs(prof.delta_f_model - df_exact) < 5 * se
    plus = _PlusInState(ExactMixtureEnergy(gmm, g), delta)
    prof2 = model_only_profile(cv, plus.energy(x, 0).double().numpy(), u, state=STATE)
    assert prof2.region_offset == pytest.approx(delta, abs=1e-6)


def test_half_split_is_at_the_noise_level_for_the_exact_model():
    """(c) The halves of the frames agree to within their sampling noise for the exact model: the RMS
    difference sits near sqrt(mean 4 / ESS_b) (each half has half the frames) and below 1.5x it."""
    gmm, x, u = reference_frames(20000, 2)
    g = grid()
    e = ExactMixtureEnergy(gmm, g).energy(x, 0).double().numpy()
    prof = model_only_profile(angle(x), e, u, n_random_halves=4, seed=3)
    hs = prof.half_split
    mask = np.isfinite(prof.f_reference) & (prof.f_reference <= 6.0)
    expected = float(np.sqrt(np.mean(4.0 / prof.bin_ess[mask])))
    assert len(hs["per_split_kT"]) == 5 and len(hs["f_halves_kT"]) == 2
    assert 0.5 * expected < hs["rms_kT"] < 1.5 * expected
    assert hs["rms_kT"] < 0.25  # dominated by the sparse bins near 6 kT


def test_chains_on_the_exact_energy_reproduce_the_marginal():
    """(d) Estimator B: 1000 MALA chains of 60 steps on the exact level-0 energy, started from exact samples of
    that level, keep its marginal (chi^2 per dof within 5 of its spread, counting every chain as one sample)."""
    gmm = mixture()
    g = grid()
    exact = ExactMixtureEnergy(gmm, g)
    gen = torch.Generator().manual_seed(4)
    x0, _ = gmm.sample_with_labels(1000, gen, g.alpha[0], g.sigma[0])
    states, acc = model_chains(exact, x0, 60, generator=gen)
    assert states.shape == (30, 1000, 2) and 0.3 < acc < 0.95
    f_b, counts = chain_profile(angle(states.reshape(-1, 2)), DIHEDRAL_EDGES)
    f_ex, pb = exact_angle_profile(gmm, float(g.alpha[0]), float(g.sigma[0]))
    mask = np.isfinite(f_b) & (f_ex <= 5.0)
    n_eff = counts / states.shape[0]  # one independent sample per chain: conservative
    dof = mask.sum() - 1
    assert chi2_per_dof(f_b, f_ex, 1.0 / np.maximum(n_eff, 1e-9), mask) < 1 + 5 * np.sqrt(2 / dof)
    assert aligned_rmse(f_b, f_ex, max_f=5.0)["rmse_kT"] < 0.15


def test_evaluate_refuses_a_system_without_dihedral_cvs(tmp_path, capsys):
    """(e) DW4 declares no cvs: `boltzdiff evaluate` says so in one line and exits 2."""
    from boltzdiff.config import TrainConfig
    from boltzdiff.train import train

    data = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32) * 2
    np.save(tmp_path / "d.npy", data)
    cfg = TrainConfig(
        system="dw4",
        data=str(tmp_path / "d.npy"),
        steps=1,
        batch_size=8,
        n_levels=6,
        k=2,
        network="egnn",
        egnn={"hidden": 4, "n_layers": 1},
        checkpoint_every=1,
        lr_warmup=1,
    )
    train(cfg, tmp_path / "r", progress=False)
    capsys.readouterr()
    rc = main(["evaluate", str(tmp_path / "r"), "--reference", str(tmp_path / "d.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "system dw4 declares no dihedral cvs in its system.yaml; model-only F(CV) needs one" in err[0]


def test_evaluate_writes_the_model_only_block_for_a_molecule(tmp_path):
    """A tiny pair-distance model of alanine dipeptide through the CLI: eval.json's model_only block on the 72
    bins, the state from --state, and the PNG (the frames are jittered copies of the structure, so only the
    plumbing is checked here)."""
    from boltzdiff.config import TrainConfig
    from boltzdiff.systems import load_system
    from boltzdiff.train import train

    system = load_system("alanine_dipeptide", variant="vacuum")
    rng = np.random.default_rng(0)
    frames = (np.asarray(system.positions)[None] + 0.003 * rng.normal(size=(96, 22, 3))).astype(np.float32)
    np.save(tmp_path / "f.npy", frames)
    cfg = TrainConfig(
        system="alanine_dipeptide",
        variant="vacuum",
        data=str(tmp_path / "f.npy"),
        steps=2,
        batch_size=16,
        n_levels=8,
        k=2,
        network="pairmlp",
        width=8,
        depth=1,
        checkpoint_every=2,
        lr_warmup=1,
        tsm_scale=None,
    )
    train(cfg, tmp_path / "r", progress=False)
    rd = tmp_path / "r"
    assert main(["evaluate", str(rd), "--reference", str(tmp_path / "f.npy"), "--state", "phi:0:2"]) == 0
    mo = json.loads((rd / "eval.json").read_text())["model_only"]
    for key in (
        "estimator",
        "n_frames",
        "phi_grid_rad",
        "f_phi_model_kT",
        "f_phi_reference_kT",
        "rmse_kT",
        "delta_f_model_kT",
        "delta_f_reference_kT",
        "region_offset_kT",
        "bin_ess",
        "half_split_rms_kT",
    ):
        assert key in mo, key
    assert mo["estimator"] == "reweight" and mo["n_frames"] == 96 and mo["cv"] == "phi"
    assert mo["log_weight_std"] >= 0 and 0 < mo["ess_fraction"] <= 1
    assert len(mo["phi_grid_rad"]) == 72 and mo["phi_grid_rad"][0] == pytest.approx(-np.pi + np.pi / 72)
    assert len(mo["f_phi_model_kT"]) == len(mo["bin_ess"]) == 72
    assert mo["state"]["cv"] == "phi" and mo["state"]["lo"] == 0.0
    assert (rd / "eval_model_only.png").stat().st_size > 1000
    argv = ["evaluate", str(rd), "--reference", str(tmp_path / "f.npy"), "--estimator", "chains"]
    assert main([*argv, "--chains", "8", "--chain-steps", "6"]) == 0
    mo = json.loads((rd / "eval.json").read_text())["model_only"]
    assert mo["estimator"] == "chains" and mo["n_chains"] == 8 and mo["region_offset_kT"] is None
    assert sum(mo["bin_ess"]) == 8 * 3  # the last half's states of every chain
    argv = ["evaluate", str(rd), "--reference", str(tmp_path / "f.npy"), "--estimator", "smc", "--state", "phi:0:2"]
    assert main([*argv, "--smc-particles", "6", "--smc-runs", "2", "--smc-mcmc-steps", "2"]) == 0
    mo = json.loads((rd / "eval.json").read_text())["model_only"]
    assert mo["estimator"] == "smc" and mo["n_runs"] == 2 and "2 MALA step(s)" in mo["estimator_detail"]
    assert all(np.isfinite(r["log_Z"]) for r in mo["smc"])  # the runs are pooled by these
    before = (rd / "eval.json").read_text()
    assert main([*argv, "--smc-particles", "6", "--smc-mcmc-steps", "0"]) == 2  # refused, eval.json untouched
    assert (rd / "eval.json").read_text() == before


def test_the_state_comes_from_the_spec_first_then_the_flag():
    from types import SimpleNamespace

    from boltzdiff.errors import ConfigError
    from boltzdiff.evaluate_molecule import require_dihedral_cv, resolve_state
    from boltzdiff.systems import dihedral_cvs

    cvs = {"phi": [4, 6, 8, 14], "psi": [6, 8, 14, 16], "d": [1, 2]}
    with_states = SimpleNamespace(name="m", spec={"cvs": cvs, "states": {"phi_pos": {"phi": [0.0, 2.0]}}})
    plain = SimpleNamespace(name="m", spec={"cvs": cvs})
    assert list(dihedral_cvs(plain)) == ["phi", "psi"]  # a distance is no dihedral
    assert resolve_state(with_states, "psi:-1:1") == ("phi_pos", "phi", 0.0, 2.0)
    assert resolve_state(plain, "psi:-1:1") == ("psi:-1:1", "psi", -1.0, 1.0)
    assert resolve_state(plain, None) is None
    assert require_dihedral_cv(plain) == ("phi", [4, 6, 8, 14])
    for bad in ("phi:0", "phi:a:b", "phi:1:1"):
        with pytest.raises(ConfigError, match="--state"):
            resolve_state(plain, bad)
    with pytest.raises(ConfigError, match="no dihedral cv 'omega'"):
        require_dihedral_cv(plain, "omega")


def test_own_smc_on_the_exact_energy_reproduces_the_marginal_and_a_wrong_weight():
    """(f) Estimator C: two SMC runs of 4000 particles on the model alone, from noise to its cleanest level.
    With the exact noised energy the weighted angle profile matches the exact level-0 marginal (chi^2 per dof
    within 5 of its spread, variances from the bins' Kish ESS halved for the resampled lineages); with the first
    component's weight raised by e^0.7 the state's ΔF is that wrong mixture's closed form within 5 SE, with and
    without the state as a stratum."""
    from boltzdiff.analysis.model_only import binned_free_energy, state_delta_f
    from boltzdiff.evaluate_molecule import model_smc

    def in_state(x):  # the state and the rest as strata: the state keeps >= 30 % of the particles
        return torch.as_tensor(in_interval(angle(x.detach()), *STATE).astype(np.int64))

    gmm, g = mixture(), grid()
    for delta, strata in ((0.0, None), (0.7, None), (0.7, in_state)):
        w = gmm.weights.clone()
        w[0] *= np.exp(delta)
        w = w / w.sum()
        exact = ExactMixtureEnergy(gmm, g, weights=w)
        runs = model_smc(exact, 4000, 2, seed=11, event_shape=(2,), refine=1, strata=strata)
        phi = np.concatenate([angle(x) for x, _, _ in runs])
        lw = np.concatenate([lr - np.logaddexp.reduce(lr) for _, lr, _ in runs])
        assert all(s["ess"] > 0.3 for _, _, s in runs)
        wn = w.numpy()
        df_exact = -np.log(wn[0] / wn[1:].sum())
        a = in_interval(phi, *STATE)
        p_a = np.exp(np.logaddexp.reduce(lw[a]) - np.logaddexp.reduce(lw))
        se = np.sqrt(2.0 / (len(phi) * p_a * (1 - p_a)))  # delta method, ESS taken as half the particles
        assert abs(state_delta_f(phi, lw, *STATE) - df_exact) < 5 * se, (delta, df_exact)
        if delta == 0.0:
            f_b, ess = binned_free_energy(phi, lw, DIHEDRAL_EDGES)
            f_ex, _ = exact_angle_profile(gmm, float(g.alpha[0]), float(g.sigma[0]))
            mask = np.isfinite(f_b) & (f_ex <= 5.0) & (ess > 5)
            dof = mask.sum() - 1
            assert chi2_per_dof(f_b, f_ex, 2.0 / np.maximum(ess, 1e-9), mask) < 1 + 5 * np.sqrt(2 / dof)


def test_runs_pooled_by_their_normalisers_converge_where_equal_pooling_stays_biased():
    """Many tiny importance samplers of a two-region target: each run's Z-weighted region mass is unbiased, so
    pooling by Z reaches the exact share as runs are added; averaging the runs' own shares (equal pooling) keeps
    the ratio bias of two particles per run. Exact share 0.2 (region weights 1 and 4, uniform proposal)."""
    from boltzdiff.evaluate_molecule import pool_runs

    rng = np.random.default_rng(5)
    n_runs, n = 40000, 2
    in_a = rng.random((n_runs, n)) < 0.5  # proposal: each region with probability 1/2
    log_w = np.where(in_a, np.log(1.0 / 0.5), np.log(4.0 / 0.5)) + rng.normal(0.0, 0.5, (n_runs, n)) - 0.125
    log_z = [float(np.logaddexp.reduce(lw) - np.log(n)) for lw in log_w]
    by_z, equal = pool_runs(list(log_w), log_z)

    def share(lws):
        w = np.exp(np.concatenate(lws))
        return float(w[in_a.reshape(-1)].sum() / w.sum())

    # the exact share of region A is 1 / (1 + 4); the noise of 80 000 weights gives an SE of ~0.0015
    assert abs(share(by_z) - 0.2) < 0.006
    assert abs(share(equal) - 0.2) > 0.02  # two particles per run: the averaged ratio is far off
    # per run, the within-run shares are the same either way
    assert np.allclose(by_z[7] - np.logaddexp.reduce(by_z[7]), equal[7])
