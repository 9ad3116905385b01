"""pyproject.toml and environment.yml must list the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        CONDA_NAMES.get(_name(r), _name(r)): r
        for r in py["dependencies"] + py["optional-dependencies"]["test"]
    }
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_name(d): d for d in env["dependencies"] if isinstance(d, str)}
    missing = sorted(set(wanted) - set(conda))
    assert not missing, f"environment.yml lacks {missing}"
    for name, req in wanted.items():
        spec = re.sub(r"^[A-Za-z0-9_.\-]+", "", req.strip())
        cspec = re.sub(r"^[A-Za-z0-9_.\-]+", "", conda[name].strip())
        assert spec == cspec, f"{name}: pyproject says {spec!r}, environment.yml says {cspec!r}"
    assert "python>=3.11" in conda.get("python", "")
