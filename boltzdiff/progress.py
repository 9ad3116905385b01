"""Progress reporting: tqdm bars where stderr is a terminal, else a periodic one-line status in the log.

Every long loop of the package (training, SMC levels and bridge, worker pools, the analysis) builds its
progress through :func:`progress`. ``--progress`` forces bars, ``--no-progress`` turns all reporting off
(:func:`set_mode`); by default bars appear only on a terminal, and logs (a batch job's stderr) get a line
about every 30 s or every 10 % instead of a bar redrawn with carriage returns.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable

log = logging.getLogger("boltzdiff.progress")

#: "auto" (bars on a terminal, log lines elsewhere), "bar" (always bars) or "off" (nothing)
_MODE = "auto"
#: seconds between two status lines when no bar is shown
LOG_EVERY_S = 30.0


def set_mode(mode: str) -> None:
    """``"auto"``, ``"bar"`` (``--progress``) or ``"off"`` (``--no-progress``) for every later :func:`progress`."""
    global _MODE
    if mode not in ("auto", "bar", "off"):
        raise ValueError(f"progress mode: expected 'auto', 'bar' or 'off', got {mode!r}")
    _MODE = mode


def mode_from_flags(progress: bool | None, no_progress: bool) -> str:
    """The mode that ``--progress`` / ``--no-progress`` ask for (the latter wins)."""
    return "off" if no_progress else ("bar" if progress else "auto")


class _LogStatus:
    """A tqdm-like object that logs ``desc: k/total (p %), elapsed`` about every ``LOG_EVERY_S`` or 10 %."""

    def __init__(self, iterable=None, total=None, desc="", initial=0):
        self.iterable, self.desc, self.n = iterable, desc or "progress", int(initial)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.t0 = self.t_last = time.monotonic()
        self.next_frac = 0.1

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        frac = self.n / self.total if self.total else None
        if now - self.t_last >= LOG_EVERY_S or (frac is not None and frac >= self.next_frac and frac < 1):
            self._emit(now)
            if frac is not None:
                self.next_frac = (int(frac * 10) + 1) / 10

    def _emit(self, now: float) -> None:
        self.t_last = now
        of = f"/{self.total} ({100.0 * self.n / self.total:.0f} %)" if self.total else ""
        log.info("%s: %d%s, %.0f s", self.desc, self.n, of, now - self.t0)

    def set_postfix(self, *a, **kw) -> None:
        pass

    def set_postfix_str(self, *a, **kw) -> None:
        pass

    def close(self) -> None:
        pass


class _Off(_LogStatus):
    def update(self, k: int = 1) -> None:
        self.n += k


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    leave: bool = True,
    initial: int = 0,
):
    """A progress reporter over ``iterable`` (or one to ``update()`` by hand, with ``total``).

    ``enabled=False`` (the caller's ``progress`` argument) reports nothing; otherwise a tqdm bar where stderr is
    a terminal or ``--progress`` was given, else periodic log lines. The object supports ``update``,
    ``set_postfix``, ``close`` and iteration, whichever kind it is.
    """
    if not enabled or _MODE == "off":
        return _Off(iterable, total, desc, initial)
    if _MODE == "bar" or (_MODE == "auto" and sys.stderr.isatty()):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=leave, initial=initial, dynamic_ncols=True)
    return _LogStatus(iterable, total, desc, initial)
