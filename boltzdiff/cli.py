"""The ``boltzdiff`` command.

Each subcommand lives in ``boltzdiff/commands/<name>.py`` and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed ``argparse.Namespace``; returns an exit status or None).
User errors (:class:`~boltzdiff.errors.BoltzdiffError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
import warnings

from boltzdiff.errors import BoltzdiffError

#: subcommand modules, in the order they are listed in ``--help``
COMMANDS = ["run", "train", "evaluate", "sample", "compose", "simulate", "energy", "analyze", "pool"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="boltzdiff",
        description="Energy-based diffusion models (DSM + DiffCLF) as Boltzmann generators.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    p.add_argument(
        "--progress",
        action="store_true",
        help="progress bars even when stderr is no terminal (default: bars on a terminal, else a log line every ~30 s)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"boltzdiff.commands.{name}").register(sub)
    return p


def _format_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    warnings.formatwarning = _format_warning
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from boltzdiff.progress import mode_from_flags, set_mode

    set_mode(mode_from_flags(args.progress, bool(getattr(args, "no_progress", False))))
    try:
        rc = args.func(args)
    except BoltzdiffError as e:
        if args.verbose:
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
