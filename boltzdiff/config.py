"""Run configuration: one dataclass, resolved from defaults < system run.yaml < --config file < flags."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from boltzdiff.errors import ConfigError

#: energy networks: residual MLP on the flat vector, EGNN (particles, identical or typed), pair-distance MLP
#: (labelled molecules; see boltzdiff/models/pairmlp.py)
NETWORKS = ("mlp", "egnn", "pairmlp")


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the mixture recipe (see benchmarks/RESULTS.md).

    Grid: ``n_levels`` levels of ``schedule`` spaced ``spacing``. Model: ``width``/``depth`` residual MLP (or
    ``network: egnn`` with options ``egnn``, or ``network: pairmlp``, a ``width``/``depth`` MLP of
    standardised interatomic distances for labelled molecules), noise input ``time_input``, and
    ``input_fourier`` random Fourier features of the input
    (frequency scale ``input_fourier_scale``; default none; they help low-dimensional targets with many narrow
    modes such as gmm40_2d, whose run.yaml turns them on, and hurt broad modes and 32-D); ``mlp_head``: the
    MLP's energy term, ``inner`` (the paper's ``<NN(x~), x~>``, which vanishes at the data mean), ``scalar`` (a
    scalar output ``g(x~)``) or ``inner+scalar`` (both; see boltzdiff/models/energy.py). Loss: ``loss`` in
    {diffclf, dsm}; DiffCLF uses ``k`` distinct levels per data point drawn by ``level_sampling`` (window
    ``level_window``) and weight ``lambda_clf``; ``warmup_steps`` of DSM only first (two-stage). Optimiser:
    AdamW ``lr`` (``lr_f`` for the log-normalisers; cosine decay to ``lr_final`` times that), EMA ``ema``,
    clipping ``grad_clip``. ``average_from`` (a fraction of ``steps``, or null): the saved model is then the
    uniform average of the parameters over the steps after that point instead of the EMA (tail average).
    ``tsm_scale`` (a length in the data's units, e.g. nm; ``auto``, the default: a Gaussian mixture's smallest
    component std, nothing for other targets; null: off): add target score matching below that noise scale,
    using the target's forces on the data, which were sampled at ``data_temperature`` (K; default the
    system's); see :func:`boltzdiff.losses._dsm_terms`. ``tsm_weight`` (>= 0, default 1; unused without a
    ``tsm_scale``): raise the weight of the score error below ``tsm_scale`` so that it no longer vanishes with
    the noise (see ``_dsm_terms``). On gmm2_unbalanced the mixture default cut the lowest level's mode-weight
    error from 0.044 / 0.000 (two seeds) to 0.010 / 0.008 / 0.002 (three seeds; benchmarks/RESULTS.md,
    "Session 20").
    ``precond_scale`` (> 0, default 1): width of the energy's Gaussian preconditioning in units of the data's
    standard deviation (``a_t^2 = alpha_t^2 (precond_scale sigma_data)^2 + sigma_t^2``); the loss weights keep
    the data's. For molecules in Cartesian coordinates the isotropic Gaussian charges extended conformations
    more than compact ones (alanine dipeptide: +3.8 kT for beta against alpha_R at the lowest level), which
    the network has to cancel and, with training, stops cancelling; a wider Gaussian makes that term smaller.
    """

    system: str = "gmm2_unbalanced"
    variant: str | None = None
    loss: str = "diffclf"
    steps: int = 6000
    batch_size: int = 256
    k: int = 4
    lambda_clf: float = 1.0
    level_sampling: str = "mixed"
    level_window: int = 4
    warmup_steps: int = 0
    lr: float = 1e-3
    lr_f: float = 1e-2
    weight_decay: float = 0.0
    ema: float = 0.999
    average_from: float | None = None
    grad_clip: float = 1.0
    lr_warmup: int = 200
    cosine_decay: bool = True
    lr_final: float = 0.1
    n_levels: int = 64
    spacing: str = "logsnr"
    schedule: dict = field(default_factory=lambda: {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0})
    network: str = "mlp"
    width: int = 128
    depth: int = 3
    time_input: str = "logsnr"
    fourier_scale: float = 4.0
    input_fourier: int | str = 0
    input_fourier_scale: float = 4.0
    mlp_head: str = "inner"
    egnn: dict = field(default_factory=dict)
    pairmlp: dict = field(default_factory=dict)
    data: str | None = None
    n_data: int = 100_000
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 500
    num_threads: int | None = None
    tsm_scale: float | str | None = "auto"
    tsm_weight: float = 1.0
    precond_scale: float = 1.0
    data_temperature: float | None = None

    def validate(self, where: str = "config") -> TrainConfig:
        def bad(name, expect):
            raise ConfigError(f"{where}: field '{name}' expected {expect}, got {getattr(self, name)!r}")

        if self.loss not in ("diffclf", "dsm"):
            bad("loss", "'diffclf' or 'dsm'")
        for name in ("steps", "batch_size", "n_levels", "checkpoint_every", "n_data"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "a positive integer")
        if not isinstance(self.k, int) or not (1 <= self.k <= self.n_levels):
            bad("k", f"an integer in [1, n_levels={self.n_levels}]")
        if self.loss == "diffclf" and self.k < 2:
            bad("k", "at least 2 distinct levels for DiffCLF")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0 or self.warmup_steps > self.steps:
            bad("warmup_steps", f"an integer in [0, steps={self.steps}]")
        for name in ("lr", "lr_f"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                bad(name, "a positive number")
        if isinstance(self.lr_final, bool) or not isinstance(self.lr_final, int | float) or not 0 <= self.lr_final <= 1:
            bad("lr_final", "a number in [0, 1] (the learning rate at the last step, as a fraction of lr)")
        if not (0 <= self.ema < 1):
            bad("ema", "a number in [0, 1)")
        if self.average_from is not None and (
            isinstance(self.average_from, bool)
            or not isinstance(self.average_from, int | float)
            or not 0 <= self.average_from < 1
        ):
            bad("average_from", "null or a number in [0, 1) (the fraction of the steps after which to average)")
        if self.lambda_clf < 0:
            bad("lambda_clf", "a non-negative number")
        if self.input_fourier != "auto" and (
            not isinstance(self.input_fourier, int) or isinstance(self.input_fourier, bool) or self.input_fourier < 0
        ):
            bad("input_fourier", "'auto' or a non-negative integer (number of input Fourier features; 0 = off)")
        from boltzdiff.models.mlp import HEADS

        if self.mlp_head not in HEADS:
            bad("mlp_head", " or ".join(repr(h) for h in HEADS))
        if self.spacing not in ("linear", "logsnr"):
            bad("spacing", "'linear' or 'logsnr'")
        if self.time_input not in ("logsnr", "t"):
            bad("time_input", "'logsnr' or 't'")
        if self.network not in NETWORKS:
            bad("network", " or ".join(repr(n) for n in NETWORKS))
        if self.level_sampling not in ("uniform", "local", "mixed"):
            bad("level_sampling", "'uniform', 'local' or 'mixed'")
        for name in ("tsm_scale", "data_temperature"):
            v = getattr(self, name)
            if name == "tsm_scale" and v == "auto":
                continue
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not v > 0):
                bad(name, "null or a positive number" + (" or 'auto'" if name == "tsm_scale" else ""))
        w = self.tsm_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not w >= 0:
            bad("tsm_weight", "a number >= 0")
        ps = self.precond_scale
        if isinstance(ps, bool) or not isinstance(ps, int | float) or not math.isfinite(ps) or not ps > 0:
            bad("precond_scale", "a positive number")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(name: str, value: Any, default: Any, where: str):
    if value is None or default is None:
        return value
    t = type(default)
    if t is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: field '{name}' expected true/false, got {value!r}")
    if name == "input_fourier" and value == "auto":  # the one int field that also takes a keyword
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: field '{name}' expected an integer, got {value!r}")
        return int(value)
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: field '{name}' expected a number, got {value!r}") from None
        return float(value)
    if t is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: field '{name}' expected a mapping, got {value!r}")
    return value


def merge_config(base: TrainConfig, updates: dict, where: str) -> TrainConfig:
    """Return ``base`` with ``updates`` applied; unknown keys are an error naming ``where``."""
    known = {f.name: f for f in fields(TrainConfig)}
    out = {}
    for key, value in (updates or {}).items():
        if key not in known:
            raise ConfigError(f"{where}: unknown field '{key}' (expected one of: {', '.join(sorted(known))})")
        out[key] = _coerce(key, value, getattr(base, key), where)
    return dataclasses.replace(base, **out)


def load_config_file(path: str | Path) -> dict:
    from boltzdiff.systems import read_yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file {p} does not exist")
    return read_yaml(p, "run config")
