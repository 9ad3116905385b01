"""Run configuration: typed dataclasses (training, reference, sampling, the whole pipeline), each resolved from
defaults < system run.yaml < --config file < flags through one strict merge (:func:`merge_config`).

Every field carries a one-line description in its ``metadata["doc"]`` (:func:`doc_field`);
``python -m boltzdiff.config --markdown`` renders them as docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from boltzdiff.errors import ConfigError
from boltzdiff.schema import doc_field

#: energy networks: residual MLP on the flat vector, EGNN (particles, identical or typed), pair-distance MLP
#: (labelled molecules; see boltzdiff/models/pairmlp.py)
NETWORKS = ("mlp", "egnn", "pairmlp")


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the mixture recipe (see benchmarks/RESULTS.md)."""

    system: str = doc_field("gmm2_unbalanced", "system name or path to its system.yaml")
    variant: str | None = doc_field(None, "variant of the system (its system.yaml ``variants:``), or null")
    loss: str = doc_field("diffclf", "``diffclf`` (DSM + the classification loss over levels) or ``dsm`` (DSM only)")
    steps: int = doc_field(6000, "optimiser steps")
    batch_size: int = doc_field(256, "data points per step")
    k: int = doc_field(4, "DiffCLF: distinct levels drawn per data point (at least 2)")
    lambda_clf: float = doc_field(1.0, "DiffCLF: weight of the classification loss (>= 0)")
    level_sampling: str = doc_field("mixed", "DiffCLF: how the k levels are drawn: ``uniform``, ``local`` or ``mixed``")
    level_window: int = doc_field(4, "DiffCLF: window (in levels) of ``local`` level sampling")
    warmup_steps: int = doc_field(0, "steps of DSM only before DiffCLF starts (two-stage training; <= steps)")
    lr: float = doc_field(1e-3, "AdamW learning rate of the network")
    lr_f: float = doc_field(1e-2, "AdamW learning rate of the per-level log-normalisers")
    weight_decay: float = doc_field(0.0, "AdamW weight decay")
    ema: float = doc_field(0.999, "decay of the parameters' exponential moving average (the saved model), in [0, 1)")
    average_from: float | None = doc_field(
        None, "fraction of ``steps`` after which the saved model is the uniform tail average instead of the EMA"
    )
    grad_clip: float = doc_field(1.0, "gradient norm clipping")
    lr_warmup: int = doc_field(200, "steps of linear learning-rate warm-up")
    cosine_decay: bool = doc_field(True, "cosine decay of the learning rate after the warm-up")
    lr_final: float = doc_field(0.1, "learning rate at the last step, as a fraction of lr (and lr_f), in [0, 1]")
    n_levels: int = doc_field(64, "noise levels of the grid")
    spacing: str = doc_field("logsnr", "spacing of the levels: ``logsnr`` or ``linear``")
    schedule: dict = doc_field(
        doc="noise schedule, e.g. ``{kind: vp, beta_min: 0.1, beta_max: 20.0}``",
        factory=lambda: {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0},
    )
    network: str = doc_field(
        "mlp", "``mlp`` (residual MLP), ``egnn`` (particles) or ``pairmlp`` (MLP of standardised distances)"
    )
    width: int = doc_field(128, "hidden width of the MLP / pair MLP")
    depth: int = doc_field(3, "hidden layers of the MLP / pair MLP")
    time_input: str = doc_field("logsnr", "noise input of the network: ``logsnr`` or ``t``")
    fourier_scale: float = doc_field(4.0, "frequency scale of the noise input's Fourier features")
    input_fourier: int | str = doc_field(
        0, "random Fourier features of the input (0 = off, ``auto``); help many narrow low-dimensional modes"
    )
    input_fourier_scale: float = doc_field(4.0, "frequency scale of the input Fourier features")
    mlp_head: str = doc_field(
        "inner", "MLP energy term: ``inner`` (<NN(x), x>), ``scalar`` (g(x)) or ``inner+scalar`` (both)"
    )
    egnn: dict = doc_field(doc="options of ``network: egnn`` (see boltzdiff/models/egnn.py)", factory=dict)
    pairmlp: dict = doc_field(doc="options of ``network: pairmlp`` (see boltzdiff/models/pairmlp.py)", factory=dict)
    data: str | None = doc_field(None, "training data (.npy of positions); null: exact samples of the target")
    n_data: int = doc_field(100_000, "exact samples drawn as training data when ``data`` is null")
    seed: int = doc_field(0, "random seed")
    device: str = doc_field("cpu", "torch device")
    checkpoint_every: int = doc_field(500, "steps between checkpoints (ckpt.pt, for resuming)")
    num_threads: int | None = doc_field(None, "torch threads (null: torch's default)")
    tsm_scale: float | str | None = doc_field(
        "auto",
        "target score matching below this noise scale (data units; ``auto``: a mixture's smallest std; null: off)",
    )
    tsm_weight: float = doc_field(
        1.0, "weight (>= 0) raising the score error below tsm_scale so that it no longer vanishes with the noise"
    )
    energy_weight: float = doc_field(
        0.0,
        "weight (>= 0) of energy matching: the batch variance of E(x, t_0) - u(x) at the clean training frames, u "
        "the target's reduced energy (rescaled to data_temperature), which ties the lowest level's energy "
        "differences, between basins too, to the exact ones; 0: off",
    )
    precond_scale: float = doc_field(
        1.0, "width of the energy's Gaussian preconditioning in data standard deviations (> 0; wider suits molecules)"
    )
    local_scale: float | str | None = doc_field(
        None,
        "MLP energy: the data's local width (data units; ``auto``: a mixture's smallest std; null: off); scales the "
        "vector term <NN, x~> by a_t^2 / (alpha_t^2 local_scale^2 + sigma_t^2), not the scalar one",
    )
    data_temperature: float | None = doc_field(
        None, "temperature (K) the training data were sampled at, for target score matching (null: the system's)"
    )
    data_log_weights: str | None = doc_field(
        None,
        "per-row log-weights of ``data`` (.npy, one per row; e.g. metadynamics frames under their bias): each batch "
        "draws rows with probability proportional to exp(log w); null: uniform",
    )

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
        if self.data_log_weights is not None and (not isinstance(self.data_log_weights, str) or not self.data):
            bad("data_log_weights", "null, or a .npy path together with 'data'")
        for name in ("tsm_scale", "local_scale", "data_temperature"):
            v = getattr(self, name)
            auto = name in ("tsm_scale", "local_scale")
            if auto and v == "auto":
                continue
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not v > 0):
                bad(name, "null or a positive number" + (" or 'auto'" if auto else ""))
        if isinstance(self.local_scale, int | float) and self.network != "mlp":
            bad("local_scale", f"null with network {self.network!r} (it scales the MLP energy's vector term)")
        w = self.tsm_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not w >= 0:
            bad("tsm_weight", "a number >= 0")
        w = self.energy_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not (math.isfinite(w) and w >= 0):
            bad("energy_weight", "a finite number >= 0")
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


