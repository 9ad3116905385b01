"""``boltzdiff freeenergy STATE_A STATE_B --out DIR``: the free-energy difference between two thermodynamic
states of one system (e.g. ``alanine_dipeptide:vacuum alanine_dipeptide:implicit``) from an energy trained along a
stochastic interpolant between their samples (:mod:`boltzdiff.freeenergy`)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "freeenergy",
        help="F_B - F_A between two states (SYSTEM:VARIANT) from an interpolant energy; resumable",
    )
    p.add_argument("state_a", metavar="STATE_A", help="SYSTEM or SYSTEM:VARIANT, e.g. alanine_dipeptide:vacuum")
    p.add_argument("state_b", metavar="STATE_B", help="SYSTEM or SYSTEM:VARIANT of the same configuration space")
    p.add_argument("--out", required=True, help="run directory (resumes when it holds the same run)")
    p.add_argument("--preset", default="quick", choices=["quick", "full"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", default="diffclf", choices=["diffclf", "dsm"])
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="a setting (n_levels, gamma_f, steps, batch_size, k, lr, n_particles, mcmc_steps, ...)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from boltzdiff.commands._common import parse_key_values
    from boltzdiff.freeenergy.pipeline import run_free_energy

    est = run_free_energy(
        args.state_a,
        args.state_b,
        args.out,
        preset=args.preset,
        seed=args.seed,
        loss=args.loss,
        progress=not args.no_progress,
        overrides=parse_key_values(args.overrides),
    )
    ais = est["ais"]
    c = est["classifier"]["delta_f_kT"]
    print(
        f"F_B - F_A (kT): classifier {'—' if c is None else f'{c:.3f}'}; "
        f"AIS both ways (BAR) {ais.get('bar', {}).get('delta_f_kT', float('nan')):.3f} "
        f"± {ais.get('bar', {}).get('delta_f_se_kT', float('nan')):.3f}; report: {args.out}/report.md"
    )
    return 0
