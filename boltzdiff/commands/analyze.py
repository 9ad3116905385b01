"""``boltzdiff analyze RUN_DIR``: ESS, free energies, comparison with the reference, plots and report."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("analyze", help="analyse a `boltzdiff run` directory (analysis.json, PNGs, report.md)")
    p.add_argument("run_dir")
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument(
        "--rb-angles",
        type=int,
        default=72,
        help="molecules whose ΔF state is one dihedral interval (system.yaml states): integrate each particle's "
        "probability of the state over this many rotations about that dihedral's bond (Rao-Blackwell; 0: count "
        "the particles in the state)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from boltzdiff.errors import ConfigError
    from boltzdiff.pipeline import analyze_run, check_run_outputs, read_pipeline_json

    if not Path(args.run_dir).is_dir():
        raise ConfigError(f"analyze: run dir {args.run_dir} does not exist")
    if args.rb_angles != 0 and args.rb_angles < 2:
        raise ConfigError(f"analyze --rb-angles: expected 0 or an integer >= 2, got {args.rb_angles}")
    if args.n_bootstrap < 0:
        raise ConfigError(f"analyze --n-bootstrap: expected an integer >= 0, got {args.n_bootstrap}")
    read_pipeline_json(Path(args.run_dir))  # a malformed pipeline.json or run array is one line naming it
    check_run_outputs(Path(args.run_dir))
    analyze_run(args.run_dir, n_bootstrap=args.n_bootstrap, rb_angles=args.rb_angles, progress=not args.no_progress)
    return 0
