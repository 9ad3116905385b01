"""Named states declared in a system.yaml: the state logic against closed forms, the loader's checks, and a
molecule that ships no code (glycine dipeptide, built here from the alanine-dipeptide structure) run end to
end with its own states."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from boltzdiff.analysis.states import (
    CVInterval,
    StateSpec,
    as_two_state,
    delta_f_states,
    free_energy_spec,
    parse_states,
    state_mask,
)
from boltzdiff.errors import ConfigError
from boltzdiff.systems import SYSTEMS_DIR, load_system


def test_state_masks_with_a_wrapped_interval_and_two_cvs():
    """Open intervals after wrapping to [-pi, pi); lo > hi is the arc across ±pi; two CVs must both hold."""
    phi = np.array([0.5, 2.0, -0.5, 3.0, -3.0, 0.5 + 2 * np.pi, 1.0, 1.0])
    psi = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0])
    v = {"phi": phi, "psi": psi}
    basin = StateSpec("a", (CVInterval("phi", 0.0, 2.0),))
    assert state_mask(v, basin).tolist() == [True, False, False, False, False, True, True, True]
    across = StateSpec("beta", (CVInterval("phi", 2.5, -2.5),))  # |phi| > 2.5
    assert across.intervals[0].wraps
    assert state_mask(v, across).tolist() == [False, False, False, True, True, False, False, False]
    both = StateSpec("ab", (CVInterval("phi", 0.0, 2.0), CVInterval("psi", -0.5, 0.5)))
    assert state_mask(v, both).tolist() == [True, False, False, False, False, True, False, False]
    with pytest.raises(KeyError):
        state_mask({"phi": phi}, both)


def test_delta_f_between_two_states_matches_the_closed_form_on_weighted_samples():
    """Samples on a grid of (phi, psi) with log-weights -u: ΔF = -ln[sum_A e^-u / sum_B e^-u] exactly, for a
    state against the rest and for two states (a third region in neither), with bools and probabilities."""
    rng = np.random.default_rng(3)
    phi = rng.uniform(-np.pi, np.pi, 5000)
    psi = rng.uniform(-np.pi, np.pi, 5000)
    u = 2.0 * np.cos(phi) + np.sin(psi)
    lw = -u
    v = {"phi": phi, "psi": psi}
    a = StateSpec("alpha_l", (CVInterval("phi", 0.0, 2.0),))
    b = StateSpec("alpha_r", (CVInterval("phi", -2.0, 0.0), CVInterval("psi", -1.5, 0.5)))
    in_a, in_b = state_mask(v, a), state_mask(v, b)
    w = np.exp(lw)
    exact_pair = -math.log(w[in_a].sum() / w[in_b].sum())
    exact_rest = -math.log(w[in_a].sum() / w[~in_a].sum())
    assert delta_f_states(in_a, in_b, lw, n_bootstrap=0).delta_f == pytest.approx(exact_pair, rel=1e-12)
    assert delta_f_states(in_a, None, lw, n_bootstrap=0).delta_f == pytest.approx(exact_rest, rel=1e-12)
    # probabilities: A and B each hold half of every sample -> ΔF 0; B's mass alone scaled -> -ln of the ratio
    half = np.full(phi.size, 0.5)
    assert delta_f_states(half, half, lw, n_bootstrap=0).delta_f == pytest.approx(0.0, abs=1e-12)
    assert delta_f_states(half, 0.25 * np.ones(phi.size), lw, n_bootstrap=0).delta_f == pytest.approx(-math.log(2))
    # the bootstrap draws the same particles either way, and its SE is that of the log-odds (delta method)
    d = delta_f_states(in_a, in_b, None, n_bootstrap=400, rng=1)
    na, nb = in_a.sum(), in_b.sum()
    assert d.se == pytest.approx(math.sqrt(1 / na + 1 / nb), rel=0.2)
    share, lw2 = as_two_state(in_a, in_b, None)
    assert np.all(np.isneginf(lw2[~(in_a | in_b)])) and share[in_a].min() == 1.0 and share[in_b].max() == 0.0


def _spec(**extra):
    return {"kind": "openmm", "cvs": {"phi": [4, 6, 8, 14], "psi": [6, 8, 14, 16]}, **extra}


def test_free_energy_defaults_and_choices():
    """Default: the first declared state against the rest, the profile over its first CV."""
    spec = _spec(states={"b": {"psi": [2.5, -2.5], "phi": [-3.0, -1.0]}, "a": {"phi": [0.0, 2.0]}})
    fe = free_energy_spec(spec)
    assert fe.state.name == "b" and fe.against is None and fe.against_name == "rest" and fe.profile == "psi"
    assert fe.rotation_interval is None  # two CVs: no rotation integral
    fe = free_energy_spec({**spec, "free_energy": {"delta_f": ["a", "b"], "profile": "phi"}})
    assert (fe.state.name, fe.against_name, fe.profile) == ("a", "b", "phi") and fe.rotation_interval is None
    fe = free_energy_spec({**spec, "free_energy": {"delta_f": "a"}})
    assert fe.rotation_interval == CVInterval("phi", 0.0, 2.0)
    assert free_energy_spec(_spec()) is None and parse_states(_spec(), "x") == {}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"states": {"a": {"chi": [0.0, 1.0]}}}, "states.a.chi"),  # unknown CV
        ({"states": {"a": {"phi": [0.0, "two"]}}}, "states.a.phi"),  # non-numeric bound
        ({"states": {"a": {"phi": [0.0, 1.0, 2.0]}}}, "states.a.phi"),  # more than two numbers
        ({"states": {"a": {}}}, "states.a"),  # no CV
        ({"states": {"a": None}}, "states.a"),
        ({"states": ["a"]}, "states"),
        ({"states": {"a": {"phi": [0.0, 1.0]}}, "free_energy": {"delta_f": ["a", "c"]}}, "free_energy.delta_f"),
        ({"states": {"a": {"phi": [0.0, 1.0]}}, "free_energy": {"profile": "chi"}}, "free_energy.profile"),
        ({"states": {"a": {"phi": [0.0, 1.0]}}, "free_energy": {"delta": "a"}}, "free_energy"),
        ({"free_energy": {"delta_f": "a"}}, "free_energy"),
    ],
)
def test_bad_states_are_one_line_errors_naming_the_file_and_field(tmp_path, extra, field):
    d = tmp_path / "aldp"
    d.mkdir()
    spec = yaml.safe_load((SYSTEMS_DIR / "alanine_dipeptide" / "system.yaml").read_text())
    spec.pop("states"), spec.pop("free_energy")
    (d / "system.yaml").write_text(yaml.safe_dump({**spec, **extra}))
    (d / "alanine-dipeptide.pdb").write_text((SYSTEMS_DIR / "alanine_dipeptide" / "alanine-dipeptide.pdb").read_text())
    with pytest.raises(ConfigError) as e:
        load_system(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d / "system.yaml") in msg and f"field '{field}'" in msg, msg


def test_alanine_dipeptide_declares_its_phi_basin():
    fe = free_energy_spec(load_system("alanine_dipeptide").spec)
    assert fe.state.name == "phi_pos" and fe.against is None and fe.profile == "phi"
    assert fe.rotation_interval == CVInterval("phi", 0.0, 2.0)


# ------------------------------------------------------------------------------------------------------------
# a user's molecule with no code: glycine dipeptide (ACE-GLY-NME)
# ------------------------------------------------------------------------------------------------------------
def _glycine_dipeptide_pdb(path) -> dict[str, int]:
    """Glycine dipeptide from the alanine-dipeptide structure: CB's hydrogens deleted, CB turned into HA3 at
    0.109 nm from CA along CA->CB, HA renamed HA2, ALA renamed GLY; checked by amber99sbildn + OBC, minimised
    once and written to ``path``. Returns the 0-based indices of the backbone atoms by name."""
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    pdb = app.PDBFile(str(SYSTEMS_DIR / "alanine_dipeptide" / "alanine-dipeptide.pdb"))
    pos = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    top = app.Topology()
    chain = top.addChain()
    new_pos, new_atoms = [], {}
    ca = cb = None
    for res in pdb.topology.residues():
        for a in res.atoms():
            if a.name == "CA" and res.name == "ALA":
                ca = pos[a.index]
            if a.name == "CB" and res.name == "ALA":
                cb = pos[a.index]
    for res in pdb.topology.residues():
        r = top.addResidue("GLY" if res.name == "ALA" else res.name, chain)
        for a in res.atoms():
            name, p = a.name, pos[a.index]
            if res.name == "ALA":
                if name in ("HB1", "HB2", "HB3"):
                    continue
                if name == "HA":
                    name = "HA2"
                if name == "CB":
                    name, p = "HA3", ca + 0.109 * (cb - ca) / np.linalg.norm(cb - ca)
            new_atoms[(res.index, a.name)] = top.addAtom(name, app.element.hydrogen if name == "HA3" else a.element, r)
            new_pos.append(p)
    for b in pdb.topology.bonds():
        k0, k1 = (b[0].residue.index, b[0].name), (b[1].residue.index, b[1].name)
        if k0 in new_atoms and k1 in new_atoms:
            top.addBond(new_atoms[k0], new_atoms[k1])
    ff = app.ForceField("amber99sbildn.xml", "amber99_obc.xml")
    system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(np.asarray(new_pos) * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 500)
    state = ctx.getState(getPositions=True)
    with open(path, "w") as fh:
        app.PDBFile.writeFile(top, state.getPositions(), fh)
    idx = {}
    for a in top.atoms():
        idx[(a.residue.name, a.name)] = a.index
    return idx


def _glycine_dipeptide_system(tmp_path):
    d = tmp_path / "glycine_dipeptide"
    d.mkdir()
    i = _glycine_dipeptide_pdb(d / "glycine-dipeptide.pdb")
    assert len(i) == 19 and ("GLY", "HA3") in i and ("GLY", "CB") not in i
    phi = [i[("ACE", "C")], i[("GLY", "N")], i[("GLY", "CA")], i[("GLY", "C")]]
    psi = [i[("GLY", "N")], i[("GLY", "CA")], i[("GLY", "C")], i[("NME", "N")]]
    spec = {
        "kind": "openmm",
        "pdb": "glycine-dipeptide.pdb",
        "forcefield": ["amber99sbildn.xml", "amber99_obc.xml"],
        "temperature": 300.0,
        "nonbonded_method": "NoCutoff",
        "constraints": None,
        "platform": "Reference",
        "n_workers": 0,
        "cvs": {"phi": phi, "psi": psi},
        "states": {"alpha_l": {"phi": [0.0, 2.0]}, "alpha_r": {"phi": [-2.0, 0.0], "psi": [-1.5, 0.5]}},
        "free_energy": {"delta_f": ["alpha_l", "alpha_r"]},
    }
    (d / "system.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # the alanine-dipeptide recipe (systems/alanine_dipeptide/run.yaml) in miniature: pair-distance model with
    # target score matching on MD data from 500 K (which visits both states in picoseconds), SMC bridged to
    # the 300 K energy, resampled once, then torsion + MALA sweeps at the exact energy about the phi and psi bonds
    run = {
        "train": {
            "network": "pairmlp",
            "width": 64,
            "depth": 2,
            "pairmlp": {"stiffness_init": 1.0},
            "n_levels": 48,
            "schedule": {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "t_min": 1.0e-6},
            "tsm_scale": 0.005,
            "k": 2,
            "batch_size": 64,
            "lr": 1.0e-3,
            "checkpoint_every": 500,
        },
        "presets": {
            "quick": {
                "reference": {"ns": 0.05, "save_every_ps": 0.05, "temperature": 500.0},
                "train": {"steps": 1500, "warmup_steps": 500, "tsm_weight": 1.0, "precond_scale": 3.0},
                "sample": {
                    "n": 200,
                    "mcmc_steps": 2,
                    "bridge_cess": 0.9,
                    "max_bridge": 40,
                    "torsion": {"bonds": "cvs"},
                    "final_mcmc_steps": 30,
                    "final_resample": True,
                },
            }
        },
    }
    (d / "run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    return d


def test_glycine_dipeptide_structure_and_spec_load(tmp_path):
    """The built molecule loads as a system with its own cvs and states (no code of its own)."""
    d = _glycine_dipeptide_system(tmp_path)
    system = load_system(d)
    assert system.target.event_shape[0] == 19
    fe = free_energy_spec(system.spec)
    assert (fe.state.name, fe.against_name, fe.profile) == ("alpha_l", "alpha_r", "phi")
    assert "chiral_quads" not in system.spec


@pytest.mark.slow
def test_glycine_dipeptide_runs_end_to_end_with_its_own_states(tmp_path):
    """`boltzdiff run` on a molecule that ships no code: ΔF between its declared states, named in analysis.json
    and report.md; the Rao-Blackwell rotation is skipped (alpha_r is defined by two CVs) and says so."""
    from boltzdiff.cli import main

    d = _glycine_dipeptide_system(tmp_path)
    out = tmp_path / "run"
    # a test-sized run (a few hundred particles) may rest on one SMC lineage: the sanity gates flag it, and the
    # test is about the mechanics, so it allows that
    argv = ["run", str(d), "--preset", "quick", "--out", str(out), "--no-progress", "--allow-degenerate"]
    assert main(argv) == 0
    res = json.loads((out / "analysis.json").read_text())
    assert res["system"] == "glycine_dipeptide" and "sanity" in res
    assert "model_only" in res and len(res["model_only"]["phi_grid_rad"]) == 72  # the learned energy alone, too
    assert res["delta_f_state"] == "alpha_l" and res["delta_f_against"] == "alpha_r"
    assert math.isfinite(res["delta_f_kT"]), res["delta_f_kT"]
    assert "no rotation integral" in res["delta_f_estimator"] and "rao_blackwell_angles" not in res
    assert res["f_cv"] == "phi" and len(res["f_phi_kT"]) == 36 and "n_mirrored" not in res
    report = (out / "report.md").read_text()
    assert "alpha_l" in report and "alpha_r" in report
    assert (out / "free_energy_phi.png").exists() and (out / "ramachandran.png").exists()
