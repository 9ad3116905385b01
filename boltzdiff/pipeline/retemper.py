"""A finished ``boltzdiff run`` asked a new question: the same trained models as the proposal, the SMC ending at
the exact target at another temperature ``T`` (``boltzdiff sample RUN_DIR --temperature T``).

The new directory is a run directory of its own (``pipeline.json`` records ``temperature_K`` and the source run),
so ``boltzdiff analyze`` reads it like any other:

    train/ ...             the source run's models, copied (no checkpoints)
    reference/             the source run's reference frames reweighted to T: the raw metadynamics frames (their
                           bias weights) or the MD frames, times ``exp(u - u_T)``, resampled; ``tempered.json``
                           says how many frames carried the weight (Kish ESS) and what it cost
    samples.npz/.json      the run's own sample recipe (strata, sweeps) at T
    analysis.json, ...     ΔF, F(CV) and the energy checks at T (no model-only block: the model learnt T_sys)

Only the new target-energy evaluations are counted: the sampling's and the reference frames' energies.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.io import atomic_write_text, load_npy
from boltzdiff.pipeline.rundir import read_pipeline_json, write_pipeline_json

log = logging.getLogger(__name__)


def default_out(run_dir: Path, temperature: float) -> Path:
    """``RUN_DIR/at_<T>K`` (``T`` without trailing zeros)."""
    return Path(run_dir) / f"at_{temperature:g}K"


def tempered_reference(src: Path, dst: Path, system, beta: float, seed: int) -> dict:
    """Write ``dst/reference/``: the source run's reference frames reweighted from ``T_sys`` (``system``, the
    source run's, untempered) to ``T_sys / beta``.

    Metadynamics runs keep their raw frames and bias log-weights (``reference/metad/``): those are used, with
    ``log w_T = log w + (1 - beta) u``; plain MD frames (Boltzmann at ``T_sys``) get ``(1 - beta) u``. The frames
    are resampled systematically to their number; energies are written in ``kT`` at ``T`` (``beta u``)."""
    from boltzdiff.analysis.pipeline_analysis import target_energies
    from boltzdiff.reference.frames import write_frames
    from boltzdiff.samplers.resampling import kish_ess, systematic_resample

    ref, out = Path(src) / "reference", Path(dst) / "reference"
    raw, raw_w = ref / "metad" / "frames.npy", ref / "metad" / "log_weights.npy"
    n_evals = 0
    if raw.exists() and raw_w.exists():
        frames = load_npy(raw, "the source run's metadynamics frames")
        log_w = np.asarray(load_npy(raw_w, "their bias log-weights"), dtype=np.float64)
        u = target_energies(system.target, np.asarray(frames, dtype=np.float64).reshape(len(frames), -1))
        n_evals = len(frames)
        source = "metadynamics frames with their bias weights"
    elif (ref / "positions.npy").exists() and (ref / "energies.npy").exists():
        frames = load_npy(ref / "positions.npy", "the source run's reference positions")
        u = np.asarray(load_npy(ref / "energies.npy", "their reduced energies"), dtype=np.float64)
        log_w = np.zeros(len(frames))
        source = "reference frames (Boltzmann at the system's temperature)"
    else:
        return {}
    lw = log_w + (1.0 - beta) * u
    ok = np.isfinite(lw)
    lw = np.where(ok, lw, -np.inf)
    lw_t = torch.as_tensor(lw, dtype=torch.float64)
    pick = systematic_resample(lw_t, len(frames), torch.Generator().manual_seed(int(seed) + 17)).numpy()
    out.mkdir(parents=True, exist_ok=True)
    pos = np.asarray(frames)[pick]
    write_frames(out, pos, beta * u[pick], system.topology)
    info = dict(
        source=source,
        beta=beta,
        n_frames=int(len(frames)),
        ess_fraction=float(kish_ess(lw_t[torch.as_tensor(ok)])),
        n_target_evals=int(n_evals),
    )
    # the analysis reads the reference's temperature here; these frames are at T
    atomic_write_text(
        out / "progress.json", json.dumps({"settings": {"temperature": system.temperature / beta}}) + "\n"
    )
    atomic_write_text(out / "tempered.json", json.dumps(info, indent=1) + "\n")
    return info


def run_at_temperature(
    run_dir: str | Path,
    temperature: float,
    out: str | Path | None = None,
    seed: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Sample a finished run's models to the exact target at ``temperature`` with the run's own recipe and
    analyse the result; returns (and writes) ``out/analysis.json``. Resumes an interrupted ``out``."""
    from boltzdiff.pipeline.analyze import analyze_run
    from boltzdiff.pipeline.sample import stage_sample
    from boltzdiff.pipeline.settings import typed_settings
    from boltzdiff.samplers.tempering import check_temperature, system_temperature, tempered_system
    from boltzdiff.systems import load_system

    src = Path(run_dir)
    meta = read_pipeline_json(src)
    if meta is None:
        raise ConfigError(f"{src}: not a `boltzdiff run` directory (no pipeline.json)")
    if meta.get("temperature_K") is not None:
        raise ConfigError(f"{src}: already a run at another temperature; give the run it came from")
    if not (src / "train" / "model.pt").exists():
        raise ConfigError(f"{src}: no trained model (train/model.pt); finish the run first (`boltzdiff run` resumes)")
    t = check_temperature(temperature)
    system = load_system(meta["system_path"], meta.get("variant"))
    if system.temperature is None:
        raise ConfigError(f"--temperature: system {system.name!r} declares no temperature (kelvin) to change")
    tsys, beta = tempered_system(system, t)
    dst = Path(out) if out is not None else default_out(src, t)
    seed = int(meta.get("seed", 0)) if seed is None else int(seed)
    old = read_pipeline_json(dst)
    if old is None and dst.exists() and any(dst.iterdir()):
        raise ConfigError(f"--out: {dst} exists and is no run at a temperature; choose another --out")
    if old is not None and (old.get("temperature_K") != t or old.get("source_run") != str(src.resolve())):
        raise ConfigError(
            f"--out: {dst} holds a run of {old.get('source_run')} at {old.get('temperature_K')} K, "
            f"not of {src} at {t:g} K"
        )
    settings = meta["settings"]
    typed_settings(settings, system)
    dst.mkdir(parents=True, exist_ok=True)
    if old is None:
        for m_dir in [src / "train", *sorted((src / "train_models").glob("*"))]:
            rel = m_dir.relative_to(src)
            shutil.copytree(m_dir, dst / rel, ignore=shutil.ignore_patterns("ckpt.pt", "*.tmp"), dirs_exist_ok=True)
        info = tempered_reference(src, dst, system, beta, seed)
        new = dict(meta, seed=seed, temperature_K=t, system_temperature_K=system_temperature(system))
        new.update(source_run=str(src.resolve()), beta=beta, reference_reweighting=info)
        write_pipeline_json(dst, new)
        from boltzdiff.runinfo import write_run_info

        write_run_info(dst, dict(source_run=str(src.resolve()), temperature_K=t, settings=settings), seed)
    stage_sample(tsys, dst, settings, progress, seed, workers=workers)
    res = analyze_run(dst, system=tsys, progress=progress)
    log.info("at %g K: ΔF %s -> %s", t, res.get("delta_f_kT"), dst / "analysis.json")
    return res
