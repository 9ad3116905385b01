"""DiffCLF against DSM-only on high-dimensional Gaussian mixtures, in the DiffCLF paper's units and ours.

For every (system, loss, seed): trains with ``boltzdiff train``'s recipe for the system (TrainConfig defaults <
the system's run.yaml < ``--set``), scores the model against the exact noised mixture (``evaluate_mixture``:
classification excess with the learned and with a fitted f, per level and in the paper's units, the mode weights
at every level), draws model-only samples by the reverse SDE for the MMD against exact samples, and runs SMC on
the model's levels ending at the exact target (mode weights, ESS before the final resampling, evaluations).
DSM-only and DiffCLF share the DSM terms (same batch, same k levels per data point).

    python benchmarks/gmm_high_dim.py [--systems gmm40_128d,gmm_unequal_32d,...] [--losses diffclf,dsm] \\
        [--seeds 0,1,2] [--steps N] [--set KEY=VALUE ...] [--smc-n 2000] [--chains 64] [--mmd-n 2000]

Work directories: ``benchmarks/_work/gmm_high_dim/<system>_<loss>_s<steps>_seed<seed><tag>/`` (a finished model
is kept and rescored). Writes ``benchmarks/results/gmm_high_dim.json`` (one row per system, loss and seed;
rows of a later invocation replace those with the same key) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, WORK, machine, print_table, system_config, train_and_eval  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gmm_high_dim.json"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        return out.stdout.strip()
    except OSError:
        return "unknown"


def mmd_row(run, n: int, seed: int) -> dict:
    """MMD² of model-only reverse-SDE samples against exact ones, its floor, and those samples' mode weights."""
    from boltzdiff.evaluate_paper import model_mmd_report

    r = model_mmd_report(run.model, run.system.target, n, seed=seed)
    return {k: r[k] for k in ("mmd", "mmd_exact_floor", "mmd_exact_floor_sd", "reverse_sde_mode_weight_error")}


def smc_row(run, n: int, seed: int, to_target: bool) -> dict:
    """SMC over the model's levels (MALA at each), alone or bridged to the exact target: mode-weight error, ESS
    at the end (before any final resampling), cost. Alone, its weighted particles sample the model's own
    level-0 density, so their mode weights are the model's whatever its within-mode shape errors (which make
    importance weights on exact samples useless in 128-D)."""
    from boltzdiff.samplers import MCMCConfig, SMCConfig, smc
    from boltzdiff.samplers.diagnostics import weighted_mode_weights

    gmm = run.system.target
    if to_target:
        cfg = SMCConfig(n_bridge=16, bridge_mcmc=MCMCConfig("mala", 2), mcmc=MCMCConfig("mala", 1))
    else:
        cfg = SMCConfig(mcmc=MCMCConfig("mala", 1))
    t0 = time.perf_counter()
    with torch.no_grad():
        res = smc(run.model, n, cfg, generator=torch.Generator().manual_seed(seed), target=gmm if to_target else None)
    w = weighted_mode_weights(gmm, res.x, res.log_w)
    s = res.summary()
    p = "smc_target" if to_target else "smc_model"
    return {
        f"{p}_mode_weight_error": float(np.abs(w - gmm.weights.numpy()).max()),
        f"{p}_mode_weights": w.tolist(),
        f"{p}_ess": s["ess"],
        f"{p}_n_model_evals": s["n_model_evals"],
        f"{p}_n_target_evals": s["n_target_evals"],
        f"{p}_wall_s": time.perf_counter() - t0,
    }


def run_one(system: str, loss: str, seed: int, args, over: dict) -> dict:
    from boltzdiff.train import load_run

    cfg = system_config(system, loss=loss, seed=seed, num_threads=args.threads, **over)
    if args.steps:
        cfg.steps = args.steps
    tag = "".join(f"_{k}{v}" for k, v in over.items())
    out = WORK / "gmm_high_dim" / f"{system}_{loss}_s{cfg.steps}_seed{seed}{tag}"
    print(f"... {system} {loss} seed {seed} ({cfg.steps} steps) -> {out}", file=sys.stderr, flush=True)
    ev = train_and_eval(cfg, out, n_chains=args.chains)
    run = load_run(out)
    row = dict(system=system, loss=loss, seed=seed, steps=cfg.steps, dim=run.system.target.dim, settings=over)
    keep = (
        "clf_excess",
        "clf_excess_se",
        "clf_excess_fitted_f",
        "clf_excess_paper",
        "clf_excess_paper_fitted_f",
        "mode_weight_error",
        "mode_weight_error_per_level",
        "mode_offset_range_per_level",
        "mode_offsets_per_level",
        "mode_weights",
        "true_mode_weights",
        "train_wall_s",
        "sec_per_step",
    )
    row.update({k: ev[k] for k in keep if k in ev})
    if args.mmd_n:
        row.update(mmd_row(run, args.mmd_n, seed))
    if args.smc_n:
        row.update(smc_row(run, args.smc_n, seed, to_target=False))
        row.update(smc_row(run, args.smc_n, seed, to_target=True))
    return row


