"""``boltzdiff run``: reference data -> training (DSM warm-up, then DSM + DiffCLF) -> SMC ending at the exact
target -> analysis -> report, in one run directory. Each stage is skipped when its output exists, so an
interrupted run resumes by running the same command again; each stage is also a subcommand.

Run directory layout::

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

import copy
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from boltzdiff.config import TrainConfig, merge_config
from boltzdiff.errors import ConfigError
from boltzdiff.runinfo import atomic_save, atomic_write_json, write_run_info
from boltzdiff.systems import System, load_system

log = logging.getLogger(__name__)

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
STAGES = ("reference", "train", "sample", "analyze")


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_settings(system: System, preset: str, seed: int = 0, device: str = "cpu", loss: str | None = None) -> dict:
    """Stage settings: built-in preset < the system's run.yaml (``train:`` then ``presets.<preset>``) <
    ``loss`` (``dsm`` for the DSM-only comparison)."""
    if loss not in (None, "diffclf", "dsm"):
        raise ConfigError(f"--loss: expected 'diffclf' or 'dsm', got {loss!r}")
    if preset not in PRESETS:
        raise ConfigError(f"--preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    rd = system.run_defaults or {}
    s = _merge(PRESETS[preset], {"train": rd.get("train", {})})
    s = _merge(s, (rd.get("presets") or {}).get(preset, {}))
    s["train"] = {**s["train"], "seed": seed, "device": device}
    if loss is not None:
        s["train"]["loss"] = loss
    return s


def kind_of(system: System) -> str:
    """'analytic' (exact samples), 'molecule' (OpenMM) or 'particles' (torch particle targets)."""
    if system.target.has_exact_samples:
        return "analytic"
    return "molecule" if system.kind == "openmm" else "particles"


def _check_run_dir(out: Path, system: System, preset: str, loss: str | None = None) -> None:
    f = out / "pipeline.json"
    if f.exists():
        old = json.loads(f.read_text())
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


#: settings that may change between invocations on one run directory without invalidating its stages
_FREE_SETTINGS = {("train", "device"), ("train", "num_threads")}
#: what each stage leaves in the run directory (removed by ``redo``)
STAGE_OUTPUTS = {
    "reference": ("reference",),
    "train": ("train", "train_models"),
    "sample": ("samples.npz", "samples.json", "sample_runs"),
    "analyze": ("analysis.json", "report.md"),
}


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


def _stage_done(out: Path, stage: str) -> bool:
    return any((out / name).exists() for name in STAGE_OUTPUTS[stage])


def check_settings(out: Path, old: dict, new: dict, redo: str | None = None) -> None:
    """Refuse to reuse a finished stage whose settings changed since the run directory was started.

    Resuming used to keep such stages silently (a changed run.yaml had no effect on a finished stage). The
    reference, train and sample stages are compared in order; the first changed one whose output exists is an
    error unless ``redo`` names it or an earlier stage.
    """
    first_redo = STAGES.index(redo) if redo else len(STAGES)
    for i, stage in enumerate(STAGES[:3]):
        diff = _changed(old.get(stage), new.get(stage, {}), f"{stage}.")
        if diff and i < first_redo and _stage_done(out, stage):
            shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
            raise ConfigError(
                f"{out}: the {stage} settings changed since this run directory was started ({shown}), so its "
                f"finished {stage} stage would be reused as it is; use another --out, or --redo {stage} to "
                f"redo {stage} and the stages after it"
            )


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


# -- stages ---------------------------------------------------------------------------------------------
def stage_reference(system: System, out: Path, settings: dict, progress: bool) -> Path | None:
    """Reference samples: MD for molecules, MCMC for particle targets, none for analytic targets."""
    kind = kind_of(system)
    if kind == "analytic":
        return None
    ref = out / "reference"
    done = ref / "positions.npy"
    prog = ref / "progress.json"
    if done.exists() and prog.exists() and json.loads(prog.read_text()).get("completed"):
        log.info("reference: %s exists, skipped", done)
        return training_data(ref)
    from boltzdiff import md

    if kind == "molecule":
        rs = dict(settings["reference"])
        method = rs.pop("method", "md")
        if method == "metad":
            run_metad_reference(system, ref, rs, progress)
            return training_data(ref)
        if "weight_power" in rs:
            raise ConfigError("reference.weight_power: only with method: metad (plain MD frames carry no weights)")
        if method != "md":
            raise ConfigError(f"reference.method: expected 'md' or 'metad', got {method!r}")
        starts = rs.pop("starts", None)
        if starts is None:
            cfg = md.MDConfig(**{"ns": 1.0, **rs})
            md.run_md(system, ref, cfg, progress=progress)
        else:
            run_md_replicas(system, ref, rs, starts, progress)
    else:
        cfg = md.MCMCConfig(**settings["reference"])
        md.run_mcmc(system, ref, cfg, progress=progress)
    return done


def run_md_replicas(system: System, ref: Path, settings: dict, starts, progress: bool) -> None:
    """``reference.starts``: one MD replica per start structure (``null`` = the system's own), ``ns`` each,
    seeds ``seed + i``, in ``reference/replica<i>/`` (each resumable); their frames are then concatenated into
    ``reference/`` like a single run. The data's populations then reflect the starts, not the Boltzmann
    distribution (what a basin the MD cannot cross into needs); the SMC reweighting to the target corrects them.
    """
    from boltzdiff import md

    if not isinstance(starts, list) or not starts or not all(s is None or isinstance(s, str) for s in starts):
        raise ConfigError(
            f"reference.starts: expected a non-empty list of structure files (or null for the system's own), "
            f"got {starts!r}"
        )
    for s in starts:  # fail on a bad file before any MD runs
        if s is not None:
            md.read_start_structure(system, s)
    seed = int(settings.get("seed", 0))
    parts = []
    for i, start in enumerate(starts):
        log.info("reference: MD replica %d of %d from %s", i + 1, len(starts), start or "the system's structure")
        cfg = md.MDConfig(**{"ns": 1.0, **settings, "seed": seed + i, "start": start})
        parts.append(md.run_md(system, ref / f"replica{i}", cfg, progress=progress))
    pos = np.concatenate([np.asarray(p.positions, dtype=np.float32) for p in parts])
    en = np.concatenate([np.asarray(p.energies, dtype=np.float64) for p in parts])
    md._write_frames(ref, pos, en, system.topology)
    first = json.loads((ref / "replica0" / "progress.json").read_text())
    atomic_write_json(
        ref / "progress.json",
        {
            "settings": first["settings"],
            "frames": int(len(pos)),
            "replicas": [dict(start=s, frames=int(len(p.positions))) for s, p in zip(starts, parts)],
            "completed": True,
        },
    )
    if (ref / "replica0" / "topology.pdb").is_file():
        import shutil

        shutil.copy(ref / "replica0" / "topology.pdb", ref / "topology.pdb")


#: reference settings of ``method: metad`` (the rest of MetadConfig's fields are taken as they are)
_METAD_KEYS = {"ns", "build_ns", "save_every_ps", "temperature", "cvs", "seed", "weight_power"}


def run_metad_reference(system: System, ref: Path, settings: dict, progress: bool) -> None:
    """``reference.method: metad``: training data with Boltzmann populations from biased MD.

    Well-tempered metadynamics over two of the system's CVs (``cvs``, default ``[phi, psi]``) for ``build_ns``,
    then ``ns`` of MD under the frozen bias with a frame every ``save_every_ps`` (:func:`boltzdiff.metad.run_metad_2d`,
    resumable, in ``reference/metad/``). Each frame's exact weight for the unbiased ensemble is exp(+V/kT);
    the frames are resampled by these weights (systematic, as many as were saved) into
    ``reference/positions.npy``, so the data cross the barriers the plain MD cannot and carry (up to the
    weights' noise) the Boltzmann populations rather than those of the start structures. The raw frames and
    their log-weights stay in ``reference/metad/`` (``frames.npy``, ``log_weights.npy``), the weights' Kish ESS
    and the number of distinct frames kept in ``progress.json``.

    ``weight_power: g`` (0 <= g <= 1, default 1): the training set is resampled by exp(g V/kT) instead
    (``reference/train_positions.npy``; ``positions.npy`` keeps the Boltzmann resampling, which the analysis
    scores against). Its distribution is the Boltzmann one times exp(-(1 - g) V/kT): the minor basins the bias
    filled least keep more of their frames (on alanine dipeptide g = 0.5 keeps 3x the distinct phi > 0 frames
    of g = 1), and the SMC's importance weights to the exact target undo the difference.
    """
    from boltzdiff import md
    from boltzdiff.metad import MetadConfig, reweight_log_weights, run_metad_2d
    from boltzdiff.samplers.resampling import kish_ess, systematic_resample

    known = _METAD_KEYS | (
        set(MetadConfig.__dataclass_fields__) - {"build_ps", "prod_ps", "stride_steps", "save_positions"}
    )
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"reference (method: metad): unknown setting(s) {unknown}; expected some of {sorted(known)}")
    t = settings.get("temperature")
    if t is not None and abs(float(t) - float(system.temperature)) > 1e-6:
        raise ConfigError(
            f"reference.temperature: metadynamics runs at the system's temperature ({system.temperature} K), "
            f"got {t}; leave it out"
        )
    power = settings.get("weight_power", 1.0)
    if isinstance(power, bool) or not isinstance(power, int | float) or not 0.0 <= power <= 1.0:
        raise ConfigError(f"reference.weight_power: expected a number in [0, 1], got {power!r}")
    names = settings.get("cvs", ["phi", "psi"])
    cv_spec = (system.spec or {}).get("cvs") or {}
    if not (isinstance(names, list) and len(names) == 2 and all(n in cv_spec for n in names)):
        raise ConfigError(f"reference.cvs: expected two of the system's dihedral CVs {sorted(cv_spec)}, got {names!r}")
    idx = [cv_spec[n] for n in names]
    if not all(isinstance(i, list) and len(i) == 4 for i in idx):
        raise ConfigError(f"reference.cvs: {names} must be dihedrals (4 atom indices each) in system.yaml cvs")
    rest = {k: v for k, v in settings.items() if k not in _METAD_KEYS}
    step_fs = float(rest.get("timestep_fs", 1.0))
    stride = round(float(settings.get("save_every_ps", 0.5)) * 1000.0 / step_fs)
    if stride < 1:
        raise ConfigError(
            f"reference.save_every_ps: expected at least one time step, got {settings.get('save_every_ps')}"
        )
    cfg = MetadConfig(
        **rest,
        build_ps=1000.0 * float(settings.get("build_ns", 1.0)),
        prod_ps=1000.0 * float(settings.get("ns", 4.0)),
        stride_steps=stride,
        seed=int(settings.get("seed", 0)),
        save_positions=True,
    )
    res = run_metad_2d(system, ref / "metad", cfg, idx[0], idx[1], progress=progress)
    frames = np.asarray(res["frames"], dtype=np.float32)
    log_w = torch.as_tensor(reweight_log_weights(res["bias_kjmol"], res["kT_kjmol"]), dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    pick = systematic_resample(log_w, len(frames), gen).numpy()
    pos = frames[pick]
    en = system.target.energy(torch.as_tensor(pos.reshape(len(pos), -1), dtype=torch.float64)).detach().cpu().numpy()
    md._save_npy(ref / "metad" / "frames.npy", frames)
    md._save_npy(ref / "metad" / "log_weights.npy", log_w.numpy())
    md._write_frames(ref, pos, np.asarray(en, dtype=np.float64), system.topology)
    extra = write_tempered_training_set(ref, frames, log_w.numpy(), float(power), int(cfg.seed))
    atomic_write_json(
        ref / "progress.json",
        {
            "settings": {
                **dataclasses.asdict(cfg),
                "method": "metad",
                "cvs": names,
                "temperature": float(system.temperature),
            },
            "frames": int(len(pos)),
            "frames_distinct": int(len(np.unique(pick))),
            "weights_ess": kish_ess(log_w),
            "weight_power": float(power),
            **extra,
            "completed": True,
        },
    )


def write_tempered_training_set(ref: Path, frames: np.ndarray, log_w: np.ndarray, power: float, seed: int) -> dict:
    """``reference.weight_power`` < 1: resample the metadynamics ``frames`` by ``exp(power log_w)`` into
    ``ref/train_positions.npy`` (as many as there are frames; systematic, its own stream from ``seed``) and
    return what progress.json records about it; with ``power`` 1 write nothing (the training set is
    ``positions.npy``) and return {}."""
    from boltzdiff import md
    from boltzdiff.samplers.resampling import kish_ess, systematic_resample

    if power == 1.0:
        return {}
    lw = torch.as_tensor(power * np.asarray(log_w, dtype=np.float64))
    pick = systematic_resample(lw, len(frames), torch.Generator().manual_seed(seed + 1)).numpy()
    md._save_npy(ref / "train_positions.npy", np.asarray(frames, dtype=np.float32)[pick])
    return {"train_frames_distinct": int(len(np.unique(pick))), "train_weights_ess": kish_ess(lw)}


def training_data(ref: Path) -> Path:
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


def n_models(settings: dict) -> int:
    """``train.n_models``: how many models the train stage fits (independently, on the same data, with seeds
    ``seed + 1000 m``); the sample stage splits its SMC runs evenly between them, so the spread of the pooled
    estimates includes the training's, not only the sampler's."""
    m = (settings.get("train") or {}).get("n_models", 1)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"train.n_models: expected a positive number of models to train, got {m!r}")
    return m


def model_dir(out: Path, m: int) -> Path:
    """Where model ``m`` of a run directory lives: ``train/`` for the first, ``train_models/<m>/`` after."""
    return Path(out) / "train" if m == 0 else Path(out) / "train_models" / str(m)


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
        _exit_with_parent(int(job["parent_pid"]))
    system = load_system(job["system_path"], job["variant"])
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
        jobs = [_job(system, out, settings, threads, data=None if data is None else str(data), m=m) for m in todo]
        log.info("train: %d models in %d worker processes", len(todo), min(workers, len(todo)))
        _in_processes(
            _train_worker, jobs, min(workers, len(todo)), "trained models", "train: model %d finished", progress
        )
        return
    for m in todo:
        cfg = _train_config(system, out, settings, data, m)
        tdir = model_dir(out, m)
        if n_m > 1:
            log.info("train: model %d of %d (seed %d) -> %s", m + 1, n_m, cfg.seed, tdir)
        train(cfg, tdir, resume=(tdir / "ckpt.pt").exists(), progress=progress)


def torsion_spec(system: System, spec, final_steps):
    """``sample.torsion: {bonds: cvs | auto | [[j, k], ...], width: radians, bridge_steps: N}`` -> the
    :class:`~boltzdiff.samplers.torsion.TorsionMoves` and ``bridge_steps``, or ``(None, 0)`` for null. ``cvs``:
    the central bonds of the system's dihedral cvs (alanine dipeptide: phi and psi); ``auto``: every rotatable
    bond of the topology (methyl rotations and peptide bonds too). ``sample.final_mcmc_steps`` sweeps at the
    target use them (one move per sweep)."""
    if isinstance(final_steps, bool) or not isinstance(final_steps, int) or final_steps < 0:
        raise ConfigError(f"sample.final_mcmc_steps: expected an integer >= 0, got {final_steps!r}")
    if spec is None:
        return None, 0
    keys = {"bonds", "width", "bridge_steps"}
    if not isinstance(spec, dict) or not set(spec) <= keys:
        raise ConfigError(
            f"sample.torsion: expected {{bonds: cvs | auto | [[j, k], ...], width: radians (optional), "
            f"bridge_steps: integer (optional)}} or null, got {spec!r}"
        )
    from boltzdiff.samplers.torsion import torsion_moves

    if system.topology is None or len(system.target.event_shape) != 2 or system.target.event_shape[1] != 3:
        raise ConfigError(f"sample.torsion: system {system.name!r} is not a molecule with a topology (bonds)")
    bonds = [(b[0].index, b[1].index) for b in system.topology.bonds]
    n_atoms = system.target.event_shape[0]
    which = spec.get("bonds", "cvs")
    if which == "cvs":
        cvs = {k: v for k, v in (system.spec.get("cvs") or {}).items() if isinstance(v, list) and len(v) == 4}
        if not cvs:
            raise ConfigError(f"sample.torsion: bonds 'cvs', but system {system.name!r} declares no dihedral cvs")
        about = [(int(v[1]), int(v[2])) for v in cvs.values()]
    elif which == "auto":
        about = None
    elif isinstance(which, list) and all(isinstance(b, list) and len(b) == 2 for b in which):
        about = [(int(a), int(b)) for a, b in which]
    else:
        raise ConfigError(f"sample.torsion.bonds: expected 'cvs', 'auto' or a list of [j, k] atom pairs, got {which!r}")
    width = spec.get("width", math.pi)
    if isinstance(width, bool) or not isinstance(width, int | float):
        raise ConfigError(f"sample.torsion.width: expected an angle in (0, pi] radians, got {width!r}")
    steps = spec.get("bridge_steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"sample.torsion.bridge_steps: expected an integer >= 0, got {steps!r}")
    return torsion_moves(bonds, n_atoms, about, float(width)), steps


def cv_strata(system: System, spec):
    """``sample.bridge_strata: {cv: NAME, edges: [...]}`` -> ``x (n, d) -> (n,)`` labels: which interval of the
    edges the dihedral ``cvs.NAME`` of the system's spec falls in (radians, wrapped to [-pi, pi); mirrored
    molecules are mapped back first, as in the analysis). With ``wrap: true`` the interval below the first edge
    and the one above the last are one stratum (the arc across ±pi), so ``{cv: phi, edges: [0, 2], wrap:
    true}`` gives two strata, the phi > 0 basin and the rest. A list of such specs labels the cells of their
    product (e.g. phi intervals x psi intervals). ``mirror: false`` (in any of them) labels the configurations
    as they are, without mapping mirror images back: right for a model that prefers one hand (``pairmlp:
    {chiral_norm: true}``), whose noisy configurations' apparent handedness is noise that the reverse process
    removes, while their phi already says where they end. ``None`` -> None."""
    if spec is None:
        return None
    cvs = system.spec.get("cvs") or {}
    specs = spec if isinstance(spec, list) and spec else [spec]
    names, edge_sets, wraps = [], [], []
    mirror = True
    for one in specs:
        if (
            not isinstance(one, dict)
            or not {"cv", "edges"} <= set(one) <= {"cv", "edges", "wrap", "mirror"}
            or not isinstance(one["edges"], list)
            or not isinstance(one.get("wrap", False), bool)
            or not isinstance(one.get("mirror", True), bool)
        ):
            raise ConfigError(
                f"sample.bridge_strata: expected {{cv: NAME, edges: [radians, ...], wrap: true|false (optional), "
                f"mirror: true|false (optional)}}, a list of them, or null, got {spec!r}"
            )
        mirror = mirror and bool(one.get("mirror", True))
        wraps.append(bool(one.get("wrap", False)) and len(one["edges"]) >= 2)
        if one["cv"] not in cvs:
            raise ConfigError(
                f"sample.bridge_strata: cv {one['cv']!r} is not among the system's cvs ({sorted(cvs) or 'none'})"
            )
        try:
            edge_sets.append(np.sort(np.asarray([float(e) for e in one["edges"]])))
        except (TypeError, ValueError):
            raise ConfigError(f"sample.bridge_strata: edges must be numbers (radians), got {one['edges']!r}") from None
        names.append(one["cv"])
    from boltzdiff.cv import dihedrals
    from boltzdiff.models.egnn import chiral_quads_of, fix_chirality, reference_chirality

    quads = chiral_quads_of(system) if mirror else None
    ref_sign = reference_chirality(torch.as_tensor(np.asarray(system.positions))[None], quads) if quads else None
    idx = [cvs[name] for name in names]
    n_atoms = system.target.event_shape[0]

    def labels(x: torch.Tensor) -> torch.Tensor:
        xs = x.detach().double().cpu().reshape(-1, n_atoms, 3)
        if quads:
            xs = fix_chirality(xs, quads, ref_sign).x
        angles = dihedrals(xs.numpy(), idx, system.topology)
        angles = (angles + np.pi) % (2 * np.pi) - np.pi
        cell = np.zeros(len(angles), dtype=np.int64)
        for k, (edges, wrap) in enumerate(zip(edge_sets, wraps, strict=True)):  # mixed-radix product-cell index
            n_cells = len(edges) if wrap else len(edges) + 1
            cell = cell * n_cells + np.searchsorted(edges, angles[:, k]) % n_cells
        return torch.as_tensor(cell)

    return labels


def sampling_target(system: System, model, restrict_chirality: bool = False):
    """The exact target for SMC; particle targets get the model's centre-of-mass Gaussian as a gauge.
    ``restrict_chirality`` (``sample.restrict_chirality``): the target restricted to the hand of the system's
    structure at its declared ``chiral_quads`` (:class:`~boltzdiff.targets.base.HandRestricted`)."""
    from boltzdiff.targets.base import ComRestrained, HandRestricted

    t = system.target
    if kind_of(system) != "analytic" and len(t.event_shape) == 2:
        a2_0 = float(model.a2[0])
        t = ComRestrained(t, a2_0)
    if restrict_chirality:
        from boltzdiff.models.egnn import chiral_quads_of, reference_chirality

        quads = chiral_quads_of(system)
        if not quads:
            raise ConfigError(
                f"sample.restrict_chirality: system {system.name!r} declares no chiral_quads in its system.yaml"
            )
        n = t.event_shape[0]
        t = HandRestricted(
            t, quads, reference_chirality(torch.as_tensor(np.asarray(system.positions)).reshape(1, n, 3), quads)
        )
    return t


@dataclasses.dataclass
class _FinishedRun:
    """What the sample stage keeps of one SMC run (and checkpoints in ``sample_runs/``)."""

    x: torch.Tensor
    log_w: torch.Tensor
    summary: dict
    ess_trace: torch.Tensor
    lineage: torch.Tensor | None = None  # None in runs checkpointed before lineages were recorded


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def model_of_run(r: int, n_runs: int, n_m: int) -> int:
    """The model SMC run ``r`` of ``n_runs`` samples (runs split into ``n_m`` equal consecutive blocks)."""
    return r * n_m // n_runs


def _sample_inputs(system: System, out: Path, settings: dict, model: int = 0) -> dict:
    """Validate ``settings['sample']`` and build what every SMC run of model ``model`` shares: the (refined)
    model, the target and the keyword arguments of :func:`boltzdiff.samplers.smc` (all but the generator)."""
    from boltzdiff.samplers import MCMCConfig
    from boltzdiff.train import load_run

    s = settings["sample"]
    n = int(s["n"])
    if n < 1:
        raise ConfigError(f"sample.n: expected a positive number of particles, got {n}")
    n_runs = s.get("n_runs", 1)
    if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 1 or n % n_runs:
        raise ConfigError(f"sample.n_runs: expected a positive divisor of sample.n={n}, got {n_runs!r}")
    n_m = n_models(settings)
    if n_runs % n_m:
        raise ConfigError(
            f"sample.n_runs: expected a multiple of train.n_models={n_m} (each model gets as many SMC runs), "
            f"got {n_runs}"
        )
    strata = cv_strata(system, s.get("bridge_strata"))
    max_sigma = s.get("strata_max_sigma")
    if max_sigma is not None and (
        isinstance(max_sigma, bool) or not isinstance(max_sigma, int | float) or not max_sigma > 0 or strata is None
    ):
        raise ConfigError(
            f"sample.strata_max_sigma: expected a positive noise scale (with sample.bridge_strata) or null, "
            f"got {max_sigma!r}"
        )
    min_share = s.get("strata_min_share", 0.0) or 0.0
    if (
        isinstance(min_share, bool)
        or not isinstance(min_share, int | float)
        or not 0 <= min_share <= 1
        or (min_share and strata is None)
    ):
        raise ConfigError(
            f"sample.strata_min_share: expected a share of the particles in [0, 1] (with sample.bridge_strata) or "
            f"null, got {min_share!r}"
        )
    if not isinstance(s.get("strata_denoised", False), bool):
        raise ConfigError(f"sample.strata_denoised: expected true or false, got {s.get('strata_denoised')!r}")
    hand = s.get("restrict_chirality", False)
    if not isinstance(hand, bool):
        raise ConfigError(f"sample.restrict_chirality: expected true or false, got {hand!r}")
    kv = s.get("kernel_variance") or "fisher"
    if kv not in ("fisher", "matrix", "model"):
        raise ConfigError(f"sample.kernel_variance: expected 'fisher', 'matrix' or 'model', got {kv!r}")
    # particles whose energy is rotation-invariant: the matrix kernel follows each one's orientation
    shape = system.target.event_shape
    particles = tuple(int(v) for v in shape) if kv == "matrix" and len(shape) == 2 else None
    final_steps = s.get("final_mcmc_steps", 0)
    torsion, torsion_steps = torsion_spec(system, s.get("torsion"), final_steps)
    final_resample = s.get("final_resample", False)
    if not isinstance(final_resample, bool) or (final_resample and not final_steps):
        raise ConfigError(
            f"sample.final_resample: expected true or false, and true only with sample.final_mcmc_steps > 0, "
            f"got {final_resample!r}"
        )
    refine = s.get("refine") or 1
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 1:
        raise ConfigError(f"sample.refine: expected an integer >= 1 (levels per trained level step), got {refine!r}")
    run = load_run(model_dir(out, model), device=settings["train"].get("device", "cpu"))
    if refine > 1:  # SMC through refine - 1 untrained levels between every two trained ones
        from boltzdiff.models.energy import refine_levels

        run.model = refine_levels(run.model, refine)
    mcmc = MCMCConfig("mala", n_steps=int(s["mcmc_steps"])) if int(s.get("mcmc_steps", 0)) > 0 else None
    target = sampling_target(system, run.model, restrict_chirality=hand) if s.get("to_target", True) else None
    kwargs = dict(
        levels=s.get("levels"),
        kernel_variance=kv,
        particles=particles,
        mcmc=mcmc,
        n_bridge=int(s.get("n_bridge", 16)),
        bridge_cess=None if s.get("bridge_cess") is None else float(s["bridge_cess"]),
        bridge_mcmc=MCMCConfig("mala", n_steps=int(s.get("bridge_mcmc_steps", 2))),
        max_bridge=int(s.get("max_bridge", 2000)),
        bridge_strata=strata,
        strata_max_sigma=None if max_sigma is None else float(max_sigma),
        strata_min_share=float(min_share),
        strata_denoised=bool(s.get("strata_denoised", False)),
        torsion=torsion,
        bridge_torsion_steps=torsion_steps,
        final_mcmc_steps=final_steps if target is not None else 0,
        final_resample=final_resample and target is not None,
    )
    return dict(model=run.model, target=target, kwargs=kwargs, n=n, n_runs=n_runs)


def _smc_run(inputs: dict, r: int, seed: int, progress: bool) -> _FinishedRun:
    """SMC run ``r`` of the sample stage (its own generator, ``seed + 1 + 7919 r``)."""
    from boltzdiff.samplers import smc

    kw = dict(inputs["kwargs"])
    kw["mcmc"] = copy.deepcopy(kw["mcmc"])
    kw["bridge_mcmc"] = copy.deepcopy(kw["bridge_mcmc"])
    res = smc(
        inputs["model"],
        inputs["n"] // inputs["n_runs"],
        generator=torch.Generator().manual_seed(seed + 1 + 7919 * r),
        target=inputs["target"],
        progress=progress,
        **kw,
    )
    return _FinishedRun(
        x=res.x.detach().double().cpu(),
        log_w=res.log_w.detach().double().cpu(),
        summary=res.summary(),
        ess_trace=res.ess_trace.detach().cpu(),
        lineage=None if res.lineage is None else res.lineage.cpu(),
    )


def _save_part(part: Path, tag: dict, done: _FinishedRun) -> None:
    atomic_save(part, lambda p: torch.save(dict(tag=tag, result=vars(done)), p))


def _exit_with_parent(parent_pid: int, every_s: float = 2.0) -> None:
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


def _smc_worker(job: dict) -> int:
    """One SMC run in a worker process (``sample`` with ``workers > 1``): rebuilds the system and the model
    from the run directory, runs SMC run ``job['r']`` and writes it to its part file; returns ``r``."""
    torch.set_num_threads(int(job["threads"]))
    if job.get("parent_pid"):
        _exit_with_parent(int(job["parent_pid"]))
    system = load_system(job["system_path"], job["variant"])
    out = Path(job["out"])
    inputs = _sample_inputs(system, out, job["settings"], model=int(job.get("model", 0)))
    done = _smc_run(inputs, job["r"], job["seed"], progress=False)
    _save_part(Path(job["part"]), job["tag"], done)
    return int(job["r"])


def _job(system: System, out: Path, settings: dict, threads: int, **extra) -> dict:
    """What a worker process needs to rebuild the system and the run directory's settings, plus ``extra``."""
    return dict(
        system_path=str(system.path or system.name),
        variant=system.variant,
        out=str(out),
        settings=settings,
        threads=threads,
        parent_pid=os.getpid(),
        **extra,
    )


def _in_processes(fn, jobs: list, workers: int, desc: str, done_msg: str, progress: bool) -> None:
    """``fn(job) -> int`` for every job in ``workers`` spawned processes (no state shared with this one); a
    worker's exception is raised here, and on any error or interrupt the running workers are stopped (what
    they finished stays on disk for a resume)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, j) for j in jobs]
        bar = tqdm(total=len(futures), desc=desc, disable=not progress)
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


def _run_parallel(
    system: System,
    out: Path,
    settings: dict,
    seed: int,
    todo: list,
    parts: dict,
    tag: dict,
    workers: int,
    progress: bool,
) -> None:
    """Run the SMC runs ``todo`` in ``workers`` processes (spawned: no state shared with this one, each
    single-threaded unless the cores allow more); each writes its part file, which the caller then reads."""
    threads = max(1, usable_cores() // workers)
    jobs = [
        _job(
            system,
            out,
            settings,
            threads,
            seed=seed,
            r=r,
            model=model_of_run(r, len(parts), n_models(settings)),
            part=str(parts[r]),
            tag=tag,
        )
        for r in todo
    ]
    log.info("sample: %d SMC runs in %d worker processes (%d thread(s) each)", len(todo), workers, threads)
    _in_processes(_smc_worker, jobs, workers, "SMC runs", "sample: SMC run %d finished", progress)


def stage_sample(system: System, out: Path, settings: dict, progress: bool, seed: int, workers: int | None = None):
    """SMC from the trained model to the exact target: ``sample.n_runs`` independent runs of ``n / n_runs``
    particles, pooled by their normalising constants. ``workers`` processes run them side by side (default:
    one per usable CPU core, at most ``n_runs``; 1 on a GPU); the runs and their results do not depend on it."""
    f = out / "samples.npz"
    if f.exists() and (out / "samples.json").exists():
        log.info("sample: %s exists, skipped", f)
        return
    s = settings["sample"]
    n_m = n_models(settings)
    inputs = _sample_inputs(system, out, settings)
    n, n_runs, target = inputs["n"], inputs["n_runs"], inputs["target"]
    models_of = [model_of_run(r, n_runs, n_m) for r in range(n_runs)]
    device = str(settings["train"].get("device", "cpu"))
    if workers is None:
        workers = min(n_runs, usable_cores()) if device == "cpu" else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers: expected a positive number of processes, got {workers!r}")
    t0 = time.time()
    # each finished SMC run is kept in sample_runs/ (tagged with what it was run with), so an interrupted stage
    # resumes at the next run instead of starting over; the folder goes once samples.npz is written
    part_dir = out / "sample_runs"
    tag = dict(sample=dict(s), seed=seed, n_runs=n_runs)
    if n_m > 1:  # parts of a run directory with another number of models are redone
        tag["n_models"] = n_m
    parts = {r: part_dir / f"run{r}.pt" for r in range(n_runs)}

    def restore(r: int) -> _FinishedRun | None:
        part = parts[r]
        if not part.exists():
            return None
        try:
            blob = torch.load(part, map_location="cpu", weights_only=False)
        except Exception as exc:  # a damaged file is redone, not trusted
            log.warning("sample: could not read %s (%s); rerunning SMC run %d", part, exc, r + 1)
            return None
        if blob.get("tag") != tag:
            log.warning("sample: %s was made with other settings; rerunning SMC run %d", part, r + 1)
            return None
        return _FinishedRun(**blob["result"])

    results: dict[int, _FinishedRun] = {}
    for r in range(n_runs):
        got = restore(r)
        if got is not None:
            log.info("sample: SMC run %d of %d restored from %s", r + 1, n_runs, parts[r])
            results[r] = got
    todo = [r for r in range(n_runs) if r not in results]
    if min(workers, len(todo)) > 1:  # independent runs side by side in worker processes
        part_dir.mkdir(parents=True, exist_ok=True)
        _run_parallel(system, out, settings, seed, todo, parts, tag, min(workers, len(todo)), progress)
        for r in todo:
            got = restore(r)
            if got is None:
                raise RuntimeError(f"sample: SMC run {r + 1} finished in a worker but {parts[r]} cannot be read")
            results[r] = got
    else:
        by_model = {0: inputs}
        for r in todo:  # independent SMC runs (their spread is the honest error bar), pooled by Z_r
            m = models_of[r]
            if m not in by_model:
                by_model = {m: _sample_inputs(system, out, settings, model=m)}  # one model in memory at a time
            if n_runs > 1:
                log.info(
                    "sample: SMC run %d of %d (%d particles%s)",
                    r + 1,
                    n_runs,
                    n // n_runs,
                    f", model {m + 1} of {n_m}" if n_m > 1 else "",
                )
            done = _smc_run(by_model[m], r, seed, progress)
            if n_runs > 1:
                _save_part(parts[r], tag, done)
            results[r] = done
    results = [results[r] for r in range(n_runs)]
    x = torch.cat([res.x for res in results])
    log_w = torch.cat([res.log_w for res in results])
    run_of = np.repeat(np.arange(n_runs), n // n_runs)
    if kind_of(system) != "analytic" and len(system.target.event_shape) == 2:
        n_, sd = system.target.event_shape
        xr = x.reshape(-1, n_, sd)
        x = (xr - xr.mean(1, keepdim=True)).reshape(x.shape[0], -1)
    summaries = [res.summary for res in results]
    summary = dict(
        summaries[0],
        wall_s=time.time() - t0,
        to_target=bool(target is not None),
        seed=seed + 1,
        ess_trace=results[0].ess_trace.tolist(),
    )
    if n_runs > 1:
        summary.update(
            n=n,
            n_runs=n_runs,
            ess=min(d["ess"] for d in summaries),
            ess_min=min(d["ess_min"] for d in summaries),
            n_resample=sum(d["n_resample"] for d in summaries),
            n_model_evals=sum(d["n_model_evals"] for d in summaries),
            n_target_evals=sum(d["n_target_evals"] for d in summaries),
            n_nonfinite=sum(d["n_nonfinite"] for d in summaries),
            n_bridge=max(d["n_bridge"] for d in summaries),
            n_lineages=min(int(d.get("n_lineages", d["n"])) for d in summaries),
            runs=[
                dict(d, ess_final_step=float(res.ess_trace[-1]), **({"model": m} if n_m > 1 else {}))
                for d, res, m in zip(summaries, results, models_of)
            ],
        )
        if n_m > 1:
            summary["n_models"] = n_m

    def save(p):
        with open(p, "wb") as fh:
            extra = dict(run=run_of) if n_runs > 1 else {}
            if n_m > 1:
                extra["model"] = np.asarray(models_of)[run_of]
            if all(res.lineage is not None for res in results):  # distinct labels across runs
                m = n // n_runs
                extra["lineage"] = np.concatenate([res.lineage.numpy() + k * m for k, res in enumerate(results)])
            np.savez(fh, x=x.numpy(), log_w=log_w.numpy(), **extra)

    atomic_save(f, save)
    atomic_write_json(out / "samples.json", summary)
    if part_dir.is_dir():
        import shutil

        shutil.rmtree(part_dir, ignore_errors=True)


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
) -> dict:
    """Run (or resume) every stage; returns analysis.json's contents. ``loss='dsm'`` trains DSM-only;
    ``workers``: processes for the sample stage's independent SMC runs and, with ``train.n_models`` > 1, for
    the trainings (default: one per CPU core).

    Resuming with settings that changed since the run directory was started is refused for finished stages
    (:func:`check_settings`); ``redo`` (a stage name) deletes that stage's outputs and those after it first.
    """
    from boltzdiff.analysis.pipeline_analysis import analyze_run

    if redo is not None and redo not in STAGES:
        raise ConfigError(f"--redo: expected one of {list(STAGES)}, got {redo!r}")
    system = load_system(system_name, variant)
    out = Path(out_dir)
    _check_run_dir(out, system, preset, loss)
    old = json.loads((out / "pipeline.json").read_text()) if (out / "pipeline.json").exists() else None
    if loss is None and old is not None:  # resuming: keep the loss the run started with
        loss = old.get("settings", {}).get("train", {}).get("loss")
    out.mkdir(parents=True, exist_ok=True)
    settings = resolve_settings(system, preset, seed, device, loss)
    if old is not None:
        check_settings(out, old.get("settings") or {}, settings, redo)
    if redo is not None:
        removed = _remove_stage_outputs(out, redo)
        log.info("--redo %s: removed %s", redo, ", ".join(removed) or "nothing (no outputs yet)")
    if old is None or redo is not None or old.get("settings") != settings:  # record what the stages now run with
        atomic_write_json(
            out / "pipeline.json",
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
            data = training_data(out / "reference")
        stage_train(system, out, settings, data, progress, workers=workers)
    if "sample" in stages:
        stage_sample(system, out, settings, progress, seed, workers=workers)
    result = {}
    if "analyze" in stages:
        result = analyze_run(out, system=system, progress=bool(progress))
    log.info("pipeline finished in %.0f s; see %s", time.time() - t0, out / "report.md")
    return result
