"""The ``kind: openmm`` system builder: an OpenMM System (and topology, positions) from the files a
``system.yaml`` names -- PDB + force field, a serialized System XML + PDB, or Amber prmtop + inpcrd -- and
the fields of a ``System`` record for it (:func:`openmm_parts`). Fields are documented in docs/systems.md.

The target itself (:class:`~boltzdiff.targets.openmm.OpenMMTarget`, the worker bridge) lives in
:mod:`boltzdiff.targets.openmm`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from boltzdiff.errors import ConfigError
from boltzdiff.schema import suggest
from boltzdiff.targets.openmm import DEFAULT_ENERGY_CAP, OpenMMTarget, check_positions

#: OpenMM nonbonded methods accepted in a spec
_NONBONDED = ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "PME", "Ewald")
_CONSTRAINTS = {None: None, "none": None, "HBonds": "HBonds", "AllBonds": "AllBonds", "HAngles": "HAngles"}
#: Amber generalized-Born models accepted by ``implicit_solvent`` (names of ``openmm.app``)
_IMPLICIT = ("HCT", "OBC1", "OBC2", "GBn", "GBn2")

#: the three ways to give the OpenMM System (one key each) and the fields each route reads
ROUTE_FIELDS: dict[str, tuple[str, ...]] = {
    "forcefield": ("pdb", "forcefield", "nonbonded_method", "constraints", "rigid_water", "cutoff_nm"),
    "system_xml": ("pdb", "system_xml"),
    "prmtop": ("prmtop", "inpcrd", "implicit_solvent", "nonbonded_method", "constraints", "rigid_water", "cutoff_nm"),
}
#: fields of every ``kind: openmm`` spec (``cvs``, ``chiral_quads``, ``reference_dihedrals`` are read elsewhere)
COMMON_FIELDS = (
    "kind",
    "name",
    "temperature",
    "platform",
    "n_workers",
    "energy_cap",
    "cvs",
    "chiral_quads",
    "reference_dihedrals",
)
OPENMM_FIELDS = frozenset(COMMON_FIELDS).union(*ROUTE_FIELDS.values())


def _require(spec: dict, field: str, path: Path, expected: str):
    if field not in spec or spec[field] is None:
        raise ConfigError(f"{path}: missing field {field!r} (expected {expected})")
    return spec[field]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _spec_file(spec: dict, field: str, path: Path, expected: str) -> Path:
    """The file named by ``spec[field]``, relative to the spec's folder; missing field/file is a ConfigError."""
    name = _require(spec, field, path, expected)
    f = path.parent / str(name)
    if not f.is_file():
        raise ConfigError(f"{path}: field {field!r}: file {f} does not exist")
    return f


def xml_root_tag(file: Path) -> str | None:
    """The root element's tag of an XML file (None if it is not XML), read without parsing the whole file."""
    import xml.etree.ElementTree as ET

    try:
        for _, elem in ET.iterparse(str(file), events=("start",)):
            return elem.tag
    except (ET.ParseError, OSError):
        return None
    return None


def load_forcefield(files: list[str], path: Path):
    """``openmm.app.ForceField`` from OpenMM's bundled files or files relative to the spec's folder."""
    import openmm.app as app

    resolved = []
    for f in files:
        local = path.parent / f
        if local.is_file() and xml_root_tag(local) == "System":
            raise ConfigError(
                f"{path}: field 'forcefield': {f!r} is a serialized OpenMM System, not a force field; "
                f"give it as 'system_xml: {f}' (with 'pdb:') instead"
            )
        resolved.append(str(local) if local.is_file() else f)
    try:
        return app.ForceField(*resolved)
    except (ValueError, OSError) as e:
        for f, r in zip(files, resolved):
            try:
                app.ForceField(r)
            except (ValueError, OSError):
                raise ConfigError(
                    f"{path}: field 'forcefield': unknown force field file {f!r} (not bundled with OpenMM "
                    "and not found beside the spec)"
                ) from None
        raise ConfigError(f"{path}: field 'forcefield': {files} cannot be combined ({e})") from None


def read_pdb(path: Path):
    """``openmm.app.PDBFile`` of ``path``; an unreadable file is a one-line :class:`ConfigError`."""
    import openmm.app as app

    try:
        return app.PDBFile(str(path))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: cannot read PDB ({e})") from None


def _create_system_kwargs(spec: dict, path: Path) -> dict[str, Any]:
    """``createSystem`` keyword arguments from ``nonbonded_method``, ``constraints``, ``rigid_water``,
    ``cutoff_nm`` (shared by the force-field and the Amber routes)."""
    import openmm.app as app

    nb = spec.get("nonbonded_method", "NoCutoff")
    if nb not in _NONBONDED:
        raise ConfigError(f"{path}: field 'nonbonded_method' is {nb!r}; expected one of {list(_NONBONDED)}")
    cons = spec.get("constraints")
    if cons not in _CONSTRAINTS:
        raise ConfigError(f"{path}: field 'constraints' is {cons!r}; expected null, HBonds, AllBonds or HAngles")
    kwargs: dict[str, Any] = {"nonbondedMethod": getattr(app, nb), "constraints": None}
    if _CONSTRAINTS[cons] is not None:
        kwargs["constraints"] = getattr(app, _CONSTRAINTS[cons])
    kwargs["rigidWater"] = bool(spec.get("rigid_water", False))
    if "cutoff_nm" in spec:
        import openmm.unit as unit

        kwargs["nonbondedCutoff"] = float(spec["cutoff_nm"]) * unit.nanometer
    return kwargs


