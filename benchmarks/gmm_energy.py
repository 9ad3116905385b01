"""DiffCLF vs DSM-only energies on Gaussian mixtures, scored against the exact noised marginals.

For each system (default: gmm40_2d and gmm2_unbalanced) trains both losses with the default recipe (`boltzdiff
train` defaults merged with the system's run.yaml, as `boltzdiff train --system` does; optionally --steps) and
prints clf_excess (learned f, and fitted f for both), the lowest level's mode-weight error, the median per-level
log-ratio std and the training wall time. Then times one optimiser step of each loss side by side (interleaved,
median of --repeats) at equal batch, i.e. an equal number of DSM terms (DSM-only repeats each data point k times).

    python benchmarks/gmm_energy.py [--systems gmm40_2d,gmm2_unbalanced] [--steps N] [--repeats 20] \\
        [--seeds 0,1,2] [--set key=value ...] [--no-timing] [--plain-dsm]

With several ``--seeds`` DiffCLF is trained once per seed (DSM-only at the first) and a mean ± SD row is added: one
run's lowest-level mode weights scatter by a few 0.01 between seeds (benchmarks/RESULTS.md, "DiffCLF energies on
Gaussian mixtures").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, machine, median, print_table, system_config, train_and_eval  # noqa: E402


def step_times(system: str, repeats: int, threads: int) -> tuple[float, float]:
    """Median seconds per optimiser step of DSM-only and DSM + DiffCLF, interleaved in one process."""
    from boltzdiff.losses import diffclf_loss, draw_levels, dsm_only_loss
    from boltzdiff.systems import load_system
    from boltzdiff.train import build_grid, build_model, data_stats

    torch.set_num_threads(threads)
    cfg = system_config(system)
    sysm = load_system(system)
    g = torch.Generator().manual_seed(0)
    data = sysm.target.sample(4096, g)
    mu, sd = data_stats(data, False)
    times = {"dsm": [], "diffclf": []}
    models = {k: build_model(cfg, build_grid(cfg), mu, sd, sysm) for k in times}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    for r in range(repeats + 2):
        for name in ("dsm", "diffclf"):
            m, opt = models[name], opts[name]
            x0 = data[torch.randint(0, len(data), (cfg.batch_size,), generator=g)]
            lv = draw_levels(cfg.batch_size, cfg.n_levels, cfg.k, g, cfg.level_sampling, cfg.level_window)
            t = time.perf_counter()
            out = dsm_only_loss(m, x0, lv, sd, g) if name == "dsm" else diffclf_loss(m, x0, lv, sd, generator=g)
            opt.zero_grad()
            out.total.backward()
            opt.step()
            if r >= 2:  # warm-up
                times[name].append(time.perf_counter() - t)
    return median(times["dsm"]), median(times["diffclf"])


def timing_table(systems: list[str], threads: list[int], repeats: int, rounds: int) -> None:
    """DiffCLF / DSM-only step-time ratios per system and thread count: each of ``rounds`` rounds measures every
    (threads, system) pair once (medians of ``repeats`` interleaved steps); the table quotes the median over
    rounds of each time and of the per-round ratio, with the range of the ratio."""
    res: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for r in range(rounds):
        for th in threads:
            for system in systems:
                t_dsm, t_clf = step_times(system, repeats, th)
                res.setdefault((th, system), []).append((t_dsm, t_clf))
                print(f"... round {r}, {th} thread(s), {system}: {t_clf / t_dsm:.2f}", file=sys.stderr, flush=True)
    rows = []
    for (th, system), v in res.items():
        ratios = [c / d for d, c in v]
        rows.append(
            [
                system,
                th,
                f"{median([d for d, _ in v]):.4f}",
                f"{median([c for _, c in v]):.4f}",
                f"{median(ratios):.2f}",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
            ]
        )
    print(f"\nMachine: {machine()}")
    print(f"Seconds per optimiser step at equal batch: medians over {rounds} rounds of the median of {repeats} steps")
    print_table(["system", "threads", "DSM-only s/step", "DiffCLF s/step", "ratio (median)", "ratio (range)"], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="gmm40_2d,gmm2_unbalanced")
    ap.add_argument("--steps", type=int, default=None, help="override the default number of steps")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds for DiffCLF (DSM-only: the first)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train setting (YAML value)")
    ap.add_argument("--no-timing", action="store_true", help="skip the step-time measurement")
    ap.add_argument("--no-dsm", action="store_true", help="train and score DiffCLF only (no DSM-only baseline)")
    ap.add_argument("--dsm-all-seeds", action="store_true", help="train the DSM-only baseline(s) at every seed too")
    ap.add_argument(
        "--plain-dsm",
        action="store_true",
        help="also train DSM-only without target score matching (tsm_scale: null), the plain-DSM baseline",
    )
    ap.add_argument(
        "--timing-only",
        action="store_true",
        help="no training: step times only, at 1 and 2 threads (or --threads), --rounds times each, interleaved",
    )
    ap.add_argument("--rounds", type=int, default=3, help="with --timing-only: repeats of each measurement")
    ap.add_argument(
        "--chains",
        type=int,
        default=256,
        help="noising chains for the classification loss (SE ~ 1/sqrt; cached models are rescored, not retrained)",
    )
    args = ap.parse_args()
    if args.timing_only:
        timing_table(args.systems.split(","), [args.threads] if args.threads else [1, 2], args.repeats, args.rounds)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    tag = "".join(f"_{k}{v}" for k, v in over.items())
    rows, speed = [], []
    for system in args.systems.split(","):
        res = {}
        todo = [("diffclf", "diffclf", s, {}) for s in seeds]
        dsm_seeds = seeds if args.dsm_all_seeds else seeds[:1]
        todo += [] if args.no_dsm else [("dsm", "dsm", s, {}) for s in dsm_seeds]
        todo += [("dsm, no TSM", "dsm", s, {"tsm_scale": None}) for s in dsm_seeds] if args.plain_dsm else []
        for label, loss, seed, extra in todo:
            cfg = system_config(system, loss=loss, seed=seed, num_threads=args.threads, **{**over, **extra})
            if args.steps:
                cfg.steps = args.steps
            extra_tag = "_noTSM" if extra else ""
            out = WORK / "gmm_energy" / f"{system}_{loss}_s{cfg.steps}_seed{seed}{tag}{extra_tag}"
            print(f"... {system} {label} seed {seed} ({cfg.steps} steps)", file=sys.stderr, flush=True)
            ev = train_and_eval(cfg, out, n_chains=args.chains)
            res.setdefault(label, []).append(ev)
            med = sorted(ev["log_ratio_std"])[len(ev["log_ratio_std"]) // 2]
            rows.append(
                [
                    system,
                    label,
                    seed,
                    f"{ev['clf_excess']:.4f} ± {ev['clf_excess_se']:.4f}",
                    f"{ev['clf_excess_fitted_f']:.4f}",
                    f"{ev['mode_weight_error']:.3f}",
                    f"{med:.3f}",
                    f"{ev['train_wall_s'] / 60:.1f}",
                    cfg.steps,
                ]
            )
        if len(seeds) > 1:
            errs = np.array([ev["mode_weight_error"] for ev in res["diffclf"]])
            exc = np.array([ev["clf_excess_fitted_f"] for ev in res["diffclf"]])
            rows.append(
                [
                    system,
                    f"diffclf, {len(seeds)} seeds: mean ± SD",
                    "",
                    "",
                    f"{exc.mean():.4f} ± {exc.std(ddof=1):.4f}",
                    f"{errs.mean():.3f} ± {errs.std(ddof=1):.3f}",
                    "",
                    "",
                    "",
                ]
            )
        # the headline comparison: DiffCLF's own clf_excess (its learned f) against DSM-only's with the best f
        # fitted afterwards (DSM-only learns no f); DiffCLF with a fitted f too. Means over the seeds trained.
        dc = res["diffclf"]
        for label in ("dsm", "dsm, no TSM"):
            if label not in res:
                continue
            dsm_fit = float(np.mean([ev["clf_excess_fitted_f"] for ev in res[label]]))
            name = "DSM" if label == "dsm" else "DSM without TSM"
            for key, what in (("clf_excess", "learned f"), ("clf_excess_fitted_f", "fitted f")):
                val = float(np.mean([ev[key] for ev in dc]))
                se = float(np.sqrt(np.mean([ev["clf_excess_se"] ** 2 for ev in dc]) / len(dc)))
                if val <= 2 * se:  # DiffCLF within 2 SE of the exact floor: quote the bound it implies
                    cell = f">= {dsm_fit / (2 * se):.0f}x (DiffCLF {val:.4f}, within 2 SE of the floor)"
                else:
                    cell = f"{dsm_fit / val:.1f}x (DiffCLF {val:.4f} ± {se:.4f})"
                rows.append(
                    [system, f"ratio {name} (fitted f) / DiffCLF ({what}), mean of {len(res[label])} / {len(dc)}"]
                    + ["", "", cell]
                    + [""] * 4
                )
        if not args.no_timing:
            t_dsm, t_clf = step_times(system, args.repeats, args.threads or torch.get_num_threads())
            speed.append([system, f"{t_dsm:.4f}", f"{t_clf:.4f}", f"{t_clf / t_dsm:.2f}"])
    print(f"\nMachine: {machine()}")
    print_table(
        [
            "system",
            "loss",
            "seed",
            "clf_excess (learned f)",
            "clf_excess (fitted f)",
            "mode-weight err (max abs)",
            "median log-ratio std",
            "train min",
            "steps",
        ],
        rows,
    )
    if speed:
        print(f"\nSeconds per optimiser step at equal batch (median of {args.repeats}, interleaved):")
        print_table(["system", "DSM-only s/step", "DiffCLF s/step", "ratio"], speed)


if __name__ == "__main__":
    main()
