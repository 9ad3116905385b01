"""Run-directory provenance: ``run_info.json`` with the resolved config, seed, git commit and versions.

Atomic writes live in :mod:`boltzdiff.io`.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from boltzdiff.io import atomic_write_json

PACKAGES = ["boltzdiff", "torch", "numpy", "scipy", "openmm", "mdtraj", "pyyaml", "matplotlib", "pymbar"]


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


def write_run_info(
    run_dir: str | Path, config: dict, seed: int | None, name: str = "run_info.json", resumed_changes=None
) -> dict:
    """Record the resolved config, seed, git commit and package versions in ``run_dir/name``.

    ``resumed_changes`` (``{field: [old, new]}``): the run was resumed with these settings changed; the entry is
    appended to the file's ``resumes`` list, which keeps every earlier one."""
    info = run_info(config, seed)
    if resumed_changes is not None:
        import json

        f = Path(run_dir) / name
        try:
            earlier = json.loads(f.read_text()).get("resumes", []) if f.is_file() else []
        except (OSError, ValueError, AttributeError):
            earlier = []
        info["resumes"] = [*earlier, {"time": info.get("time"), "changes": resumed_changes}]
    atomic_write_json(Path(run_dir) / name, info)
    return info
