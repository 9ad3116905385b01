"""Molecular systems from system.yaml: the shipped alanine dipeptide, variants, user molecules, bad inputs."""

import shutil
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from _recipes import ALDP_CHIRAL_QUADS, ALDP_PHI, ALDP_PSI

import boltzdiff
from boltzdiff.cv import phi_psi
from boltzdiff.errors import ConfigError
from boltzdiff.geometry import dihedral, random_rotate, signed_volume
from boltzdiff.systems import SYSTEMS_DIR

ALDP_DIR = SYSTEMS_DIR / "alanine_dipeptide"


@pytest.fixture(scope="module")
def aldp():
    s = boltzdiff.load_system("alanine_dipeptide")
    yield s
    s.target.close()


def test_aldp_system_fields(aldp):
    assert aldp.variant == "implicit" and aldp.kind == "openmm"
    assert aldp.temperature == 300.0
    assert aldp.positions.shape == (22, 3) and aldp.topology.n_atoms == 22
    assert [r.name for r in aldp.topology.residues] == ["ACE", "ALA", "NME"]
    names = [a.name for a in aldp.topology.atoms]
    assert [names[i] for i in ALDP_PHI] == ["C", "N", "CA", "C"]
    assert [names[i] for i in ALDP_PSI] == ["N", "CA", "C", "N"]
    assert tuple(aldp.spec["cvs"]["phi"]) == ALDP_PHI and tuple(aldp.spec["cvs"]["psi"]) == ALDP_PSI
    system = aldp.extras["openmm_system"]
    assert system.getNumConstraints() == 0  # no constraints
    nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    assert any(isinstance(f, openmm.GBSAOBCForce) for f in system.getForces())


def test_shipped_structure_phi_psi_and_energy(aldp):
    phi, psi = phi_psi(aldp.positions[None], aldp.topology, **aldp.spec["cvs"])
    ref = aldp.spec["reference_dihedrals"]
    assert phi[0] == pytest.approx(ref["phi"], abs=1e-3) and psi[0] == pytest.approx(ref["psi"], abs=1e-3)
    # the alpha-R basin: phi about -77 deg, psi about -15 deg
    assert -100 < np.degrees(phi[0]) < -60 and -40 < np.degrees(psi[0]) < 10
    # torch dihedral agrees with mdtraj
    x = torch.as_tensor(aldp.positions)[None]
    assert dihedral(x, ALDP_PHI).item() == pytest.approx(float(phi[0]), abs=1e-5)
    # L-alanine: positive signed volume at CA of (N, C, CB)
    assert signed_volume(x, 8, 6, 14, 10).item() > 0
    # a minimised structure: energy finite and in a sane range, small forces
    u = aldp.target.energy(x)
    assert torch.isfinite(u).all() and -80 < u.item() < -30
    assert aldp.target.force(x).abs().max() < 50  # kT/nm; a random 0.01 nm jitter gives thousands


def test_aldp_invariance_rotation_translation(aldp):
    x = torch.as_tensor(aldp.positions)[None] + 0.005 * torch.randn(6, 22, 3, dtype=torch.float64)
    u = aldp.target.energy(x)
    y = random_rotate(x, generator=torch.Generator().manual_seed(0)) + torch.tensor([1.0, -2.0, 0.5])
    assert torch.allclose(aldp.target.energy(y), u, atol=1e-6)


