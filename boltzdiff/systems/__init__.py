"""Load a declarative system spec (a shipped system's name, a folder, or a ``system.yaml`` path) into a
:class:`System`.

The shipped systems live in this package's folders (``boltzdiff/systems/<name>/system.yaml``, installed with the
package as data). A spec is a YAML mapping with a ``kind``; each kind has a builder
(:mod:`boltzdiff.systems.builders`), looked up lazily so that heavy dependencies (OpenMM) are imported only when
needed. An optional ``run.yaml`` beside ``system.yaml`` holds the system's default run configuration.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from boltzdiff.errors import ConfigError
from boltzdiff.schema import short_repr, suggest
from boltzdiff.systems.base import System, SystemCVs, chiral_quads_of, dihedral_cvs, dihedral_of, system_cv_values

#: where the shipped systems live: this package's folder (``<name>/system.yaml`` in each)
SYSTEMS_DIR = Path(__file__).resolve().parent

#: kind -> "module:function" building a System from (spec, path)
BUILDERS: dict[str, str] = {
    "gaussian_mixture": "boltzdiff.systems.builders:build_gaussian_mixture",
    "openmm": "boltzdiff.systems.builders:build_openmm",
    "lennard_jones": "boltzdiff.systems.builders:build_lennard_jones",
    "double_well": "boltzdiff.systems.builders:build_double_well",
}


def available_systems() -> list[str]:
    """Names of the shipped systems (the folders of this package holding a ``system.yaml``)."""
    if not SYSTEMS_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in SYSTEMS_DIR.glob("*/system.yaml"))


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """Find the ``system.yaml`` for a system name, a folder holding one, or a YAML file path (absolute, so that a
    run directory that records it can be resumed or analysed from another working directory)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"system: file {p} does not exist")
        return p.resolve()
    if p.is_dir():
        f = p / "system.yaml"
        if not f.is_file():
            raise ConfigError(f"system: folder {p} has no system.yaml")
        return f.resolve()
    f = SYSTEMS_DIR / str(name_or_path) / "system.yaml"
    if f.is_file():
        return f
    avail = ", ".join(available_systems()) or "(none)"
    near = suggest(str(name_or_path), available_systems())
    hint = f"did you mean {near!r}? " if near else ""
    raise ConfigError(
        f"system: unknown system {str(name_or_path)!r}; {hint}expected one of: {avail}, or a path to a system.yaml"
    )


def read_yaml(path: Path, what: str = "YAML") -> dict:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} malformed {what} ({getattr(e, 'problem', e)})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return data


def load_system(name_or_path: str | Path, variant: str | None = None) -> System:
    """Load a system by name (:func:`available_systems`), folder, or ``system.yaml`` path.

    ``variant`` selects an entry of the spec's ``variants:`` mapping (merged over the base spec); the spec's
    ``default_variant`` is used when it is None.
    """
    path = resolve_spec_path(name_or_path)
    spec = read_yaml(path, "system spec")
    variants = spec.pop("variants", None) or {}
    default_variant = spec.pop("default_variant", None)
    if not isinstance(variants, dict) or not all(isinstance(k, str) for k in variants):
        raise ConfigError(f"{path}: field 'variants' expected a mapping of variant names to spec fields")
    if default_variant is not None and not isinstance(default_variant, str):
        raise ConfigError(f"{path}: field 'default_variant' expected a variant name, got {short_repr(default_variant)}")
    variant = variant or default_variant
    if variant is not None:
        if variant not in variants:
            raise ConfigError(f"{path}: unknown variant {variant!r}; expected one of {sorted(variants) or '(none)'}")
        over = variants[variant] or {}
        if not isinstance(over, dict):
            raise ConfigError(f"{path}: variant {variant!r} expected a mapping of spec fields, got {short_repr(over)}")
        spec = {**spec, **over}
    spec.setdefault("name", path.parent.name)
    if not isinstance(spec["name"], str) or not spec["name"]:
        raise ConfigError(f"{path}: field 'name' expected a non-empty string, got {short_repr(spec['name'])}")
    kind = spec.get("kind")
    if kind is None:
        raise ConfigError(f"{path}: missing field 'kind' (expected one of {sorted(BUILDERS)})")
    if not isinstance(kind, str) or kind not in BUILDERS:
        near = suggest(kind, BUILDERS) if isinstance(kind, str) else None
        hint = f"did you mean {near!r}?" if near else f"expected one of {sorted(BUILDERS)}"
        raise ConfigError(f"{path}: field 'kind' is {short_repr(kind)}; {hint}")
    from boltzdiff.analysis.states import STATE_FIELDS, validate_states

    # named states are data for the analysis, not for the builders: checked here, handed on in system.spec
    states = {k: spec.pop(k) for k in STATE_FIELDS if k in spec}
    validate_states({**spec, **states}, str(path))
    mod, fn = BUILDERS[kind].split(":")
    builder = getattr(importlib.import_module(mod), fn)
    system = builder(spec, path)
    system.spec.update(states)
    system.variant = variant
    run_file = path.parent / "run.yaml"
    if path.name == "system.yaml" and run_file.is_file():
        system.run_defaults = read_yaml(run_file, "run config")
    return system


__all__ = [
    "BUILDERS",
    "SYSTEMS_DIR",
    "System",
    "available_systems",
    "chiral_quads_of",
    "dihedral_cvs",
    "dihedral_of",
    "system_cv_values",
    "SystemCVs",
    "from_openmm",
    "load_system",
    "read_yaml",
    "resolve_spec_path",
]


def __getattr__(name: str) -> Any:
    # from_openmm lives in boltzdiff.systems.builders, which imports the particle and mixture targets; resolved
    # on first access only.
    if name == "from_openmm":
        from boltzdiff.systems.builders import from_openmm

        return from_openmm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