def create_openmm_system(spec: dict, path: Path):
    """Build ``(openmm.System, openmm.app.PDBFile)`` from an ``openmm`` spec (a ``system.yaml``)."""
    pdb_name = _require(spec, "pdb", path, "a PDB file name relative to the spec")
    ff_files = _require(
        spec, "forcefield", path, "a list of OpenMM force field XML files, or system_xml:, or prmtop: + inpcrd:"
    )
    if isinstance(ff_files, str):
        ff_files = [ff_files]
    pdb_path = path.parent / pdb_name
    if not pdb_path.is_file():
        raise ConfigError(f"{path}: field 'pdb': file {pdb_path} does not exist")
    pdb = read_pdb(pdb_path)
    ff = load_forcefield(list(ff_files), path)
    unmatched = ff.getUnmatchedResidues(pdb.topology)
    if unmatched:
        names = ", ".join(f"{r.name} {r.id} (chain {r.chain.id})" for r in unmatched)
        raise ConfigError(
            f"{pdb_path}: residue {names} is not matched by any template of force field {list(ff_files)} "
            "(check residue/atom names and hydrogens)"
        )
    kwargs = _create_system_kwargs(spec, path)
    try:
        system = ff.createSystem(pdb.topology, **kwargs)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{pdb_path}: force field {list(ff_files)} cannot build a system: {msg}") from None
    return system, pdb


def read_system_xml(file: Path, where: str):
    """An ``openmm.System`` from a file written by ``openmm.XmlSerializer.serialize(system)``."""
    import openmm

    root = xml_root_tag(file)
    if root == "ForceField":
        raise ConfigError(f"{where}: {file.name} is a force field file, not a serialized System; use 'forcefield:'")
    if root != "System":
        got = "not XML" if root is None else f"root element <{root}>"
        raise ConfigError(f"{where}: {file} is {got}; expected an OpenMM System XML (root element <System>)")
    try:
        system = openmm.XmlSerializer.deserialize(file.read_text())
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{where}: cannot read System XML {file} ({_first_line(e)})") from None
    return system


def _system_from_xml(spec: dict, path: Path):
    """``system_xml:`` + ``pdb:`` -> ``(openmm.System, openmm Topology, positions Quantity)``."""
    xml_path = _spec_file(spec, "system_xml", path, "an OpenMM System XML file relative to the spec")
    pdb_path = _spec_file(spec, "pdb", path, "a PDB file (topology and positions) for the System XML")
    system = read_system_xml(xml_path, f"{path}: field 'system_xml'")
    pdb = read_pdb(pdb_path)
    n, m = system.getNumParticles(), pdb.topology.getNumAtoms()
    if n != m:
        raise ConfigError(
            f"{path}: field 'system_xml': {xml_path.name} has {n} particles but pdb {pdb_path.name} has {m} atoms"
        )
    return system, pdb.topology, pdb.getPositions(asNumpy=True)


def _system_from_prmtop(spec: dict, path: Path):
    """``prmtop:`` + ``inpcrd:`` (Amber) -> ``(openmm.System, openmm Topology, positions Quantity)``."""
    import openmm.app as app

    top_path = _spec_file(spec, "prmtop", path, "an Amber prmtop file relative to the spec")
    crd_path = _spec_file(spec, "inpcrd", path, "an Amber inpcrd/rst7 file (positions) for the prmtop")
    kwargs = _create_system_kwargs(spec, path)
    gb = spec.get("implicit_solvent")
    if gb is not None:
        if gb not in _IMPLICIT:
            raise ConfigError(f"{path}: field 'implicit_solvent' is {gb!r}; expected null or one of {list(_IMPLICIT)}")
        kwargs["implicitSolvent"] = getattr(app, gb)
    try:
        prmtop = app.AmberPrmtopFile(str(top_path))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: field 'prmtop': cannot read Amber prmtop {top_path} ({_first_line(e)})") from None
    try:
        inpcrd = app.AmberInpcrdFile(str(crd_path))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: field 'inpcrd': cannot read Amber inpcrd {crd_path} ({_first_line(e)})") from None
    n, m = prmtop.topology.getNumAtoms(), len(inpcrd.positions)
    if n != m:
        raise ConfigError(f"{path}: field 'inpcrd': {crd_path.name} has {m} atoms but {top_path.name} has {n}")
    try:
        system = prmtop.createSystem(**kwargs)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: prmtop {top_path.name} cannot build a system: {_first_line(e)}") from None
    return system, prmtop.topology, inpcrd.getPositions(asNumpy=True)


