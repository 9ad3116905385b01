"""``boltzdiff sample``: draw (weighted) samples from a trained model.

Writes ``FILE.npz`` with arrays ``x`` ``(n, d)`` and ``log_w`` ``(n,)`` (zeros for the unweighted
``sde``/``ode`` samplers) and ``FILE.json`` with the summary (``ess``, evaluation counts, ...; for
Gaussian-mixture targets also the mode weights of the weighted samples against the exact ones). Both are
written to a temporary file first and renamed, so an interrupted run leaves no partial output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from boltzdiff.errors import ConfigError

log = logging.getLogger(__name__)


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def add_sampling_args(p: argparse.ArgumentParser, run_dirs: bool = False) -> None:
    """Flags shared by ``sample`` and ``compose``; ``run_dirs``: ``--n`` and ``--out`` may be left out (a
    ``boltzdiff run`` directory sampled at another temperature takes both from its recipe)."""
    p.add_argument("--n", type=_int, required=not run_dirs, help="number of samples / particles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levels", type=_int, help="use a sub-grid of M levels evenly spaced in index (default: all)")
    p.add_argument("--mcmc", choices=["mala", "hmc"], default="mala", help="MCMC kernel for rejuvenation (smc)")
    p.add_argument(
        "--mcmc-steps",
        type=_int,
        default=0,
        dest="mcmc_steps",
        help="MCMC steps per level (smc) and per bridge step (--to-target; default 2 there)",
    )
    p.add_argument(
        "--ess-threshold",
        type=float,
        default=0.3,
        dest="ess_threshold",
        help="resample when the normalised ESS falls below this (smc)",
    )
    p.add_argument(
        "--kernel",
        choices=["gaussian", "ancestral", "em"],
        default="gaussian",
        help="reverse-SDE kernel (sde, smc)",
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw (not EMA) weights")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--out",
        required=not run_dirs,
        help="output FILE.npz (the summary goes to FILE.json)"
        + (
            "; for a `boltzdiff run` directory with --temperature, a directory (default RUN_DIR/at_<T>K)"
            if run_dirs
            else ""
        ),
    )


def check_sampling_args(args) -> None:
    if args.n < 1:
        raise ConfigError(f"--n: expected a number of samples >= 1, got {args.n}")
    if args.levels is not None and args.levels < 2:
        raise ConfigError(f"--levels: expected an integer >= 2, got {args.levels}")
    if args.mcmc_steps < 0:
        raise ConfigError(f"--mcmc-steps: expected an integer >= 0, got {args.mcmc_steps}")
    if not 0.0 <= args.ess_threshold <= 1.0:
        raise ConfigError(f"--ess-threshold: expected a number in [0, 1], got {args.ess_threshold}")
    if not str(args.out).endswith(".npz"):
        raise ConfigError(f"--out: expected a file name ending in .npz, got {args.out!r}")
    from boltzdiff.commands._common import check_out_file

    check_out_file(args.out)
    check_out_file(Path(args.out).with_suffix(".json"))


def load_model(run_dir: str, ema: bool = True, device: str = "cpu"):
    """``load_run`` from the training module, with one-line errors for a missing run directory or a malformed
    config.yaml, on ``device``."""
    from boltzdiff.commands._common import check_train_run_dir
    from boltzdiff.train import load_run

    check_train_run_dir(run_dir)
    return load_run(run_dir, ema=ema, device=device)


def write_outputs(out: str, x, log_w, summary: dict) -> tuple[Path, Path]:
    """Write ``out`` (npz: ``x``, ``log_w``) and ``out`` with ``.json`` atomically (temp file + rename)."""
    from boltzdiff.io import atomic_write_text, save_npz

    out_p = Path(out)
    json_p = out_p.with_suffix(".json")
    save_npz(out_p, {"x": x.detach().cpu().numpy(), "log_w": log_w.detach().cpu().double().numpy()})
    atomic_write_text(json_p, json.dumps(summary, indent=2) + "\n")
    return out_p, json_p


def exact_target(run_):
    """The target to end at: the pipeline's choice (particle systems get the model's centre-of-mass Gaussian
    as a gauge, so the bridge's end is normalisable), else the system's target."""
    from boltzdiff.pipeline import sampling_target

    return sampling_target(run_.system, run_.model)


def smc_configs(args):
    from boltzdiff.samplers.mcmc import MCMCConfig

    mcmc = MCMCConfig(args.mcmc, n_steps=args.mcmc_steps) if args.mcmc_steps > 0 else None
    bridge = MCMCConfig(args.mcmc, n_steps=args.mcmc_steps if args.mcmc_steps > 0 else 2)
    return mcmc, bridge


def register(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="sample a trained model (reverse SDE/ODE or weighted SMC)",
        description="Draw samples from a trained energy model; SMC gives importance weights, "
        "and --to-target ends at the system's exact energy.",
    )
    p.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="run directory written by `boltzdiff train`, or by `boltzdiff run` with --temperature (its own "
        "sample recipe and analysis at that temperature)",
    )
    p.add_argument("--sampler", choices=["sde", "ode", "smc"], default="smc")
    p.add_argument(
        "--to-target",
        action="store_true",
        dest="to_target",
        help="(smc) anneal from the model's cleanest level to the exact target energy",
    )
    p.add_argument(
        "--bridge-steps",
        type=_int,
        default=16,
        dest="bridge_steps",
        help="(smc --to-target) steps of the geometric bridge",
    )
    p.add_argument(
        "--kernel-variance",
        choices=["fisher", "matrix", "model"],
        default="fisher",
        dest="kernel_variance",
        help="(smc) variance of the gaussian reverse kernel: isotropic from the particles' Fisher information, "
        "a full covariance from the level's curvature (matrix), or the model's Gaussian",
    )
    p.add_argument(
        "--refine",
        type=_int,
        default=1,
        help="(smc) run through REFINE - 1 untrained levels between every two trained ones (default 1: none)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the model and the particles live")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="(smc) end at the exact target at this temperature (the system's units: K for molecules, 1 = the "
        "energy itself for mixtures) with the model trained at the system's temperature as the proposal; "
        "implies --to-target",
    )
    p.add_argument("--workers", type=_int, default=None, help="(a `boltzdiff run` directory) SMC runs side by side")
    add_sampling_args(p, run_dirs=True)
    p.set_defaults(func=run)


def run_at_temperature(args) -> int:
    """``RUN_DIR`` is a ``boltzdiff run`` directory: its models, sample recipe and analysis at ``--temperature``
    (:mod:`boltzdiff.pipeline.retemper`); the sampler flags belong to the recipe and are refused."""
    from boltzdiff.pipeline.retemper import run_at_temperature as at_t

    if args.temperature is None:
        raise ConfigError(
            f"{args.run_dir}: a `boltzdiff run` directory; give --temperature T to sample it at another "
            f"temperature, or {Path(args.run_dir) / 'train'} to sample its model with these flags"
        )
    if args.n is not None:
        raise ConfigError("--n: a `boltzdiff run` directory is sampled with its own recipe (sample.n)")
    if args.out is not None and str(args.out).endswith(".npz"):
        raise ConfigError(f"--out: expected a directory for a `boltzdiff run` directory, got {args.out!r}")
    res = at_t(args.run_dir, args.temperature, args.out, args.seed, args.workers, progress=not args.no_progress)
    dfe, se = res.get("delta_f_kT"), res.get("delta_f_se_kT")
    if dfe is not None:
        print(f"ΔF at {args.temperature:g} K: {dfe:.3f}" + ("" if se is None else f" ± {se:.3f}") + " kT")
    return 0


def run(args) -> int:
    from boltzdiff.distributed import launched

    with launched(args.device) as comm:  # torchrun/srun: the energy evaluations are shared out
        return _run(args, comm)


def _run(args, comm) -> int:
    import torch

    from boltzdiff.samplers import SMCConfig, probability_flow_ode, reverse_sde, smc
    from boltzdiff.samplers.diagnostics import mode_report
    from boltzdiff.targets.gmm import GaussianMixture

    if (Path(args.run_dir) / "pipeline.json").is_file():
        if comm.size > 1:
            raise ConfigError("WORLD_SIZE: a `boltzdiff run` directory is sampled by one process (use --workers)")
        return run_at_temperature(args)
    if args.n is None or args.out is None:
        raise ConfigError(
            f"{'--n' if args.n is None else '--out'}: required for a `boltzdiff train` directory "
            "(only a `boltzdiff run` directory with --temperature takes it from its recipe)"
        )
    check_sampling_args(args)
    beta = 1.0
    if args.temperature is not None:
        from boltzdiff.samplers.tempering import check_temperature

        check_temperature(args.temperature)
        if args.sampler != "smc":
            raise ConfigError("--temperature needs --sampler smc (the bridge to the exact target is weighted)")
        args.to_target = True
    if args.to_target and args.sampler != "smc":
        raise ConfigError("--to-target needs --sampler smc (the bridge to the exact target is weighted)")
    if args.bridge_steps < 1:
        raise ConfigError(f"--bridge-steps: expected an integer >= 1, got {args.bridge_steps}")
    if args.refine < 1:
        raise ConfigError(f"--refine: expected an integer >= 1, got {args.refine}")
    if args.sampler != "smc" and (args.refine != 1 or args.kernel_variance != "fisher"):
        raise ConfigError("--refine and --kernel-variance are settings of --sampler smc")
    from boltzdiff.commands._common import check_device

    check_device(args.device)
    run_ = load_model(args.run_dir, ema=not args.no_ema, device=args.device)
    model, target = run_.model, run_.system.target
    if args.refine > 1:
        from boltzdiff.models.energy import refine_levels

        model = run_.model = refine_levels(model, args.refine)
    if args.levels is not None and args.levels > model.grid.n:
        raise ConfigError(f"--levels: the model has {model.grid.n} levels; got {args.levels}")
    gen = torch.Generator().manual_seed(int(args.seed))
    progress = not args.no_progress and comm.rank == 0
    if args.sampler == "smc":
        shape = tuple(run_.system.target.event_shape)
        particles = shape if args.kernel_variance == "matrix" and len(shape) == 2 else None
        mcmc, bridge = smc_configs(args)
        if args.to_target:
            if args.temperature is not None:
                from boltzdiff.samplers.tempering import tempered_system

                system, beta = tempered_system(run_.system, args.temperature)
                target = exact_target(dataclasses.replace(run_, system=system))
            else:
                target = exact_target(run_)
        cfg = SMCConfig(
            levels=args.levels,
            kernel=args.kernel,
            kernel_variance=args.kernel_variance,
            particles=particles,
            ess_threshold=args.ess_threshold,
            mcmc=mcmc,
            n_bridge=args.bridge_steps,
            bridge_mcmc=bridge,
        )
        tgt = target if args.to_target else None
        res = smc(model, args.n, cfg, generator=gen, target=tgt, progress=progress, comm=comm)
    elif args.sampler == "sde":
        res = reverse_sde(
            comm.shard_model(model), args.n, generator=gen, levels=args.levels, kernel=args.kernel, progress=progress
        )
    else:
        res = probability_flow_ode(
            comm.shard_model(model), args.n, generator=gen, levels=args.levels, progress=progress
        )
    summary = dict(
        sampler=args.sampler,
        run_dir=str(args.run_dir),
        system=run_.system.name,
        to_target=bool(args.to_target),
        seed=int(args.seed),
        **res.summary(),
    )
    x, log_w = res.x.detach().cpu(), res.log_w.detach().cpu()  # the particles live on --device
    if args.temperature is not None:
        from boltzdiff.samplers.tempering import system_temperature

        summary.update(temperature=float(args.temperature), system_temperature=system_temperature(run_.system))
        summary["beta"] = beta
    if isinstance(target, GaussianMixture):
        summary["modes"] = mode_report(target, x, log_w)
    elif isinstance(run_.system.target, GaussianMixture) and args.to_target:
        from boltzdiff.samplers.tempering import tempered_mixture

        # p^beta's mode weights in closed form (separated components; boltzdiff.samplers.tempering)
        summary["modes"] = mode_report(tempered_mixture(run_.system.target, beta), x, log_w)
    if comm.rank != 0:  # every process holds the same result; rank 0 writes it
        return 0
    out, js = write_outputs(args.out, x, log_w, summary)
    log.info(
        "%s: %d samples, ESS %.3f, %d model / %d target evaluations, %.1f s -> %s (+ %s)",
        args.sampler,
        args.n,
        summary["ess"],
        summary["n_model_evals"],
        summary["n_target_evals"],
        summary["wall_s"],
        out,
        js.name,
    )
    if summary.get("n_nonfinite"):
        log.warning("%d particle events had a non-finite energy and got weight zero", summary["n_nonfinite"])
    return 0
