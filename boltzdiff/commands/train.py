"""``boltzdiff train``: fit E_theta(x, t) with DSM or DSM + DiffCLF."""

from __future__ import annotations

import argparse
import logging

from boltzdiff.commands._common import resolve_train_config

log = logging.getLogger(__name__)


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    return v


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an energy model (DSM or DSM + DiffCLF)",
        description="Train a time-dependent energy model on samples of a system (data-parallel when started "
        "by torchrun or srun).",
    )
    p.add_argument("--system", help="system name (boltzdiff/systems/<name>), folder, or system.yaml path")
    p.add_argument("--variant", help="system variant (e.g. vacuum/implicit)")
    p.add_argument("--loss", choices=["diffclf", "dsm"], help="DSM + DiffCLF (default) or DSM only")
    p.add_argument("--steps", type=_nonneg_int, help="optimiser steps")
    p.add_argument("--batch-size", type=_nonneg_int, dest="batch_size")
    p.add_argument("--k", type=_nonneg_int, help="distinct levels per data point")
    p.add_argument(
        "--warmup-steps", type=_nonneg_int, dest="warmup_steps", help="DSM-only steps first (two-stage)"
    )
    p.add_argument(
        "--data",
        help="training configurations (.npy/.npz/.h5); default: exact samples if the target has them",
    )
    p.add_argument("--config", help="run config YAML (fields of TrainConfig, optionally under 'train:')")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/ckpt.pt")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from boltzdiff.commands._common import check_device, check_out_dir
    from boltzdiff.errors import ConfigError
    from boltzdiff.io import load_yaml_mapping
    from boltzdiff.train import train

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: expected a positive integer, got {args.steps}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    out = check_out_dir(args.out)
    if args.resume and (out / "ckpt.pt").exists():  # what --resume compares the settings with
        load_yaml_mapping(out / "config.yaml", "the config.yaml that `boltzdiff train` wrote (a mapping of settings)")
    over = dict(
        loss=args.loss,
        steps=args.steps,
        batch_size=args.batch_size,
        k=args.k,
        warmup_steps=args.warmup_steps,
        data=args.data,
        seed=args.seed,
        device=args.device,
        variant=args.variant,
    )
    cfg = resolve_train_config(args.system, args.config, over)
    check_device(cfg.device, "--device" if args.device else f"{args.config or 'config'}: device")
    from boltzdiff.distributed import launched

    with launched(cfg.device):  # torchrun/srun: data-parallel over the processes (docs/method.md#distributed)
        res = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
        log.info(
            "trained %d steps in %.1f s (%.3f s/step); model in %s",
            res.steps,
            res.wall_s,
            res.sec_per_step,
            res.run_dir / "model.pt",
        )
    return 0
