"""Small checks shared by the config readers: unknown keys with a suggestion, and number / integer coercion with
finiteness and range checks.

Every failure is a one-line :class:`~boltzdiff.errors.ConfigError` that starts with ``where`` (a file name, or a
file name and a section) and names the field. Numbers may be written as YAML strings PyYAML does not read as
floats (``1e1``, ``+2.5E-3``): wherever a number is expected, such a numeric string is converted.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from boltzdiff.errors import ConfigError

#: a required field (``default=REQUIRED``)
REQUIRED: Any = object()

_REPR_MAX = 60


def short_repr(value: Any, limit: int = _REPR_MAX) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    try:
        r = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still reported
        r = f"<{type(value).__name__}>"
    r = " ".join(r.split())
    return r if len(r) <= limit else r[: limit - 3] + "..."


def suggest(name: Any, valid: Iterable[str]) -> str | None:
    """The valid name closest to ``name`` (difflib), or None."""
    close = difflib.get_close_matches(str(name), sorted(valid), n=1, cutoff=0.6)
    return close[0] if close else None


def check_keys(mapping: Mapping, valid: Iterable[str], where: str, what: str = "field") -> None:
    """Refuse the first key of ``mapping`` (in sorted order) that is not in ``valid``: ``<where>: unknown field
    'weigths'; did you mean 'weights'?`` (or the list of valid names when none is close)."""
    valid = set(valid)
    unknown = sorted((k for k in mapping if k not in valid), key=str)
    if not unknown:
        return
    key = unknown[0]
    near = suggest(key, valid)
    hint = f"did you mean {near!r}?" if near else f"expected one of: {', '.join(sorted(valid))}"
    raise ConfigError(f"{where}: unknown {what} {short_repr(key)}; {hint}")


def _range_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    parts = []
    if gt is not None:
        parts.append(f"> {gt:g}")
    if ge is not None:
        parts.append(f">= {ge:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    return " and ".join(parts)


def _check_range(
    v: float, field: str, where: str, gt: float | None, ge: float | None, lt: float | None, le: float | None
) -> None:
    if (
        (gt is not None and not v > gt)
        or (ge is not None and not v >= ge)
        or (lt is not None and not v < lt)
        or (le is not None and not v <= le)
    ):
        raise ConfigError(f"{where}: field {field!r} must be {_range_text(gt, ge, lt, le)}, got {v:g}")


def to_number(
    value: Any,
    field: str,
    where: str,
    *,
    finite: bool = True,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """``value`` as a float: an int or float (not a bool), or a numeric string such as ``'1e1'``. ``finite``
    refuses nan and +-inf; ``gt``/``ge``/``lt``/``le`` bound it."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: field {field!r} expected a number, got {short_repr(value)}")
    try:
        v = float(value.strip()) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        raise ConfigError(f"{where}: field {field!r} expected a number, got {short_repr(value)}") from None
    if finite and not math.isfinite(v):
        raise ConfigError(f"{where}: field {field!r} must be a finite number, got {short_repr(value)}")
    _check_range(v, field, where, gt, ge, lt, le)
    return v


def to_int(
    value: Any,
    field: str,
    where: str,
    *,
    ge: int | None = None,
    le: int | None = None,
) -> int:
    """``value`` as an int: an int (not a bool), or a float or numeric string with an integral value (``1e1``
    -> 10); bounded by ``ge``/``le``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: field {field!r} expected an integer, got {short_repr(value)}")
    if isinstance(value, int):
        v = value
    else:
        try:
            f = float(value.strip()) if isinstance(value, str) else float(value)
        except ValueError:
            f = math.nan
        if not (math.isfinite(f) and f == int(f)):
            raise ConfigError(f"{where}: field {field!r} expected an integer, got {short_repr(value)}")
        v = int(f)
    if (ge is not None and v < ge) or (le is not None and v > le):
        raise ConfigError(f"{where}: field {field!r} must be an integer {_range_text(None, ge, None, le)}, got {v}")
    return v


def get_number(spec: Mapping, field: str, where: str, default: Any = REQUIRED, **bounds: Any) -> Any:
    """``to_number(spec[field])``; a missing (or null) field is ``default``, or an error when it is
    :data:`REQUIRED`."""
    if spec.get(field) is None:
        if default is REQUIRED:
            raise ConfigError(f"{where}: missing field {field!r} (expected a number)")
        return default
    return to_number(spec[field], field, where, **bounds)


def get_int(spec: Mapping, field: str, where: str, default: Any = REQUIRED, **bounds: Any) -> Any:
    """``to_int(spec[field])``; a missing (or null) field is ``default``, or an error when it is :data:`REQUIRED`."""
    if spec.get(field) is None:
        if default is REQUIRED:
            raise ConfigError(f"{where}: missing field {field!r} (expected an integer)")
        return default
    return to_int(spec[field], field, where, **bounds)


__all__ = ["REQUIRED", "check_keys", "get_int", "get_number", "short_repr", "suggest", "to_int", "to_number"]


def doc_field(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None) -> Any:
    """A dataclass field with a one-line description (``metadata["doc"]``) that docs/configuration.md lists."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})
