"""The Python-overhead measurement of ``benchmarks/throughput.py`` (not part of the library).

Definition. A stage (a window of training steps, or one SMC run) is profiled in-process with ``torch.profiler``
(CPU activity, no shapes, no stacks). Its *native time* is the length of the union of the time intervals covered
by

- every profiler event that is not a user annotation: the ``aten::`` operators, the autograd engine's node
  evaluations (``autograd::engine::evaluate_function: ...``, which hold the backward's operators) and any
  collectives, with nested events counted once;
- the OpenMM evaluations: each call of ``boltzdiff.targets.openmm._evaluate`` (the per-configuration loop of
  ``setPositions``/``getState``) is annotated ``openmm`` and counted whole, its few lines of Python included.

The Python-overhead share of a window is its Python time over its wall time. Two values are reported:

- ``raw``: ``1 - native / wall``, both from the profiled window. The profiler's own cost counts where it falls:
  its recording of top-level events as Python (an overstatement), everything inside an operator as native.
- ``corrected`` (the one checked against the target): the Python time is the profiled window's time outside the
  native intervals less the profiler's recording cost of its top-level events (``c`` per event, measured once per
  process by :func:`event_cost`: a loop of small operators with and without the profiler); the wall time is the
  same window run without the profiler (same process and settings, just before). The profiler slows the native
  parts too, and not evenly (its buffers grow in lumps; on the LJ55 EGNN a profiled step took 4-5x the plain
  one), so its wall is the wrong denominator; the Python between the operators it leaves as it is. Clamped to
  [0, 1]. Load on the machine between the two runs enters through the plain wall.

On CUDA only the CPU side is seen: an operator's interval is its launch (or its wait, where it synchronises).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile, record_function

MARK = "throughput.step"
OPENMM = "openmm"


def union_seconds(intervals, lo: float, hi: float) -> float:
    """Total length (same units as the inputs) of the union of ``intervals`` ``[(start, end), ...]`` clipped
    to ``[lo, hi]``."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


def _native(e) -> bool:
    return e.name != MARK and (not getattr(e, "is_user_annotation", False) or e.name == OPENMM)


def native_intervals(events) -> list[tuple[float, float]]:
    """``(start, end)`` in microseconds of the events that count as native time (see the module docstring)."""
    return [(float(e.time_range.start), float(e.time_range.end)) for e in events if _native(e)]


def _nested(e) -> bool:
    p = e.cpu_parent
    while p is not None:
        if _native(p):
            return True
        p = p.cpu_parent
    return False


def window_stats(events, lo: float, hi: float) -> dict:
    """Native seconds in the window ``[lo, hi]`` (microseconds), its events and those nested in a native one."""
    inside = [e for e in events if lo <= float(e.time_range.start) < hi]
    return dict(
        native_s=union_seconds(native_intervals(events), lo, hi) * 1e-6,
        n_events=len(inside),
        n_nested=sum(1 for e in inside if _nested(e)),
    )


@contextmanager
def openmm_annotated():
    """Annotate every OpenMM evaluation as an ``openmm`` profiler range while the block runs."""
    import boltzdiff.targets.openmm as om

    orig = om._evaluate

    def timed(*args, **kwargs):
        with record_function(OPENMM):
            return orig(*args, **kwargs)

    om._evaluate = timed
    try:
        yield
    finally:
        om._evaluate = orig


_EVENT_COST: list[float] = []


def event_cost(n: int = 2000, tries: int = 3) -> float:
    """Seconds the profiler adds per recorded event, from ``n`` small additions (one event each) timed with and
    without it; the least difference of ``tries`` (cached per process)."""
    if not _EVENT_COST:
        a, b, out = torch.ones(4), torch.ones(4), torch.empty(4)

        def loop():
            t = time.perf_counter()
            for _ in range(n):
                torch.add(a, b, out=out)
            return time.perf_counter() - t

        best = float("inf")
        for _ in range(tries):
            plain = loop()
            with cpu_profile() as prof:
                profiled = loop()
            n_ev = sum(1 for e in prof.events() if e.name == "aten::add")
            best = min(best, max(0.0, profiled - plain) / max(1, n_ev))
        _EVENT_COST.append(best)
    return _EVENT_COST[0]


def cpu_profile():
    return profile(activities=[ProfilerActivity.CPU], record_shapes=False, with_stack=False, profile_memory=False)


