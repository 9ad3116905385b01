"""F_B - F_A along the stochastic interpolant on end states with closed-form free energies: two Gaussians of
different means and widths, and two 2-D Gaussian mixtures of different weights, means and widths (F = the
energy's offset, boltzdiff/freeenergy/states.py). Both estimates (the classifier's normalisers after the refit,
and annealing both ways combined by BAR), DiffCLF and DSM-only, over seeds.

    python benchmarks/interpolant_exact.py [--seeds 0-2] [--steps 3000] [--lr 1e-3] [--loss diffclf]

Writes ``benchmarks/results/interpolant_exact.json`` (rows are replaced by case, loss, lr, steps and seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "interpolant_exact.json"


def cases():
    from boltzdiff.freeenergy.states import OffsetMixture

    d = 2
    ga = OffsetMixture.unnormalised_gaussian(torch.zeros(d), 1.0)
    gb = OffsetMixture.unnormalised_gaussian(torch.full((d,), 1.5), 0.5)
    ma = OffsetMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 0.0]], [0.5, 0.8], offset=1.0)
    mb = OffsetMixture([0.8, 0.2], [[-1.0, 1.0], [2.0, -1.0]], [0.6, 0.4], offset=-0.5)
    return {"gaussians": (ga, gb), "mixtures": (ma, mb)}


def one(case: str, seed: int, args) -> dict:
    from boltzdiff.freeenergy.estimate import ais_estimates
    from boltzdiff.freeenergy.interpolant import InterpolantPath
    from boltzdiff.freeenergy.model import InterpolantEnergy
    from boltzdiff.freeenergy.train import InterpolantTrainConfig, refit_log_norm, train_interpolant

    a, b = cases()[case]
    exact = b.free_energy - a.free_energy
    g = torch.Generator().manual_seed(100 + seed)
    xa, xb = a.sample(6000, g).double(), b.sample(6000, g).double()
    torch.manual_seed(seed)
    m = InterpolantEnergy(a, b, InterpolantPath.uniform(args.levels, 0.5), torch.cat([xa, xb]), width=128, depth=2)
    cfg = InterpolantTrainConfig(steps=args.steps, batch_size=128, k=4, lr=args.lr, loss=args.loss, seed=seed)
    t0 = time.time()
    train_interpolant(m, xa, xb, cfg)
    trained = m.delta_f()
    if args.loss == "diffclf":
        refit_log_norm(m, xa, xb, cfg, 2000)
    n_model = m.n_target_evals
    r = ais_estimates(m, xa, xb, n=4000, mcmc_steps=3, seed=seed)
    return dict(
        case=case,
        seed=seed,
        loss=args.loss,
        lr=args.lr,
        steps=args.steps,
        levels=args.levels,
        exact_kT=exact,
        classifier_kT=m.delta_f() if args.loss == "diffclf" else None,
        classifier_trained_kT=trained if args.loss == "diffclf" else None,
        bar_kT=r["bar"]["delta_f_kT"],
        bar_se_kT=r["bar"]["delta_f_se_kT"],
        forward_kT=r["forward"]["delta_f_kT"],
        reverse_kT=r["reverse"]["delta_f_kT"],
        ess_forward=r["forward"]["ess"],
        ess_reverse=r["reverse"]["ess"],
        n_target_evals_training=n_model,
        n_target_evals_ais=r["n_target_evals"],
        wall_s=time.time() - t0,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--levels", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", default="diffclf", choices=["diffclf", "dsm"])
    p.add_argument("--cases", default="gaussians,mixtures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    a, _, b = args.seeds.partition("-")
    seeds = range(int(a), int(b or a) + 1)
    rows = json.loads(OUT.read_text())["runs"] if OUT.exists() else []
    key = ("case", "seed", "loss", "lr", "steps", "levels")
    for case in args.cases.split(","):
        for s in seeds:
            r = one(case, s, args)
            rows = [x for x in rows if tuple(x.get(k) for k in key) != tuple(r[k] for k in key)] + [r]
            c = "—" if r["classifier_kT"] is None else f"{r['classifier_kT'] - r['exact_kT']:+.3f}"
            print(
                f"{case} seed {s}: exact {r['exact_kT']:.3f}; classifier error {c}; "
                f"BAR error {r['bar_kT'] - r['exact_kT']:+.3f} ± {r['bar_se_kT']:.3f} ({r['wall_s']:.0f} s)",
                flush=True,
            )
            OUT.write_text(
                json.dumps(
                    dict(
                        command="python benchmarks/interpolant_exact.py [options per row]",
                        machine="2-core CPU",
                        runs=rows,
                    ),
                    indent=1,
                )
                + "\n"
            )
    for case in args.cases.split(","):
        rr = [
            x
            for x in rows
            if x["case"] == case
            and x["loss"] == args.loss
            and x["lr"] == args.lr
            and x["steps"] == args.steps
            and x["levels"] == args.levels
        ]
        for est in ("classifier_kT", "bar_kT"):
            errs = [x[est] - x["exact_kT"] for x in rr if x[est] is not None]
            if errs:
                rms = statistics.mean(e * e for e in errs) ** 0.5
                print(
                    f"{case} {est[:-3]}: RMS error {rms:.3f} kT over {len(errs)} seeds, max |err| "
                    f"{max(abs(e) for e in errs):.3f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
