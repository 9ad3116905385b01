"""Alchemical MBAR between two states of one molecule: the exact harmonic case, the lambda system's energies, a
tiny run on alanine dipeptide (vacuum -> OBC implicit solvent)."""

import math

import numpy as np
import pytest

from boltzdiff.errors import ConfigError
from boltzdiff.freeenergy.alchemical import check_lambdas, mbar_from_energies


# ------------------------------------------------------------------------------------------------------------
# exact case without OpenMM
# ------------------------------------------------------------------------------------------------------------
def _harmonic_windows(lambdas, s_a, s_b, m, n, seed, dim=3):
    """Exact samples of every window of u_A = |x|^2 / (2 s_A^2), u_B = |x - m|^2 / (2 s_B^2) in ``dim`` dimensions:
    u_lam is Gaussian with precision p = (1 - lam) / s_A^2 + lam / s_B^2 and mean (lam m / s_B^2) / p."""
    rng = np.random.default_rng(seed)
    u_a, u_b = [], []
    for lam in lambdas:
        p = (1 - lam) / s_a**2 + lam / s_b**2
        x = rng.normal(lam * m / s_b**2 / p, 1 / math.sqrt(p), size=(n, dim))
        u_a.append(0.5 * np.sum(x**2, axis=1) / s_a**2)
        u_b.append(0.5 * np.sum((x - m) ** 2, axis=1) / s_b**2)
    return u_a, u_b


S_A, S_B, M, DIM = 1.0, 0.6, 0.8, 3
#: F = -ln Z, Z = (2 pi s^2)^(dim/2): F_B - F_A = -dim ln(s_B / s_A)
EXACT = -DIM * math.log(S_B / S_A)
LAMS = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_mbar_from_energies_recovers_the_exact_harmonic_free_energy_with_honest_errors():
    zs, ests = [], []
    for seed in range(4):
        u_a, u_b = _harmonic_windows(LAMS, S_A, S_B, M, 1500, seed, DIM)
        r = mbar_from_energies(u_a, u_b, LAMS)
        assert r["method"] == "mbar_alchemical"
        assert r["n_frames_per_window"] == [1500] * 5 and r["lambdas"] == LAMS
        assert 0 < r["delta_f_se_kT"] < 0.1 and 0 < r["overlap"] <= 1 and len(r["overlap_neighbours"]) == 4
        # independent draws: no correlation in frame order
        assert all(1 <= g < 2 for g in r["statistical_inefficiency"])
        assert r["f_k_kT"][0] == 0.0 and r["f_k_kT"][-1] == pytest.approx(r["delta_f_kT"])
        z = (r["delta_f_kT"] - EXACT) / r["delta_f_se_kT"]
        assert abs(z) < 4, (seed, r["delta_f_kT"], EXACT, r["delta_f_se_kT"])
        # BAR between neighbours, summed, agrees with MBAR (same data) and with the exact value
        assert abs(r["delta_f_bar_kT"] - EXACT) < 4 * r["delta_f_bar_se_kT"]
        assert abs(r["delta_f_bar_kT"] - r["delta_f_kT"]) < r["delta_f_se_kT"]
        zs.append(z)
        ests.append(r["delta_f_kT"])
    # the analytical SE is of the order of the scatter over seeds (loose: 4 seeds only)
    assert np.std(ests, ddof=1) < 3 * r["delta_f_se_kT"]


def test_swapping_the_states_flips_the_sign():
    u_a, u_b = _harmonic_windows(LAMS, S_A, S_B, M, 800, 11, DIM)
    fwd = mbar_from_energies(u_a, u_b, LAMS)
    rev = mbar_from_energies(u_b[::-1], u_a[::-1], LAMS)
    assert rev["delta_f_kT"] == pytest.approx(-fwd["delta_f_kT"], abs=1e-6)
    assert fwd["delta_f_kT"] > 0  # s_B < s_A: B is narrower, smaller Z, higher F


def test_mbar_from_energies_refuses_bad_input():
    u_a, u_b = _harmonic_windows([0.0, 1.0], S_A, S_B, M, 10, 0, DIM)
    for bad in ([0.0], [0.0, 0.5], [0.1, 1.0], [0.0, 0.6, 0.4, 1.0], [0.0, float("nan"), 1.0]):
        with pytest.raises(ConfigError, match="lambdas"):
            check_lambdas(bad)
    with pytest.raises(ConfigError, match="expected 3 windows"):
        mbar_from_energies(u_a, u_b, [0.0, 0.5, 1.0])
    with pytest.raises(ConfigError, match="window 1"):
        mbar_from_energies(u_a, [u_b[0], u_b[1][:-1]], [0.0, 1.0])
    with pytest.raises(ConfigError, match="non-finite"):
        mbar_from_energies(u_a, [u_b[0], np.r_[u_b[1][:-1], np.inf]], [0.0, 1.0])


