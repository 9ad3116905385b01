"""Bring your own OpenMM system: ``system_xml:`` + ``pdb:``, Amber ``prmtop:`` + ``inpcrd:``, and
:func:`boltzdiff.from_openmm` give the same reduced energies as the System they came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

import boltzdiff
from boltzdiff.errors import ConfigError
from boltzdiff.systems import SYSTEMS_DIR, System

ALDP_DIR = SYSTEMS_DIR / "alanine_dipeptide"
PDB = "alanine-dipeptide.pdb"


@pytest.fixture(scope="module")
def aldp_implicit() -> System:
    return boltzdiff.load_system("alanine_dipeptide", "implicit")


@pytest.fixture(scope="module")
def aldp_vacuum() -> System:
    return boltzdiff.load_system("alanine_dipeptide", "vacuum")


def _perturbed(positions: np.ndarray, n: int = 5, scale: float = 0.005, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = positions[None] + scale * rng.standard_normal((n, *positions.shape))
    return torch.as_tensor(x, dtype=torch.float64)


def _openmm_reduced(system: openmm.System, x: np.ndarray, temperature: float) -> np.ndarray:
    """OpenMM's own potential energies of ``x (B, n, 3)`` nm divided by kT = R T."""
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    kT = unit.MOLAR_GAS_CONSTANT_R * temperature * unit.kelvin
    out = []
    for xi in x:
        ctx.setPositions(xi * unit.nanometer)
        out.append(ctx.getState(getEnergy=True).getPotentialEnergy() / kT)
    return np.array(out)


def _write_xml_system(d: Path, omm_system: openmm.System, extra: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "aldp.xml").write_text(openmm.XmlSerializer.serialize(omm_system))
    shutil.copy(ALDP_DIR / PDB, d / "mol.pdb")
    (d / "system.yaml").write_text(
        "kind: openmm\nsystem_xml: aldp.xml\npdb: mol.pdb\ntemperature: 300\n"
        "cvs: {phi: [4, 6, 8, 14], psi: [6, 8, 14, 16]}\nchiral_quads: [[8, 6, 14, 10]]\n" + extra
    )
    return d


