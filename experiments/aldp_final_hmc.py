"""Do HMC trajectories at the exact target, applied to finished runs' final particles, fix the mean energy?

Each run directory's final particles (``samples.npz``, after the bridge and the torsion + MALA sweeps) make
``--trajectories`` HMC trajectories of ``--leapfrog`` steps at the exact reduced energy. The weights stay as they
were, because the moves leave the target invariant. The standard analysis then reads the moved particles: the
same code as ``boltzdiff run``'s analyze stage, without the model-only block. It prints one line per run and a
summary: ⟨u⟩ against the metadynamics replicates, and ΔF against the reference.

    python experiments/aldp_final_hmc.py --seeds 10-19 --trajectories 10 --leapfrog 40 --average 5

Reads ``benchmarks/_work/repeats/diffclf_s<S>`` (``benchmarks/aldp_repeats.py``). Writes copies under
``benchmarks/_work/final_hmc/<tag>_s<S>`` and ``benchmarks/_work/final_hmc/<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from aldp_repeats import parse_seeds  # noqa: E402

WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"


def moved_copy(src: Path, dst: Path, n_traj: int, leapfrog: int, seed: int) -> dict:
    import torch

    import boltzdiff.pipeline.analyze as analyze
    from boltzdiff.analysis.weights import pool_runs
    from boltzdiff.samplers.mcmc import MCMCConfig, TargetDensity, run_mcmc
    from boltzdiff.systems import load_system

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("reference", "train"))
    for name in ("reference", "train"):
        (dst / name).symlink_to(src / name)
    z = dict(np.load(src / "samples.npz"))
    summ = json.loads((src / "samples.json").read_text())
    lw = pool_runs(z["log_w"], z["run"], [r["log_Z"] for r in summ["runs"]])
    w = np.exp(lw - lw.max())
    w /= w.sum()
    dens = TargetDensity(load_system("alanine_dipeptide", "implicit").target)
    x = torch.as_tensor(z["x"])
    st = dens.evaluate(x)
    trace = [float((w * -st.log_prob.numpy()).sum())]
    cfg = MCMCConfig("hmc", n_steps=1, step_size=1.6e-3, n_leapfrog=leapfrog)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(n_traj):
        r = run_mcmc(dens, x, cfg, g, state=st)
        x, st = r.x, r.state
        trace.append(float((w * -st.log_prob.numpy()).sum()))
    wall = time.perf_counter() - t0
    z["x"] = x.numpy()
    np.savez(dst / "samples.npz", **z)
    analyze._model_only = lambda *a, **k: {}  # the model-only block does not depend on the particles
    res = analyze.analyze_run(dst, progress=False)
    return dict(
        mean_energy_kT=res["mean_energy_kT"],
        mean_energy_trace_kT=trace,
        delta_f_kT=res["delta_f_kT"],
        delta_f_runs_kT=res.get("delta_f_runs_kT"),
        hmc_step=cfg.step_size,
        hmc_wall_s=wall,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="10-19")
    p.add_argument("--trajectories", type=int, default=5)
    p.add_argument("--leapfrog", type=int, default=40)
    p.add_argument("--average", type=int, default=0, help="also read <u> averaged over the last K states")
    a = p.parse_args(argv)
    ref = json.loads((RESULTS / "aldp_reference_implicit_metad.json").read_text())["reference_delta_f_kT"]
    ec = json.loads((RESULTS / "equal_cost.json").read_text())["references"]["300"]["mean_energy_kT"]
    tag = f"hmc{a.trajectories}x{a.leapfrog}"
    rows = {}
    for s in parse_seeds(a.seeds):
        src = WORK / "repeats" / f"diffclf_s{s}"
        r = moved_copy(src, WORK / "final_hmc" / f"{tag}_s{s}", a.trajectories, a.leapfrog, s)
        before = json.loads((src / "analysis.json").read_text())
        r.update(mean_energy_before_kT=before["mean_energy_kT"], delta_f_before_kT=before["delta_f_kT"])
        rows[s] = r
        print(
            f"seed {s}: <u> - replicates {before['mean_energy_kT'] - ec:+.2f} -> {r['mean_energy_kT'] - ec:+.2f}; "
            f"ΔF {before['delta_f_kT']:.2f} -> {r['delta_f_kT']:.2f}",
            flush=True,
        )
    du = np.array([r["mean_energy_kT"] - ec for r in rows.values()])
    df = np.array([r["delta_f_kT"] - ref for r in rows.values()])
    ok_u, ok_f = np.abs(du) <= 0.3, np.abs(df) <= 0.25
    print(
        f"{tag}: <u> within 0.3 kT {ok_u.sum()}/{len(du)} (mean {du.mean():+.2f}, SD {du.std(ddof=1):.2f}); "
        f"ΔF within 0.25 kT {ok_f.sum()}/{len(df)} (RMS {np.sqrt((df**2).mean()):.2f}); both {(ok_u & ok_f).sum()}"
    )
    if a.average:  # the weighted mean is linear in the energies: averaging the trace averages each particle's u
        du = np.array([np.mean(r["mean_energy_trace_kT"][-a.average :]) - ec for r in rows.values()])
        ok_u = np.abs(du) <= 0.3
        print(
            f"{tag}, <u> over the last {a.average} states: within 0.3 kT {ok_u.sum()}/{len(du)} "
            f"(mean {du.mean():+.2f}, SD {du.std(ddof=1):.2f}); both {(ok_u & ok_f).sum()}"
        )
    out = WORK / "final_hmc" / f"{tag}.json"
    out.write_text(json.dumps(dict(reference_delta_f_kT=ref, reference_mean_energy_kT=ec, runs=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
