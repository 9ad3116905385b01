"""How much does a second CPU thread speed up one SMC run? (Against: the sample stage's worker processes,
one SMC run per core, `boltzdiff run --workers`.)

Takes a finished `boltzdiff run` directory, builds its sample stage's sampler (model, refinement, kernel) and
times one SMC run of ``--n`` particles over a sub-grid of ``--levels`` levels, without the bridge to the target,
at each thread count in ``--threads``, alternated, ``--repeats`` times in one process. Prints the median wall
time per thread count and its speed-up over the first.

    python experiments/smc_threads.py benchmarks/_work/bg/aldp_implicit_full_diffclf_seed0 [--n 4000] \
        [--levels 60] [--threads 1,2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a `boltzdiff run` directory with a finished train stage")
    ap.add_argument("--n", type=int, default=4000, help="particles")
    ap.add_argument("--levels", type=int, default=60, help="levels of the (refined) grid to run through")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from boltzdiff.pipeline import build_sampler, run_smc
    from boltzdiff.systems import load_system

    run = Path(args.run_dir)
    meta = json.loads((run / "pipeline.json").read_text())
    settings = meta["settings"]
    # levels only: no bridge to the target and no strata (which need it), so only the sampler's own cost counts
    s = dict(
        settings["sample"],
        n=args.n,
        n_runs=1,
        levels=args.levels,
        to_target=False,
        bridge_strata=None,
        strata_max_sigma=None,
        strata_min_share=0.0,
        strata_denoised=False,
    )
    inputs = build_sampler(load_system(meta["system_path"], meta.get("variant")), run, dict(settings, sample=s))
    counts = [int(t) for t in args.threads.split(",")]
    walls: dict[int, list[float]] = {t: [] for t in counts}
    for _ in range(args.repeats):
        for t in counts:
            torch.set_num_threads(t)
            t0 = time.perf_counter()
            run_smc(inputs, 0, 0, progress=False)
            walls[t].append(time.perf_counter() - t0)
    print(f"{platform.machine()}, {torch.__version__}; {run}: {args.n} particles, {args.levels} levels, no bridge")
    print("| threads | median wall s | runs (s) | speed-up |")
    print("|---|---|---|---|")
    base = statistics.median(walls[counts[0]])
    for t in counts:
        med = statistics.median(walls[t])
        runs = ", ".join(f"{w:.1f}" for w in walls[t])
        print(f"| {t} | {med:.1f} | {runs} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