# ------------------------------------------------------------------------------------------------------------
# OpenMM: the lambda system and a tiny run
# ------------------------------------------------------------------------------------------------------------
def _aldp_systems():
    pytest.importorskip("openmm")
    from boltzdiff.systems import load_system

    return load_system("alanine_dipeptide", "vacuum"), load_system("alanine_dipeptide", "implicit")


def _energy_kjmol(omm_system, pos, lam=None):
    import openmm
    import openmm.unit as unit

    ctx = openmm.Context(omm_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if lam is not None:
        ctx.setParameter("lam", lam)
    ctx.setPositions(pos)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def test_lambda_system_energy_is_the_linear_combination():
    from boltzdiff.freeenergy.alchemical import lambda_system

    vac, imp = _aldp_systems()
    try:
        sa, sb = vac.extras["openmm_system"], imp.extras["openmm_system"]
        lam_sys = lambda_system(sa, sb)
        rng = np.random.default_rng(0)
        for pos in (vac.positions, vac.positions + 0.003 * rng.standard_normal(vac.positions.shape)):
            e_a, e_b = _energy_kjmol(sa, pos), _energy_kjmol(sb, pos)
            assert abs(e_a - e_b) > 1.0  # the solvation term is not negligible, so the check has teeth
            for lam in (0.0, 0.3, 1.0):
                want = (1 - lam) * e_a + lam * e_b
                got = _energy_kjmol(lam_sys, pos, lam)
                assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
        # the inputs are left untouched, and the CMMotionRemover is kept once
        names = [type(lam_sys.getForce(k)).__name__ for k in range(lam_sys.getNumForces())]
        assert names == ["CustomCVForce", "CMMotionRemover"]
        assert lam_sys.getForce(0).getNumCollectiveVariables() == (sa.getNumForces() - 1) + (sb.getNumForces() - 1)
    finally:
        vac.target.close()
        imp.target.close()


def test_lambda_system_refuses_different_particles():
    openmm = pytest.importorskip("openmm")
    from boltzdiff.freeenergy.alchemical import lambda_system

    a, b = openmm.System(), openmm.System()
    for _ in range(3):
        a.addParticle(12.0)
        b.addParticle(12.0)
    b.addParticle(1.0)
    with pytest.raises(ConfigError, match="3 particles but system_b has 4"):
        lambda_system(a, b)
    c = openmm.System()
    for mass in (12.0, 12.0, 16.0):
        c.addParticle(mass)
    with pytest.raises(ConfigError, match="particle 2 has mass"):
        lambda_system(a, c)
    with pytest.raises(ConfigError, match="system_b expected an openmm.System"):
        lambda_system(a, "not a system")


def test_tiny_alchemical_run_on_alanine_dipeptide():
    pytest.importorskip("openmm")
    from boltzdiff.freeenergy.alchemical import alchemical_mbar

    lams = [0.0, 0.5, 1.0]
    r = alchemical_mbar(
        "alanine_dipeptide", "vacuum", "implicit", lams, ps_per_window=2.0, save_every_ps=0.1, seed=3,
        equilibrate_ps=0.5,
    )  # fmt: skip
    n_frames, steps_per_window = 20, 500 + 2000
    assert r["n_frames_per_window"] == [n_frames] * 3 and r["lambdas"] == lams
    assert r["md_steps"] == 3 * steps_per_window
    assert r["n_target_evals"] == 2 * 3 * steps_per_window + 2 * 3 * n_frames
    for k in ("delta_f_kT", "delta_f_se_kT", "delta_f_bar_kT", "overlap", "steps_per_s"):
        assert math.isfinite(r[k]), k
    # vacuum -> OBC implicit solvent: solvation lowers the free energy (by tens of kT)
    assert r["delta_f_kT"] < 0 and r["delta_f_se_kT"] > 0
    assert r["temperature"] == 300.0


def test_alchemical_run_from_given_starts_and_bad_fields():
    pytest.importorskip("openmm")
    from boltzdiff.freeenergy.alchemical import alchemical_mbar

    vac, imp = _aldp_systems()
    vac.target.close()
    imp.target.close()
    starts = np.stack([vac.positions, vac.positions + 0.001])
    kw = dict(ps_per_window=0.05, save_every_ps=0.01, seed=0, equilibrate_ps=0.0)
    r = alchemical_mbar("alanine_dipeptide", "vacuum", "implicit", [0.0, 1.0], starts=starts, **kw)
    assert r["n_frames_per_window"] == [5, 5] and r["n_target_evals"] == 2 * 2 * 50 + 2 * 2 * 5
    with pytest.raises(ConfigError, match="starts"):
        alchemical_mbar("alanine_dipeptide", "vacuum", "implicit", [0.0, 1.0], starts=starts[:, :5], **kw)
    with pytest.raises(ConfigError, match="ps_per_window"):
        alchemical_mbar("alanine_dipeptide", "vacuum", "implicit", [0.0, 1.0], **{**kw, "ps_per_window": -1})
    with pytest.raises(ConfigError, match="lambdas"):
        alchemical_mbar("alanine_dipeptide", "vacuum", "implicit", [0.0, 0.5], **kw)
