"""The reference stage of ``boltzdiff run``: MD (one run or replicas from several starts), well-tempered
metadynamics reweighted to the Boltzmann populations, or MCMC for particle targets."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from boltzdiff.config import ReferenceConfig
from boltzdiff.errors import ConfigError
from boltzdiff.io import atomic_write_json, save_npy
from boltzdiff.pipeline.rundir import training_data_path
from boltzdiff.pipeline.settings import kind_of
from boltzdiff.reference.chains import ChainConfig, run_chains
from boltzdiff.reference.frames import read_start_structure, write_frames
from boltzdiff.reference.md import MDConfig, run_md
from boltzdiff.systems import System

log = logging.getLogger(__name__)


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
        return training_data_path(ref)

    ReferenceConfig.from_dict(settings["reference"], kind)  # unknown or bad settings fail here, before any MD
    if kind == "molecule":
        rs = dict(settings["reference"])
        method = rs.pop("method", "md")
        if method == "metad":
            run_metad_reference(system, ref, rs, progress)
            return training_data_path(ref)
        starts = rs.pop("starts", None)
        if starts is None:
            cfg = MDConfig(**{"ns": 1.0, **rs})
            run_md(system, ref, cfg, progress=progress)
        else:
            run_md_replicas(system, ref, rs, starts, progress)
    else:
        cfg = ChainConfig(**settings["reference"])
        run_chains(system, ref, cfg, progress=progress)
    return done


def run_md_replicas(system: System, ref: Path, settings: dict, starts, progress: bool) -> None:
    """``reference.starts``: one MD replica per start structure (``null`` = the system's own), ``ns`` each,
    seeds ``seed + i``, in ``reference/replica<i>/`` (each resumable); their frames are then concatenated into
    ``reference/`` like a single run. The data's populations then reflect the starts, not the Boltzmann
    distribution (what a basin the MD cannot cross into needs); the SMC reweighting to the target corrects them.
    """

    ReferenceConfig(starts=starts).validate()
    for s in starts:  # fail on a bad file before any MD runs
        if s is not None:
            read_start_structure(system, s)
    seed = int(settings.get("seed", 0))
    parts = []
    for i, start in enumerate(starts):
        log.info("reference: MD replica %d of %d from %s", i + 1, len(starts), start or "the system's structure")
        cfg = MDConfig(**{"ns": 1.0, **settings, "seed": seed + i, "start": start})
        parts.append(run_md(system, ref / f"replica{i}", cfg, progress=progress))
    pos = np.concatenate([np.asarray(p.positions, dtype=np.float32) for p in parts])
    en = np.concatenate([np.asarray(p.energies, dtype=np.float64) for p in parts])
    write_frames(ref, pos, en, system.topology)
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
    then ``ns`` of MD under the frozen bias with a frame every ``save_every_ps``
    (:func:`boltzdiff.reference.metad.run_metad_2d`, resumable, in ``reference/metad/``). Each frame's exact
    weight for the unbiased ensemble is exp(+V/kT);
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
    from boltzdiff.reference.metad import MetadConfig, reweight_log_weights, run_metad_2d
    from boltzdiff.samplers.resampling import kish_ess, systematic_resample

    ReferenceConfig.from_dict({"method": "metad", **settings}, "molecule")
    t = settings.get("temperature")
    if t is not None and abs(float(t) - float(system.temperature)) > 1e-6:
        raise ConfigError(
            f"reference.temperature: metadynamics runs at the system's temperature ({system.temperature} K), "
            f"got {t}; leave it out"
        )
    power = settings.get("weight_power", 1.0)
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
    save_npy(ref / "metad" / "frames.npy", frames)
    save_npy(ref / "metad" / "log_weights.npy", log_w.numpy())
    write_frames(ref, pos, np.asarray(en, dtype=np.float64), system.topology)
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
    from boltzdiff.samplers.resampling import kish_ess, systematic_resample

    if power == 1.0:
        return {}
    lw = torch.as_tensor(power * np.asarray(log_w, dtype=np.float64))
    pick = systematic_resample(lw, len(frames), torch.Generator().manual_seed(seed + 1)).numpy()
    save_npy(ref / "train_positions.npy", np.asarray(frames, dtype=np.float32)[pick])
    return {"train_frames_distinct": int(len(np.unique(pick))), "train_weights_ess": kish_ess(lw)}
