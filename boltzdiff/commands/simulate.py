"""``boltzdiff simulate SYSTEM --out DIR``: reference data by Langevin MD (OpenMM) or MCMC (torch targets).

Rerunning the same command on the same ``--out`` resumes from the last checkpoint (a larger ``--ns`` /
``--steps`` extends the run). Outputs are described in :mod:`boltzdiff.reference.frames`.
"""

from __future__ import annotations

import argparse

from boltzdiff.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="reference samples: OpenMM Langevin MD (molecules) or MCMC chains (LJ, DW4)",
        description="Run Langevin MD for OpenMM systems, or MALA/random-walk MCMC for torch targets; writes "
        "positions.npy, energies.npy (kT), trajectory.dcd + topology.pdb, checkpoints and run_info.json. "
        "Rerun on the same --out to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("system", help="system name (boltzdiff/systems/<name>), folder or system.yaml")
    p.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    p.add_argument("--variant", default=None, help="spec variant (e.g. implicit, vacuum)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=["auto", "md", "mcmc"],
        default="auto",
        help="auto: MD for kind openmm, MCMC for torch targets; md also works for LJ (its OpenMM System)",
    )
    md = p.add_argument_group("MD (kind: openmm)")
    md.add_argument("--ns", type=float, default=1.0, help="simulation length (ns)")
    md.add_argument("--temperature", type=float, default=None, help="K (default: the system's)")
    md.add_argument("--friction", type=float, default=1.0, help="Langevin friction (1/ps)")
    md.add_argument(
        "--timestep-fs",
        type=float,
        default=1.0,
        help="time step (fs); 1 fs because the systems are unconstrained",
    )
    md.add_argument("--save-every-ps", type=float, default=1.0, help="frame interval (ps)")
    md.add_argument("--platform", default=None, help="OpenMM platform (default: the spec's, else Reference)")
    md.add_argument("--no-minimize", action="store_true", help="skip the initial energy minimisation")
    md.add_argument("--checkpoint-every", type=int, default=100, help="frames between checkpoints")
    mc = p.add_argument_group("MCMC (kind: lennard_jones, double_well)")
    mc.add_argument("--steps", type=int, default=20000, help="MCMC steps after burn-in")
    mc.add_argument("--burn-in", type=int, default=2000, help="burn-in steps (step size adapts here only)")
    mc.add_argument("--chains", type=int, default=64, help="parallel chains")
    mc.add_argument("--mcmc", choices=["mala", "rw"], default="mala", help="MALA or random-walk Metropolis")
    mc.add_argument("--step-size", type=float, default=1e-3, help="initial step size")
    mc.add_argument("--save-every", type=int, default=100, help="steps between saved chain states")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace, engine: str) -> None:
    """The flags of ``engine`` ('md' or 'mcmc'): positive lengths and counts, and at least one saved frame (a
    run that would save none is an error, not a 'completed' run)."""
    import math

    from boltzdiff.commands._common import check_count, check_out_dir

    check_out_dir(args.out)
    if engine == "md":
        for flag, v in (
            ("--ns", args.ns),
            ("--save-every-ps", args.save_every_ps),
            ("--timestep-fs", args.timestep_fs),
            ("--friction", args.friction),
        ):
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"simulate {flag}: expected a positive number, got {v}")
        if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
            raise ConfigError(f"simulate --temperature: expected a positive number of kelvin, got {args.temperature}")
        check_count(args.checkpoint_every, "simulate --checkpoint-every")
        if round(args.ns * 1000.0 / args.save_every_ps) < 1:
            raise ConfigError(
                f"simulate --ns {args.ns}: shorter than one --save-every-ps {args.save_every_ps} interval, so 0 "
                "frames would be saved; expected --ns >= --save-every-ps / 1000"
            )
    else:
        for flag, v in (("--steps", args.steps), ("--chains", args.chains), ("--save-every", args.save_every)):
            check_count(v, f"simulate {flag}")
        check_count(args.burn_in, "simulate --burn-in", minimum=0)
        if not (math.isfinite(args.step_size) and args.step_size > 0):
            raise ConfigError(f"simulate --step-size: expected a positive number, got {args.step_size}")
        if args.steps // args.save_every < 1:
            raise ConfigError(
                f"simulate --steps {args.steps}: fewer than one --save-every {args.save_every} interval, so 0 "
                "frames would be saved; expected --steps >= --save-every"
            )


def run(args: argparse.Namespace) -> int:
    from boltzdiff.reference.chains import ChainConfig, run_chains
    from boltzdiff.reference.md import MDConfig, run_md
    from boltzdiff.systems import load_system

    if args.engine != "auto":
        check_args(args, args.engine)
    system = load_system(args.system, args.variant)
    try:
        engine = args.engine
        if engine == "auto":
            engine = "md" if system.kind == "openmm" else "mcmc"
            check_args(args, engine)
        if engine == "mcmc" and system.kind == "openmm":
            raise ConfigError(
                f"simulate: --engine mcmc needs a torch target; {system.name} is an OpenMM system"
            )
        if engine == "md":
            cfg = MDConfig(
                ns=args.ns,
                temperature=args.temperature,
                friction_per_ps=args.friction,
                timestep_fs=args.timestep_fs,
                save_every_ps=args.save_every_ps,
                seed=args.seed,
                platform=args.platform or system.spec.get("platform", "Reference"),
                minimize=not args.no_minimize,
                checkpoint_every=args.checkpoint_every,
            )
            res = run_md(system, args.out, cfg, progress=not args.no_progress)
            speed = "already complete" if res.speed != res.speed else f"{res.speed:.0f} ns/day this run"
            print(f"MD {system.name}: {res.n_frames} frames in {res.out_dir} ({speed})")
        else:
            cfg = ChainConfig(
                n_steps=args.steps,
                n_chains=args.chains,
                method=args.mcmc,
                step_size=args.step_size,
                burn_in=args.burn_in,
                save_every=args.save_every,
                seed=args.seed,
            )
            res = run_chains(system, args.out, cfg, progress=not args.no_progress)
            print(
                f"MCMC {system.name}: {res.n_frames} frames in {res.out_dir} "
                f"(acceptance {res.acceptance:.2f}, "
                f"{res.speed:.0f} steps/s)"
            )
    finally:
        close = getattr(system.target, "close", None)
        if close:
            close()
    return 0