class StepClock:
    """A global optimiser post-step hook: ``times[i]`` is ``perf_counter()`` after the ``i``-th optimiser step of
    the training loop (after a CUDA synchronisation on the steps in ``sync_at``); with ``mark`` set, each step
    also leaves a zero-length profiler range ``throughput.step`` (the window boundaries in a profile)."""

    def __init__(self, device: str = "cpu", sync_at=(), mark: bool = False):
        self.times: list[float] = []
        self.cuda = torch.device(device).type == "cuda"
        self.sync_at, self.mark = set(sync_at), mark
        self._handle = None

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def _hook(self, opt, args, kwargs):
        if self.cuda and len(self.times) in self.sync_at:
            torch.cuda.synchronize()
        if self.mark:
            with record_function(MARK):
                pass
        self.times.append(time.perf_counter())


def windows(layout: dict) -> dict[str, tuple[int, int]]:
    """The timed windows of a training run laid out by ``throughput.train_layout``: ``{loss: (i0, i1)}``, the
    seconds per step being ``(t[i1] - t[i0]) / (i1 - i0)`` over the step times ``t``."""
    w, s = layout["warm"], layout["window"]
    return {"dsm": (w - 1, w + s - 1), "diffclf": (2 * w + s - 1, 2 * w + 2 * s - 1)}


def sec_per_step(times: list[float], layout: dict) -> dict[str, float]:
    out = {}
    for loss, (i0, i1) in windows(layout).items():
        if i1 >= len(times):
            raise RuntimeError(f"only {len(times)} optimiser steps were timed; expected {i1 + 1} (a skipped step?)")
        out[loss] = (times[i1] - times[i0]) / (i1 - i0)
    return out


def profile_training(cfg, out_dir, layout: dict) -> dict:
    """Train ``cfg`` twice in-process (unprofiled, then profiled, into ``out_dir/plain`` and ``out_dir/prof``)
    and return per loss ``{wall_s, native_s, share_raw, wall_unprofiled_s, share_corrected}`` of its window."""
    from boltzdiff.train import train

    with StepClock(cfg.device, sync_at=sync_steps(layout)) as plain:
        train(cfg, out_dir / "plain", progress=False)
    with StepClock(cfg.device, mark=True, sync_at=sync_steps(layout)), openmm_annotated(), cpu_profile() as prof:
        train(cfg, out_dir / "prof", progress=False)
    events = prof.events()
    marks = sorted(float(e.time_range.start) for e in events if e.name == MARK)
    res = {}
    for loss, (i0, i1) in windows(layout).items():
        lo, hi = marks[i0], marks[i1]
        st = window_stats(events, lo, hi)
        res[loss] = _shares((hi - lo) * 1e-6, st, plain.times[i1] - plain.times[i0], steps=i1 - i0)
    return res


def sync_steps(layout: dict) -> list[int]:
    return sorted({i for pair in windows(layout).values() for i in pair})


def profile_smc(run_smc) -> dict:
    """``run_smc()`` (one SMC run) once to warm up (e.g. the OpenMM Context is made on first use), then unprofiled,
    then profiled; ``{wall_s, native_s, share_raw, ...}``."""
    run_smc()
    t = time.perf_counter()
    run_smc()
    unprof = time.perf_counter() - t
    with openmm_annotated(), cpu_profile() as prof:
        with record_function("throughput.smc"):
            run_smc()
    events = prof.events()
    (top,) = [e for e in events if e.name == "throughput.smc"]
    lo, hi = float(top.time_range.start), float(top.time_range.end)
    return _shares((hi - lo) * 1e-6, window_stats(events, lo, hi), unprof)


def _share(native: float, wall: float) -> float:
    return min(1.0, max(0.0, 1.0 - native / wall)) if wall > 0 else float("nan")


def _shares(wall: float, st: dict, unprof: float, steps: int | None = None, per_event: float | None = None) -> dict:
    """The shares of a window (see the module docstring) from its profiled ``wall``, ``window_stats``, the
    unprofiled wall ``unprof`` and the profiler's cost per event (default :func:`event_cost`)."""
    c = event_cost() if per_event is None else per_event
    python = wall - st["native_s"] - c * (st["n_events"] - st["n_nested"])
    out = dict(
        wall_s=wall,
        native_s=st["native_s"],
        share_raw=_share(st["native_s"], wall),
        wall_unprofiled_s=unprof,
        profiler_s_per_event=c,
        n_events=st["n_events"],
        n_nested=st["n_nested"],
        python_s=python,
        share_corrected=min(1.0, max(0.0, python / unprof)) if unprof > 0 else float("nan"),
    )
    if steps is not None:
        out["steps"] = steps
    return out
