"""Stage settings of ``boltzdiff run``: the built-in presets, their resolution against a system's run.yaml, and
the check that a resumed run directory's finished stages still match them."""

from __future__ import annotations

import copy
from pathlib import Path

from boltzdiff.errors import ConfigError
from boltzdiff.pipeline.rundir import STAGES, stage_done
from boltzdiff.systems import System

#: built-in presets; a system's run.yaml ``presets:`` entries are merged over these. The quick preset trains
#: mixtures for 3000 steps: at 1500, random 16-D mixtures lost a narrow 5 % mode at the lowest levels (the
#: model's weight 0.000, and the SMC then never found it; benchmarks/gmm_heldout.py, RESULTS.md)
PRESETS: dict[str, dict] = {
    "quick": {
        "reference": {},
        "train": {"steps": 3000},
        "sample": {
            "n": 2000,
            "levels": None,
            "kernel_variance": "fisher",
            "mcmc_steps": 0,
            "n_bridge": 16,
            "bridge_cess": None,
            "bridge_mcmc_steps": 2,
            "to_target": True,
            "n_runs": 1,
        },
    },
    "full": {
        "reference": {},
        "train": {},
        "sample": {
            "n": 5000,
            "levels": None,
            "kernel_variance": "fisher",
            "mcmc_steps": 2,
            "n_bridge": 32,
            "bridge_cess": None,
            "bridge_mcmc_steps": 2,
            "to_target": True,
            "n_runs": 1,
        },
    },
}


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_settings(system: System, preset: str, seed: int = 0, device: str = "cpu", loss: str | None = None) -> dict:
    """Stage settings: built-in preset < the system's run.yaml (``train:`` then ``presets.<preset>``) <
    ``loss`` (``dsm`` for the DSM-only comparison). ``seed`` seeds the training and the sampling and is added to
    the reference's seed."""
    if loss not in (None, "diffclf", "dsm"):
        raise ConfigError(f"--loss: expected 'diffclf' or 'dsm', got {loss!r}")
    if preset not in PRESETS:
        raise ConfigError(f"--preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    rd = system.run_defaults or {}
    check_run_yaml(rd, system)
    s = _merge(PRESETS[preset], {"train": rd.get("train", {})})
    s = _merge(s, (rd.get("presets") or {}).get(preset, {}))
    s["train"] = {**s["train"], "seed": seed, "device": device}
    if seed and isinstance(s.get("reference"), dict):
        # --seed S draws new reference data too (the preset's reference seed + S), so runs with different seeds
        # are independent end to end; seed 0 keeps the preset's data (docs/decisions.md#run-seed)
        s["reference"] = {**s["reference"], "seed": int(s["reference"].get("seed", 0)) + int(seed)}
    if loss is not None:
        s["train"]["loss"] = loss
    return s


def check_run_yaml(rd: dict, system: System) -> None:
    """The shape of a system's run.yaml: ``train:`` (TrainConfig fields) and ``presets: {quick|full: {reference:,
    train:, sample:}}``; an unknown key anywhere is a one-line error naming the file and the nearest valid name
    (the settings inside each stage are checked by their config classes, :func:`typed_settings`)."""
    from boltzdiff.config import unknown_key_message

    where = str(system.path.parent / "run.yaml") if system.path is not None else "run.yaml"
    if not isinstance(rd, dict):
        raise ConfigError(f"{where}: expected a mapping with 'train' and/or 'presets', got {rd!r}")
    for key in rd:
        if key not in ("train", "presets"):
            raise ConfigError(unknown_key_message(str(key), ("train", "presets"), where))
    presets = rd.get("presets") or {}
    if not isinstance(presets, dict):
        raise ConfigError(f"{where}: 'presets' expected a mapping of preset names, got {presets!r}")
    for name, body in presets.items():
        if name not in PRESETS:
            raise ConfigError(unknown_key_message(str(name), PRESETS, f"{where}: presets"))
        if not isinstance(body or {}, dict):
            raise ConfigError(f"{where}: presets.{name} expected a mapping of stages, got {body!r}")
        for stage, vals in (body or {}).items():
            if stage not in ("reference", "train", "sample"):
                raise ConfigError(
                    unknown_key_message(str(stage), ("reference", "train", "sample"), f"{where}: presets.{name}")
                )
            if not isinstance(vals or {}, dict):
                raise ConfigError(f"{where}: presets.{name}.{stage} expected a mapping of settings, got {vals!r}")
    if not isinstance(rd.get("train") or {}, dict):
        raise ConfigError(f"{where}: 'train' expected a mapping of TrainConfig fields, got {rd.get('train')!r}")


def typed_settings(settings: dict, system: System):
    """Check resolved stage settings once, before any stage runs: every key known, every value of the right
    type (:class:`~boltzdiff.config.PipelineConfig`, and the reference engine's config)."""
    from boltzdiff.config import PipelineConfig, ReferenceConfig

    kind = kind_of(system)
    if kind != "analytic":
        ReferenceConfig.from_dict(settings.get("reference"), kind)
    return PipelineConfig.from_settings(settings, kind)


def kind_of(system: System) -> str:
    """'analytic' (exact samples), 'molecule' (OpenMM) or 'particles' (torch particle targets)."""
    if system.target.has_exact_samples:
        return "analytic"
    return "molecule" if system.kind == "openmm" else "particles"


#: settings that may change between invocations on one run directory without invalidating its stages
_FREE_SETTINGS = {("train", "device"), ("train", "num_threads")}


def _changed(old, new, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every setting the run recorded whose value is now different (keys added to the
    presets after the run was started are not compared: the run did not know them)."""
    out = []
    for k, v in (old or {}).items():
        if k not in new:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(new[k], dict):
            out += _changed(v, new[k], key + ".")
        elif v != new[k] and tuple(key.split(".")[:2]) not in _FREE_SETTINGS:
            out.append(f"{key}: {v!r} -> {new[k]!r}")
    return out


def check_settings(out: Path, old: dict, new: dict, redo: str | None = None) -> None:
    """Refuse to reuse a finished stage whose settings changed since the run directory was started.

    Resuming used to keep such stages silently (a changed run.yaml had no effect on a finished stage). The
    reference, train and sample stages are compared in order; the first changed one whose output exists is an
    error unless ``redo`` names it or an earlier stage.
    """
    first_redo = STAGES.index(redo) if redo else len(STAGES)
    for i, stage in enumerate(STAGES[:3]):
        diff = _changed(old.get(stage), new.get(stage, {}), f"{stage}.")
        if diff and i < first_redo and stage_done(out, stage):
            shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
            raise ConfigError(
                f"{out}: the {stage} settings changed since this run directory was started ({shown}), so its "
                f"finished {stage} stage would be reused as it is; use another --out, or --redo {stage} to "
                f"redo {stage} and the stages after it"
            )


def n_models(settings: dict) -> int:
    """``train.n_models``: how many models the train stage fits (independently, on the same data, with seeds
    ``seed + 1000 m``); the sample stage splits its SMC runs evenly between them, so the spread of the pooled
    estimates includes the training's, not only the sampler's."""
    m = (settings.get("train") or {}).get("n_models", 1)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"train.n_models: expected a positive number of models to train, got {m!r}")
    return m
