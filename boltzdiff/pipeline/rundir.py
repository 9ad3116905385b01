"""Run-directory layout and bookkeeping shared by every stage of ``boltzdiff run``.

Layout::

    pipeline.json          system, variant, preset and the resolved stage settings (checked on resume)
    run_info.json          seed, git commit, package versions
    reference/             MD (molecules) or MCMC (particles) reference: positions.npy, energies.npy
    train/                 the training run (see boltzdiff.train)
    train_models/M/        with ``train.n_models`` > 1: the M-th further model (M = 1 .. n_models - 1), trained
                           on the same data with seed ``seed + 1000 M``
    samples.npz/.json      SMC particles ``x`` (n, d), float64 ``log_w`` and the sampler summary
    analysis.json, *.png, report.md
"""

from __future__ import annotations

import json
from pathlib import Path

from boltzdiff.errors import ConfigError
from boltzdiff.systems import System

STAGES = ("reference", "train", "sample", "analyze")
#: what each stage leaves in the run directory (removed by ``redo``)
STAGE_OUTPUTS = {
    "reference": ("reference",),
    "train": ("train", "train_models"),
    "sample": ("samples.npz", "samples.json", "sample_runs"),
    "analyze": ("analysis.json", "report.md"),
}


def _check_run_dir(out: Path, system: System, preset: str, loss: str | None = None) -> None:
    old = read_pipeline_json(out)
    if old is not None:
        old_path = old.get("system_path")
        same = old_path is not None and (
            old_path == str(system.path) or (system.path is not None and Path(old_path).resolve() == system.path)
        )
        if not same or old.get("variant") != system.variant:
            raise ConfigError(
                f"{out} holds a run of system {old.get('system')!r} ({old_path}, variant {old.get('variant')}), "
                f"not of {system.path or system.name} (variant {system.variant}); choose another --out"
            )
        if old.get("preset") != preset:
            raise ConfigError(f"{out} holds a run with preset {old.get('preset')!r}, not {preset!r}")
        old_loss = old.get("settings", {}).get("train", {}).get("loss", "diffclf")
        if loss is not None and old_loss != loss:
            raise ConfigError(f"{out} holds a run trained with loss {old_loss!r}, not {loss!r}")


def stage_done(out: Path, stage: str) -> bool:
    return any((out / name).exists() for name in STAGE_OUTPUTS[stage])


def _remove_stage_outputs(out: Path, first: str) -> list[str]:
    """Delete the outputs of stage ``first`` (one of STAGES) and of every stage after it; returns what was removed."""
    import shutil

    removed = []
    for stage in STAGES[STAGES.index(first) :]:
        for name in STAGE_OUTPUTS[stage]:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            else:
                continue
            removed.append(name)
    return removed


def training_data_path(ref: Path) -> Path:
    """The reference stage's training set: ``train_positions.npy`` where ``reference.weight_power`` made one,
    else ``positions.npy``."""
    t = Path(ref) / "train_positions.npy"
    return t if t.exists() else Path(ref) / "positions.npy"


def reference_starts(run_dir: Path) -> list:
    """The start structures of the run's MD replicas (``reference.starts``; ``[]`` for a single run)."""
    p = Path(run_dir) / "reference" / "progress.json"
    if not p.is_file():
        return []
    return [r.get("start") for r in json.loads(p.read_text()).get("replicas") or []]


def reference_temperature(run_dir: Path) -> float | None:
    """Temperature (K) the run's reference data were generated at (``reference/progress.json``), or None."""
    p = Path(run_dir) / "reference" / "progress.json"
    if not p.is_file():
        return None
    t = (json.loads(p.read_text()).get("settings") or {}).get("temperature")
    return None if t is None else float(t)


def model_dir(out: Path, m: int) -> Path:
    """Where model ``m`` of a run directory lives: ``train/`` for the first, ``train_models/<m>/`` after."""
    return Path(out) / "train" if m == 0 else Path(out) / "train_models" / str(m)


def model_of_run(r: int, n_runs: int, n_m: int) -> int:
    """The model SMC run ``r`` of ``n_runs`` samples (runs split into ``n_m`` equal consecutive blocks)."""
    return r * n_m // n_runs


def read_pipeline_json(out: Path) -> dict | None:
    """The run directory's ``pipeline.json`` (system, variant, preset, seed, settings), or None if it has none."""
    from boltzdiff.io import load_json

    f = Path(out) / "pipeline.json"
    if not f.exists():
        return None
    what = "the JSON object that `boltzdiff run` wrote (system, variant, preset, settings)"
    meta = load_json(f, what)
    if not isinstance(meta, dict) or not isinstance(meta.get("settings", {}), dict):
        raise ConfigError(f"{f}: holds a {type(meta).__name__} without a 'settings' mapping; expected {what}")
    return meta


def check_run_outputs(out: Path, kept_before: str | None = None) -> None:
    """The arrays that later stages read back from a run directory (``samples.npz``, ``reference/positions.npy``,
    ``reference/train_positions.npy``) load, so a truncated or garbage file is a one-line error naming it before
    any stage runs (or any output is removed), not a traceback from the stage that reads it. ``kept_before``: the
    stage a ``--redo`` starts at; only the outputs of the stages before it, which are kept, are checked."""
    from boltzdiff.io import load_npy, load_npz

    out = Path(out)
    last = STAGES.index(kept_before) if kept_before is not None else len(STAGES)
    if STAGES.index("sample") < last and (out / "samples.npz").exists():
        load_npz(out / "samples.npz", "the sample stage's particles (x, log_w); `--redo sample` writes them anew")
    for name in ("positions.npy", "train_positions.npy") if last > 0 else ():
        f = out / "reference" / name
        if f.exists():
            arr = load_npy(f, "the reference stage's frames; `--redo reference` writes them anew", mmap_mode="r")
            del arr


def write_pipeline_json(out: Path, meta: dict) -> None:
    """Record what the stages of the run directory run with (``pipeline.json``, written atomically)."""
    from boltzdiff.io import atomic_write_json

    atomic_write_json(Path(out) / "pipeline.json", meta)
