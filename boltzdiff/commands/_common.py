"""Shared helpers of the subcommands."""

from __future__ import annotations

import os
from pathlib import Path

from boltzdiff.config import TrainConfig, load_config_file, merge_config
from boltzdiff.errors import ConfigError
from boltzdiff.io import load_yaml_mapping


def resolve_train_config(system_name: str | None, config_file: str | None, overrides: dict) -> TrainConfig:
    """defaults < the system's run.yaml < --config file < command-line flags."""
    from boltzdiff.systems import load_system

    cfg = TrainConfig()
    file_cfg = load_config_file(config_file) if config_file else {}
    name = system_name or file_cfg.get("system") or cfg.system
    variant = overrides.get("variant") or file_cfg.get("variant")
    system = load_system(name, variant)
    # n_models is the pipeline's (how many models `boltzdiff run` trains), not one training's
    defaults = {k: v for k, v in (system.run_defaults.get("train") or {}).items() if k != "n_models"}
    cfg = merge_config(cfg, defaults, f"{system.path.parent / 'run.yaml'}: train")
    cfg = merge_config(cfg, file_cfg.get("train", file_cfg), config_file or "--config")
    cfg = merge_config(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    cfg.system = str(name)
    return cfg.validate(where="config")


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """``device`` if torch can run there (``cpu``, ``cuda``, ``cuda:N`` with a device N), else a one-line error
    naming the devices that are valid and those that are available."""
    import torch

    if device is None:
        return None
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    avail = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n_cuda)] if n_cuda else [])
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{flag}: expected cpu, cuda or cuda:N, got {device!r} (available here: {', '.join(avail)})")
    if dev.type == "cuda" and (n_cuda == 0 or (dev.index is not None and dev.index >= n_cuda)):
        what = "no CUDA device is available" if n_cuda == 0 else f"only {n_cuda} CUDA device(s) are available"
        raise ConfigError(f"{flag}: {device!r} was requested but {what} (available here: {', '.join(avail)})")
    return device


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_under(path: Path, flag: str) -> None:
    anc = _first_existing(path.parent if path.parent != path else path)
    if not anc.is_dir():
        raise ConfigError(f"{flag}: {path} is under {anc}, which is a file, not a directory; choose another {flag}")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot create {path}: directory {anc} is not writable; choose another {flag}")


def check_out_file(out: str | Path, flag: str = "--out") -> Path:
    """An output file path that can be written: not a directory, not under a file, in a writable folder."""
    p = Path(out)
    if p.is_dir():
        raise ConfigError(f"{flag}: {p} is a directory; expected a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{flag}: {p} is not writable; choose another {flag}")
    _check_writable_under(p, flag)
    return p


def check_out_dir(out: str | Path, flag: str = "--out") -> Path:
    """An output directory that exists (and is writable) or can be created: not a file, not under a file."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag}: {p} is a file, not a directory; choose another {flag}")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag}: directory {p} is not writable; choose another {flag}")
        return p
    _check_writable_under(p, flag)
    return p


def check_count(value: int | float | None, flag: str, minimum: int = 1) -> None:
    """A count flag (``--n``, ``--batch``, ``--workers`` ...) must be at least ``minimum`` when given."""
    if value is not None and not value >= minimum:
        raise ConfigError(f"{flag}: expected an integer >= {minimum}, got {value}")


def check_train_run_dir(run_dir: str | Path) -> Path:
    """A run directory of ``boltzdiff train``: it exists, and its config.yaml is a YAML mapping (the model files
    are checked where they are loaded)."""
    rd = Path(run_dir)
    if not rd.is_dir():
        raise ConfigError(f"run dir {rd} does not exist")
    if (rd / "config.yaml").exists():
        load_yaml_mapping(rd / "config.yaml", "the config.yaml that `boltzdiff train` wrote (a mapping of settings)")
    return rd


def parse_key_values(items: list[str], flag: str = "--set") -> dict:
    """``["KEY=VALUE", ...]`` -> ``{KEY: value}`` with YAML values (numbers in exponent form too: YAML 1.1
    reads ``1e-3`` as a string); a malformed item is a one-line error naming ``flag``."""
    import yaml

    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            val = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {item!r}: the value is not valid YAML") from None
        if isinstance(val, str):
            try:
                val = float(val)
            except ValueError:
                pass
        out[k.strip()] = val
    return out
