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
    from boltzdiff.io import atomic_write_json
    from boltzdiff.train import load_run, train

    saved = out / "config.yaml"
    if saved.exists():  # a cached run must have been trained with these settings (threads aside)
        old = yaml.safe_load(saved.read_text())
        new = cfg.to_dict()
        # fields newer than the run are absent from its config.yaml; their defaults keep the old behaviour
        # an "auto" setting is written resolved (e.g. tsm_scale: the number it stood for)
        diff = sorted(k for k in old if k != "num_threads" and old[k] != new.get(k) and new.get(k) != "auto")
        if diff:
            raise SystemExit(f"{out} was trained with other settings ({', '.join(diff)}); remove it or rename")
    ev_file = out / "eval.json"
    if ev_file.exists() and not force:
        ev = json.loads(ev_file.read_text())
        if (
            ev.get("n_chains") == n_chains
            and ev.get("n_samples", n_samples) == n_samples
            and ev.get("n_chains_fit") == 16 * n_chains
            and "mode_offsets_per_level" in ev
        ):
            return ev  # else: the same model, scored again (chains, samples, f on 16x the chains, mode offsets)
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
    (``aldp_reference_metad.py``) where it exists, else a 2-D umbrella one (``experiments/aldp_reference.py``).
    The umbrella protocol's estimate depended on its window layout (docs/decisions.md#metadynamics-reference),
    so the metadynamics file takes precedence."""
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


def _lme(a: np.ndarray) -> float:
    """log of the mean of exp(a)."""
    from scipy.special import logsumexp

    return float(logsumexp(a) - np.log(len(a)))


def basin_probe(system, data_file: str, t_data: float):
    """The basin offset of a trained alanine-dipeptide model against its training data (kT; + = the phi > 0 basin
    underweighted): ``-[lme_basin(r) - lme_rest(r)]`` with ``r = -E(x, t_0) + (T / T_data) u(x)`` over every 8th
    data frame, lme = log-mean-exp; the suffix ``_beta`` gives beta against alpha_R the same way.
    Returns ``(offset(model, level=0) -> dict, description)``."""
    from boltzdiff.analysis.free_energy import wrap_angle
    from boltzdiff.cv import phi_psi

    n = system.target.event_shape[0]
    x = np.load(data_file).reshape(-1, n * 3)[::8]
    xt = torch.as_tensor(x, dtype=torch.float64).reshape(-1, n, 3)
    xt = (xt - xt.mean(1, keepdim=True)).reshape(-1, n * 3)
    with torch.no_grad():
        u = system.target.energy(xt).numpy()
    cvs = system.spec["cvs"]
    phi, psi = phi_psi(x.reshape(-1, n, 3), system.topology, phi=cvs["phi"], psi=cvs["psi"])
    phi, psi = wrap_angle(phi), wrap_angle(psi)
    basin = (phi > 0) & (phi < 2)
    alpha = ~basin & (psi > -2) & (psi < 1)  # alpha_R; the rest of phi < 0 is beta / C7eq
    beta = ~basin & ~alpha
    ratio = float(system.temperature) / float(t_data)

    def offset(model, level: int = 0) -> dict:
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            e = model.energy(xt.to(dtype), level).double().numpy()
        r = -e + ratio * u
        ok = np.isfinite(r)
        return {
            "": -(_lme(r[basin & ok]) - _lme(r[~basin & ok])),
            "_beta": -(_lme(r[beta & ok]) - _lme(r[alpha & ok])) if beta.any() and alpha.any() else float("nan"),
        }

    return offset, (
        f"basin offset (kT, {basin.mean():.3f} of {len(x)} frames in the basin) and beta offset against alpha_R "
        f"(suffix _beta; {beta.mean():.3f} / {alpha.mean():.3f} of the frames)"
    )


def aldp_basin():
    """Alanine dipeptide's ΔF state as its system.yaml declares it (``states.phi_pos``, the phi > 0 basin): a
    :class:`boltzdiff.analysis.states.CVInterval` whose ``contains(phi)`` is the basin mask."""
    from boltzdiff.analysis.states import free_energy_spec
    from boltzdiff.systems import SYSTEMS_DIR, read_yaml

    path = SYSTEMS_DIR / "alanine_dipeptide" / "system.yaml"
    fe = free_energy_spec(read_yaml(path), str(path))
    if fe is None or fe.rotation_interval is None:
        raise ValueError(f"{path}: expected one state defined by one dihedral against the rest")
    return fe.rotation_interval


def delta_f_basin(phi, log_w=None, **kw):
    """ΔF (kT) of alanine dipeptide's declared basin against the rest from ``phi (n,)``; ``kw``: as
    :func:`boltzdiff.analysis.states.delta_f_states` (n_bootstrap, rng, block_length, clusters)."""
    from boltzdiff.analysis.states import delta_f_states

    return delta_f_states(aldp_basin().contains(phi), None, log_w, **kw)
