"""``boltzdiff run``: the whole pipeline on one system (reference -> train -> SMC -> analysis -> report)."""

from __future__ import annotations

# The default system: alanine dipeptide with the quick preset, 4-7 min on 2 CPU cores
# (docs/decisions.md#aldp-default-system); `boltzdiff run gmm2_unbalanced` runs the two-mode mixture.
DEFAULT_SYSTEM = "alanine_dipeptide"


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="reference data, training, SMC to the exact target, analysis, report",
        description="Runs (or resumes) every stage of the Boltzmann generator in one run directory.",
    )
    p.add_argument("system", nargs="?", default=DEFAULT_SYSTEM, help=f"system name or path (default: {DEFAULT_SYSTEM})")
    p.add_argument("--preset", default="quick", choices=["quick", "full"])
    p.add_argument("--variant")
    p.add_argument("--out", default=None, help="run directory (default: runs/<system>_<preset>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--loss", choices=["diffclf", "dsm"], default=None, help="training loss (default: the preset's, DSM + DiffCLF)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--redo",
        choices=["reference", "train", "sample", "analyze"],
        default=None,
        help="delete this stage's outputs and those of the stages after it, then run them again (needed after "
        "changing the settings of a finished stage)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for the sample stage's independent SMC runs (sample.n_runs) and for the trainings of "
        "train.n_models > 1 models, side by side; default: one per CPU core (1 on a GPU). The SMC runs' results "
        "do not depend on it",
    )
    p.add_argument(
        "--allow-degenerate",
        action="store_true",
        help="exit 0 even when the analysis flags the run as degenerate (one SMC lineage, a collapsed ESS, a mean "
        "energy far outside the reference's); the flags stay in analysis.json and report.md",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging
    from pathlib import Path

    from boltzdiff.commands._common import check_count, check_device, check_out_dir
    from boltzdiff.pipeline import run_pipeline

    check_count(args.workers, "--workers")
    check_device(args.device)
    out = args.out or str(
        Path("runs")
        / f"{Path(args.system).stem if args.system.endswith('.yaml') else Path(args.system).name}_{args.preset}"
    )
    check_out_dir(out)
    res = run_pipeline(
        args.system,
        out,
        preset=args.preset,
        variant=args.variant,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        loss=args.loss,
        redo=args.redo,
        allow_degenerate=args.allow_degenerate,
        workers=args.workers,
    )
    keys = [
        "ess",
        "delta_f_kT",
        "delta_f_se_kT",
        "md_delta_f_kT",
        "pmf_rmse_kT",
        "mode_weight_error",
        "energy_w1_reweighted",
        "mean_energy_kT",
        "n_target_evals",
    ]
    logging.getLogger(__name__).info(
        "  ".join(f"{k}={res[k]:.4g}" for k in keys if isinstance(res.get(k), (int, float)))
    )
    return 0