def unknown_key_message(key: str, known, where: str) -> str:
    """``"<where>: unknown field 'nn' (did you mean 'n'?; expected one of: ...)"`` (one line)."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"did you mean '{close[0]}'?; " if close else ""
    return f"{where}: unknown field '{key}' ({hint}expected one of: {', '.join(sorted(known))})"


def merge_config(base, updates: dict | None, where: str, coerce: bool = True):
    """Return the config dataclass ``base`` with ``updates`` applied, their types coerced to the defaults';
    unknown keys are an error naming ``where``, the nearest valid name and all of them. ``coerce=False`` leaves
    the values as they are for the config's ``validate()`` to check (with messages naming the setting)."""
    if updates is not None and not isinstance(updates, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {updates!r}")
    known = {f.name: f for f in fields(type(base))}
    out = {}
    for key, value in (updates or {}).items():
        if key not in known:
            raise ConfigError(unknown_key_message(str(key), known, where))
        out[key] = _coerce(key, value, getattr(base, key), where) if coerce else value
    return dataclasses.replace(base, **out)


def load_config_file(path: str | Path) -> dict:
    from boltzdiff.systems import read_yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file {p} does not exist")
    return read_yaml(p, "run config")


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class SampleConfig:
    """``sample:`` settings of ``boltzdiff run`` (the SMC runs of the sample stage)."""

    n: int = doc_field(2000, "particles in all (split evenly over the n_runs SMC runs)")
    n_runs: int = doc_field(1, "independent SMC runs, pooled by their normalising constants (divides n)")
    levels: object = doc_field(None, "sub-grid of the trained levels: null (all), a count, or a list of indices")
    kernel_variance: str = doc_field("fisher", "variance of the reverse kernel: ``fisher``, ``matrix`` or ``model``")
    mcmc_steps: int = doc_field(0, "MALA rejuvenation steps at every level (0: none)")
    to_target: bool = doc_field(True, "anneal from the cleanest level to the exact target (weighted bridge)")
    n_bridge: int = doc_field(16, "steps of the bridge to the target (unless bridge_cess is set)")
    bridge_cess: float | None = doc_field(
        None, "adaptive bridge: conditional ESS kept per step, in (0, 1); null: fixed"
    )
    bridge_mcmc_steps: int = doc_field(2, "MALA steps at every bridge step")
    max_bridge: int = doc_field(2000, "most adaptive bridge steps")
    bridge_strata: object = doc_field(
        None, "``{cv: NAME, edges: [radians], wrap, mirror}`` (or a list): resample within dihedral strata"
    )
    strata_max_sigma: float | None = doc_field(
        None, "also stratify on the levels whose noise scale is at most this (needs bridge_strata)"
    )
    strata_min_share: float | None = doc_field(0.0, "least share of the particles per stratum, in [0, 1]")
    strata_denoised: bool = doc_field(False, "label the levels' particles by their denoised configuration")
    restrict_chirality: bool = doc_field(False, "restrict the target to the hand of the system's structure")
    torsion: object = doc_field(
        None, "``{bonds: cvs | auto | [[j, k], ...], width: radians, bridge_steps: N}``: torsion moves, or null"
    )
    final_mcmc_steps: int = doc_field(0, "sweeps at the exact target after the bridge")
    final_resample: bool = doc_field(False, "resample once after the bridge, before the final sweeps")
    final_hmc_steps: int = doc_field(0, "HMC trajectories at the exact target after the sweeps (slow modes)")
    final_hmc_leapfrog: int = doc_field(20, "leapfrog steps per final HMC trajectory")
    final_hmc_average: int = doc_field(0, "<u> from each particle's energy averaged over the last k HMC states")
    combine_runs: str = doc_field("pooled", "ΔF of n_runs > 1: pooled by their normalising constants, or mean")
    refine: int | None = doc_field(1, "levels per trained level step (refine - 1 untrained levels between two)")

    @classmethod
    def from_dict(cls, d: dict | None) -> SampleConfig:
        """The ``sample:`` mapping as a config (unknown keys refused); call :meth:`validate` next."""
        return merge_config(cls(), d, "sample", coerce=False)

    def validate(self, n_models: int = 1) -> SampleConfig:
        """Check the settings (``n_models``: ``train.n_models``, which n_runs must be a multiple of)."""
        n = self.n
        if not _is_int(n) or n < 1:
            raise ConfigError(f"sample.n: expected a positive number of particles, got {n!r}")
        r = self.n_runs
        if not _is_int(r) or r < 1 or n % r:
            raise ConfigError(f"sample.n_runs: expected a positive divisor of sample.n={n}, got {r!r}")
        if r % n_models:
            raise ConfigError(
                f"sample.n_runs: expected a multiple of train.n_models={n_models} (each model gets as many SMC "
                f"runs), got {r}"
            )
        strata = self.bridge_strata is not None
        sig = self.strata_max_sigma
        if sig is not None and (not _is_num(sig) or not sig > 0 or not strata):
            raise ConfigError(
                f"sample.strata_max_sigma: expected a positive noise scale (with sample.bridge_strata) or null, "
                f"got {sig!r}"
            )
        share = self.strata_min_share or 0.0
        if not _is_num(share) or not 0 <= share <= 1 or (share and not strata):
            raise ConfigError(
                f"sample.strata_min_share: expected a share of the particles in [0, 1] (with sample.bridge_strata) "
                f"or null, got {share!r}"
            )
        for name in ("strata_denoised", "restrict_chirality", "to_target"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"sample.{name}: expected true or false, got {getattr(self, name)!r}")
        if (self.kernel_variance or "fisher") not in ("fisher", "matrix", "model"):
            raise ConfigError(
                f"sample.kernel_variance: expected 'fisher', 'matrix' or 'model', got {self.kernel_variance!r}"
            )
        f = self.final_mcmc_steps
        if not _is_int(f) or f < 0:
            raise ConfigError(f"sample.final_mcmc_steps: expected an integer >= 0, got {f!r}")
        if not isinstance(self.final_resample, bool) or (self.final_resample and not f):
            raise ConfigError(
                f"sample.final_resample: expected true or false, and true only with sample.final_mcmc_steps > 0, "
                f"got {self.final_resample!r}"
            )
        for name, least in (("final_hmc_steps", 0), ("final_hmc_leapfrog", 1)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < least:
                raise ConfigError(f"sample.{name}: expected an integer >= {least}, got {getattr(self, name)!r}")
        k = self.final_hmc_average
        if not _is_int(k) or not 0 <= k <= self.final_hmc_steps:
            raise ConfigError(
                f"sample.final_hmc_average: expected an integer from 0 to sample.final_hmc_steps="
                f"{self.final_hmc_steps}, got {k!r}"
            )
        if self.combine_runs not in ("pooled", "mean"):
            raise ConfigError(f"sample.combine_runs: expected 'pooled' or 'mean', got {self.combine_runs!r}")
        refine = self.refine or 1
        if not _is_int(refine) or refine < 1:
            raise ConfigError(
                f"sample.refine: expected an integer >= 1 (levels per trained level step), got {refine!r}"
            )
        for name in ("mcmc_steps", "bridge_mcmc_steps", "n_bridge", "max_bridge"):
            v = getattr(self, name)
            if not _is_int(v) or v < (0 if name.endswith("mcmc_steps") else 1):
                raise ConfigError(
                    f"sample.{name}: expected an integer >= {0 if name.endswith('mcmc_steps') else 1}, got {v!r}"
                )
        c = self.bridge_cess
        if c is not None and (not _is_num(c) or not 0 < c < 1):
            raise ConfigError(f"sample.bridge_cess: expected a number in (0, 1) or null, got {c!r}")
        return self


#: reference methods of molecules (particle targets always use MCMC)
REFERENCE_METHODS = ("md", "metad")


@dataclass
class ReferenceConfig:
    """``reference:`` settings of ``boltzdiff run``. The fields listed here are the pipeline's own; every other
    key is handed to the method's engine and must be one of its fields: :class:`boltzdiff.reference.md.MDConfig`
    (``method: md``), :class:`boltzdiff.reference.metad.MetadConfig` (``method: metad``) or
    :class:`boltzdiff.reference.chains.ChainConfig` (particle targets)."""

    method: str = doc_field("md", "molecules: ``md`` (plain MD) or ``metad`` (metadynamics reweighted to Boltzmann)")
    starts: list | None = doc_field(
        None, "md: one MD replica per start structure file (null entries: the system's own), concatenated"
    )
    weight_power: float = doc_field(1.0, "metad: resample the training set by exp(g V/kT), g in [0, 1]")
    cvs: list = doc_field(doc="metad: the two dihedral CVs the bias acts on", factory=lambda: ["phi", "psi"])
    build_ns: float = doc_field(1.0, "metad: nanoseconds of well-tempered bias building")
    engine: dict = doc_field(doc="the remaining keys, passed to the method's engine config", factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None, kind: str) -> ReferenceConfig:
        """Split ``reference:`` into the pipeline's fields and the engine's (``kind``: 'molecule' or 'particles');
        a key that neither knows is refused with the valid names."""
        d = dict(d or {})
        method = d.get("method", "md")
        if kind == "molecule" and method not in REFERENCE_METHODS:
            raise ConfigError(f"reference.method: expected 'md' or 'metad', got {method!r}")
        if kind == "molecule" and method == "md" and "weight_power" in d:
            raise ConfigError("reference.weight_power: only with method: metad (plain MD frames carry no weights)")
        own = {"molecule": {"md": {"method", "starts"}, "metad": {"method", "weight_power", "cvs", "build_ns"}}}
        mine = own.get(kind, {}).get(method, set())
        engine = {k: v for k, v in d.items() if k not in mine}
        allowed = set(mine) | set(engine_fields(kind, method))
        where = "reference" + (f" (method: {method})" if kind == "molecule" else "")
        for key in engine:
            if key not in allowed:
                msg = unknown_key_message(str(key), allowed, where)
                raise ConfigError(msg.replace("unknown field", "unknown setting", 1))
        cfg = merge_config(cls(), {k: v for k, v in d.items() if k in mine}, "reference", coerce=False)
        cfg.engine = engine
        return cfg.validate()

    def validate(self) -> ReferenceConfig:
        """Check the pipeline's own fields (the engines check theirs)."""
        s = self.starts
        if s is not None and (not isinstance(s, list) or not s or not all(x is None or isinstance(x, str) for x in s)):
            raise ConfigError(
                f"reference.starts: expected a non-empty list of structure files (or null for the system's own), "
                f"got {s!r}"
            )
        p = self.weight_power
        if not _is_num(p) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"reference.weight_power: expected a number in [0, 1], got {p!r}")
        return self


def engine_fields(kind: str, method: str) -> list[str]:
    """The keys the reference engine of ``kind`` / ``method`` takes (its config dataclass's fields)."""
    if kind != "molecule":
        from boltzdiff.reference.chains import ChainConfig as MCMCConfig

        return [f.name for f in fields(MCMCConfig)]
    if method == "metad":
        from boltzdiff.reference.metad import MetadConfig

        hidden = {"build_ps", "prod_ps", "stride_steps", "save_positions"}
        return [f.name for f in fields(MetadConfig) if f.name not in hidden] + ["ns", "save_every_ps", "temperature"]
    from boltzdiff.reference.md import MDConfig

    return [f.name for f in fields(MDConfig) if f.name != "start"]


@dataclass
class PipelineConfig:
    """The resolved stage settings of ``boltzdiff run`` (pipeline.json ``settings``), typed."""

    reference: dict = doc_field(doc="``reference:`` settings (:class:`ReferenceConfig`)", factory=dict)
    train: TrainConfig = doc_field(
        doc="``train:`` settings (:class:`TrainConfig`) plus ``n_models``", factory=TrainConfig
    )
    n_models: int = doc_field(1, "models the train stage fits on the same data (seeds seed + 1000 m)")
    sample: SampleConfig = doc_field(doc="``sample:`` settings (:class:`SampleConfig`)", factory=SampleConfig)

    @classmethod
    def from_settings(cls, settings: dict, kind: str = "molecule") -> PipelineConfig:
        """Type and check a settings mapping (see :func:`boltzdiff.pipeline.settings.resolve_settings`)."""
        unknown = sorted(set(settings) - {"reference", "train", "sample"})
        if unknown:
            raise ConfigError(unknown_key_message(unknown[0], ("reference", "train", "sample"), "settings"))
        train = dict(settings.get("train") or {})
        n_m = train.pop("n_models", 1)
        if not _is_int(n_m) or n_m < 1:
            raise ConfigError(f"train.n_models: expected a positive number of models to train, got {n_m!r}")
        sample = SampleConfig.from_dict(settings.get("sample")).validate(n_m)
        return cls(
            reference=dict(settings.get("reference") or {}),
            train=merge_config(TrainConfig(), train, "preset train settings"),
            n_models=n_m,
            sample=sample,
        )


#: every config dataclass documented in docs/configuration.md, in that order
def config_classes() -> list[type]:
    """The config dataclasses whose fields docs/configuration.md lists."""
    from boltzdiff.samplers.config import SMCConfig

    return [PipelineConfig, ReferenceConfig, TrainConfig, SampleConfig, SMCConfig]


def markdown() -> str:
    """docs/configuration.md: one table per config dataclass, one row per field (name, default, description)."""
    lines = [
        "# Configuration",
        "",
        "Generated by `python -m boltzdiff.config --markdown > docs/configuration.md` from the fields' "
        "descriptions; do not edit by hand.",
    ]
    for cls in config_classes():
        lines += ["", f"## {cls.__name__}", "", " ".join((cls.__doc__ or "").split()), "", "| field | default | |"]
        lines.append("|---|---|---|")
        for f in fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f"`{f.default!r}`"
            else:
                made = f.default_factory()
                default = f"`{made!r}`" if not dataclasses.is_dataclass(made) else f"`{type(made).__name__}()`"
            doc = f.metadata.get("doc", "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | {default.replace('|', chr(92) + '|')} | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m boltzdiff.config --markdown > docs/configuration.md")
    sys.stdout.write(markdown())
