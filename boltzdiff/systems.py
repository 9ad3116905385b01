"""Load a declarative system spec (``systems/<name>/system.yaml`` or a path) into a :class:`System`.

A spec is a YAML mapping with a ``kind``; each kind has a builder, looked up lazily so that heavy
dependencies (OpenMM) are imported only when needed. An optional ``run.yaml`` beside ``system.yaml`` holds the
system's default run configuration.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from boltzdiff.errors import ConfigError
from boltzdiff.targets.base import Target

#: where ``systems/`` lives (the repository root, or the installed package's data)
SYSTEMS_DIR = Path(__file__).resolve().parent.parent / "systems"

#: kind -> "module:function" building a System from (spec, path, variant)
BUILDERS: dict[str, str] = {
    "gaussian_mixture": "boltzdiff.systems:_build_gaussian_mixture",
    "openmm": "boltzdiff.targets.openmm:build_system",
    "lennard_jones": "boltzdiff.targets.particles:build_lennard_jones",
    "double_well": "boltzdiff.targets.particles:build_double_well",
}


@dataclass
class System:
    """A target and what describes it.

    Attributes
    ----------
    name : str
    kind : str
    target : Target
    spec : dict
        The spec it was built from (resolved: the variant applied).
    path : Path or None
        The ``system.yaml`` it came from.
    temperature : float or None
        Kelvin, for physical systems.
    topology : mdtraj.Topology or None
    positions : numpy.ndarray or None
        Reference positions ``(n_atoms, 3)`` in nm.
    run_defaults : dict
        The system's default run configuration (``run.yaml`` beside the spec), possibly empty.
    extras : dict
        Anything else a builder attaches (e.g. the OpenMM ``System``).
    """

    name: str
    kind: str
    target: Target
    spec: dict
    path: Path | None = None
    temperature: float | None = None
    topology: Any = None
    positions: Any = None
    variant: str | None = None
    run_defaults: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


def available_systems() -> list[str]:
    """Names of the systems shipped in ``systems/``."""
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
    raise ConfigError(
        f"system: unknown system {str(name_or_path)!r}; expected one of: {avail}, or a path to a system.yaml"
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
    """Load a system by name (``systems/<name>``), folder, or ``system.yaml`` path.

    ``variant`` selects an entry of the spec's ``variants:`` mapping (merged over the base spec); the spec's
    ``default_variant`` is used when it is None.
    """
    path = resolve_spec_path(name_or_path)
    spec = read_yaml(path, "system spec")
    variants = spec.pop("variants", None) or {}
    default_variant = spec.pop("default_variant", None)
    variant = variant or default_variant
    if variant is not None:
        if variant not in variants:
            raise ConfigError(f"{path}: unknown variant {variant!r}; expected one of {sorted(variants) or '(none)'}")
        spec = {**spec, **(variants[variant] or {})}
    spec.setdefault("name", path.parent.name)
    kind = spec.get("kind")
    if kind is None:
        raise ConfigError(f"{path}: missing field 'kind' (expected one of {sorted(BUILDERS)})")
    if kind not in BUILDERS:
        raise ConfigError(f"{path}: field 'kind' is {kind!r}; expected one of {sorted(BUILDERS)}")
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


def _build_gaussian_mixture(spec: dict, path: Path) -> System:
    from boltzdiff.targets.gmm import gaussian_mixture_from_spec

    target = gaussian_mixture_from_spec(spec, where=str(path))
    return System(name=spec["name"], kind="gaussian_mixture", target=target, spec=spec, path=path)


def from_openmm(
    system: Any,
    topology: Any,
    positions: Any,
    temperature: Any,
    name: str = "openmm",
    platform: str = "Reference",
    n_workers: int = 0,
    energy_cap: float | None = None,
    cvs: dict | None = None,
    chiral_quads: list | None = None,
) -> System:
    """A :class:`System` (as :func:`load_system` returns for ``kind: openmm``) from an OpenMM System in memory.

    Parameters
    ----------
    system : openmm.System
    topology : openmm.app.Topology or mdtraj.Topology
    positions : openmm Quantity or array (n_atoms, 3)
        Reference positions; a plain array is taken as nm.
    temperature : float or openmm Quantity
        Kelvin.
    name, platform, n_workers, energy_cap
        As the spec fields of the same names (docs/systems.md).
    cvs, chiral_quads
        Optional, as in a spec: ``{name: [i, j, k, l]}`` dihedrals and ``[[centre, a, b, c], ...]``.

    The result has no ``path``: code that reloads a system from its ``system.yaml`` (pipeline jobs) needs a spec;
    write one with ``system_xml:`` + ``pdb:`` for that.
    """
    from boltzdiff.targets.openmm import DEFAULT_ENERGY_CAP, check_atom_fields, openmm_parts

    where = f"from_openmm({name!r})"
    cap = DEFAULT_ENERGY_CAP if energy_cap is None else float(energy_cap)
    parts = openmm_parts(
        system, topology, positions, temperature, where, platform=platform, n_workers=n_workers, energy_cap=cap
    )
    spec: dict[str, Any] = {
        "kind": "openmm",
        "name": name,
        "temperature": parts["temperature"],
        "platform": platform,
        "n_workers": int(n_workers),
    }
    if energy_cap is not None:
        spec["energy_cap"] = cap
    if cvs is not None:
        spec["cvs"] = {k: [int(i) for i in v] for k, v in cvs.items()}
    if chiral_quads is not None:
        spec["chiral_quads"] = [list(q) for q in chiral_quads]
    try:
        check_atom_fields(spec, system.getNumParticles(), where)
    except BaseException:
        parts["target"].close()
        raise
    return System(name=name, kind="openmm", spec=spec, **parts)
