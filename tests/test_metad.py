"""Metadynamics + frozen-bias reference (boltzdiff.metad) against exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from boltzdiff.errors import ConfigError
from boltzdiff.metad import (
    TWO_PI,
    MetadConfig,
    block_delta_f,
    periodic_gaussians,
    reweight_log_weights,
    run_metad_2d,
)


def _direct(a, b, centers, heights, sigma):
    """The bias at one point, summing every Gaussian with periodic distances, term by term."""
    total = 0.0
    for (ca, cb), h in zip(centers, heights, strict=True):
        da = min(abs(a - ca) % TWO_PI, TWO_PI - abs(a - ca) % TWO_PI)
        db = min(abs(b - cb) % TWO_PI, TWO_PI - abs(b - cb) % TWO_PI)
        total += h * math.exp(-0.5 * (da**2 + db**2) / sigma**2)
    return total


def test_periodic_gaussians_match_a_direct_sum_and_wrap_around():
    grid = np.linspace(-math.pi, math.pi, 25)
    rng = np.random.default_rng(0)
    centers = np.array([[math.pi - 0.05, -math.pi + 0.1], *rng.uniform(-math.pi, math.pi, (4, 2))])
    heights = rng.uniform(0.5, 2.0, len(centers))
    out = periodic_gaussians(grid, centers, heights, 0.4)
    assert out.shape == (25, 25)
    for j in (0, 3, 12, 24):  # row = second variable, column = first
        for i in (0, 7, 24):
            assert out[j, i] == pytest.approx(_direct(grid[i], grid[j], centers, heights, 0.4), abs=1e-12)
    # -pi and +pi are one point: the ends are bit-identical (OpenMM's periodic spline requires it)
    assert np.array_equal(out[:, 0], out[:, -1]) and np.array_equal(out[0], out[-1])
    # a Gaussian just below +pi on the first variable is felt just above -pi
    assert out[12, 0] > 0.5 * heights[0] * math.exp(-0.5 * ((grid[12] + math.pi - 0.1) / 0.4) ** 2)


def test_frozen_bias_reweighting_recovers_the_unbiased_distribution():
    # three states with energies U; samples drawn exactly from exp(-(U + V)/kT); weights exp(+V/kT)
    kT = 2.494
    u = np.array([0.0, 4.0, 9.0])
    v = np.array([9.0, 3.0, 0.0])
    p_true = np.exp(-u / kT) / np.exp(-u / kT).sum()
    q = np.exp(-(u + v) / kT)
    q /= q.sum()
    rng = np.random.default_rng(1)
    s = rng.choice(3, size=200_000, p=q)
    lw = reweight_log_weights(v[s], kT)
    w = np.exp(lw - lw.max())
    est = np.array([w[s == k].sum() for k in range(3)]) / w.sum()
    # SE of a self-normalised weighted frequency: sqrt(sum w^2 (1_k - p)^2) / sum w
    se = np.array([math.sqrt(((w * ((s == k) - est[k])) ** 2).sum()) / w.sum() for k in range(3)])
    assert np.all(np.abs(est - p_true) < 4 * se), (est, p_true, se)
    with pytest.raises(ConfigError, match="non-finite"):
        reweight_log_weights(np.array([0.0, np.nan]), kT)


def test_block_delta_f_is_unbiased_and_its_jackknife_se_is_calibrated():
    # iid frames under a bias that puts half the samples in the basin; the unbiased basin probability is 0.05
    p, q, n = 0.05, 0.5, 4000
    exact = -math.log(p / (1 - p))
    rng = np.random.default_rng(2)
    estimates, ses = [], []
    for _ in range(300):
        inside = rng.random(n) < q
        phi = np.where(inside, 1.0, -2.0)
        lw = np.where(inside, math.log(p / q), math.log((1 - p) / (1 - q)))
        d, se = block_delta_f(phi, lw, 20)
        estimates.append(d)
        ses.append(se)
    estimates, ses = np.array(estimates), np.array(ses)
    # mean within 4 standard errors of the exact answer; the jackknife SE within 15 % of the observed scatter
    # (300 replications: the SD of an SD estimate is ~4 %)
    assert abs(estimates.mean() - exact) < 4 * estimates.std() / math.sqrt(len(estimates))
    assert ses.mean() == pytest.approx(estimates.std(), rel=0.15)
    with pytest.raises(ConfigError, match="2 blocks"):
        block_delta_f(phi, lw, 1)


def test_metad_bias_in_openmm_is_the_deposited_gaussians_and_runs_resume(tmp_path):
    from _recipes import ALDP_PHI, ALDP_PSI

    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide", variant="vacuum")
    cfg = MetadConfig(build_ps=4, prod_ps=2, stride_steps=100, segment_ps=1, seed=5, height_kjmol=2.0)
    r = run_metad_2d(system, tmp_path / "m", cfg, ALDP_PHI, ALDP_PSI, progress=False)
    assert len(r["heights"]) == 40 and len(r["phi"]) == 20
    # well-tempered heights never grow, and shrink where bias has built up
    assert np.all(r["heights"] <= cfg.height_kjmol + 1e-12) and r["heights"].min() < cfg.height_kjmol
    # the energy OpenMM reports for the frozen bias is the sum of the deposited Gaussians (spline error only)
    exact = [_direct(a, b, r["centers"], r["heights"], cfg.sigma_rad) for a, b in zip(r["phi"], r["psi"])]
    assert np.max(np.abs(np.array(exact) - r["bias_kjmol"])) < 2e-3 * max(1.0, max(exact))
    assert max(exact) > 1.0  # the frames sit on built-up bias, so the comparison is not trivial
    # a finished run resumes without new MD; other settings in the same folder are refused
    r2 = run_metad_2d(system, tmp_path / "m", cfg, ALDP_PHI, ALDP_PSI, progress=False)
    assert np.array_equal(r2["phi"], r["phi"]) and np.array_equal(r2["bias_kjmol"], r["bias_kjmol"])
    with pytest.raises(ConfigError, match="other settings"):
        run_metad_2d(system, tmp_path / "m", MetadConfig(build_ps=4, prod_ps=3, stride_steps=100), ALDP_PHI,
                     ALDP_PSI, progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="bias_factor"):
        run_metad_2d(system, tmp_path / "x", MetadConfig(bias_factor=1.0), ALDP_PHI, ALDP_PSI, progress=False)


def test_an_interrupted_metad_run_keeps_its_checkpoints_and_resumes(tmp_path, monkeypatch):
    from _recipes import ALDP_PHI, ALDP_PSI

    import boltzdiff.metad as metad
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide", variant="vacuum")
    cfg = MetadConfig(build_ps=2, prod_ps=2, stride_steps=100, segment_ps=1, seed=6)
    real_save, calls = metad._save, []

    def save_then_die(path, arrays):
        real_save(path, arrays)
        calls.append(1)
        if len(calls) == 3:  # killed right after the third checkpoint (build done, one production segment)
            raise KeyboardInterrupt

    monkeypatch.setattr(metad, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_metad_2d(system, tmp_path / "m", cfg, ALDP_PHI, ALDP_PSI, progress=False)
    kept = dict(np.load(tmp_path / "m" / "state.npz"))
    assert len(kept["heights"]) == 20 and len(kept["phi"]) == 10
    monkeypatch.setattr(metad, "_save", real_save)
    r = run_metad_2d(system, tmp_path / "m", cfg, ALDP_PHI, ALDP_PSI, progress=False)
    assert len(r["phi"]) == 20 and np.array_equal(r["phi"][:10], kept["phi"])
    assert np.array_equal(r["heights"], kept["heights"])


def test_saved_frames_are_the_recorded_production_frames_and_survive_a_resume(tmp_path, monkeypatch):
    from _recipes import ALDP_PHI, ALDP_PSI

    import boltzdiff.metad as metad
    from boltzdiff.cv import dihedrals
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide", variant="vacuum")
    cfg = MetadConfig(build_ps=2, prod_ps=3, stride_steps=100, segment_ps=1, seed=7, save_positions=True)
    real_save, calls = metad._save, []

    def save_then_die(path, arrays):
        real_save(path, arrays)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(metad, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_metad_2d(system, tmp_path / "m", cfg, ALDP_PHI, ALDP_PSI, progress=False)
    monkeypatch.setattr(metad, "_save", real_save)
    r = run_metad_2d(system, tmp_path / "m", cfg, ALDP_PHI, ALDP_PSI, progress=False)
    assert r["frames"].shape == (30, 22, 3) and r["frames"].dtype == np.float32
    # each saved frame is the configuration whose dihedrals and bias were recorded (float32 rounding only)
    ang = dihedrals(r["frames"], [ALDP_PHI, ALDP_PSI])
    d = np.angle(np.exp(1j * (ang - np.stack([r["phi"], r["psi"]], 1))))
    assert np.max(np.abs(d)) < 1e-4
    assert len(np.unique(r["frames"][:, 0, 0])) == 30  # and the frames differ
    # a run started without frames cannot be continued with them
    run_metad_2d(system, tmp_path / "n", MetadConfig(build_ps=1, prod_ps=1, stride_steps=100), ALDP_PHI, ALDP_PSI,
                 progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="save_positions"):
        run_metad_2d(system, tmp_path / "n", MetadConfig(build_ps=1, prod_ps=1, stride_steps=100,
                     save_positions=True), ALDP_PHI, ALDP_PSI, progress=False)  # fmt: skip
