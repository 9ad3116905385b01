"""OpenMM-backed targets: a batched bridge to OpenMM and the ``kind: openmm`` system builder.

Units (stated once, used everywhere here):

- positions in **nm**, as torch tensors ``(B, n_atoms, 3)`` or ``(B, 3 n_atoms)``;
- energies returned as **reduced** energies ``u = U / kT`` (dimensionless), shape ``(B,)``;
- forces returned in **kT/nm**, ``-grad_x u``, shape ``(B, n_atoms, 3)``;
- ``kT = R T`` with ``R = openmm.unit.MOLAR_GAS_CONSTANT_R`` (kJ/mol/K), i.e. ``kT`` in kJ/mol.

Bad configurations: an energy that is NaN/inf or above ``energy_cap`` (in kT, default 1e9) is logged as a
warning (with the count) and returned as ``+inf`` with a zero force, so that Metropolis steps reject it and
importance weights give it zero weight; a NaN is never passed on. Pass ``bad_energy="cap"`` to get
``energy_cap`` instead of ``+inf`` (a finite value, e.g. for a loss).

Workers: ``n_workers=0`` (default) evaluates in the calling process with one Context; ``n_workers >= 1``
starts that many persistent worker processes (``spawn`` start method, each with its own Context) on first use.
A batch is cut into one contiguous chunk per worker, so each call costs one message per worker, not per
configuration. Call :meth:`OpenMMBridge.close` (or use the bridge/target as a context manager) to stop the
workers; an ``atexit`` hook stops any left running.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.schema import suggest
from boltzdiff.targets.base import Target

log = logging.getLogger(__name__)

#: default cap on the reduced energy (kT) above which a configuration is reported as bad
DEFAULT_ENERGY_CAP = 1e9


def kT_kjmol(temperature: float) -> float:
    """``k_B T`` in kJ/mol for ``temperature`` in K."""
    import openmm.unit as unit

    r = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    return float(r * temperature)


from boltzdiff._openmm_worker import _evaluate, _make_context, _worker_main  # noqa: E402

_LIVE_BRIDGES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for b in list(_LIVE_BRIDGES):
        b.close()


@dataclass
class BridgeResult:
    """Output of :meth:`OpenMMBridge.evaluate`.

    Attributes
    ----------
    energy : numpy.ndarray (B,)
        Reduced energies (kT); bad configurations are ``+inf`` (or the cap, see the module docstring).
    forces : numpy.ndarray (B, n_atoms, 3) or None
        Forces in kT/nm (zero for bad configurations).
    bad : numpy.ndarray (B,) of bool
        Configurations whose energy was NaN/inf or above the cap.
    """

    energy: np.ndarray
    forces: np.ndarray | None
    bad: np.ndarray


class OpenMMBridge:
    """Evaluate an OpenMM ``System`` on batches of positions, in-process or on a pool of workers.

    Parameters
    ----------
    system : openmm.System
    temperature : float
        Kelvin; sets ``kT`` for the reduced energies.
    platform : str
        OpenMM platform name: ``"Reference"`` (default; fastest for ~20 atoms), ``"CPU"``, ``"CUDA"``, ...
    n_workers : int
        0: evaluate in this process; ``k >= 1``: ``k`` persistent worker processes.
    energy_cap : float
        Reduced energies above this (kT) are reported as bad.
    bad_energy : {"inf", "cap"}
        What a bad configuration's energy becomes.
    platform_properties : dict, optional
        e.g. ``{"Threads": "1"}`` for the CPU platform.
    """

    def __init__(
        self,
        system: Any,
        temperature: float,
        platform: str = "Reference",
        n_workers: int = 0,
        energy_cap: float = DEFAULT_ENERGY_CAP,
        bad_energy: str = "inf",
        platform_properties: dict | None = None,
    ):
        import openmm

        if bad_energy not in ("inf", "cap"):
            raise ConfigError(f"bad_energy: expected 'inf' or 'cap', got {bad_energy!r}")
        if n_workers < 0:
            raise ConfigError(f"n_workers: expected an integer >= 0, got {n_workers}")
        self.n_atoms = system.getNumParticles()
        self.temperature = float(temperature)
        self.kT = kT_kjmol(temperature)
        self.platform = platform
        self.platform_properties = dict(platform_properties or {})
        self.n_workers = int(n_workers)
        self.energy_cap = float(energy_cap)
        self.bad_energy = bad_energy
        #: seconds to wait for a worker process to report ready
        self.start_timeout = 120.0
        self._xml = openmm.XmlSerializer.serialize(system)
        self._ctx = None
        self._integ = None
        self._procs: list = []
        self._conns: list = []
        _LIVE_BRIDGES.add(self)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the Context (in-process) or start the worker processes; called lazily on first use."""
        if self.n_workers == 0:
            if self._ctx is None:
                self._ctx, self._integ = _make_context(self._xml, self.platform, self.platform_properties)
            return
        if self._procs:
            return
        import multiprocessing as mp

        mpctx = mp.get_context("spawn")
        for _ in range(self.n_workers):
            parent, child = mpctx.Pipe()
            p = mpctx.Process(
                target=_worker_main,
                args=(child, self._xml, self.platform, self.platform_properties),
                daemon=True,
            )
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
        for conn in self._conns:
            if not conn.poll(self.start_timeout):
                self.close()
                raise RuntimeError(f"OpenMM worker did not start within {self.start_timeout:g} s")
            try:
                status, msg = conn.recv()
            except EOFError:
                status, msg = "error", "the worker process exited"
            if status != "ready":
                self.close()
                raise ConfigError(f"OpenMM worker failed to start: {msg}")

    def close(self) -> None:
        """Stop the workers (if any) and drop the Context. Safe to call twice."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=1)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        self._ctx = self._integ = None

    def __enter__(self) -> OpenMMBridge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_ctx=None, _integ=None, _procs=[], _conns=[])
        return state

    # -- evaluation --------------------------------------------------------------------------------------
    def evaluate_kjmol(self, pos: np.ndarray, forces: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw energies ``(B,)`` kJ/mol, forces ``(B, n, 3)`` kJ/mol/nm (NaN energy where OpenMM failed)."""
        pos = np.ascontiguousarray(pos, dtype=np.float64).reshape(-1, self.n_atoms, 3)
        self.start()
        if self.n_workers == 0 or pos.shape[0] == 0:
            if self._ctx is None:
                self._ctx, self._integ = _make_context(self._xml, self.platform, self.platform_properties)
            return _evaluate(self._ctx, pos, forces)
        chunks = [c for c in np.array_split(pos, min(self.n_workers, pos.shape[0])) if c.shape[0]]
        try:
            for conn, c in zip(self._conns, chunks):
                conn.send((c, forces))
        except OSError:  # BrokenPipeError: a worker died; drop the pool, restart on the next call
            self.close()
            raise RuntimeError("OpenMM worker failed: worker process exited") from None
        es, fs, err = [], [], None
        for conn, _ in zip(self._conns, chunks):
            try:
                status, out = conn.recv()
            except EOFError:  # the worker died (e.g. killed): drop the pool, restart on the next call
                status, out = "error", "worker process exited"
                self.close()
            if status != "ok":
                err = out
                continue
            es.append(out[0])
            fs.append(out[1])
        if err is not None:
            raise RuntimeError(f"OpenMM worker failed: {err}")
        return np.concatenate(es), (np.concatenate(fs) if forces else None)

    def evaluate(self, pos: np.ndarray, forces: bool = True) -> BridgeResult:
        """Reduced energies and forces of ``pos: (B, n_atoms, 3)`` or ``(B, 3 n_atoms)`` in nm.

        Returns
        -------
        BridgeResult
            ``energy (B,)`` in kT, ``forces (B, n_atoms, 3)`` in kT/nm (if requested), ``bad (B,)``.
        """
        pos = np.asarray(pos, dtype=np.float64)
        ok = (pos.ndim == 3 and pos.shape[1:] == (self.n_atoms, 3)) or (
            pos.ndim == 2 and pos.shape[1] == 3 * self.n_atoms
        )
        if not ok:
            raise ConfigError(
                f"positions: expected shape (B, {self.n_atoms}, 3) or (B, {3 * self.n_atoms}) in nm, "
                f"got {tuple(pos.shape)}"
            )
        e, f = self.evaluate_kjmol(pos, forces)
        u = e / self.kT
        bad = ~np.isfinite(u) | (u > self.energy_cap)
        if bad.any():
            log.warning(
                "OpenMM: %d of %d configurations had a NaN/inf energy or one above the cap %.3g kT; "
                "returning %s for them",
                int(bad.sum()),
                u.shape[0],
                self.energy_cap,
                "+inf" if self.bad_energy == "inf" else "the cap",
            )
            u = u.copy()
            u[bad] = np.inf if self.bad_energy == "inf" else self.energy_cap
        if forces:
            f = f / self.kT
            f[bad] = 0.0
        return BridgeResult(energy=u, forces=f, bad=bad)


