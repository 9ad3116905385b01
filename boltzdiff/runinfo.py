"""Run-directory bookkeeping: provenance (config, seed, commit, versions) and atomic writes.

Outputs are written to a temporary file in the same folder and renamed into place, so an interrupted job
never leaves a half-written file where a complete one stood.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: mkstemp creates files readable by their owner only; outputs get the usual permissions instead
_FILE_MODE = _umask_mode()

PACKAGES = ["boltzdiff", "torch", "numpy", "scipy", "openmm", "mdtraj", "pyyaml", "matplotlib"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_save(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save(path: str | Path, save_fn) -> None:
    """Call ``save_fn(tmp_path)`` (e.g. ``lambda p: torch.save(obj, p)``), then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_fn(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit of the boltzdiff source tree (with ``-dirty`` if modified), or None."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_info(config: dict, seed: int | None) -> dict:
    return {
        "config": config,
        "seed": seed,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_run_info(run_dir: str | Path, config: dict, seed: int | None, name: str = "run_info.json") -> dict:
    """Record the resolved config, seed, git commit and package versions in ``run_dir/name``."""
    info = run_info(config, seed)
    atomic_write_json(Path(run_dir) / name, info)
    return info
