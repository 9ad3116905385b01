"""``boltzdiff energy SYSTEM FRAMES``: reduced energies (kT) of the frames of a trajectory or array."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from boltzdiff.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "energy",
        help="reduced energies (kT) of trajectory frames",
        description="Evaluate the system's reduced energy u = U/kT on every frame of FRAMES (.npy "
        "positions in nm, shape (F, n, 3) or (F, 3n); .pdb; .dcd/.xtc/.h5 with --top or the system's "
        "topology). Prints one "
        "energy per line, or writes them with --out (.npy or text).",
    )
    p.add_argument("system", help="system name, folder or system.yaml")
    p.add_argument("frames", help="trajectory file: .npy, .pdb, .dcd, .xtc, .h5")
    p.add_argument("--top", default=None, help="topology file for .dcd/.xtc (default: the system's)")
    p.add_argument("--variant", default=None)
    p.add_argument("--out", default=None, help="write energies here (.npy, else text) instead of printing")
    p.add_argument("--workers", type=int, default=None, help="OpenMM worker processes (default: the spec's)")
    p.add_argument("--batch", type=int, default=1000, help="frames per batch")
    p.set_defaults(func=run)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what C libraries print on file descriptor 1 to stderr while the block runs (mdtraj's DCD reader, the
    VMD dcdplugin, prints "dcdplugin) detected ..." with printf), so that stdout holds only the energies."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor 1: nothing to guard
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def load_frames(path: str | Path, system, top: str | None = None) -> np.ndarray:
    """Positions ``(F, n, d)`` of a frames file, checked against the system's atom count (and units)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"frames: file {path} does not exist")
    shape = tuple(system.target.event_shape)
    n = shape[0]
    if top is not None and not Path(top).is_file():
        raise ConfigError(f"--top: file {top} does not exist (expected a topology such as a .pdb)")
    if path.suffix == ".npy":
        from boltzdiff.io import load_npy

        x = load_npy(path, "frames: an array of positions (F, n, d) or (F, n*d) in nm")
    elif path.suffix in (".h5", ".hdf5"):
        x = _read_mdtraj_h5(path)
    else:
        import mdtraj

        if path.suffix != ".pdb" and top is None and system.topology is None:
            raise ConfigError(f"{path}: needs --top (system {system.name} has no topology)")
        try:
            with stdout_to_stderr():
                if path.suffix == ".pdb":
                    traj = mdtraj.load(str(path))
                else:
                    traj = mdtraj.load(str(path), top=top if top is not None else system.topology)
        except ConfigError:
            raise
        except ImportError as e:
            raise ConfigError(f"{path}: reading this format needs an extra package ({e})") from None
        except Exception as e:  # noqa: BLE001 - mdtraj raises many types
            raise ConfigError(
                f"{path}: cannot read frames ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        x = traj.xyz
    x = np.asarray(x, dtype=np.float64)
    if x.shape == shape:
        x = x[None]
    if x.ndim == 2 and x.shape[1] == int(np.prod(shape)):
        x = x.reshape(-1, *shape)
    if x.ndim != 1 + len(shape) or x.shape[1:] != shape:
        raise ConfigError(
            f"{path}: frames have shape {x.shape}; system {system.name} expects (F, {', '.join(map(str, shape))})"
        )
    if system.kind == "openmm":
        from boltzdiff.targets.openmm import check_positions

        check_positions(x, n, str(path), system.extras.get("bonds"))
    return x


def _read_mdtraj_h5(path: Path) -> np.ndarray:
    """``coordinates (F, n, 3)`` of an mdtraj HDF5 file, read with h5py (no PyTables needed), in nm."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            if "coordinates" not in fh:
                raise ConfigError(f"{path}: no 'coordinates' dataset (expected an mdtraj HDF5 trajectory)")
            ds = fh["coordinates"]
            units = ds.attrs.get("units", b"nanometers")
            units = units.decode() if isinstance(units, bytes) else str(units)
            x = np.asarray(ds[...], dtype=np.float64)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read HDF5 ({e})") from None
    if units not in ("nanometers", "nanometer", "nm"):
        raise ConfigError(f"{path}: coordinates are in {units!r}; expected nanometers")
    return x


def run(args: argparse.Namespace) -> int:
    import torch

    from boltzdiff.commands._common import check_count, check_out_file
    from boltzdiff.io import atomic_save, save_npy
    from boltzdiff.systems import load_system

    check_count(args.batch, "--batch")
    check_count(args.workers, "--workers", minimum=0)
    if args.out:
        check_out_file(args.out)
    system = load_system(args.system, args.variant)
    try:
        if args.workers is not None and hasattr(system.target, "bridge"):
            system.target.bridge.close()
            system.target.bridge.n_workers = int(args.workers)
        x = load_frames(args.frames, system, args.top)
        out = []
        with torch.no_grad():
            for k in range(0, len(x), max(1, args.batch)):
                out.append(system.target.energy(torch.as_tensor(x[k : k + args.batch])).double().numpy())
        u = np.concatenate(out) if out else np.zeros(0)
    finally:
        close = getattr(system.target, "close", None)
        if close:
            close()
    if args.out:
        dest = Path(args.out)
        if dest.suffix == ".npy":
            save_npy(dest, u)
        else:
            atomic_save(dest, lambda p: np.savetxt(p, u, fmt="%.10g", header="reduced energy (kT)"))
        print(
            f"{len(u)} energies (kT) written to {dest}: mean {np.mean(u):.4f}, min {np.min(u):.4f}, "
            f"max {np.max(u):.4f}"
            if len(u)
            else f"0 energies written to {dest}"
        )
    else:
        for v in u:
            print(f"{v:.10g}")
    return 0