def openmm_system_from_spec(spec: dict, path: Path):
    """``(openmm.System, openmm.app.Topology, positions)`` from a ``kind: openmm`` spec by one of its routes:
    ``pdb`` + ``forcefield``, ``system_xml`` + ``pdb``, or ``prmtop`` + ``inpcrd``."""
    unknown = sorted(set(spec) - OPENMM_FIELDS, key=str)
    if unknown:
        near = suggest(unknown[0], OPENMM_FIELDS)
        hint = f"; did you mean {near!r}?" if near else ""
        raise ConfigError(
            f"{path}: unknown field {unknown[0]!r} in a kind: openmm spec{hint} "
            f"(expected one of: {', '.join(sorted(OPENMM_FIELDS))})"
        )
    routes = [r for r in ROUTE_FIELDS if spec.get(r) is not None]
    if len(routes) > 1:
        raise ConfigError(
            f"{path}: fields {routes[0]!r} and {routes[1]!r} cannot be combined; give one route: pdb + forcefield, "
            "system_xml + pdb, or prmtop + inpcrd"
        )
    route = routes[0] if routes else ("prmtop" if "inpcrd" in spec else "forcefield")
    for f in sorted(set().union(*ROUTE_FIELDS.values()) - set(ROUTE_FIELDS[route])):
        if f in spec:
            raise ConfigError(
                f"{path}: field {f!r} does not apply with {route!r}; remove it (that route reads: "
                f"{', '.join(ROUTE_FIELDS[route])})"
            )
    if route == "system_xml":
        return _system_from_xml(spec, path)
    if route == "prmtop":
        return _system_from_prmtop(spec, path)
    system, pdb = create_openmm_system(spec, path)
    return system, pdb.topology, pdb.getPositions(asNumpy=True)


def check_atom_fields(spec: dict, n_atoms: int, where: str) -> None:
    """Check a spec's ``cvs`` (name -> 4 atom indices) and ``chiral_quads`` against ``n_atoms``."""
    for name, idx in (spec.get("cvs") or {}).items():
        if len(idx) != 4 or not all(0 <= int(i) < n_atoms for i in idx):
            raise ConfigError(f"{where}: field 'cvs.{name}': expected 4 atom indices in [0, {n_atoms})")
    quads = spec.get("chiral_quads")
    if quads is not None and (
        not isinstance(quads, list)
        or not all(
            isinstance(q, list | tuple)
            and len(q) == 4
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_atoms for i in q)
            and len(set(q)) == 4
            for q in quads
        )
    ):
        raise ConfigError(
            f"{where}: field 'chiral_quads': expected a list of [centre, a, b, c], 4 distinct atom indices in "
            f"[0, {n_atoms}), got {quads!r}"
        )


def openmm_parts(
    system: Any,
    topology: Any,
    positions: Any,
    temperature: Any,
    where: str,
    platform: str = "Reference",
    n_workers: int = 0,
    energy_cap: float = DEFAULT_ENERGY_CAP,
) -> dict[str, Any]:
    """The fields of a ``System`` record (the systems package) for an OpenMM System (all but name/kind/spec/path).

    ``topology``: ``openmm.app.Topology`` or ``mdtraj.Topology``; ``positions``: an OpenMM ``Quantity`` or an
    array ``(n_atoms, 3)`` in nm; ``temperature``: K (a float or an OpenMM ``Quantity``).
    """
    import mdtraj
    import openmm
    import openmm.app
    import openmm.unit as unit

    if not isinstance(system, openmm.System):
        raise ConfigError(f"{where}: expected an openmm.System, got {type(system).__name__}")
    if unit.is_quantity(temperature):
        temperature = temperature.value_in_unit(unit.kelvin)
    temperature = float(temperature)
    if not (np.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"{where}: field 'temperature' must be > 0 K, got {temperature}")
    if isinstance(topology, mdtraj.Topology):
        md_top, omm_top = topology, topology.to_openmm()
    elif isinstance(topology, openmm.app.Topology):
        md_top, omm_top = mdtraj.Topology.from_openmm(topology), topology
    else:
        raise ConfigError(f"{where}: topology: expected an openmm.app.Topology or mdtraj.Topology")
    n_atoms = system.getNumParticles()
    if omm_top.getNumAtoms() != n_atoms:
        raise ConfigError(
            f"{where}: the System has {n_atoms} particles but the topology has {omm_top.getNumAtoms()} atoms"
        )
    if unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)
    bonds = np.array([[b[0].index, b[1].index] for b in omm_top.bonds()], dtype=int).reshape(-1, 2)
    pos = check_positions(np.asarray(positions, dtype=np.float64), n_atoms, f"{where}: positions", bonds)
    if pos.shape[0] != 1:
        raise ConfigError(f"{where}: positions: expected one configuration ({n_atoms}, 3) in nm, got {pos.shape}")
    target = OpenMMTarget(system, temperature, platform=platform, n_workers=int(n_workers), energy_cap=energy_cap)
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n_atoms)])
    return dict(
        target=target,
        temperature=temperature,
        topology=md_top,
        positions=pos[0],
        extras={"openmm_system": system, "openmm_topology": omm_top, "masses": masses, "bonds": bonds},
    )
