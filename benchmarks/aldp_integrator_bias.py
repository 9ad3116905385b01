"""How far do the metadynamics frames sit from the exact Boltzmann distribution of u? A paired check.

The reference frames come from Langevin MD (LangevinMiddleIntegrator, 1 fs, no constraints) under a frozen
bias, reweighted by exp(+V/kT). A finite step samples a slightly different distribution than exp(-u). This script
takes each data set's frames (already resampled by their weights, so they stand for the MD's Boltzmann
ensemble) and moves every frame with HMC trajectories at the exact reduced energy u. The trajectories are
Metropolis-corrected (boltzdiff.samplers.mcmc.hmc_step), so they relax the frames towards exp(-u) and towards
nothing else. Per data set, what moves is the MD's error plus the frames' own sampling noise; averaged over data
sets, the error. Both readings use the same frames before and after:

* the mean reduced energy <u>, after every trajectory (the shift over the second half of them is the figure);
* ΔF of the phi > 0 basin, from each frame's phi-rotation integral (boltzdiff.analysis.torsion_rb), before and
  after. HMC does not cross the phi barrier; the rotation integral reads each frame's basin probability given
  its other coordinates, so it sees whatever those coordinates carry.

    python benchmarks/aldp_integrator_bias.py DATA_DIR... [--trajectories 20] [--leapfrog 20] [--frames 4000]
    python benchmarks/aldp_integrator_bias.py [DATA_DIR...] --combine A.json B.json ...   # pool earlier sets

DATA_DIR: a `boltzdiff run` directory (its ``reference/positions.npy``) or a folder holding ``positions.npy``.
Writes ``benchmarks/results/aldp_integrator_bias.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def frames_of(d: Path) -> np.ndarray:
    for p in (d / "reference" / "positions.npy", d / "positions.npy"):
        if p.exists():
            return np.load(p)
    raise SystemExit(f"{d}: no reference/positions.npy or positions.npy")


def basin_delta_f(system, x: np.ndarray, u: np.ndarray) -> float:
    """ΔF of the system's state from each frame's rotation integral, frames weighted equally."""
    from boltzdiff.pipeline.analyze_molecule import analyze_molecule

    with tempfile.TemporaryDirectory() as tmp:
        r = analyze_molecule(system, Path(tmp), x, np.zeros(len(x)), None, 0, [], u=u, progress=False)
    return float(r["delta_f_kT"])


def one_set(system, d: Path, n_frames: int, n_traj: int, leapfrog: int, seed: int) -> dict:
    import torch

    from boltzdiff.samplers.mcmc import MCMCConfig, TargetDensity, run_mcmc

    pos = frames_of(d)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pos), min(n_frames, len(pos)), replace=False)
    x = torch.as_tensor(pos[idx].reshape(len(idx), -1), dtype=torch.float64)
    dens = TargetDensity(system.target)
    st = dens.evaluate(x)
    u0 = -st.log_prob.numpy()
    t0 = time.perf_counter()
    df0 = basin_delta_f(system, x.numpy(), u0)
    # leapfrog step near the stability limit of the C-H stretches (it adapts towards 65 % acceptance)
    cfg = MCMCConfig("hmc", n_steps=1, step_size=1.6e-3, n_leapfrog=leapfrog)
    g = torch.Generator().manual_seed(seed)
    shifts, acc = [], []
    for _ in range(n_traj):
        r = run_mcmc(dens, x, cfg, g, state=st)
        x, st = r.x, r.state
        shifts.append(float((-st.log_prob.numpy() - u0).mean()))
        acc.append(r.acceptance)
    u1 = -st.log_prob.numpy()
    df1 = basin_delta_f(system, x.numpy(), u1)
    half = shifts[len(shifts) // 2 :]
    return dict(
        data=str(d),
        n_frames=int(len(idx)),
        mean_u_frames_kT=float(u0.mean()),
        shift_trace_kT=[round(v, 4) for v in shifts],
        mean_u_shift_kT=float(np.mean(half)),
        # one snapshot's paired SE; the snapshots of the second half are correlated, so it also bounds theirs
        mean_u_shift_se_kT=float(np.std(u1 - u0, ddof=1) / math.sqrt(len(idx))),
        mean_u_relaxed_kT=float(u0.mean() + np.mean(half)),
        delta_f_frames_kT=df0,
        delta_f_relaxed_kT=df1,
        delta_f_shift_kT=df1 - df0,
        trajectories=int(n_traj),
        leapfrog=int(leapfrog),
        hmc_acceptance=float(np.mean(acc)),
        hmc_step=float(cfg.step_size),
        wall_s=time.perf_counter() - t0,
    )


def sem(v) -> float:
    return float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for s in res["sets"]:
        ax.plot(range(1, len(s["shift_trace_kT"]) + 1), s["shift_trace_kT"], alpha=0.7, label=Path(s["data"]).name)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(res["mean_u_shift_kT"], color="C3", ls="--", label=f"mean {res['mean_u_shift_kT']:+.2f} kT")
    ax.set_xlabel("HMC trajectories at the exact u")
    ax.set_ylabel("<u> − <u> of the MD frames (kT)")
    ax.set_title("1 fs Langevin MD frames relaxed to exp(−u)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", nargs="*", type=Path)
    p.add_argument("--combine", nargs="+", type=Path, default=[], help="earlier outputs whose sets to pool in")
    p.add_argument("--trajectories", type=int, default=20)
    p.add_argument("--leapfrog", type=int, default=20)
    p.add_argument("--frames", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "aldp_integrator_bias.json")
    a = p.parse_args(argv)
    if a.trajectories < 2 or a.leapfrog < 1 or a.frames < 2 or not (a.data or a.combine):
        print(
            "aldp_integrator_bias: expected DATA_DIR or --combine, --trajectories >= 2, --leapfrog >= 1, --frames >= 2",
            file=sys.stderr,
        )
        return 2
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide", "implicit")
    earlier = [json.loads(f.read_text()) for f in a.combine]
    sets = [s for e in earlier for s in e["sets"]]
    for d in a.data:
        s = one_set(system, d, a.frames, a.trajectories, a.leapfrog, a.seed)
        sets.append(s)
        print(
            f"{d.name}: <u> {s['mean_u_frames_kT']:.3f}, shift {s['mean_u_shift_kT']:+.3f}"
            f" ± {s['mean_u_shift_se_kT']:.3f}"
            f"; ΔF {s['delta_f_frames_kT']:.3f} -> {s['delta_f_relaxed_kT']:.3f}; acceptance {s['hmc_acceptance']:.2f}"
            f"; {s['wall_s']:.0f} s",
            flush=True,
        )
    du = [s["mean_u_shift_kT"] for s in sets]
    dfs = [s["delta_f_shift_kT"] for s in sets]
    res = dict(
        what="paired shift of 1 fs Langevin MD frames when HMC at the exact u relaxes them",
        integrator="LangevinMiddleIntegrator, 1 fs, friction 1/ps, no constraints (boltzdiff.reference.metad)",
        trajectories=sorted({int(s.get("trajectories", len(s["shift_trace_kT"]))) for s in sets}),
        leapfrog=sorted({int(s.get("leapfrog", a.leapfrog)) for s in sets}),
        mean_u_shift_kT=float(np.mean(du)),
        mean_u_shift_se_kT=sem(du),
        # the relaxed frames' mean energy, over the data sets: the exact target's <u> as these frames read it
        mean_u_relaxed_kT=float(np.mean([s["mean_u_relaxed_kT"] for s in sets])),
        mean_u_relaxed_se_kT=sem([s["mean_u_relaxed_kT"] for s in sets]),
        delta_f_shift_kT=float(np.mean(dfs)),
        delta_f_shift_se_kT=sem(dfs),
        sets=sets,
        # the runs that made the pooled sets, then this one
        commands=[c for e in earlier for c in e.get("commands", [e.get("command")]) if c]
        + ["python benchmarks/aldp_integrator_bias.py " + " ".join(sys.argv[1:] if argv is None else argv)],
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    plot(res, a.out.with_suffix(".png"))
    print(
        f"mean <u> shift {res['mean_u_shift_kT']:+.3f} ± {res['mean_u_shift_se_kT']:.3f} kT over {len(sets)} data sets;"
        f" ΔF shift {res['delta_f_shift_kT']:+.3f} ± {res['delta_f_shift_se_kT']:.3f} kT"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
