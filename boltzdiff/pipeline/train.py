"""The train stage of ``boltzdiff run``: ``train.n_models`` models on the reference data, side by side in worker
processes where the cores allow."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from boltzdiff.config import TrainConfig, merge_config
from boltzdiff.errors import ConfigError
from boltzdiff.pipeline.rundir import model_dir, reference_temperature
from boltzdiff.pipeline.settings import n_models
from boltzdiff.pipeline.workers import exit_with_parent, in_processes, job_of, system_of, usable_cores
from boltzdiff.systems import System

log = logging.getLogger(__name__)

__all__ = ["n_models", "stage_train"]


def _train_config(system: System, out: Path, settings: dict, data: Path | None, m: int) -> TrainConfig:
    """The training config of model ``m`` of the run directory (seed ``train.seed + 1000 m``)."""
    over = {k: v for k, v in settings["train"].items() if k != "n_models"}
    over["seed"] = int(over.get("seed", 0)) + 1000 * m
    cfg = merge_config(TrainConfig(), over, "preset train settings")
    cfg.system = str(system.path)
    cfg.variant = system.variant
    if data is not None:
        cfg.data = str(data)
        t_ref = reference_temperature(out)
        if cfg.data_temperature is None and t_ref is not None:
            cfg.data_temperature = t_ref
    cfg.validate()
    return cfg


def _train_worker(job: dict) -> int:
    """One model's training in a worker process (``train.n_models`` > 1 with ``workers`` > 1); returns ``m``."""
    from boltzdiff.train import train

    torch.set_num_threads(int(job["threads"]))
    if job.get("parent_pid"):
        exit_with_parent(int(job["parent_pid"]))
    system = system_of(job)
    out, m = Path(job["out"]), int(job["m"])
    cfg = _train_config(system, out, job["settings"], None if job["data"] is None else Path(job["data"]), m)
    cfg.num_threads = None  # the worker's thread count is set above
    tdir = model_dir(out, m)
    train(cfg, tdir, resume=(tdir / "ckpt.pt").exists(), progress=False)
    return m


def stage_train(
    system: System, out: Path, settings: dict, data: Path | None, progress: bool, workers: int | None = None
):
    """Train ``train.n_models`` models (see :func:`n_models`); a model whose ``model.pt`` exists is kept, one with
    only a checkpoint resumes. With several models still to train on the CPU, ``workers`` processes train them
    side by side (default: one per usable core, at most the number of models; each with an equal share of the
    cores), which uses 2 cores better than one training with 2 threads does."""
    from boltzdiff.train import train

    n_m = n_models(settings)
    todo = []
    for m in range(n_m):
        tdir = model_dir(out, m)
        if (tdir / "model.pt").exists():
            log.info("train: %s exists, skipped", tdir / "model.pt")
        else:
            _train_config(system, out, settings, data, m)  # bad settings fail here, before any process starts
            todo.append(m)
    device = str(settings["train"].get("device", "cpu"))
    if workers is None:  # at least 1, also when every model is already trained
        workers = max(1, min(len(todo), usable_cores())) if device == "cpu" else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers: expected a positive number of processes, got {workers!r}")
    if min(workers, len(todo)) > 1:
        threads = max(1, usable_cores() // min(workers, len(todo)))
        jobs = [job_of(system, out, settings, threads, data=None if data is None else str(data), m=m) for m in todo]
        log.info("train: %d models in %d worker processes", len(todo), min(workers, len(todo)))
        in_processes(
            _train_worker, jobs, min(workers, len(todo)), "trained models", "train: model %d finished", progress
        )
        return
    for m in todo:
        cfg = _train_config(system, out, settings, data, m)
        tdir = model_dir(out, m)
        if n_m > 1:
            log.info("train: model %d of %d (seed %d) -> %s", m + 1, n_m, cfg.seed, tdir)
        train(cfg, tdir, resume=(tdir / "ckpt.pt").exists(), progress=progress)
