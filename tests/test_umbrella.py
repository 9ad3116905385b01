"""MBAR and 2-D umbrella sampling against exact answers."""

import math

import numpy as np
import pytest

from boltzdiff.analysis.free_energy import delta_f_phi
from boltzdiff.errors import ConfigError
from boltzdiff.umbrella import (
    bias_reduced,
    grid_centers,
    mbar,
    mbar_log_weights,
    periodic_delta,
)


def _harmonic_states(kappa=4.0, centers=(-2.0, -1.0, 0.0, 1.0, 2.0), n=4000, seed=0):
    """Base N(0, 1) plus bias 0.5*kappa*(x - c_k)^2: each biased state is an exact Gaussian."""
    rng = np.random.default_rng(seed)
    c = np.asarray(centers)
    prec = 1.0 + kappa
    xs = np.concatenate([rng.normal(kappa * ck / prec, 1 / math.sqrt(prec), n) for ck in c])
    u_kn = 0.5 * kappa * (xs[None, :] - c[:, None]) ** 2
    f_exact = 0.5 * kappa * c**2 / prec  # up to a constant common to all states
    return xs, u_kn, np.full(c.size, n), f_exact - f_exact[0]


def test_mbar_recovers_exact_free_energies_of_harmonic_windows():
    xs, u_kn, n_k, f_exact = _harmonic_states()
    f = mbar(u_kn, n_k)
    # statistical error of f_k at 4000 samples per window with this overlap is ~0.02-0.05: 0.15 is > 3 SE
    assert np.max(np.abs(f - f_exact)) < 0.15


def test_mbar_unbiased_weights_reproduce_the_base_distribution():
    xs, u_kn, n_k, _ = _harmonic_states(n=5000, seed=1)
    f = mbar(u_kn, n_k)
    lw = mbar_log_weights(u_kn, n_k, f)
    w = np.exp(lw - lw.max())
    w /= w.sum()
    # base is N(0, 1): mean 0, variance 1, P(x > 0.5) = 0.3085
    ess = 1 / np.sum(w**2)
    se_mean = 1 / math.sqrt(ess)
    assert abs(np.sum(w * xs)) < 4 * se_mean
    assert abs(np.sum(w * xs**2) - 1.0) < 4 * math.sqrt(2 / ess)
    p = np.sum(w * (xs > 0.5))
    assert abs(p - 0.30854) < 4 * math.sqrt(0.31 * 0.69 / ess)


def test_mbar_rejects_bad_shapes_and_nan():
    with pytest.raises(ConfigError, match="u_kn has shape"):
        mbar(np.zeros((3, 10)), [5, 5])
    u = np.zeros((2, 4))
    u[0, 1] = np.nan
    with pytest.raises(ConfigError, match="non-finite"):
        mbar(u, [2, 2])


def test_periodic_bias_and_grid():
    assert periodic_delta(math.pi - 0.1, -math.pi + 0.1) == pytest.approx(-0.2)
    c = grid_centers(4)
    assert c.shape == (16, 2)
    # snake order: consecutive windows are grid neighbours
    steps = np.abs(periodic_delta(c[1:], c[:-1])).sum(-1)
    assert np.allclose(steps, math.pi / 2)
    u = bias_reduced(c[:, 0], c[:, 1], c, k_kjmol=10.0, kT_kjmol=2.5)
    assert np.allclose(np.diag(u), 0.0)
    assert u[0, 1] == pytest.approx(0.5 * 10.0 * (math.pi / 2) ** 2 / 2.5)