def test_vacuum_and_implicit_differ_by_the_solvation_term_only(aldp):
    vac = boltzdiff.load_system("alanine_dipeptide", "vacuum")
    assert vac.variant == "vacuum"
    assert not any(isinstance(f, openmm.GBSAOBCForce) for f in vac.extras["openmm_system"].getForces())
    # implicit system with the GBSA force in its own group: E_implicit - E_GBSA == E_vacuum
    imp = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(aldp.extras["openmm_system"]))
    for f in imp.getForces():
        f.setForceGroup(1 if isinstance(f, openmm.GBSAOBCForce) else 0)
    ctx = openmm.Context(imp, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    x = aldp.positions[None] + 0.01 * np.random.default_rng(0).standard_normal((5, 22, 3))
    u_vac = vac.target.energy(torch.as_tensor(x)).numpy()
    u_imp = aldp.target.energy(torch.as_tensor(x)).numpy()
    kt = aldp.target.kT
    for k in range(5):
        ctx.setPositions(x[k] * unit.nanometer)
        e_gb = ctx.getState(getEnergy=True, groups={1}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        assert (u_imp[k] - u_vac[k]) * kt == pytest.approx(e_gb, abs=1e-4)
        assert abs(e_gb) > 10  # the solvation term is not negligible
    vac.target.close()


def _copy_system(tmp_path: Path, spec_text: str, pdb_text: str | None = None) -> Path:
    d = tmp_path / "mol"
    d.mkdir()
    pdb = pdb_text if pdb_text is not None else (ALDP_DIR / "alanine-dipeptide.pdb").read_text()
    (d / "mol.pdb").write_text(pdb)
    (d / "system.yaml").write_text(spec_text)
    return d


SPEC = "kind: openmm\npdb: mol.pdb\nforcefield: [amber99sbildn.xml]\ntemperature: 310\n"


def test_user_molecule_without_code_change(tmp_path, aldp):
    d = _copy_system(tmp_path, SPEC)
    s = boltzdiff.load_system(d)
    assert s.name == "mol" and s.temperature == 310.0 and s.variant is None
    vac = boltzdiff.load_system("alanine_dipeptide", "vacuum")
    x = torch.as_tensor(aldp.positions)[None]
    # same force field, different temperature: u scales with 1/T
    assert s.target.energy(x).item() == pytest.approx(vac.target.energy(x).item() * 300.0 / 310.0, rel=1e-9)
    # also by the path of the yaml file
    assert boltzdiff.load_system(d / "system.yaml").target.dim == 66


def test_unmatched_residue_names_the_residue(tmp_path):
    pdb = (ALDP_DIR / "alanine-dipeptide.pdb").read_text().replace("ALA A   2", "XYZ A   2")
    d = _copy_system(tmp_path, SPEC, pdb)
    with pytest.raises(ConfigError, match=r"residue XYZ 2 .* not matched") as e:
        boltzdiff.load_system(d)
    assert "\n" not in str(e.value)


def test_unknown_forcefield_file(tmp_path):
    d = _copy_system(tmp_path, SPEC.replace("amber99sbildn.xml", "amber99sbildn.xml, no_such_ff.xml"))
    with pytest.raises(ConfigError, match="unknown force field file 'no_such_ff.xml'"):
        boltzdiff.load_system(d)


@pytest.mark.parametrize("field", ["pdb", "forcefield", "temperature"])
def test_missing_field(tmp_path, field):
    lines = [ln for ln in SPEC.splitlines() if not ln.startswith(field + ":")]
    d = _copy_system(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=f"missing field '{field}'") as e:
        boltzdiff.load_system(d)
    assert str(d / "system.yaml") in str(e.value)


def test_missing_pdb_file_and_bad_variant(tmp_path):
    d = _copy_system(tmp_path, SPEC.replace("mol.pdb", "other.pdb"))
    with pytest.raises(ConfigError, match="does not exist"):
        boltzdiff.load_system(d)
    with pytest.raises(ConfigError, match="unknown variant 'gas'"):
        boltzdiff.load_system("alanine_dipeptide", "gas")


def test_wrong_atom_count_and_units(aldp, tmp_path):
    from boltzdiff.commands.energy import load_frames

    with pytest.raises(ConfigError, match=r"expected positions of shape \(B, 66\)"):
        aldp.target.energy(torch.zeros(3, 20, 3))
    f = tmp_path / "ang.npy"
    np.save(f, aldp.positions[None] * 10.0)  # Angstrom by mistake
    with pytest.raises(ConfigError, match="look like Angstrom"):
        load_frames(f, aldp)
    np.save(f, aldp.positions[None, :20])
    with pytest.raises(ConfigError, match=r"expects \(F, 22, 3\)"):
        load_frames(f, aldp)


def test_energy_cli(tmp_path, capsys, aldp):
    from boltzdiff.cli import main

    pdb = str(ALDP_DIR / "alanine-dipeptide.pdb")
    assert main(["energy", "alanine_dipeptide", pdb]) == 0
    out = capsys.readouterr().out.split()
    assert float(out[0]) == pytest.approx(aldp.target.energy(torch.as_tensor(aldp.positions)[None]).item(), abs=1e-3)
    x = aldp.positions[None] + 0.01 * np.random.default_rng(1).standard_normal((4, 22, 3))
    np.save(tmp_path / "x.npy", x.reshape(4, 66))
    assert main(["energy", "alanine_dipeptide", str(tmp_path / "x.npy"), "--out", str(tmp_path / "u.npy")]) == 0
    assert np.allclose(np.load(tmp_path / "u.npy"), aldp.target.energy(torch.as_tensor(x)).numpy())
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as fh:  # mdtraj's HDF5 layout
        fh.create_dataset("coordinates", data=x.astype(np.float32)).attrs["units"] = b"nanometers"
    assert main(["energy", "alanine_dipeptide", str(tmp_path / "x.h5"), "--out", str(tmp_path / "u.txt")]) == 0
    assert np.allclose(np.loadtxt(tmp_path / "u.txt"), np.load(tmp_path / "u.npy"), atol=1e-3)
    np.save(tmp_path / "bad.npy", x * 10)
    assert main(["energy", "alanine_dipeptide", str(tmp_path / "bad.npy")]) == 2
    assert "look like Angstrom" in capsys.readouterr().err


def test_copying_the_shipped_folder_works(tmp_path):
    d = tmp_path / "aldp"
    shutil.copytree(ALDP_DIR, d)
    s = boltzdiff.load_system(d, "vacuum")
    assert s.target.dim == 66


def test_a_copied_folder_keeps_its_chiral_centres_and_bad_ones_are_named(tmp_path):
    # regression: chirality used to be looked up by the name 'alanine_dipeptide', so a copy under another name
    # lost it and its analysis counted D-alanine samples (phi of the opposite sign) in the wrong basin
    from boltzdiff.systems import chiral_quads_of

    d = tmp_path / "my_dipeptide"
    shutil.copytree(ALDP_DIR, d)
    s = boltzdiff.load_system(d / "system.yaml")
    assert s.name != "alanine_dipeptide" and chiral_quads_of(s) == [tuple(ALDP_CHIRAL_QUADS[0])]
    spec = (d / "system.yaml").read_text()
    for bad in ("[[8, 6, 14]]", "[[8, 6, 14, 99]]", "[[8, 8, 14, 10]]", "8"):
        (d / "system.yaml").write_text(spec.replace("chiral_quads: [[8, 6, 14, 10]]", f"chiral_quads: {bad}"))
        with pytest.raises(ConfigError, match=r"system.yaml: field 'chiral_quads'") as e:
            boltzdiff.load_system(d)
        assert "\n" not in str(e.value)
