"""Free energies between thermodynamic states along a stochastic interpolant (boltzdiff.freeenergy).

Exact answers: end states with closed-form free energies (:class:`OffsetMixture`, F = its offset), the
interpolant's end levels against the exact energies, the optimal-transport assignment against brute force, and
the normaliser equations against known Gaussian normalisers."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from boltzdiff.cli import main
from boltzdiff.freeenergy.estimate import ais_estimates, endpoint_bar
from boltzdiff.freeenergy.interpolant import InterpolantPath, couple, ot_pairs
from boltzdiff.freeenergy.model import InterpolantEnergy
from boltzdiff.freeenergy.states import OffsetMixture
from boltzdiff.freeenergy.train import InterpolantTrainConfig, refit_log_norm, solve_log_norm, train_interpolant


def gaussians(d=2):
    a = OffsetMixture.unnormalised_gaussian(torch.zeros(d), 1.0)
    b = OffsetMixture.unnormalised_gaussian(torch.full((d,), 1.5), 0.5)
    return a, b, b.free_energy - a.free_energy  # -d log(0.5 / 1) = d ln 2


def mixtures():
    a = OffsetMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 0.0]], [0.5, 0.8], offset=1.0)
    b = OffsetMixture([0.8, 0.2], [[-1.0, 1.0], [2.0, -1.0]], [0.6, 0.4], offset=-0.5)
    return a, b, -1.5


def samples(t, n, seed):
    return t.sample(n, torch.Generator().manual_seed(seed)).double()


def test_offset_mixture_free_energy_is_its_offset():
    """Z = exp(-F) by quadrature on a grid (2-D): the closed form the other tests rely on."""
    for t in (*gaussians()[:2], *mixtures()[:2]):
        g = torch.linspace(-8, 8, 801, dtype=torch.float64)
        xx, yy = torch.meshgrid(g, g, indexing="ij")
        u = t.energy(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1))
        log_z = torch.logsumexp(-u, 0) + 2 * math.log(float(g[1] - g[0]))
        assert abs(-float(log_z) - t.free_energy) < 1e-6


def test_end_levels_are_the_exact_energies_whatever_the_network():
    a, b, _ = mixtures()
    xa, xb = samples(a, 64, 0), samples(b, 64, 1)
    m = InterpolantEnergy(a, b, InterpolantPath.uniform(9, 0.3), torch.cat([xa, xb]), width=16, depth=1)
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(32, 2, dtype=torch.float64) * 2
    assert torch.equal(m.energy(x, 0), a.energy(x).double())
    assert torch.equal(m.energy(x, 8), b.energy(x).double())
    mid = m.energy(x, 4)
    assert not torch.allclose(mid, 0.5 * (a.energy(x) + b.energy(x)).double())  # the correction is live there


def test_interpolant_draw_and_gamma():
    path = InterpolantPath.uniform(5, 0.7)
    x0, x1, z = torch.randn(3, 6, 4, dtype=torch.float64).unbind(0)
    lv = torch.tensor([0, 4, 2, 1, 3, 0])
    x = path.draw(x0, x1, lv, z)
    assert torch.equal(x[0], x0[0]) and torch.equal(x[1], x1[1])
    assert torch.allclose(x[2], 0.5 * x0[2] + 0.5 * x1[2] + 0.7 * 0.5 * z[2])
    assert float(path.gamma(torch.tensor(0.25))) == pytest.approx(0.7 * math.sqrt(0.25 * 0.75))


def test_ot_pairs_minimise_the_cost_by_brute_force():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    perm = ot_pairs(x0, x1)
    cost = float(((x0 - x1[perm]) ** 2).sum())
    best = min(float(((x0 - x1[list(p)]) ** 2).sum()) for p in itertools.permutations(range(6)))
    assert cost == pytest.approx(best, rel=1e-9)
    assert sorted(perm.tolist()) == list(range(6))


def test_coupling_aligns_rigid_copies_before_pairing():
    """Rotated and shifted copies of the same structures pair with their originals at zero distance."""
    from boltzdiff.geometry import random_rotations

    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    rot = random_rotations(4, generator=g, dtype=torch.float64)
    x1 = (x0 @ rot.transpose(-1, -2) + 1.0)[[2, 0, 3, 1]]
    a, b = couple(x0.reshape(4, -1), x1.reshape(4, -1), (5, 3), ref=x0[0].reshape(-1))
    assert torch.allclose(a, b, atol=1e-9)


def test_normaliser_equations_recover_known_gaussian_normalisers():
    """Exact samples of E_k = x^2 / (2 s_k^2): f_k - f_0 = log(s_k / s_0), within 4 standard errors."""
    s = torch.tensor([1.0, 0.8, 0.6, 0.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    n = 4000
    x = torch.cat([torch.randn(n, generator=g, dtype=torch.float64) * sk for sk in s])
    own = torch.arange(4).repeat_interleave(n)
    E = x[:, None] ** 2 / (2 * s[None, :] ** 2)
    f = solve_log_norm(E, own)
    exact = torch.log(s / s[0])
    assert torch.all((f - exact).abs() < 4 * 0.02), (f, exact)  # SE of neighbouring ratios ~0.01-0.02


@pytest.mark.parametrize("case", ["gaussians", "mixtures"])
def test_annealing_both_ways_is_exact_with_an_untrained_path(case):
    """With the correction at zero the levels are the linear energy path; the annealing's estimates are still
    consistent: BAR within 4 SE (+0.01) of the closed form."""
    a, b, exact = (gaussians if case == "gaussians" else mixtures)()
    xa, xb = samples(a, 3000, 0), samples(b, 3000, 1)
    m = InterpolantEnergy(a, b, InterpolantPath.uniform(12, 0.0), torch.cat([xa, xb]), width=16, depth=1)
    r = ais_estimates(m, xa, xb, n=1500, mcmc_steps=3, seed=2)
    assert abs(r["bar"]["delta_f_kT"] - exact) < 4 * r["bar"]["delta_f_se_kT"] + 0.01, r["bar"]
    for k in ("forward", "reverse"):
        assert abs(r[k]["delta_f_kT"] - exact) < 5 * r[k]["delta_f_se_kT"] + 0.02, (k, r[k])
    assert r["n_target_evals"] > 0


@pytest.mark.parametrize("case", ["gaussians", "mixtures"])
def test_endpoint_bar_is_the_closed_form_where_the_states_overlap(case):
    """BAR between the end states' own samples (no interpolant): within 4 SE (+0.01) of the closed form; the
    mean work on each side brackets the answer (Gibbs-Bogoliubov: E_B[u_B - u_A] <= ΔF <= E_A[u_B - u_A])."""
    a, b, exact = (gaussians if case == "gaussians" else mixtures)()
    xa, xb = samples(a, 4000, 0), samples(b, 4000, 1)
    r = endpoint_bar(a, b, xa, xb)
    assert abs(r["delta_f_kT"] - exact) < 4 * r["delta_f_se_kT"] + 0.01, r
    assert r["n_target_evals"] == 16000 and r["n_nonfinite"] == 0
    assert r["du_a_mean_kT"] >= exact - 1e-9 >= r["du_b_mean_kT"] - 2e-9  # Gibbs-Bogoliubov bounds (Jensen)


def test_diffclf_learns_the_normalisers_and_dsm_alone_does_not():
    a, b, exact = gaussians()
    xa, xb = samples(a, 3000, 0), samples(b, 3000, 1)
    path = InterpolantPath.uniform(8, 0.5)
    m = InterpolantEnergy(a, b, path, torch.cat([xa, xb]), width=32, depth=1)
    cfg = InterpolantTrainConfig(steps=500, batch_size=128, k=4, lr=3e-3, seed=0)
    train_interpolant(m, xa, xb, cfg)
    refit_log_norm(m, xa, xb, cfg, 500)
    assert abs(m.delta_f() - exact) < 0.2, m.delta_f()  # exact 2 ln 2 = 1.386; the slow test asks for 0.02
    d = InterpolantEnergy(a, b, path, torch.cat([xa, xb]), width=32, depth=1)
    train_interpolant(d, xa, xb, InterpolantTrainConfig(steps=50, batch_size=64, loss="dsm", seed=0))
    assert d.delta_f() == 0.0  # nothing fixes the normalisers without the classification


@pytest.mark.slow
@pytest.mark.parametrize("case,tol", [("gaussians", 0.02), ("mixtures", 0.05)])
def test_trained_interpolant_estimates_to_the_closed_form(case, tol):
    """The annealing + BAR estimate meets the closed form to ``tol`` (0.02 Gaussians, 0.05 mixtures); the
    classifier's normalisers to 0.07 (benchmarks/interpolant_exact.py: RMS 0.033 and 0.045 over three seeds,
    worst 0.061)."""
    a, b, exact = (gaussians if case == "gaussians" else mixtures)()
    xa, xb = samples(a, 6000, 0), samples(b, 6000, 1)
    torch.manual_seed(0)  # the network's initialisation
    m = InterpolantEnergy(a, b, InterpolantPath.uniform(16, 0.5), torch.cat([xa, xb]), width=128, depth=2)
    cfg = InterpolantTrainConfig(steps=3000, batch_size=128, k=4, seed=0)
    train_interpolant(m, xa, xb, cfg)
    refit_log_norm(m, xa, xb, cfg, 2000)
    assert abs(m.delta_f() - exact) < 0.07, m.delta_f()
    r = ais_estimates(m, xa, xb, n=4000, mcmc_steps=3, seed=1)
    assert abs(r["bar"]["delta_f_kT"] - exact) < tol, r["bar"]


def test_cli_resumes_and_refuses_changed_settings(tmp_path, capsys):
    out = tmp_path / "fe"
    args = [
        "freeenergy",
        "gmm2_unbalanced",
        "gmm2_unbalanced",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "steps=40",
        "--set",
        "n_levels=4",
        "--set",
        "n_particles=200",
        "--set",
        "n_state_samples=500",
    ]
    assert main(args) == 0
    est = json.loads((out / "estimates.json").read_text())
    assert est["classifier"]["delta_f_kT"] == pytest.approx(0.0, abs=1e-9)  # the same state twice
    assert abs(est["ais"]["bar"]["delta_f_kT"]) < 4 * est["ais"]["bar"]["delta_f_se_kT"] + 0.01
    assert est["endpoint_bar"]["delta_f_kT"] == pytest.approx(0.0, abs=1e-9)
    assert est["endpoint_bar"]["n_target_evals"] == 2 * (500 + 500)
    assert (out / "report.md").exists() and (out / "profile.png").exists()
    mtime = (out / "estimates.json").stat().st_mtime_ns
    assert main(args) == 0  # resumes: nothing recomputed
    assert (out / "estimates.json").stat().st_mtime_ns == mtime
    capsys.readouterr()
    assert main(args[:-1] + ["n_state_samples=600"]) == 2
    assert "other states or settings" in capsys.readouterr().err


def test_cli_refuses_states_of_different_spaces(tmp_path, capsys):
    out = tmp_path / "x"
    rc = main(["freeenergy", "alanine_dipeptide:vacuum", "gmm2_unbalanced", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "differ in dimension" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["freeenergy", "gmm2_unbalanced", "gmm2_unbalanced", "--out", str(out), "--set", "k=1"]) == 2
    assert main(["freeenergy", "gmm2_unbalanced", "gmm2_unbalanced", "--out", str(out), "--set", "bogus=1"]) == 2


def test_training_resumes_from_its_checkpoint(tmp_path):
    """A finished checkpoint is picked up: no step is redone and the normalisers are the saved ones."""
    a, b, _ = gaussians()
    xa, xb = samples(a, 500, 0), samples(b, 500, 1)
    path = InterpolantPath.uniform(4, 0.5)
    ck = tmp_path / "ck.pt"
    cfg = InterpolantTrainConfig(steps=30, batch_size=32, k=2, seed=0, init_samples=16)
    m1 = InterpolantEnergy(a, b, path, torch.cat([xa, xb]), width=8, depth=1)
    s1 = train_interpolant(m1, xa, xb, cfg, checkpoint=str(ck), checkpoint_every=10)
    m2 = InterpolantEnergy(a, b, path, torch.cat([xa, xb]), width=8, depth=1)
    s2 = train_interpolant(m2, xa, xb, cfg, checkpoint=str(ck), checkpoint_every=10)
    assert torch.equal(m1.f, m2.f) and s1["trace"] == s2["trace"]
    assert m2.n_target_evals == m1.n_target_evals


def test_states_with_the_same_atom_count_but_another_atom_order_are_refused(tmp_path, capsys):
    import shutil

    from boltzdiff.systems import SYSTEMS_DIR

    d = tmp_path / "reordered"
    shutil.copytree(SYSTEMS_DIR / "alanine_dipeptide", d)
    pdb = d / "alanine-dipeptide.pdb"
    lines = pdb.read_text().splitlines()
    i3 = next(i for i, line in enumerate(lines) if line[12:16].strip() == "H2")
    lines[i3], lines[i3 + 1] = lines[i3 + 1], lines[i3]  # H2 and H3 of the acetyl cap change places
    pdb.write_text("\n".join(lines) + "\n")
    rc = main(["freeenergy", "alanine_dipeptide:vacuum", str(d), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "different topologies" in err and len(err.strip().splitlines()) == 1


def test_molecular_states_can_be_sampled_by_plain_md_and_count_no_bias_building(tmp_path):
    """``state_method: md`` replaces the preset's metadynamics by plain MD of ``state_ns``: its frames, its MD
    steps counted as evaluations (no bias-building run), and a bad method named before any MD runs."""
    from boltzdiff.errors import ConfigError
    from boltzdiff.freeenergy.pipeline import FreeEnergySettings, _reference_evals, state_samples
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide", "vacuum")
    s = FreeEnergySettings(state_ns=0.002, state_method="md")
    x, evals = state_samples(system, tmp_path / "A", s, seed=0, progress=False)
    prog = json.loads((tmp_path / "A" / "reference" / "progress.json").read_text())
    assert x.shape[1] == 66 and len(x) == 8  # 2 ps, a frame every 0.25 ps (the quick preset's interval)
    assert "metad" not in json.dumps(prog) and not (tmp_path / "A" / "reference" / "bias").exists()
    assert evals == 2000 + len(x)
    assert _reference_evals({"method": "metad", "build_ns": 0.4, "ns": 1.0}, 0) == 1_400_000
    assert _reference_evals({"method": "md", "build_ns": 0.4, "ns": 1.0}, 0) == 1_000_000
    with pytest.raises(ConfigError, match="state_method"):
        state_samples(system, tmp_path / "B", FreeEnergySettings(state_method="remd"), seed=0, progress=False)
    assert not (tmp_path / "B" / "reference").exists()
