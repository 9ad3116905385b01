"""The ``boltzdiff`` command.

Each subcommand lives in ``boltzdiff/commands/<name>.py`` and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed ``argparse.Namespace``; returns an exit status or None).
User errors (:class:`~boltzdiff.errors.BoltzdiffError`) and bad flags print one line and exit with status 2;
``--debug`` re-raises them with the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
import warnings

from boltzdiff.errors import BoltzdiffError

#: subcommands that join a torch.distributed group under torchrun / srun (docs/method.md#distributed)
DISTRIBUTED = ("train", "sample")

#: subcommand modules, in the order they are listed in ``--help``
COMMANDS = ["run", "train", "evaluate", "sample", "compose", "simulate", "energy", "analyze", "pool", "freeenergy"]


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line (``boltzdiff CMD: error: ...``) like every other user error, not usage + error."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="boltzdiff",
        description="Energy-based diffusion models (DSM + DiffCLF) as Boltzmann generators.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks (implies --debug)")
    p.add_argument(
        "--debug",
        action="store_true",
        help="re-raise user errors with the full traceback instead of the one-line message",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="progress bars even when stderr is no terminal (default: bars on a terminal, else a log line every ~30 s)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"boltzdiff.commands.{name}").register(sub)
    return p


def _format_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def _refuse_undistributed(command: str) -> None:
    """Under a launcher with several processes, only the distributed commands may run: the others would run one
    independent copy per process into the same outputs."""
    import os

    from boltzdiff.errors import ConfigError

    for var in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        n = os.environ.get(var, "1")
        if command not in DISTRIBUTED and n.isdigit() and int(n) > 1:
            raise ConfigError(
                f"{var}={n}: 'boltzdiff {command}' runs in one process; only {' and '.join(DISTRIBUTED)} run under "
                "torchrun/srun with several processes"
            )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, one line printed)
        return e.code if isinstance(e.code, int) else 2
    if extra:
        prog = f"boltzdiff {args.command}" if getattr(args, "command", None) else "boltzdiff"
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    warnings.formatwarning = _format_warning
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from boltzdiff.progress import mode_from_flags, set_mode

    set_mode(mode_from_flags(args.progress, bool(getattr(args, "no_progress", False))))
    try:
        _refuse_undistributed(args.command)
        rc = args.func(args)
    except BoltzdiffError as e:
        if args.debug or args.verbose:
            raise
        print(f"boltzdiff {args.command}: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    except KeyboardInterrupt as e:
        words = list(sys.argv[1:] if argv is None else argv)
        if args.command == "train" and "--resume" not in words:  # train refuses a used --out without it
            words.append("--resume")
        again = "boltzdiff " + " ".join(shlex.quote(w) for w in words)
        what = f" {e}" if str(e) else ""
        print(f"boltzdiff {args.command}: interrupted{what}; resume with: {again}", file=sys.stderr)
        return 130
    finally:
        set_mode("auto")  # the flags hold for this command only (main may be called again in one process)
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
