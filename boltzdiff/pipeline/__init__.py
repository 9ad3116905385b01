"""``boltzdiff run``: reference data -> training (DSM warm-up, then DSM + DiffCLF) -> SMC ending at the exact
target -> analysis -> report, in one run directory. Each stage is skipped when its output exists, so an
interrupted run resumes by running the same command again; each stage is also a subcommand.

The run directory's layout is described in :mod:`boltzdiff.pipeline.rundir`; the stages live in
:mod:`~boltzdiff.pipeline.reference`, :mod:`~boltzdiff.pipeline.train`, :mod:`~boltzdiff.pipeline.sample` and
:mod:`~boltzdiff.pipeline.analyze`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from boltzdiff.errors import ConfigError, DegenerateRunError
from boltzdiff.pipeline.analyze import analyze_run, load_samples
from boltzdiff.pipeline.reference import (
    run_md_replicas,
    run_metad_reference,
    stage_reference,
    write_tempered_training_set,
)
from boltzdiff.pipeline.rundir import (
    STAGE_OUTPUTS,
    STAGES,
    _check_run_dir,
    _remove_stage_outputs,
    check_run_outputs,
    model_dir,
    model_of_run,
    read_pipeline_json,
    reference_starts,
    reference_temperature,
    training_data_path,
    write_pipeline_json,
)
from boltzdiff.pipeline.sample import (
    FinishedRun,
    SamplerInputs,
    build_sampler,
    cv_strata,
    run_smc,
    sampling_target,
    stage_sample,
    torsion_spec,
)
from boltzdiff.pipeline.settings import (
    PRESETS,
    _changed,
    check_settings,
    kind_of,
    n_models,
    resolve_settings,
    typed_settings,
)
from boltzdiff.pipeline.train import stage_train
from boltzdiff.pipeline.workers import exit_with_parent, usable_cores
from boltzdiff.runinfo import write_run_info
from boltzdiff.systems import load_system

log = logging.getLogger(__name__)


def run_pipeline(
    system_name: str,
    out_dir: str | Path,
    preset: str = "quick",
    variant: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    stages=STAGES,
    loss: str | None = None,
    redo: str | None = None,
    workers: int | None = None,
    allow_degenerate: bool = False,
) -> dict:
    """Run (or resume) every stage; returns analysis.json's contents. ``loss='dsm'`` trains DSM-only;
    ``workers``: processes for the sample stage's independent SMC runs and, with ``train.n_models`` > 1, for
    the trainings (default: one per CPU core).

    Resuming with settings that changed since the run directory was started is refused for finished stages
    (:func:`check_settings`); ``redo`` (a stage name) deletes that stage's outputs and those after it first.
    """
    if redo is not None and redo not in STAGES:
        raise ConfigError(f"--redo: expected one of {list(STAGES)}, got {redo!r}")
    if redo is not None and not (Path(out_dir) / "pipeline.json").is_file():
        # --redo deletes files: only in a directory that `boltzdiff run` made (its pipeline.json names the system,
        # checked below), never in a folder of the user's that happens to hold a train/ or report.md
        raise ConfigError(
            f"--redo: {out_dir} is not a `boltzdiff run` directory (no pipeline.json), so nothing in it is deleted; "
            f"leave out --redo to start a run there"
        )
    system = load_system(system_name, variant)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a directory; choose another --out")
    if out.is_dir() and not (out / "pipeline.json").is_file():
        foreign = sorted(n for names in STAGE_OUTPUTS.values() for n in names if (out / n).exists())
        if foreign:  # a stage would take these for its own finished output
            raise ConfigError(
                f"--out: {out} holds {', '.join(foreign)} but no pipeline.json, so it is no `boltzdiff run` "
                f"directory; choose another --out"
            )
    _check_run_dir(out, system, preset, loss)
    check_run_outputs(out, kept_before=redo)
    old = read_pipeline_json(out)
    if loss is None and old is not None:  # resuming: keep the loss the run started with
        loss = old.get("settings", {}).get("train", {}).get("loss")
    settings = resolve_settings(system, preset, seed, device, loss)
    typed_settings(settings, system)  # unknown keys and bad values fail here, before any stage runs
    out.mkdir(parents=True, exist_ok=True)
    if old is not None:
        check_settings(out, old.get("settings") or {}, settings, redo)
    if redo is not None:
        removed = _remove_stage_outputs(out, redo)
        log.info("--redo %s: removed %s", redo, ", ".join(removed) or "nothing (no outputs yet)")
    if old is None or redo is not None or old.get("settings") != settings:  # record what the stages now run with
        write_pipeline_json(
            out,
            dict(
                system=system.name,
                system_path=str(system.path or system.name),
                variant=system.variant,
                preset=preset,
                seed=seed,
                settings=settings,
                kind=kind_of(system),
            ),
        )
        write_run_info(out, dict(system=system.name, variant=system.variant, preset=preset, settings=settings), seed)
    t0 = time.time()
    data = stage_reference(system, out, settings, progress) if "reference" in stages else None
    if "train" in stages:
        if kind_of(system) != "analytic" and data is None:
            data = training_data_path(out / "reference")
        stage_train(system, out, settings, data, progress, workers=workers)
    if "sample" in stages:
        stage_sample(system, out, settings, progress, seed, workers=workers)
    result = {}
    if "analyze" in stages:
        result = analyze_run(out, system=system, progress=bool(progress))
        flags = (result.get("sanity") or {}).get("flags") or []
        if flags and not allow_degenerate:
            raise DegenerateRunError(
                f"{out}: degenerate run, its estimates are not to be used ({flags[0]}; see report.md); "
                f"--allow-degenerate accepts it"
            )
    log.info("pipeline finished in %.0f s; see %s", time.time() - t0, out / "report.md")
    return result


__all__ = [
    "PRESETS",
    "STAGES",
    "STAGE_OUTPUTS",
    "FinishedRun",
    "SamplerInputs",
    "analyze_run",
    "build_sampler",
    "check_run_outputs",
    "check_settings",
    "cv_strata",
    "exit_with_parent",
    "kind_of",
    "load_samples",
    "model_dir",
    "model_of_run",
    "n_models",
    "read_pipeline_json",
    "reference_starts",
    "reference_temperature",
    "resolve_settings",
    "run_md_replicas",
    "run_metad_reference",
    "run_pipeline",
    "run_smc",
    "sampling_target",
    "stage_reference",
    "stage_sample",
    "stage_train",
    "torsion_spec",
    "training_data_path",
    "usable_cores",
    "write_pipeline_json",
    "write_tempered_training_set",
    "_changed",
    "_check_run_dir",
]
