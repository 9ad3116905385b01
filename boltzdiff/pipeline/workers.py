"""Worker processes of the pipeline's stages: independent SMC runs and trainings side by side, each in a spawned
process that rebuilds its inputs from the run directory."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from boltzdiff.systems import System

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def exit_with_parent(parent_pid: int, every_s: float = 2.0) -> None:
    """A daemon thread that ends this worker process once its parent is gone (killed with SIGTERM or SIGKILL,
    a parent runs no cleanup): an orphaned SMC run would go on using a core and write its part file into a run
    directory that a new command may be using."""
    import threading

    def watch():
        while True:
            time.sleep(every_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def job_of(system: System, out: Path, settings: dict, threads: int, **extra) -> dict:
    """What a worker process needs to rebuild the system (at its temperature, for a tempered one) and the run
    directory's settings, plus ``extra``; :func:`system_of` rebuilds it."""
    from boltzdiff.samplers.tempering import TemperedTarget

    return dict(
        system_path=str(system.path or system.name),
        variant=system.variant,
        temperature=system.temperature if isinstance(system.target, TemperedTarget) else None,
        out=str(out),
        settings=settings,
        threads=threads,
        parent_pid=os.getpid(),
        **extra,
    )


def system_of(job: dict) -> System:
    """The system of a :func:`job_of` job, in the worker: loaded from its path and, when the parent's was the
    exact target at another temperature, tempered the same way."""
    from boltzdiff.systems import load_system

    system = load_system(job["system_path"], job["variant"])
    if job.get("temperature") is not None:
        from boltzdiff.samplers.tempering import tempered_system

        system = tempered_system(system, job["temperature"])[0]
    return system


def in_processes(fn, jobs: list, workers: int, desc: str, done_msg: str, progress: bool) -> None:
    """``fn(job) -> int`` for every job in ``workers`` spawned processes (no state shared with this one); a
    worker's exception is raised here, and on any error or interrupt the running workers are stopped (what
    they finished stays on disk for a resume)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from boltzdiff.progress import progress as progress_of

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, j) for j in jobs]
        bar = progress_of(total=len(futures), desc=desc, enabled=progress)
        try:
            for fut in as_completed(futures):
                k = fut.result()  # a worker's exception is raised here
                log.info(done_msg, k + 1)
                bar.update()
        except BaseException:
            for fut in futures:
                fut.cancel()
            # running workers would finish their jobs before the pool's shutdown returns (minutes after a
            # Ctrl-C); stop them now
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
            raise
        finally:
            bar.close()
