"""Named states of a system, declared as data in its ``system.yaml``, and the free energies between them.

A spec declares collective variables (``cvs: {NAME: [i, j, k, l]}``, dihedrals by 0-based atom indices) and
named states over them::

    states:
      alpha_l: {phi: [0.0, 2.0]}                       # 0 < phi < 2
      alpha_r: {phi: [-2.0, 0.0], psi: [-1.5, 0.5]}    # both intervals at once
      beta:    {phi: [2.5, -2.5]}                      # lo > hi: the arc across +-pi
    free_energy:
      delta_f: [alpha_l, alpha_r]    # or one name: that state against the rest
      profile: phi                   # the CV of the profile F(CV)

A state is the set where every listed CV lies strictly inside its interval (radians, the CV wrapped to
``[-pi, pi)`` first). Without ``free_energy`` the first declared state is taken against the rest and the
profile is over that state's first CV. Pure functions of arrays: reading the CVs off configurations is
:func:`boltzdiff.systems.system_cv_values`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from boltzdiff.analysis.free_energy import DeltaF, RngLike, two_state_delta_f, wrap_angle
from boltzdiff.errors import ConfigError

#: the name ``delta_f_against`` reports for a state's complement
REST = "rest"
#: the spec fields this module reads
STATE_FIELDS = ("states", "free_energy")


@dataclass(frozen=True)
class CVInterval:
    """One CV's interval ``lo < cv < hi`` (radians); ``lo > hi`` is the arc across ±pi (``cv > lo or cv < hi``).

    Attributes
    ----------
    cv : str
        The CV's name in the spec's ``cvs``.
    lo, hi : float
    """

    cv: str
    lo: float
    hi: float

    @property
    def wraps(self) -> bool:
        """Whether the interval crosses ±pi."""
        return self.lo > self.hi

    def contains(self, values) -> np.ndarray:
        """Bool mask of ``values`` (radians, any shape, wrapped to ``[-pi, pi)`` first) inside the interval."""
        a = wrap_angle(np.asarray(values, dtype=np.float64))
        if self.wraps:
            return (a > self.lo) | (a < self.hi)
        return (a > self.lo) & (a < self.hi)


@dataclass(frozen=True)
class StateSpec:
    """A named state: where every one of its CV intervals holds.

    Attributes
    ----------
    name : str
    intervals : tuple of CVInterval
        At least one, each on a different CV.
    """

    name: str
    intervals: tuple[CVInterval, ...]

    @property
    def cvs(self) -> list[str]:
        """The CVs the state is defined by, in declared order."""
        return [iv.cv for iv in self.intervals]


@dataclass(frozen=True)
class FreeEnergySpec:
    """What a system's ΔF and F(CV) are of (``free_energy:`` in a spec, or its defaults).

    Attributes
    ----------
    state : StateSpec
        State A of ``ΔF = -ln[P(A) / P(B)]``.
    against : StateSpec or None
        State B; None for A's complement (``rest``).
    profile : str
        The CV of the profile ``F(CV)``.
    """

    state: StateSpec
    against: StateSpec | None
    profile: str

    @property
    def against_name(self) -> str:
        """B's name, or ``rest``."""
        return REST if self.against is None else self.against.name

    @property
    def rotation_interval(self) -> CVInterval | None:
        """The one dihedral interval a torsion Rao-Blackwell integral can integrate ΔF over: A defined by one CV
        against the rest (the orbit's probability of B is then one minus A's). None otherwise."""
        if self.against is None and len(self.state.intervals) == 1:
            return self.state.intervals[0]
        return None