def test_two_state_delta_f_from_mbar_weights_of_a_periodic_density():
    """Von-Mises-like density on a circle sampled through biased windows: ΔF of (0, 2) vs exact."""
    rng = np.random.default_rng(3)
    grid = np.linspace(-math.pi, math.pi, 20001)[:-1]
    u0 = 2.0 * np.cos(grid - 1.0)  # base reduced energy: minimum near 1 + pi
    centers = np.stack([np.linspace(-math.pi, math.pi, 12, endpoint=False) + 0.2, np.zeros(12)], 1)
    kT, kb = 1.0, 6.0
    samples = []
    for ck in centers[:, 0]:
        logp = -u0 - 0.5 * kb * periodic_delta(grid, ck) ** 2
        p = np.exp(logp - logp.max())
        samples.append(rng.choice(grid, 3000, p=p / p.sum()))
    phi = np.concatenate(samples)
    psi = np.zeros_like(phi)
    u_kn = bias_reduced(phi, psi, centers, kb, kT)
    n_k = np.full(12, 3000)
    lw = mbar_log_weights(u_kn, n_k, mbar(u_kn, n_k))
    d = delta_f_phi(phi, lw, n_bootstrap=100, rng=0)
    p_exact = np.exp(-u0)
    inside = (grid > 0) & (grid < 2)
    exact = -math.log(p_exact[inside].sum() / p_exact[~inside].sum())
    assert abs(d.delta_f - exact) < 4 * d.se + 1e-9


def test_umbrella_smoke_on_alanine_dipeptide(tmp_path):
    from _recipes import ALDP_PHI, ALDP_PSI

    from boltzdiff.systems import load_system
    from boltzdiff.umbrella import UmbrellaConfig, run_umbrella_2d, unbiased_log_weights

    system = load_system("alanine_dipeptide")
    cfg = UmbrellaConfig(n_grid=2, k_kjmol=200.0, equil_ps=0.5, prod_ps=1.0, save_every_ps=0.25, seed=1)
    res = run_umbrella_2d(system, tmp_path / "u", cfg, ALDP_PHI, ALDP_PSI, progress=False)
    assert res["phi"].shape == (4, 4) and np.all(np.isfinite(res["phi"]))
    # strong restraints keep each window near its centre
    d = np.abs(periodic_delta(res["phi"], res["centers"][:, :1]))
    assert np.median(d) < 0.6
    # resuming a finished replicate reruns nothing and returns the same samples
    res2 = run_umbrella_2d(system, tmp_path / "u", cfg, ALDP_PHI, ALDP_PSI, progress=False)
    assert np.array_equal(res["phi"], res2["phi"])
    _, _, lw = unbiased_log_weights(res["phi"], res["psi"], res["centers"], cfg.k_kjmol, res["kT_kjmol"])
    assert np.all(np.isfinite(lw))


def test_umbrella_bad_input_is_a_clear_error(tmp_path):
    from _recipes import ALDP_PHI, ALDP_PSI

    from boltzdiff.systems import load_system
    from boltzdiff.umbrella import UmbrellaConfig, run_umbrella_2d

    with pytest.raises(ConfigError, match="has no OpenMM System"):
        run_umbrella_2d(load_system("dw4"), tmp_path / "a", UmbrellaConfig(), ALDP_PHI, ALDP_PSI, progress=False)
    aldp = load_system("alanine_dipeptide")
    with pytest.raises(ConfigError, match="prod_ps must be a positive number"):
        run_umbrella_2d(aldp, tmp_path / "b", UmbrellaConfig(prod_ps=0), ALDP_PHI, ALDP_PSI, progress=False)
    # a folder written with other settings is refused, not silently mixed
    cfg = UmbrellaConfig(n_grid=2, k_kjmol=200.0, equil_ps=0.2, prod_ps=0.5, save_every_ps=0.25)
    run_umbrella_2d(aldp, tmp_path / "c", cfg, ALDP_PHI, ALDP_PSI, progress=False)
    cfg2 = UmbrellaConfig(n_grid=3, k_kjmol=200.0, equil_ps=0.2, prod_ps=0.5, save_every_ps=0.25)
    with pytest.raises(ConfigError, match="other settings"):
        run_umbrella_2d(aldp, tmp_path / "c", cfg2, ALDP_PHI, ALDP_PSI, progress=False)
    cfg3 = UmbrellaConfig(n_grid=2, k_kjmol=100.0, equil_ps=0.2, prod_ps=0.5, save_every_ps=0.25)
    with pytest.raises(ConfigError, match="other settings"):
        run_umbrella_2d(aldp, tmp_path / "c", cfg3, ALDP_PHI, ALDP_PSI, progress=False)