# --- system_xml + pdb -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["implicit", "vacuum"])
def test_system_xml_reproduces_the_forcefield_route(tmp_path, variant):
    ref = boltzdiff.load_system("alanine_dipeptide", variant)
    d = _write_xml_system(tmp_path / "xml", ref.extras["openmm_system"])
    s = boltzdiff.load_system(d)
    assert s.kind == "openmm" and s.name == "xml" and s.temperature == 300.0
    assert s.topology.n_atoms == 22 and np.allclose(s.positions, ref.positions)
    assert s.spec["cvs"] == ref.spec["cvs"] and np.array_equal(s.extras["bonds"], ref.extras["bonds"])
    assert np.allclose(s.extras["masses"], ref.extras["masses"])
    x = _perturbed(ref.positions)
    u, u_ref = s.target.energy(x).numpy(), ref.target.energy(x).numpy()
    assert np.all(np.isfinite(u))
    np.testing.assert_allclose(u, u_ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(s.target.force(x).numpy(), ref.target.force(x).numpy(), rtol=1e-6, atol=1e-6)


# --- Amber prmtop + inpcrd (written by ParmEd from the OpenMM system) --------------------------------------------


def _write_amber(d: Path, ref: System, extra: str = "", radii: str | None = None) -> Path:
    parmed = pytest.importorskip("parmed")
    d.mkdir(parents=True, exist_ok=True)
    structure = parmed.openmm.load_topology(
        ref.extras["openmm_topology"],
        ref.extras["openmm_system"],
        xyz=ref.positions * 10.0,  # Angstrom
    )
    if radii is not None:  # a System without GB force carries no radii; an Amber GB model needs them
        from parmed.tools import changeRadii

        changeRadii(structure, radii).execute()
    structure.save(str(d / "aldp.prmtop"))
    structure.save(str(d / "aldp.inpcrd"))
    (d / "system.yaml").write_text("kind: openmm\nprmtop: aldp.prmtop\ninpcrd: aldp.inpcrd\ntemperature: 300\n" + extra)
    return d


def test_prmtop_round_trip_vacuum(tmp_path, aldp_vacuum):
    # vacuum: bonds, angles, torsions, 1-4 scaling, charges and Lennard-Jones survive the prmtop format (charges
    # and LJ coefficients are stored to ~8 significant digits). The GB radii and scales of amber99_obc.xml do not
    # (a prmtop holds Amber radii sets such as mbondi2), so the implicit-solvent option is only checked to build
    d = _write_amber(tmp_path / "amber", aldp_vacuum)
    s = boltzdiff.load_system(d)
    assert s.topology.n_atoms == 22 and s.temperature == 300.0
    np.testing.assert_allclose(s.positions, aldp_vacuum.positions, atol=1e-6)
    nb = [f for f in s.extras["openmm_system"].getForces() if isinstance(f, openmm.NonbondedForce)][0]
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    assert s.extras["openmm_system"].getNumConstraints() == 0
    x = _perturbed(aldp_vacuum.positions)
    # measured: relative differences ~1e-8 (absolute < 1e-6 kT), forces within ~2e-5 kT/nm of ~5e3
    np.testing.assert_allclose(s.target.energy(x).numpy(), aldp_vacuum.target.energy(x).numpy(), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(s.target.force(x).numpy(), aldp_vacuum.target.force(x).numpy(), atol=1e-3)


def test_prmtop_options(tmp_path, aldp_vacuum):
    d = _write_amber(tmp_path / "amber", aldp_vacuum, "implicit_solvent: OBC2\nconstraints: HBonds\n", "mbondi2")
    s = boltzdiff.load_system(d)
    forces = s.extras["openmm_system"].getForces()
    assert any(isinstance(f, openmm.GBSAOBCForce | openmm.CustomGBForce) for f in forces)
    assert s.extras["openmm_system"].getNumConstraints() == 12  # the X-H bonds
    assert np.isfinite(s.target.energy(torch.as_tensor(s.positions)[None]).item())
    (d / "system.yaml").write_text((d / "system.yaml").read_text().replace("OBC2", "OBC9"))
    with pytest.raises(ConfigError, match=r"system.yaml: field 'implicit_solvent' is 'OBC9'; expected .*'OBC2'"):
        boltzdiff.load_system(d)


# --- from_openmm --------------------------------------------------------------------------------------------


def test_from_openmm_matches_load_system(aldp_implicit):
    omm = aldp_implicit.extras["openmm_system"]
    top = aldp_implicit.extras["openmm_topology"]
    x = _perturbed(aldp_implicit.positions)
    for topology, positions, temperature in (
        (top, aldp_implicit.positions * unit.nanometer, 300.0),
        (aldp_implicit.topology, aldp_implicit.positions, 300.0 * unit.kelvin),  # mdtraj topology, nm array
    ):
        s = boltzdiff.from_openmm(omm, topology, positions, temperature, cvs=aldp_implicit.spec["cvs"])
        assert isinstance(s, System) and s.kind == "openmm" and s.temperature == 300.0 and s.path is None
        assert set(s.extras) >= {"openmm_system", "openmm_topology", "masses", "bonds"}
        assert s.spec["cvs"] == aldp_implicit.spec["cvs"] and s.topology.n_atoms == 22
        np.testing.assert_array_equal(s.target.energy(x).numpy(), aldp_implicit.target.energy(x).numpy())
    assert boltzdiff.targets.from_openmm is boltzdiff.systems.from_openmm


def test_from_openmm_usable_for_md(tmp_path, aldp_vacuum):
    from boltzdiff.reference.md import MDConfig, run_md

    s = boltzdiff.from_openmm(
        aldp_vacuum.extras["openmm_system"], aldp_vacuum.extras["openmm_topology"], aldp_vacuum.positions, 300.0
    )
    res = run_md(s, tmp_path / "md", MDConfig(ns=0.002, save_every_ps=1.0, minimize=False), progress=False)
    assert res is not None and any((tmp_path / "md").iterdir())


def test_openmmtools_alanine_dipeptide_through_from_openmm():
    testsystems = pytest.importorskip("openmmtools.testsystems")
    for cls in (testsystems.AlanineDipeptideImplicit, testsystems.AlanineDipeptideVacuum):
        t = cls()
        s = boltzdiff.from_openmm(t.system, t.topology, t.positions, 300.0, name=cls.__name__)
        x = _perturbed(s.positions, n=4, seed=3)
        u = s.target.energy(x).numpy()
        np.testing.assert_allclose(u, _openmm_reduced(t.system, x.numpy(), 300.0), rtol=1e-10, atol=0)


def test_from_openmm_errors(aldp_vacuum):
    omm = aldp_vacuum.extras["openmm_system"]
    top = aldp_vacuum.extras["openmm_topology"]
    cases = [
        ((omm, top, aldp_vacuum.positions[:20], 300.0), r"positions: expected \(frames, 22, 3\)"),
        ((omm, top, aldp_vacuum.positions * 10.0, 300.0), "look like Angstrom"),
        ((omm, top, aldp_vacuum.positions, -1.0), "temperature' must be > 0 K"),
        ((omm, "not a topology", aldp_vacuum.positions, 300.0), "expected an openmm.app.Topology or mdtraj"),
        (("system", top, aldp_vacuum.positions, 300.0), "expected an openmm.System"),
    ]
    bigger = openmm.XmlSerializer.clone(omm)
    bigger.addParticle(1.0)
    cases.append(((bigger, top, aldp_vacuum.positions, 300.0), "the System has 23 particles but the topology has 22"))
    for args, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            boltzdiff.from_openmm(*args)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"field 'cvs.phi': expected 4 atom indices in \[0, 22\)"):
        boltzdiff.from_openmm(omm, top, aldp_vacuum.positions, 300.0, cvs={"phi": [4, 6, 8, 99]})


# --- one-line errors ---------------------------------------------------------------------------------------------


def _raises_one_line(d: Path, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as e:
        boltzdiff.load_system(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d / "system.yaml") in msg, msg
    return msg


def test_system_xml_given_as_forcefield(tmp_path, aldp_vacuum):
    d = _write_xml_system(tmp_path / "m", aldp_vacuum.extras["openmm_system"])
    (d / "system.yaml").write_text("kind: openmm\npdb: mol.pdb\nforcefield: [aldp.xml]\ntemperature: 300\n")
    _raises_one_line(d, r"field 'forcefield': 'aldp.xml' is a serialized OpenMM System.*'system_xml: aldp.xml'")


def test_particle_count_mismatch(tmp_path, aldp_vacuum):
    bigger = openmm.XmlSerializer.clone(aldp_vacuum.extras["openmm_system"])
    bigger.addParticle(1.0)
    d = _write_xml_system(tmp_path / "m", bigger)
    _raises_one_line(d, r"field 'system_xml': aldp.xml has 23 particles but pdb mol.pdb has 22 atoms")


def test_spec_errors(tmp_path, aldp_vacuum):
    d = _write_xml_system(tmp_path / "m", aldp_vacuum.extras["openmm_system"])
    spec = (d / "system.yaml").read_text()

    def with_spec(text: str) -> Path:
        (d / "system.yaml").write_text(text)
        return d

    _raises_one_line(with_spec(spec.replace("aldp.xml", "gone.xml")), r"field 'system_xml': file .*gone.xml does not")
    _raises_one_line(with_spec(spec.replace("mol.pdb", "gone.pdb")), r"field 'pdb': file .*gone.pdb does not exist")
    msg = _raises_one_line(with_spec(spec + "forcefeild: [amber99sbildn.xml]\n"), r"unknown field 'forcefeild'")
    assert "system_xml" in msg and "prmtop" in msg and "forcefield" in msg  # the valid fields are listed
    _raises_one_line(with_spec(spec + "forcefield: [amber99sbildn.xml]\n"), "'forcefield' and 'system_xml' cannot be")
    _raises_one_line(with_spec(spec + "nonbonded_method: PME\n"), "field 'nonbonded_method' does not apply with")
    _raises_one_line(with_spec(spec.replace("pdb: mol.pdb\n", "")), "missing field 'pdb'")
    (d / "ff.xml").write_text("<ForceField>\n</ForceField>\n")
    _raises_one_line(with_spec(spec.replace("aldp.xml", "ff.xml")), "ff.xml is a force field file.*'forcefield:'")
    (d / "junk.xml").write_text("not xml at all")
    _raises_one_line(with_spec(spec.replace("aldp.xml", "junk.xml")), "is not XML; expected an OpenMM System XML")
    amber = "kind: openmm\ntemperature: 300\nprmtop: a.prmtop\n"
    _raises_one_line(with_spec(amber), r"field 'prmtop': file .*a.prmtop does not exist")
    _raises_one_line(with_spec("kind: openmm\ntemperature: 300\ninpcrd: a.inpcrd\n"), "missing field 'prmtop'")
    (d / "a.prmtop").write_text("garbage\n")
    _raises_one_line(with_spec(amber), "missing field 'inpcrd'")
    (d / "a.inpcrd").write_text("garbage\n")
    _raises_one_line(with_spec(amber + "inpcrd: a.inpcrd\n"), "field 'prmtop': cannot read Amber prmtop")
    _raises_one_line(with_spec(amber + "inpcrd: a.inpcrd\npdb: mol.pdb\n"), "field 'pdb' does not apply with 'prmtop'")


def test_inpcrd_atom_count_mismatch(tmp_path, aldp_vacuum):
    d = _write_amber(tmp_path / "amber", aldp_vacuum)
    other = _write_amber(tmp_path / "other", aldp_vacuum)
    lines = (other / "aldp.inpcrd").read_text().splitlines()
    # an inpcrd of 20 atoms: the count on line 2, three atoms (9 numbers) on each full line of six numbers
    body = " ".join(lines[2:]).split()[: 20 * 3]
    rows = ["".join(f"{float(v):12.7f}" for v in body[i : i + 6]) for i in range(0, len(body), 6)]
    (d / "aldp.inpcrd").write_text("\n".join([lines[0], f"{20:6d}", *rows]) + "\n")
    _raises_one_line(d, r"field 'inpcrd': aldp.inpcrd has 20 atoms but aldp.prmtop has 22")