def _bound(x, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(float(x)):
        raise ConfigError(f"{where}: expected [lo, hi] in radians, got a non-numeric bound {x!r}")
    return float(x)


def parse_states(spec: Mapping, where: str) -> dict[str, StateSpec]:
    """The ``states:`` of a spec as ``{name: StateSpec}`` (declared order; empty without any).

    ``where`` names the spec in the one-line :class:`~boltzdiff.errors.ConfigError` raised on an unknown CV, a
    non-numeric bound, an interval without exactly two numbers, or a state with no CV.
    """
    raw = spec.get("states")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: field 'states': expected {{NAME: {{CV: [lo, hi], ...}}, ...}}, got {raw!r}")
    cvs = spec.get("cvs") or {}
    out: dict[str, StateSpec] = {}
    for name, body in raw.items():
        field_ = f"{where}: field 'states.{name}'"
        if name == REST:
            raise ConfigError(f"{field_}: {REST!r} is reserved for a state's complement")
        if not isinstance(body, Mapping) or not body:
            raise ConfigError(f"{field_}: expected at least one CV interval {{CV: [lo, hi]}}, got {body!r}")
        intervals = []
        for cv, bounds in body.items():
            fcv = f"{where}: field 'states.{name}.{cv}'"
            if cv not in cvs:
                raise ConfigError(f"{fcv}: unknown CV {cv!r}; the spec's cvs are {sorted(cvs) or 'none'}")
            if not isinstance(bounds, list | tuple):
                raise ConfigError(f"{fcv}: expected [lo, hi] in radians, got {bounds!r}")
            if len(bounds) != 2:
                raise ConfigError(f"{fcv}: expected 2 numbers [lo, hi] in radians, got {len(bounds)}: {list(bounds)!r}")
            lo, hi = (_bound(b, fcv) for b in bounds)
            if lo == hi:
                raise ConfigError(f"{fcv}: an empty interval [{lo}, {hi}]")
            intervals.append(CVInterval(str(cv), lo, hi))
        out[str(name)] = StateSpec(str(name), tuple(intervals))
    return out


def parse_free_energy(spec: Mapping, states: Mapping[str, StateSpec], where: str) -> FreeEnergySpec | None:
    """The spec's ``free_energy: {delta_f: [A, B] | A, profile: CV}`` resolved against ``states`` (defaults: the
    first state against the rest, the profile over its first CV); None without states and ``free_energy``."""
    raw = spec.get("free_energy")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping) or not set(raw) <= {"delta_f", "profile"}:
        raise ConfigError(f"{where}: field 'free_energy': expected {{delta_f: [A, B] | A, profile: CV}}, got {raw!r}")
    if not states:
        if raw:
            raise ConfigError(f"{where}: field 'free_energy': needs named 'states' to refer to")
        return None
    pick = raw.get("delta_f", next(iter(states)))
    names = [pick] if isinstance(pick, str) else pick
    if not isinstance(names, list | tuple) or not 1 <= len(names) <= 2:
        raise ConfigError(f"{where}: field 'free_energy.delta_f': expected a state or [A, B], got {pick!r}")
    for s in names:
        if s not in states and not (s == REST and len(names) == 2 and s == names[1]):
            raise ConfigError(
                f"{where}: field 'free_energy.delta_f': unknown state {s!r}; the spec's states are {sorted(states)}"
            )
    a = states[names[0]]
    b = states[names[1]] if len(names) == 2 and names[1] != REST else None
    if b is not None and b.name == a.name:
        raise ConfigError(f"{where}: field 'free_energy.delta_f': a state against itself ({a.name!r})")
    profile = raw.get("profile", a.cvs[0])
    cvs = spec.get("cvs") or {}
    if profile not in cvs:
        raise ConfigError(
            f"{where}: field 'free_energy.profile': unknown CV {profile!r}; the spec's cvs are {sorted(cvs)}"
        )
    return FreeEnergySpec(a, b, str(profile))


def validate_states(spec: Mapping, where: str) -> None:
    """Check a spec's ``states`` and ``free_energy`` (one-line ConfigErrors naming ``where`` and the field)."""
    parse_free_energy(spec, parse_states(spec, where), where)


def free_energy_spec(spec: Mapping, where: str = "system spec") -> FreeEnergySpec | None:
    """The :class:`FreeEnergySpec` of a (validated) spec, or None where it declares no states."""
    return parse_free_energy(spec, parse_states(spec, where), where)


def state_mask(cv_values: Mapping[str, np.ndarray], state: StateSpec) -> np.ndarray:
    """Bool mask ``(n,)``: which configurations lie in ``state``, given each CV's values ``{name: (n,)}``."""
    mask = None
    for iv in state.intervals:
        if iv.cv not in cv_values:
            raise KeyError(f"state {state.name!r}: no values of CV {iv.cv!r}")
        m = iv.contains(np.asarray(cv_values[iv.cv]).reshape(-1))
        mask = m if mask is None else mask & m
    return mask


def as_two_state(p_a, p_b=None, log_w_n=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(share, log_w)`` such that :func:`~boltzdiff.analysis.free_energy.two_state_delta_f` of them is
    ``-ln[P(A) / P(B)]``: for ``p_b=None`` (B is A's complement) the inputs themselves; for two states each
    sample gets the weight ``w (p_A + p_B)`` and the share ``p_A / (p_A + p_B)`` of A, so that ``sum w p_A`` and
    ``sum w p_B`` are the two masses and every resampling estimate (bootstrap, jackknife over runs) draws the
    same particles as it would for one state (a sample in neither keeps its place with weight zero).

    ``p_a``, ``p_b``: each sample's membership of A and B (bools or probabilities); ``log_w_n``: None for
    equal weights.
    """
    p_a = np.asarray(p_a).reshape(-1)
    if p_b is None:
        return p_a, (None if log_w_n is None else np.asarray(log_w_n, dtype=np.float64).reshape(-1))
    p_a = p_a.astype(np.float64)
    p_b = np.asarray(p_b, dtype=np.float64).reshape(-1)
    if p_b.shape != p_a.shape:
        raise ValueError(f"two states: p_a has {p_a.size} samples, p_b {p_b.size}")
    lw = np.zeros(p_a.size) if log_w_n is None else np.asarray(log_w_n, dtype=np.float64).reshape(-1)
    both = p_a + p_b
    safe = np.where(both > 0, both, 1.0)
    share = np.clip(np.where(both > 0, p_a / safe, 0.0), 0.0, 1.0)
    return share, np.where(both > 0, lw + np.log(safe), -np.inf)


def delta_f_states(
    p_a,
    p_b=None,
    log_w_n=None,
    n_bootstrap: int = 200,
    rng: RngLike = None,
    block_length: int | None = None,
    clusters=None,
) -> DeltaF:
    """``ΔF = -ln[P(A) / P(B)]`` (kT) from each sample's membership of A and of B (bools, or probabilities as
    :func:`~boltzdiff.analysis.free_energy.two_state_delta_f` takes them); ``p_b=None``: B is A's complement.
    Reduced to ``two_state_delta_f`` by :func:`as_two_state`; ``clusters``, ``block_length``: as there.
    ``delta_f`` is ``+inf`` where A is empty and ``-inf`` where B is.
    """
    share, lw = as_two_state(p_a, p_b, log_w_n)
    return two_state_delta_f(share, lw, n_bootstrap, rng, block_length, clusters)