def table(rows: list[dict]) -> None:
    body = []
    for r in rows:
        body.append(
            [
                r["system"],
                r["loss"],
                r["seed"],
                f"{r['clf_excess']:.4f}",
                f"{r['clf_excess_fitted_f']:.4f}",
                f"{r['clf_excess_paper']:.2f}",
                f"{r['mode_weight_error']:.3f}",
                f"{r['mode_offset_range_per_level'][0]:.1f}" if "mode_offset_range_per_level" in r else "",
                f"{r['mmd']:.4f} ({r['mmd_exact_floor']:.4f})" if "mmd" in r else "",
                f"{r['reverse_sde_mode_weight_error']:.3f}" if "mmd" in r else "",
                f"{r['smc_model_mode_weight_error']:.3f}" if "smc_model_ess" in r else "",
                f"{r['smc_target_mode_weight_error']:.3f} ({r['smc_target_ess']:.2f})" if "smc_target_ess" in r else "",
                f"{r.get('train_wall_s', float('nan')) / 60:.1f}",
            ]
        )
    print_table(
        [
            "system",
            "loss",
            "seed",
            "excess (ours, learned f)",
            "excess (fitted f)",
            "excess (paper units)",
            "IS level-0 max|dw|",
            "level-0 mode offset range (kT)",
            "MMD² (floor)",
            "rev. SDE max|dw|",
            "model's own max|dw| (SMC)",
            "SMC->target max|dw| (ESS)",
            "train min",
        ],
        body,
    )
    # the headline ratio: DSM-only's excess (fitted f: it learns none) over DiffCLF's (its learned f), per system
    for system in dict.fromkeys(r["system"] for r in rows):
        dc = [r for r in rows if r["system"] == system and r["loss"] == "diffclf"]
        ds = [r for r in rows if r["system"] == system and r["loss"] == "dsm"]
        if dc and ds:
            a = float(np.mean([r["clf_excess_fitted_f"] for r in ds]))
            b = float(np.mean([r["clf_excess"] for r in dc]))
            print(f"{system}: DSM-only (fitted f) / DiffCLF (learned f) excess = {a:.4f} / {b:.4f} = {a / b:.1f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="gmm40_128d,gmm_unequal_32d,gmm_unequal_64d,gmm_unequal_128d")
    ap.add_argument("--losses", default="diffclf,dsm")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="override the systems' number of steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train setting (YAML value)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=str(RESULTS), help="the JSON file the rows are merged into")
    ap.add_argument("--chains", type=int, default=64, help="noising chains scoring the classification loss")
    ap.add_argument("--mmd-n", type=int, default=2000, help="samples per side for the MMD (0: skip)")
    ap.add_argument("--smc-n", type=int, default=2000, help="SMC particles (0: skip)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = []
    for system in args.systems.split(","):
        for loss in args.losses.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows.append(run_one(system, loss, seed, args, over))
    results = Path(args.results)
    old = json.loads(results.read_text()) if results.exists() else {"rows": []}
    key = lambda r: (r["system"], r["loss"], r["seed"], r["steps"], json.dumps(r.get("settings", {}), sort_keys=True))  # noqa: E731
    new_keys = {key(r) for r in rows}
    merged = [r for r in old.get("rows", []) if key(r) not in new_keys] + rows
    from boltzdiff.io import atomic_write_json

    command = "python benchmarks/gmm_high_dim.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(results, dict(command=command, machine=machine(), commit=_commit(), rows=merged))
    print(f"\nMachine: {machine()}")
    table(rows)


if __name__ == "__main__":
    main()
