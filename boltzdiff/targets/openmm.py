"""OpenMM-backed targets: a batched bridge to OpenMM and the target that uses it.

The ``kind: openmm`` system builder (an OpenMM System from PDB + force field, System XML or Amber files) is in
:mod:`boltzdiff.targets.openmm_files`.

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
from typing import Any

import numpy as np
import torch

from boltzdiff.errors import ConfigError
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
