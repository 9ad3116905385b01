"""Replica exchange over the diffusion levels against SMC down the same levels, at equal model evaluations.

Cases (each on ``--seeds``; the SMC run fixes the budget, replica exchange gets the rounds that fit it):

- ``exact``: the exact noised ``gmm_unequal_128d`` (ExactMixtureEnergy on 64 levels): SMC over the levels with
  one MALA step per level, against replica exchange over ``--rungs`` of those levels. Score: max |mode weight
  error| of level 0 (SMC: weighted particles; replica exchange: the coldest rung's samples).
- ``trained``: a trained ``gmm_unequal_128d`` DiffCLF model (``--mixture-run``, e.g. from
  ``benchmarks/gmm_high_dim.py``), both samplers ending at the exact target (SMC: 16-step bridge; replica
  exchange: an exact-target rung). Same score at the target.
- ``aldp``: a trained alanine-dipeptide model (``--aldp-run``, a ``boltzdiff run`` directory), both ending at the
  exact OpenMM energy, SMC plain (no strata, no torsion moves, no sweeps at the target). Score: ΔF of the φ > 0
  basin against the reference (3.86 kT) and the target evaluations spent.

    python benchmarks/replica_vs_smc.py [--cases exact,trained,aldp] [--seeds 0,1,2] [--n 1000] \\
        [--chains 64] [--rungs 16] [--mixture-run DIR] [--aldp-run DIR]

Writes ``benchmarks/results/replica_vs_smc.json`` and prints one row per case and seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, WORK, delta_f_basin, machine, print_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "replica_vs_smc.json"
ALDP_REFERENCE_DF = 3.86


def _rungs(n_levels: int, m: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(0, n_levels - 1, m)})


def score_mixture(gmm, x, log_w=None) -> float:
    from boltzdiff.samplers.diagnostics import weighted_mode_weights

    w = weighted_mode_weights(gmm, x, log_w)
    return float(np.abs(w - gmm.weights.numpy()).max())


def score_aldp(system, x, log_w=None) -> float:
    from boltzdiff.systems.base import dihedral_of

    phi = dihedral_of(system, x.detach().double().numpy(), "phi")
    lw = None if log_w is None else log_w.double().numpy()
    return float(delta_f_basin(phi, lw, n_bootstrap=0).delta_f)


def pair(case: str, model, target, score, n: int, chains: int, rungs: int, seed: int, to_target: bool) -> list[dict]:
    """One SMC run and one replica-exchange run at the SMC run's model evaluations."""
    from boltzdiff.samplers import MCMCConfig, SMCConfig, replica_exchange, smc
    from boltzdiff.samplers.replica import rounds_for_budget

    g = torch.Generator().manual_seed(seed)
    cfg = SMCConfig(mcmc=MCMCConfig("mala", 1))
    if to_target:
        cfg = SMCConfig(mcmc=MCMCConfig("mala", 1), n_bridge=16, bridge_mcmc=MCMCConfig("mala", 2))
    t0 = time.perf_counter()
    with torch.no_grad():
        res = smc(model, n, cfg, generator=g, target=target if to_target else None)
    s = res.summary()
    out = [
        dict(
            case=case,
            sampler="smc",
            seed=seed,
            score=score(res.x, res.log_w),
            ess=s["ess"],
            n_model_evals=s["n_model_evals"],
            n_target_evals=s["n_target_evals"],
            wall_s=time.perf_counter() - t0,
        )
    ]
    levels = _rungs(model.grid.n, rungs)
    n_rounds = rounds_for_budget(len(levels), chains, s["n_model_evals"], target=to_target)
    t0 = time.perf_counter()
    rx = replica_exchange(
        model, chains, n_rounds, levels=levels, target=target if to_target else None, generator=g
    )
    out.append(
        dict(
            case=case,
            sampler="replica",
            seed=seed,
            score=score(rx.x.reshape(-1, rx.x.shape[-1])),
            rounds=n_rounds,
            rungs=len(levels) + int(to_target),
            chains=chains,
            swap_acceptance_min=float(rx.swap_acceptance.min()),
            round_trips=int(rx.round_trips),
            n_model_evals=int(rx.n_model_evals),
            n_target_evals=int(rx.n_target_evals),
            wall_s=time.perf_counter() - t0,
        )
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="exact,trained,aldp")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=1000, help="SMC particles (sets the budget)")
    ap.add_argument("--chains", type=int, default=64, help="replica-exchange chains (walkers per rung)")
    ap.add_argument("--rungs", type=int, default=16, help="level rungs of the replica exchange")
    ap.add_argument(
        "--mixture-run", default=str(WORK / "gmm_high_dim" / "gmm_unequal_128d_diffclf_s1000_seed0"), help="trained run"
    )
    ap.add_argument("--aldp-run", default=str(WORK / "repeats" / "diffclf_s5" / "train"), help="trained ALDP model")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for case in args.cases.split(","):
        if case == "exact":
            from boltzdiff.models.exact import ExactMixtureEnergy
            from boltzdiff.noise import VPSchedule, make_grid
            from boltzdiff.systems import load_system

            gmm = load_system("gmm_unequal_128d").target
            model, target, to_target = ExactMixtureEnergy(gmm, make_grid(VPSchedule(), 64)), gmm, False
            score = lambda x, lw=None, g=gmm: score_mixture(g, x, lw)  # noqa: E731
        elif case in ("trained", "aldp"):
            from boltzdiff.train import load_run

            run = load_run(args.mixture_run if case == "trained" else args.aldp_run)
            model, target, to_target = run.model, run.system.target, True
            if case == "trained":
                score = lambda x, lw=None, g=target: score_mixture(g, x, lw)  # noqa: E731
            else:
                score = lambda x, lw=None, s=run.system: score_aldp(s, x, lw)  # noqa: E731
        else:
            raise SystemExit(f"--cases: unknown case {case!r} (exact, trained, aldp)")
        for seed in seeds:
            print(f"... {case} seed {seed}", file=sys.stderr, flush=True)
            rows += pair(case, model, target, score, args.n, args.chains, args.rungs, seed, to_target)
    from boltzdiff.io import atomic_write_json

    old = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []
    keys = {(r["case"], r["sampler"], r["seed"]) for r in rows}
    rows = [r for r in old if (r["case"], r["sampler"], r["seed"]) not in keys] + rows
    cmd = "python benchmarks/replica_vs_smc.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = dict(command=cmd, machine=machine(), aldp_reference_delta_f_kT=ALDP_REFERENCE_DF)
    atomic_write_json(RESULTS, dict(meta, rows=rows))
    body = [
        [
            r["case"],
            r["sampler"],
            r["seed"],
            f"{r['score']:.3f}",
            f"{r.get('ess', float('nan')):.3f}" if r["sampler"] == "smc" else f"{r['swap_acceptance_min']:.2f}",
            r.get("rounds", ""),
            r["n_model_evals"],
            r["n_target_evals"],
            f"{r['wall_s']:.0f}",
        ]
        for r in rows
    ]
    print(f"Machine: {machine()}")
    print_table(
        ["case", "sampler", "seed", "score", "ESS / min swap acc.", "rounds", "model evals", "target evals", "s"], body
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
