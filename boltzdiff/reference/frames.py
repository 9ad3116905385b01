"""Reference-run folders: frames, energies, progress files and start structures.

Both reference samplers (:func:`boltzdiff.reference.md.run_md` and :func:`boltzdiff.reference.chains.run_chains`)
write a run directory that can be resumed by calling the same function again on it:

===================  =========================================================================================
``positions.npy``    frames ``(F, n, d)`` float32, in nm (MD) or reduced units (chains) -- the training data
``energies.npy``     reduced energies ``(F,)`` float64 (kT) of those frames
``trajectory.dcd``   the frames for mdtraj (3-D systems with a topology), with ``topology.pdb``
``temperatures.npy`` MD only: instantaneous kinetic temperature (K) of each frame
``checkpoint.chk``   MD: OpenMM binary checkpoint (exact restart, same platform); ``state.xml`` as fallback
``mcmc_state.pt``    chains: chain states, step size and generator state
``progress.json``    frames written, frames covered by the checkpoint, settings (refuses a mismatched resume)
``run_info.json``    resolved config, seed, git commit, package versions
===================  =========================================================================================

Every file is written to a temporary name and renamed (:mod:`boltzdiff.io`). On resume, frames after the last
checkpoint are dropped and regenerated, so the data always continue the checkpointed state. A NaN/inf energy
or coordinate stops the run with :class:`SimulationBlowUpError` naming the step; frames up to the last good
one are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from boltzdiff.errors import BoltzdiffError, ConfigError
from boltzdiff.io import atomic_save, load_json, load_npy, save_npy

if TYPE_CHECKING:
    from boltzdiff.systems import System


class SimulationBlowUpError(BoltzdiffError):
    """The simulation produced a NaN/inf energy or coordinate (the frames before it are kept)."""


@dataclass
class RunResult:
    """What a reference run left in its folder.

    Attributes
    ----------
    out_dir : Path
    positions : numpy.ndarray (F, n, d) float32
    energies : numpy.ndarray (F,) reduced
    n_frames : int
    completed : bool
    speed : float
        ns/day (MD) or steps/s (MCMC) of this call.
    acceptance : float or None
        MCMC acceptance rate after burn-in.
    """

    out_dir: Path
    positions: np.ndarray
    energies: np.ndarray
    n_frames: int
    completed: bool
    speed: float
    acceptance: float | None = None
    extras: dict = field(default_factory=dict)


def write_frames(out: Path, pos: np.ndarray, energies: np.ndarray, topology: Any, extra: dict | None = None) -> None:
    """Write ``positions.npy`` (float32), ``energies.npy`` (float64), one ``<key>.npy`` per ``extra`` entry and,
    for 3-D frames with a topology, ``trajectory.dcd``; every file atomically."""
    save_npy(out / "positions.npy", pos.astype(np.float32))
    save_npy(out / "energies.npy", energies.astype(np.float64))
    for k, v in (extra or {}).items():
        save_npy(out / f"{k}.npy", v)
    if topology is not None and pos.ndim == 3 and pos.shape[-1] == 3 and len(pos):
        import mdtraj

        traj = mdtraj.Trajectory(pos.astype(np.float32), topology)
        atomic_save(out / "trajectory.dcd", lambda p: traj.save_dcd(p))


def read_progress(out: Path, settings: dict) -> dict | None:
    """The run's ``progress.json`` (None if absent); refuses one written with other ``settings`` (all keys but
    the run length, ``ns`` / ``n_steps``)."""
    f = out / "progress.json"
    if not f.is_file():
        return None
    prog = load_json(f, "a progress file written by a reference run (or use a new --out)")
    if not isinstance(prog, dict):
        raise ConfigError(f"{f}: not a JSON object; expected a progress file written by a reference run")
    old = prog.get("settings", {})
    diff = [k for k in settings if k not in ("ns", "n_steps") and old.get(k) != settings[k]]
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{out}: holds a run with {k}={old.get(k)!r}, not {settings[k]!r}; rerun with the same settings "
            "to resume, or use a new --out"
        )
    return prog


def load_frames(out: Path, n: int) -> tuple[list, list]:
    """The first ``n`` frames and energies of a run folder, as lists (what a resumed run appends to)."""
    if n == 0:
        return [], []
    pos = load_npy(out / "positions.npy", "the run's frames (F, n, d)")[:n]
    en = load_npy(out / "energies.npy", "the run's reduced energies (F,)")[:n]
    if len(pos) < n:
        raise ConfigError(f"{out}: positions.npy has {len(pos)} frames, the checkpoint expects {n}; use a new --out")
    return list(pos), list(en)


def read_start_structure(system: System, start: str) -> np.ndarray:
    """Positions ``(n_atoms, 3)`` nm of a PDB file (relative paths from the system's folder); one-line errors."""
    p = Path(start)
    if not p.is_absolute() and system.path is not None:
        p = Path(system.path).parent / p if Path(system.path).is_file() else Path(system.path) / p
    if not p.is_file():
        raise ConfigError(f"reference.starts: structure file {p} does not exist")
    import openmm.unit as unit

    from boltzdiff.targets.openmm_files import read_pdb

    pdb = read_pdb(p)
    n_sys = system.topology.n_atoms if system.topology is not None else None
    if n_sys is not None and pdb.topology.getNumAtoms() != n_sys:
        raise ConfigError(f"{p}: {pdb.topology.getNumAtoms()} atoms, expected {n_sys} (the system's)")
    return np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
