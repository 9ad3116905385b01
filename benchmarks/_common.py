"""Helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def median(xs):
    return statistics.median(xs)


def system_config(system: str, **over):
    """What `boltzdiff train --system SYSTEM` would use: TrainConfig defaults < the system's run.yaml < ``over``."""
    from boltzdiff.config import TrainConfig, merge_config
    from boltzdiff.systems import load_system

    sysm = load_system(system)
    cfg = merge_config(TrainConfig(), sysm.run_defaults.get("train", {}), f"{system} run.yaml")
    return merge_config(cfg, {"system": system, **over}, "benchmark")


def train_and_eval(cfg, out: Path, n_chains: int = 32, n_samples: int = 2000, force: bool = False):
    """Train (resuming if interrupted) and evaluate; cached in ``out/eval.json``."""
    import yaml

    from boltzdiff.evaluate import evaluate_mixture
    from boltzdiff.runinfo import atomic_write_json
    from boltzdiff.train import load_run, train

    saved = out / "config.yaml"
    if saved.exists():  # a cached run must have been trained with these settings (threads aside)
        old = yaml.safe_load(saved.read_text())
        new = cfg.to_dict()
        # fields newer than the run are absent from its config.yaml; their defaults keep the old behaviour
        diff = sorted(k for k in old if k != "num_threads" and old[k] != new.get(k))
        if diff:
            raise SystemExit(f"{out} was trained with other settings ({', '.join(diff)}); remove it or rename")
    ev_file = out / "eval.json"
    if ev_file.exists() and not force:
        ev = json.loads(ev_file.read_text())
        if (
            ev.get("n_chains") == n_chains
            and ev.get("n_samples", n_samples) == n_samples
            and ev.get("n_chains_fit") == 16 * n_chains
        ):
            return ev  # else: the same model, scored again (chains, samples, or f fitted on 16x the chains)
    t0 = time.time()
    if not (out / "model.pt").exists():
        train(cfg, out, resume=(out / "ckpt.pt").exists(), progress=False)
    summary = json.loads((out / "train_summary.json").read_text())
    run = load_run(out)
    ev = evaluate_mixture(run.model, run.system.target, n_chains=n_chains, n_samples=n_samples, seed=12345).to_dict()
    ev["train_wall_s"] = summary["wall_s"]
    ev["sec_per_step"] = summary["sec_per_step"]
    ev["eval_wall_s"] = time.time() - t0
    atomic_write_json(ev_file, ev)
    return ev


def fmt_row(cols, widths):
    return " | ".join(str(c).ljust(w) for c, w in zip(cols, widths))


def print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print("| " + fmt_row(header, widths) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + fmt_row(r, widths) + " |")


def aldp_reference_file(variant: str = "implicit") -> Path:
    """The project's reference ΔF file for alanine dipeptide: the metadynamics + frozen-bias estimate
    (``aldp_reference_metad.py``) where it exists, else the 2-D umbrella one (``aldp_reference.py``). Session 9
    found the umbrella protocol's estimate 0.37 kT below two metadynamics replicates that agree with each
    other (RESULTS.md, reference section), so the metadynamics file takes precedence."""
    results = ROOT / "benchmarks" / "results"
    metad = results / f"aldp_reference_{variant}_metad.json"
    return metad if metad.exists() else results / f"aldp_reference_{variant}.json"


def mean_phi_profile(profiles) -> dict:
    """A reference F(φ) for the results JSON: from the replicates' mean bin probabilities (``profiles``:
    :class:`boltzdiff.analysis.free_energy` profiles on the same bins), and the replicate SE of F per bin;
    ``{edges, f_kT, se_kT, p}`` with None where a bin is empty. Used by both ALDP reference scripts."""
    p_rep = np.array([p.p_b for p in profiles])
    p_mean = p_rep.mean(0)
    with np.errstate(divide="ignore"):
        f_mean = -np.log(p_mean)
        f_rep = -np.log(p_rep)
    f_mean -= f_mean[np.isfinite(f_mean)].min()
    f_rep = np.where(np.isfinite(f_rep), f_rep, np.nan)
    f_rep -= np.nanmin(f_rep, axis=1, keepdims=True)
    se = np.full_like(f_mean, np.nan)
    if len(profiles) > 1:
        se = np.nanstd(f_rep, axis=0, ddof=1) / math.sqrt(len(profiles))
    return dict(
        edges=profiles[0].edges.tolist(),
        f_kT=[float(v) if np.isfinite(v) else None for v in f_mean],
        se_kT=[float(v) if np.isfinite(v) else None for v in se],
        p=p_mean.tolist(),
    )


def phi_of_samples(system, x) -> np.ndarray:
    """phi (radians) of a molecule's samples ``x`` (n, 3 N), mirror images mapped back to the hand of the
    system's structure first (as the analysis does)."""
    from boltzdiff.cv import phi_psi
    from boltzdiff.geometry import fix_chirality, reference_chirality
    from boltzdiff.systems import chiral_quads_of

    n = system.target.event_shape[0]
    xs = torch.as_tensor(np.asarray(x).reshape(-1, n, 3))
    quads = chiral_quads_of(system)
    if quads:
        sign = reference_chirality(torch.as_tensor(np.asarray(system.positions))[None], quads)
        xs = fix_chirality(xs, quads, sign).x
    cvs = system.spec["cvs"]
    return phi_psi(xs.numpy(), system.topology, phi=cvs["phi"], psi=cvs["psi"])[0]