class _BridgeEnergy(torch.autograd.Function):
    """``u(x)`` through the bridge; the backward pass uses the forces computed in the forward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bridge: OpenMMBridge, need_forces: bool):  # type: ignore[override]
        res = bridge.evaluate(x.detach().cpu().numpy(), forces=need_forces)
        if need_forces:
            ctx.save_for_backward(torch.as_tensor(res.forces.reshape(x.shape), dtype=x.dtype, device=x.device))
        ctx.need_forces = need_forces
        return torch.as_tensor(res.energy, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: a Hessian term would silently be missing
            raise RuntimeError("OpenMM energy: second derivatives are not available (create_graph=True)")
        if not ctx.need_forces:  # pragma: no cover - only when grad was not required at forward time
            raise RuntimeError("OpenMM energy: forces were not computed in the forward pass")
        (f,) = ctx.saved_tensors
        return -f * grad_u[:, None], None, None


class OpenMMTarget(Target):
    """A Target backed by an OpenMM ``System`` (reduced energies; see the module docstring for units).

    Parameters
    ----------
    system : openmm.System
    temperature : float
        Kelvin.
    platform, n_workers, energy_cap, bad_energy, platform_properties
        Passed to :class:`OpenMMBridge`.

    Notes
    -----
    ``energy(x)`` is differentiable: gradients w.r.t. ``x`` are ``-force/kT`` (OpenMM's analytic forces).
    Forces are computed only when ``x.requires_grad`` (or by :meth:`force`). Second derivatives are not
    available (backward with ``create_graph=True`` raises).
    """

    def __init__(
        self,
        system: Any,
        temperature: float,
        platform: str = "Reference",
        n_workers: int = 0,
        energy_cap: float = DEFAULT_ENERGY_CAP,
        bad_energy: str = "inf",
        platform_properties: dict | None = None,
    ):
        n = system.getNumParticles()
        super().__init__(3 * n, (n, 3))
        self.n_atoms = n
        self.temperature = float(temperature)
        self.openmm_system = system
        self.bridge = OpenMMBridge(
            system,
            temperature,
            platform=platform,
            n_workers=n_workers,
            energy_cap=energy_cap,
            bad_energy=bad_energy,
            platform_properties=platform_properties,
        )

    @property
    def kT(self) -> float:
        """``k_B T`` in kJ/mol."""
        return self.bridge.kT

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return _BridgeEnergy.apply(x, self.bridge, bool(x.requires_grad))

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """``-grad u`` in kT/nm, with the shape of ``x`` (OpenMM's forces, no autograd)."""
        flat = self.flatten(x)
        res = self.bridge.evaluate(flat.detach().cpu().numpy(), forces=True)
        return torch.as_tensor(res.forces, dtype=flat.dtype, device=flat.device).reshape(x.shape)

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduced energies ``(B,)`` and forces (shape of ``x``, kT/nm) in one pass."""
        flat = self.flatten(x)
        res = self.bridge.evaluate(flat.detach().cpu().numpy(), forces=True)
        e = torch.as_tensor(res.energy, dtype=flat.dtype, device=flat.device)
        return e, torch.as_tensor(res.forces, dtype=flat.dtype, device=flat.device).reshape(x.shape)

    def close(self) -> None:
        """Stop the bridge's worker processes."""
        self.bridge.close()

    def __enter__(self) -> OpenMMTarget:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------------------
# positions sanity checks


def check_positions(pos: np.ndarray, n_atoms: int, where: str = "positions", bonds=None) -> np.ndarray:
    """Check shape and units of positions and return them as ``(F, n_atoms, 3)`` float64 nm.

    Raises a one-line :class:`ConfigError` when the atom count is wrong, or when the bonded distances
    (``bonds``: ``(m, 2)`` atom index pairs) look like Angstrom (median above 0.5 nm; covalent bonds are
    0.1-0.2 nm).
    """
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim == 2 and pos.shape == (n_atoms, 3):
        pos = pos[None]
    if pos.ndim == 2 and pos.shape[1] == 3 * n_atoms:
        pos = pos.reshape(-1, n_atoms, 3)
    if pos.ndim != 3 or pos.shape[1:] != (n_atoms, 3):
        raise ConfigError(f"{where}: expected (frames, {n_atoms}, 3) positions in nm, got shape {pos.shape}")
    if bonds is not None and len(bonds):
        b = np.asarray(bonds)
        d = np.linalg.norm(pos[:, b[:, 0]] - pos[:, b[:, 1]], axis=-1)
        med = float(np.nanmedian(d))
        if med > 0.5:
            raise ConfigError(
                f"{where}: median bond length is {med:.3g}; expected nm (0.1-0.2) -- positions look like "
                "Angstrom, divide by 10"
            )
    return pos


# ------------------------------------------------------------------------------------------------------------
# the `kind: openmm` system builder (fields documented in docs/systems.md)

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
