"""Spec -> :class:`~boltzdiff.systems.base.System` builders, one per ``kind``, and :func:`from_openmm`.

Each builder checks its spec strictly (:mod:`boltzdiff.schema`): an unknown field is refused with the nearest
valid name, scalars must have the expected type (numeric strings such as ``1e1`` count as numbers), be finite
and lie in range. OpenMM is imported only by the ``openmm`` builder and :func:`from_openmm`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.schema import check_keys, get_int, get_number, short_repr, to_number
from boltzdiff.systems.base import System
from boltzdiff.targets.gmm import GaussianMixture
from boltzdiff.targets.particles import (
    LJ_OPENMM_TEMPERATURE,
    LJ_PAIR_SUMS,
    DoubleWell,
    LennardJonesCluster,
    lennard_jones_openmm_system,
    particle_topology,
)

#: upper bound on a dimension, a particle count or a number of mixture components (fail fast, not hang)
MAX_SIZE = 100_000
#: upper bound on the number of coordinates a spec may ask to be generated (``n_components * dim``)
MAX_ELEMENTS = 10_000_000

#: fields of each kind (``name`` and ``kind`` are common; ``variants`` is resolved before a builder runs)
GAUSSIAN_MIXTURE_FIELDS = frozenset(
    {"kind", "name", "dim", "weights", "means", "random_means", "std", "variance", "standardize"}
)
RANDOM_MEANS_FIELDS = frozenset({"n_components", "low", "high", "seed"})
LENNARD_JONES_FIELDS = frozenset(
    {
        "kind",
        "name",
        "n_particles",
        "spatial_dim",
        "temperature",
        "eps",
        "rm",
        "oscillator_scale",
        "pair_sum",
        "initial_positions",
    }
)
DOUBLE_WELL_FIELDS = frozenset(
    {"kind", "name", "n_particles", "spatial_dim", "temperature", "a", "b", "c", "d0", "initial_positions"}
)


# ------------------------------------------------------------------------------------------------------------
# kind: gaussian_mixture
# ------------------------------------------------------------------------------------------------------------
def softplus(x: float) -> float:
    """``log(1 + exp(x))``, without overflow for large ``x``."""
    return x + math.log1p(math.exp(-x)) if x > 30 else math.log1p(math.exp(x))


def _scalar(v: Any, field: str, where: str) -> float:
    """A finite number, or the string ``softplus(a)`` (as the literature defines the 40-mode mixture's
    variance)."""
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("softplus(") and s.endswith(")"):
            return softplus(to_number(s[len("softplus(") : -1], field, where))
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ConfigError(f"{where}: field {field!r} expected a number (or 'softplus(a)'), got {short_repr(v)}")
    return to_number(v, field, where)


def gaussian_mixture_from_spec(spec: dict, where: str = "system.yaml") -> GaussianMixture:
    """Build a mixture from a ``kind: gaussian_mixture`` spec.

    Fields: ``weights`` (K numbers; default equal), ``means`` (K lists of length ``dim``, or K scalars meaning
    that value in every coordinate, which needs ``dim``) or ``random_means: {n_components, low, high, seed}``
    (uniform, with ``dim``), and ``std`` (scalar or K) or ``variance`` (scalar or K, may be 'softplus(1)').

    ``standardize: true`` (default false) then applies the affine map ``x -> (x - mu) / s`` with the mixture's
    exact mean ``mu`` and isotropic std ``s`` (:meth:`GaussianMixture.data_moments`): means become
    ``(m_k - mu) / s`` and stds ``std_k / s``, so the mixture has mean 0 and per-coordinate variance 1 on average
    over the coordinates (each coordinate's own variance is not forced to 1: components stay isotropic).
    """
    check_keys(spec, GAUSSIAN_MIXTURE_FIELDS, where)
    dim = get_int(spec, "dim", where, default=None, ge=1, le=MAX_SIZE)
    if "means" in spec and "random_means" in spec:
        raise ConfigError(f"{where}: give either 'means' or 'random_means', not both")
    if "random_means" in spec:
        rm = spec["random_means"]
        if not isinstance(rm, dict) or dim is None:
            raise ConfigError(f"{where}: 'random_means' needs a mapping {{n_components, low, high, seed}} and 'dim'")
        sub = f"{where}: random_means"
        check_keys(rm, RANDOM_MEANS_FIELDS, sub)
        n = get_int(rm, "n_components", sub, ge=1, le=MAX_SIZE)
        lo = get_number(rm, "low", sub)
        hi = get_number(rm, "high", sub)
        seed = get_int(rm, "seed", sub, default=0, ge=0, le=2**63 - 1)
        if n * dim > MAX_ELEMENTS:
            raise ConfigError(f"{where}: 'random_means' asks for {n} x {dim} coordinates (at most {MAX_ELEMENTS})")
        g = torch.Generator().manual_seed(seed)
        means = lo + (hi - lo) * torch.rand(n, dim, generator=g, dtype=torch.float64)
    elif "means" in spec:
        raw = spec["means"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{where}: 'means' expected a non-empty list of K lists of length dim")
        if not any(isinstance(r, list) for r in raw):
            if dim is None:
                raise ConfigError(f"{where}: scalar 'means' need 'dim' (each scalar fills every coordinate)")
            if len(raw) * dim > MAX_ELEMENTS:
                raise ConfigError(f"{where}: 'means' asks for {len(raw)} x {dim} coordinates (at most {MAX_ELEMENTS})")
            vals = [to_number(r, "means", where) for r in raw]
            means = torch.tensor([[v] * dim for v in vals], dtype=torch.float64)
        else:
            if not all(isinstance(r, list) for r in raw):
                raise ConfigError(f"{where}: 'means' expected a list of K lists of length dim")
            lens = {len(r) for r in raw}
            if len(lens) != 1:
                raise ConfigError(
                    f"{where}: every entry of 'means' must have the same length, got lengths {sorted(lens)}"
                )
            if not 1 <= lens.pop() <= MAX_SIZE:
                raise ConfigError(f"{where}: entries of 'means' must have between 1 and {MAX_SIZE} coordinates")
            means = torch.tensor([[to_number(v, "means", where) for v in r] for r in raw], dtype=torch.float64)
            if dim is not None and means.shape[1] != dim:
                raise ConfigError(f"{where}: 'means' entries have length {means.shape[1]} but 'dim' is {dim}")
    else:
        raise ConfigError(f"{where}: a gaussian_mixture needs 'means' (or 'random_means')")
    K = means.shape[0]
    w = spec.get("weights")
    if w is None:
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
    else:
        if not isinstance(w, list):
            raise ConfigError(f"{where}: 'weights' expected a list of {K} numbers")
        weights = torch.tensor([_scalar(v, "weights", where) for v in w], dtype=torch.float64)
    if ("std" in spec) == ("variance" in spec):
        raise ConfigError(f"{where}: give exactly one of 'std' or 'variance' (scalar or one per component)")
    key = "std" if "std" in spec else "variance"
    raw = spec[key]
    vals = [_scalar(v, key, where) for v in raw] if isinstance(raw, list) else [_scalar(raw, key, where)]
    vals_t = torch.tensor(vals, dtype=torch.float64)
    if vals_t.numel() == 0 or torch.any(vals_t <= 0):
        raise ConfigError(f"{where}: '{key}' must be positive, got {short_repr(vals)}")
    std = vals_t if key == "std" else torch.sqrt(vals_t)
    gmm = GaussianMixture(weights, means, std, name=where)  # constructor errors name the file
    standardize = spec.get("standardize", False)
    if not isinstance(standardize, bool):
        raise ConfigError(f"{where}: field 'standardize' expected true or false, got {short_repr(standardize)}")
    if standardize:
        gmm = standardized(gmm, where)
    gmm.name = spec.get("name", "gaussian_mixture")
    return gmm


def standardized(gmm: GaussianMixture, where: str = "standardize") -> GaussianMixture:
    """The mixture mapped by ``x -> (x - mu) / s`` with its exact mean ``mu`` and isotropic std ``s``
    (:meth:`GaussianMixture.data_moments`): exact mean 0 and isotropic variance 1 (float64)."""
    mu, s = gmm.data_moments()
    if not (math.isfinite(s) and s > 0 and bool(torch.all(torch.isfinite(mu)))):
        raise ConfigError(f"{where}: field 'standardize': the mixture's mean or spread is not finite (std {s!r})")
    return GaussianMixture(gmm.weights, (gmm.means - mu) / s, gmm.std / s, name=where)


def build_gaussian_mixture(spec: dict, path: Path) -> System:
    """Builder for ``kind: gaussian_mixture`` (see :func:`gaussian_mixture_from_spec`)."""
    target = gaussian_mixture_from_spec(spec, where=str(path))
    return System(name=spec["name"], kind="gaussian_mixture", target=target, spec=spec, path=path)


# ------------------------------------------------------------------------------------------------------------
# kind: lennard_jones, kind: double_well
# ------------------------------------------------------------------------------------------------------------
def _initial_positions(spec: dict, path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    init = spec.get("initial_positions")
    if init is None:
        return None
    field = "initial_positions"
    if isinstance(init, str):
        f = path.parent / init
        try:
            exists = f.is_file()
        except (OSError, ValueError):
            exists = False
        if not exists:
            raise ConfigError(f"{path}: field {field!r}: file {short_repr(str(f), 200)} does not exist")
        try:
            if f.suffix == ".npy":
                arr = np.load(f)
            else:
                import mdtraj

                arr = mdtraj.load(str(f)).xyz[0]
        except Exception as e:  # noqa: BLE001 - any unreadable file is a config error
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"{path}: field {field!r}: cannot read {f.name} ({first})") from None
    elif isinstance(init, list):
        try:
            arr = np.asarray(init, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{path}: field {field!r} must hold {shape[0]} x {shape[1]} numbers") from None
    else:
        raise ConfigError(f"{path}: field {field!r} expected a file name or a list of coordinates")
    arr = np.asarray(arr, dtype=np.float64).reshape(-1, *shape)[0] if arr.size == np.prod(shape) else None
    if arr is None:
        raise ConfigError(f"{path}: field {field!r} must hold {shape[0]} x {shape[1]} coordinates")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{path}: field {field!r} must hold finite coordinates")
    return arr


def _particles(spec: dict, path: Path, fields: frozenset, default_dim: int) -> tuple[str, int, int, float]:
    where = str(path)
    check_keys(spec, fields, where)
    n = get_int(spec, "n_particles", where, ge=2, le=MAX_SIZE)
    dim = get_int(spec, "spatial_dim", where, default=default_dim, ge=1, le=3)
    temperature = get_number(spec, "temperature", where, gt=0)
    return where, n, dim, temperature


def _pair_sum(spec: dict, where: str) -> str:
    """``pair_sum``: ``unique`` (default; pairs ``i < j``) or ``ordered`` (``i != j``, twice the pair term)."""
    v = spec.get("pair_sum")
    if v is None:
        return "unique"
    if not isinstance(v, str) or v not in LJ_PAIR_SUMS:
        raise ConfigError(
            f"{where}: field 'pair_sum' expected one of {', '.join(sorted(LJ_PAIR_SUMS))}, got {short_repr(v)}"
        )
    return v


def build_lennard_jones(spec: dict, path: Path) -> System:
    """Builder for ``kind: lennard_jones`` (fields: ``n_particles``, ``temperature`` (reduced), optional
    ``eps``, ``rm``, ``oscillator_scale``, ``pair_sum`` (``unique``, the default, or ``ordered``: the pair term
    summed over ``i != j``, twice the unique-pair sum), ``spatial_dim`` (3), ``initial_positions`` (file or
    list))."""
    where, n, dim, temperature = _particles(spec, path, LENNARD_JONES_FIELDS, 3)
    target = LennardJonesCluster(
        n,
        dim,
        eps=get_number(spec, "eps", where, 1.0, gt=0),
        rm=get_number(spec, "rm", where, 1.0, gt=0),
        oscillator_scale=get_number(spec, "oscillator_scale", where, 1.0, ge=0),
        temperature=temperature,
        pair_sum=_pair_sum(spec, where),
    )
    pos = _initial_positions(spec, path, (n, dim))
    extras: dict[str, Any] = {"reduced_units": True}
    if dim == 3:
        extras["openmm_temperature_K"] = LJ_OPENMM_TEMPERATURE * temperature
        extras["openmm_system_factory"] = lambda: lennard_jones_openmm_system(
            n, target.eps, target.rm, target.oscillator_scale, pair_sum=target.pair_sum
        )
    return System(
        name=spec["name"],
        kind="lennard_jones",
        target=target,
        spec=spec,
        path=path,
        temperature=temperature,
        topology=particle_topology(n) if dim == 3 else None,
        positions=pos,
        extras=extras,
    )


def build_double_well(spec: dict, path: Path) -> System:
    """Builder for ``kind: double_well`` (fields: ``n_particles``, ``spatial_dim`` (2), ``temperature``
    (reduced), ``a``, ``b``, ``c``, ``d0``, optional ``initial_positions``)."""
    where, n, dim, temperature = _particles(spec, path, DOUBLE_WELL_FIELDS, 2)
    coef = {k: get_number(spec, k, where) for k in ("a", "b", "c", "d0")}
    target = DoubleWell(n, dim, temperature=temperature, **coef)
    return System(
        name=spec["name"],
        kind="double_well",
        target=target,
        spec=spec,
        path=path,
        temperature=temperature,
        topology=None,
        positions=_initial_positions(spec, path, (n, dim)),
        extras={"reduced_units": True},
    )


# ------------------------------------------------------------------------------------------------------------
# kind: openmm
# ------------------------------------------------------------------------------------------------------------
def build_openmm(spec: dict, path: Path) -> System:
    """Builder for ``kind: openmm`` specs; the fields and the three routes are documented in ``docs/systems.md``.

    Routes: ``pdb`` + ``forcefield`` (OpenMM force field XML files), ``system_xml`` + ``pdb`` (a serialized
    ``openmm.System``), ``prmtop`` + ``inpcrd`` (Amber). Every spec has ``temperature`` (required, K) and
    optionally ``platform`` (default ``Reference``), ``n_workers`` (default 0), ``energy_cap`` (kT), ``cvs``
    (name -> 4 atom indices), ``chiral_quads`` (list of ``[centre, a, b, c]`` atom indices of chiral centres).
    """
    from boltzdiff.targets.openmm import DEFAULT_ENERGY_CAP
    from boltzdiff.targets.openmm_files import check_atom_fields, openmm_parts, openmm_system_from_spec

    where = str(path)
    temperature = get_number(spec, "temperature", where, gt=0)
    system, topology, positions = openmm_system_from_spec(spec, path)
    check_atom_fields(spec, system.getNumParticles(), where)
    parts = openmm_parts(
        system,
        topology,
        positions,
        temperature,
        where,
        platform=spec.get("platform", "Reference"),
        n_workers=get_int(spec, "n_workers", where, default=0, ge=0),
        energy_cap=get_number(spec, "energy_cap", where, default=DEFAULT_ENERGY_CAP, gt=0, finite=False),
    )
    return System(name=spec["name"], kind="openmm", spec=spec, path=path, **parts)


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
    """A :class:`System` (as :func:`boltzdiff.systems.load_system` returns for ``kind: openmm``) from an OpenMM
    System in memory.

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
    from boltzdiff.targets.openmm import DEFAULT_ENERGY_CAP
    from boltzdiff.targets.openmm_files import check_atom_fields, openmm_parts

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


__all__ = [
    "build_double_well",
    "build_gaussian_mixture",
    "build_lennard_jones",
    "build_openmm",
    "from_openmm",
    "gaussian_mixture_from_spec",
    "standardized",
]
