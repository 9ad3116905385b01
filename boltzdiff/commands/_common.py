"""Shared helpers of the subcommands."""

from __future__ import annotations

from boltzdiff.config import TrainConfig, load_config_file, merge_config


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

