"""Benchmark: weighted sampling of Gaussian mixtures (mode weights, TV, ESS, cost, wall time).

Part A uses the exact noised mixture densities as the "model" (no learning): reverse SDE / ODE, diffusion SMC
(with and without MALA rejuvenation), and a deliberately wrong but normalised model (equal mode weights for
the 2-mode mixture, weights proportional to 1..40 for the 40-mode one) corrected by ending at the exact target
(``to_target``). Part B uses models trained by ``boltzdiff train`` on ``gmm2_unbalanced`` (32-D, weights 2/3,
1/3), DSM-only and DSM + DiffCLF: plain reverse diffusion vs SMC on the model's own energies vs SMC ending at
the exact target.

Run from the repository root::

    python benchmarks/smc_mixtures.py [--n 4000] [--runs-dir benchmarks/_work] [--skip-exact]

Trained run directories are ``<runs-dir>/gmm2_{dsm,diffclf}`` (see benchmarks/RESULTS.md for the commands);
missing ones are skipped. The mode-weight standard error ``se`` is the delta-method one of the weighted
estimate (it ignores resampling correlations).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers import MCMCConfig, SMCConfig, probability_flow_ode, reverse_sde, smc
from boltzdiff.samplers.diagnostics import mode_weight_stderr, total_variation, weighted_mode_weights
from boltzdiff.systems import load_system

HEADER = (
    f"{'system':<16} {'model':<14} {'method':<26} {'max|dw|':>8} {'se':>7} {'TV':>7} {'ESS':>6} "
    f"{'model ev':>10} {'target ev':>10} {'wall s':>7}"
)


def row(system, model_name, method, gmm, res, wall):
    w = weighted_mode_weights(gmm, res.x, res.log_w)
    se = mode_weight_stderr(gmm, res.x, res.log_w)
    err = np.abs(w - gmm.weights.numpy())
    k = int(err.argmax())
    s = res.summary()
    line = (
        f"{system:<16} {model_name:<14} {method:<26} {err[k]:8.4f} {se[k]:7.4f} "
        f"{total_variation(w, gmm.weights):7.4f} {s['ess']:6.3f} {s['n_model_evals']:10d} "
        f"{s['n_target_evals']:10d} {wall:7.1f}"
    )
    print(line, flush=True)
    return dict(
        system=system,
        model=model_name,
        method=method,
        max_err=float(err[k]),
        se=float(se[k]),
        tv=total_variation(w, gmm.weights),
        ess=s["ess"],
        weights=w.tolist(),
        wall=wall,
    )


def methods(model, gmm, n, seed, levels=None):
    """(name, callable) pairs of the samplers compared."""

    def g():
        return torch.Generator().manual_seed(seed)

    return [
        ("reverse SDE", lambda: reverse_sde(model, n, generator=g(), levels=levels)),
        ("prob.-flow ODE", lambda: probability_flow_ode(model, n, generator=g(), levels=levels)),
        ("SMC", lambda: smc(model, n, SMCConfig(levels=levels), generator=g())),
        (
            "SMC + 1 MALA/level",
            lambda: smc(model, n, SMCConfig(levels=levels, mcmc=MCMCConfig("mala", 1)), generator=g()),
        ),
        (
            "SMC -> target (16 br.)",
            lambda: smc(
                model,
                n,
                SMCConfig(levels=levels, n_bridge=16, bridge_mcmc=MCMCConfig("mala", 2)),
                generator=g(),
                target=gmm,
            ),
        ),
    ]


def run_all(system, model_name, model, gmm, n, seed, skip=(), only=None):
    out = []
    for name, fn in methods(model, gmm, n, seed):
        if name in skip or (only and name not in only):
            continue
        t0 = time.perf_counter()
        with torch.no_grad():
            res = fn()
        out.append(row(system, model_name, name, gmm, res, time.perf_counter() - t0))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="benchmarks/_work")
    p.add_argument("--skip-exact", action="store_true")
    p.add_argument("--skip-trained", action="store_true")
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="LABEL=RUN_DIR",
        help="a trained run to benchmark (repeatable); default <runs-dir>/gmm2_{dsm,diffclf}",
    )
    p.add_argument(
        "--trained-methods",
        default="reverse SDE,SMC,SMC -> target (16 br.)",
        help="comma-separated methods for the trained models (names as printed)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the development machine is shared
    warnings.simplefilter("ignore", UserWarning)
    print(HEADER)
    if not args.skip_exact:
        for name in ("gmm2_unbalanced", "gmm40_2d"):
            gmm = load_system(name).target
            grid = make_grid(VPSchedule(), 128)
            run_all(name, "exact", ExactMixtureEnergy(gmm, grid), gmm, args.n, args.seed)
            # a deliberately wrong but normalised model: equal weights (2 modes) / weights prop. to 1..40 (40
            # modes)
            wrong_w = torch.ones(2) if gmm.n_components == 2 else torch.arange(1.0, gmm.n_components + 1)
            wrong = ExactMixtureEnergy(gmm, grid, weights=wrong_w)
            run_all(name, "exact, wrong w", wrong, gmm, args.n, args.seed, skip=("prob.-flow ODE",))
    if not args.skip_trained:
        from boltzdiff.train import load_run

        runs = [r.split("=", 1) for r in args.run] or [
            (loss, str(Path(args.runs_dir) / f"gmm2_{loss}")) for loss in ("dsm", "diffclf")
        ]
        for label, rd in runs:
            if not (Path(rd) / "model.pt").is_file():
                print(f"# {rd}: no trained model, skipped")
                continue
            run = load_run(rd)
            only = [m.strip() for m in args.trained_methods.split(",")]
            run_all(run.system.name, label, run.model, run.system.target, args.n, args.seed, only=only)


if __name__ == "__main__":
    main()
