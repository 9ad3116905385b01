"""The training loop: AdamW, EMA, gradient clipping, the f gauge, checkpoints and resume.

A run directory holds ``config.yaml`` (resolved), ``run_info.json`` (seed, commit, versions), ``ckpt.pt``
(model, EMA, optimiser, scheduler, f, step, RNG; written every ``checkpoint_every`` steps and at the end,
atomically), ``model.pt`` (the EMA model and what is needed to rebuild it), ``metrics.jsonl`` and
``train_summary.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from boltzdiff import distributed as dist
from boltzdiff.config import TrainConfig
from boltzdiff.data import batch_indices, data_energies, data_scores, load_log_weights, training_data, weighted_view
from boltzdiff.errors import ConfigError
from boltzdiff.io import atomic_save, atomic_write_json, atomic_write_text, load_yaml_mapping, torch_load
from boltzdiff.losses import diffclf_loss, draw_levels, dsm_only_loss, with_energy_matching
from boltzdiff.models.energy import PreconditionedEnergy, build_mlp_energy
from boltzdiff.noise import LevelGrid, grid_from_dict, make_grid, make_schedule
from boltzdiff.runinfo import write_run_info
from boltzdiff.systems import System, load_system
from boltzdiff.train_resume import StopOnInterrupt, TrainingInterrupted, resume_changes, truncate_metrics

log = logging.getLogger(__name__)


# -- model construction ---------------------------------------------------------------------------------
def build_grid(cfg: TrainConfig) -> LevelGrid:
    return make_grid(make_schedule(cfg.schedule), cfg.n_levels, cfg.spacing)


def is_particle_system(system: System) -> bool:
    return len(system.target.event_shape) == 2


def data_stats(x: torch.Tensor, centred: bool) -> tuple[torch.Tensor, float]:
    """Mean ``(d,)`` (zeros for centred particle data) and isotropic std of training data ``(n, d)``."""
    mu = torch.zeros(x.shape[1]) if centred else x.mean(0)
    sd = float(torch.sqrt(((x - mu) ** 2).mean()))
    return mu, sd


#: input Fourier features used by ``input_fourier: auto`` for targets of at most AUTO_FOURIER_MAX_DIM dimensions
AUTO_FOURIER_FEATURES = 64
AUTO_FOURIER_MAX_DIM = 3


def resolve_input_fourier(value, dim: int) -> int:
    """Number of input Fourier features: ``value`` itself, or for ``"auto"`` 64 when ``dim <= 3`` and 0 above.

    Not the default: on gmm40_2d (40 narrow modes in 2-D) 64 features cut the lowest-level mode-weight error 6x,
    but on a 2-D mixture of two broad modes they raised it 3x and on the 32-D mixture 70x (benchmarks/RESULTS.md).
    """
    if value == "auto":
        return AUTO_FOURIER_FEATURES if dim <= AUTO_FOURIER_MAX_DIM else 0
    return int(value)


def resolve_torsions(value, system: System) -> list[list[int]]:
    """``pairmlp.torsions``: ``cvs`` (the system's dihedral CVs), ``none``, or a list of 4-atom index lists."""
    from boltzdiff.systems.base import dihedral_cvs

    if value in (None, "none", []):
        return []
    if value == "cvs":
        quads = list(dihedral_cvs(system).values())
        if not quads:
            raise ConfigError(f"pairmlp.torsions: 'cvs' needs dihedral cvs in system {system.name!r}; it has none")
        return quads
    n = system.target.event_shape[0]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(q, (list, tuple)) and len(q) == 4 and all(isinstance(i, int) and 0 <= i < n for i in q)
        for q in value
    ):
        raise ConfigError(
            f"pairmlp.torsions: expected 'cvs', 'none' or a list of [i, j, k, l] atom indices < {n}, got {value!r}"
        )
    return [list(q) for q in value]


def build_model(
    cfg: TrainConfig, grid: LevelGrid, mu: torch.Tensor, sigma_data: float, system: System
) -> PreconditionedEnergy:
    # the preconditioning Gaussian's width (cfg.precond_scale); the losses keep the data's sigma
    sigma_data = float(sigma_data) * float(getattr(cfg, "precond_scale", 1.0))
    if cfg.network == "mlp":
        return build_mlp_energy(
            grid,
            mu,
            sigma_data,
            width=cfg.width,
            depth=cfg.depth,
            time_input=cfg.time_input,
            fourier_scale=cfg.fourier_scale,
            input_fourier=resolve_input_fourier(cfg.input_fourier, int(mu.numel())),
            input_fourier_scale=cfg.input_fourier_scale,
            head=cfg.mlp_head,
            local_sigma=resolve_tsm_scale(getattr(cfg, "local_scale", None), system),
        )
    n, sdim = system.target.event_shape
    if cfg.network == "pairmlp":
        from boltzdiff.models.pairmlp import build_pairmlp_energy
        from boltzdiff.systems import chiral_quads_of

        if system.kind != "openmm":
            raise ConfigError(
                f"network: 'pairmlp' is for labelled molecules; system {system.name!r} has identical particles "
                "(use 'egnn')"
            )
        allowed = {"n_freq", "chiral_scale", "chiral_norm", "stiffness_init", "torsions"}
        if not isinstance(cfg.pairmlp, dict) or set(cfg.pairmlp) - allowed:
            raise ConfigError(f"pairmlp: expected a mapping with keys among {sorted(allowed)}, got {cfg.pairmlp!r}")
        if not isinstance(cfg.pairmlp.get("chiral_norm", False), bool):
            raise ConfigError(f"pairmlp.chiral_norm: expected true or false, got {cfg.pairmlp['chiral_norm']!r}")
        opts = dict(cfg.pairmlp)
        if "torsions" in opts:
            opts["torsions"] = resolve_torsions(opts["torsions"], system)
        return build_pairmlp_energy(
            grid,
            n,
            sdim,
            sigma_data,
            time_input=cfg.time_input,
            width=cfg.width,
            depth=cfg.depth,
            chiral_quads=chiral_quads_of(system),
            **opts,
        )
    from boltzdiff.models.egnn import build_egnn_energy

    opts = dict(cfg.egnn)
    if "atom_types" not in opts:
        if system.extras.get("atom_types") is not None:
            opts["atom_types"] = list(system.extras["atom_types"])
        elif system.kind == "openmm":
            # molecules: every atom its own type (the atoms of a molecule are labelled, not interchangeable);
            # LJ clusters also carry a topology (for OpenMM/PDB output) but their particles are identical
            opts["atom_types"] = list(range(n))
    return build_egnn_energy(grid, n, sdim, sigma_data, time_input=cfg.time_input, **opts)


def resolve_tsm_scale(tsm_scale, system: System) -> float | None:
    """``train.tsm_scale`` as a length: ``auto`` is a Gaussian mixture's smallest component std (below the
    width of a mode the target's score is a low-variance regression target, and the lowest levels, which set
    the mode weights at level 0, are where DSM's is noisiest) and nothing for other targets."""
    if tsm_scale != "auto":
        return tsm_scale
    from boltzdiff.targets.gmm import GaussianMixture

    t = system.target
    return float(t.std.min()) if isinstance(t, GaussianMixture) else None


def centre(x: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor:
    """Remove the centre of mass of particle configurations ``(B, n*s)``."""
    n, s = event_shape
    xr = x.reshape(x.shape[0], n, s)
    return (xr - xr.mean(1, keepdim=True)).reshape(x.shape[0], -1)


# -- EMA ------------------------------------------------------------------------------------------------
class EMA:
    """Moving average of a module's parameters (buffers copied), the model that training saves.

    Exponential with ``decay`` (warmed up as ``min(decay, (1 + step) / (10 + step))``); from step
    ``average_from_step`` on (if given) the uniform average of the parameters of every later step instead
    (a tail or "SWA" average, Izmailov et al. 2018), restarted at that step from the raw parameters.
    """

    def __init__(self, model: torch.nn.Module, decay: float, average_from_step: int | None = None):
        self.decay = decay
        self.start = average_from_step
        self.n_avg = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        if self.start is not None and step >= self.start:
            self.n_avg += 1
            w = 1.0 / self.n_avg
        else:
            w = 1 - min(self.decay, (1 + step) / (10 + step))
        for pe, p in zip(self.model.parameters(), model.parameters()):
            pe.lerp_(p.detach(), w)


# -- training -------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    model: PreconditionedEnergy
    steps: int
    wall_s: float
    sec_per_step: float


def _lr_lambda(cfg: TrainConfig):
    def f(step):
        w = min(1.0, (step + 1) / max(1, cfg.lr_warmup))
        if not cfg.cosine_decay:
            return w
        prog = min(1.0, step / max(1, cfg.steps))
        lo = float(cfg.lr_final)
        return w * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * prog)))

    return f


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    system: System | None = None,
    monitor=None,
) -> TrainResult:
    """Train an energy model as ``cfg`` says, writing everything to ``out_dir``.

    ``resume=True`` continues from ``out_dir/ckpt.pt``; without it an existing checkpoint is an error.
    ``monitor(step, model, ema_model) -> dict``: called at every metrics record (each 50 steps); what it
    returns is added to that record of ``metrics.jsonl`` (e.g. a mixture's mode weights during training).
    """
    cfg.validate()
    out = Path(out_dir)
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.exists() and not resume:
        raise ConfigError(
            f"--out: {out} already holds a checkpoint; pass --resume to continue it or choose another --out"
        )
    if resume and not ckpt_path.exists():
        log.info("no checkpoint in %s; starting a new run", out)
        resume = False
    if resume:
        saved = load_yaml_mapping(out / "config.yaml", "the config.yaml that `boltzdiff train` wrote")
        if saved.get("system") != cfg.system or saved.get("loss") != cfg.loss:
            raise ConfigError(
                f"--resume: {out} was trained on system {saved.get('system')!r} with loss "
                f"{saved.get('loss')!r}, not {cfg.system!r}/{cfg.loss!r}"
            )
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device, main = dist.device_for(cfg.device), dist.is_main()  # torchrun: rank 0 writes (docs/method.md#distributed)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: cuda was requested but no CUDA device is available")

    system = system or load_system(cfg.system, cfg.variant)
    target = system.target
    cfg.tsm_scale = resolve_tsm_scale(cfg.tsm_scale, system)
    cfg.local_scale = resolve_tsm_scale(cfg.local_scale, system)  # the same 'auto'
    changed = resume_changes(out, cfg) if resume else {}
    gen = torch.Generator().manual_seed(cfg.seed)
    data = training_data(target, cfg.data, cfg.n_data, gen)
    particles = is_particle_system(system) and cfg.network in ("egnn", "pairmlp")
    if particles:
        data = centre(data, target.event_shape)
    score0, log_w = None, (None if cfg.data_log_weights is None else load_log_weights(cfg.data_log_weights, len(data)))
    if cfg.tsm_scale is not None:
        data, score0, ok = data_scores(system, data, cfg.data_temperature, mask=True)
        log_w = None if log_w is None else log_w[ok]
    u0 = data_energies(system, data, cfg.data_temperature) if cfg.energy_weight else None
    dsm_fn, clf_fn = (with_energy_matching(f, cfg.energy_weight) for f in (dsm_only_loss, diffclf_loss))
    probs = None if log_w is None else torch.softmax(log_w, 0)  # weighted data: batches drawn by weight
    mu, sigma_d = data_stats(weighted_view(data, probs, cfg.seed), centred=particles)
    grid = build_grid(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, grid, mu, sigma_d, system)
    if hasattr(model.net, "set_pair_stats"):
        model.net.set_pair_stats(weighted_view(data, probs, cfg.seed))
    model = model.to(device)
    ema = EMA(model, cfg.ema, None if cfg.average_from is None else int(round(cfg.average_from * cfg.steps)))
    f_params = [model.f]
    net_params = [p for n, p in model.named_parameters() if n != "f"]
    opt = torch.optim.AdamW(
        [
            dict(params=net_params, lr=cfg.lr, weight_decay=cfg.weight_decay),
            dict(params=f_params, lr=cfg.lr_f, weight_decay=0.0),
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    step_fn = dist.LossStep(model, device, cfg.batch_size)  # DistributedDataParallel under torchrun
    step, wall_prev, world_sizes = 0, 0.0, dist.world_history(None, 0)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        ck = torch_load(ckpt_path, f"the training checkpoint (or train into a new --out than {out})", device)
        model.load_state_dict(ck["model"])
        ema.model.load_state_dict(ck["ema"])
        ema.n_avg = int(ck.get("ema_n_avg", 0))
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        step, wall_prev = ck["step"], ck.get("wall_s", 0.0)
        world_sizes = dist.world_history(ck.get("world_sizes"), step)
        log.info("resuming %s at step %d", out, step)
        if main:
            truncate_metrics(out / "metrics.jsonl", step)
        if changed and main:  # settings that may change on resume: the run directory says what it now runs with
            log.info("--resume: %s", "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
            atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            write_run_info(out, cfg.to_dict(), cfg.seed, resumed_changes={k: list(v) for k, v in changed.items()})
    elif main:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(out / "system.yaml", yaml.safe_dump(system.spec, sort_keys=False))
        write_run_info(out, cfg.to_dict(), cfg.seed)

    meta = dict(
        mu=mu.tolist(),
        sigma_data=sigma_d,
        grid=grid.to_dict(),
        network=cfg.network,
        centred=particles,
        dim=target.dim,
    )
    data = data.to(device)
    if score0 is not None:
        score0 = score0.to(device)
    n = data.shape[0]

    def save(final: bool = False):
        if not main:
            return
        state = dict(
            model=model.state_dict(),
            ema=ema.model.state_dict(),
            ema_n_avg=ema.n_avg,
            opt=opt.state_dict(),
            sched=sched.state_dict(),
            gen=gen.get_state(),
            step=step,
            wall_s=wall_prev + (time.time() - t0),
            config=cfg.to_dict(),
            world_sizes=world_sizes,
        )
        atomic_save(ckpt_path, lambda p: torch.save(state, p))
        if final:
            atomic_save(out / "model.pt", lambda p: torch.save(dict(state_dict=ema.model.state_dict(), meta=meta), p))

    from boltzdiff.progress import progress as progress_of

    t0 = time.time()
    bar = progress_of(total=cfg.steps, initial=step, enabled=progress and main, desc=f"train {cfg.loss}")
    metrics_fh = open(out / "metrics.jsonl" if main else os.devnull, "a")
    n_bad = 0
    stop = StopOnInterrupt()
    try:
        while step < cfg.steps:
            if dist.any_true(stop.requested):  # Ctrl-C: the last step is complete, so the checkpoint is consistent
                save()
                raise TrainingInterrupted(step, ckpt_path)
            # the global batch (indices, levels, noise) from one generator; this process keeps its rows
            idx = batch_indices(n, cfg.batch_size, gen, probs)[step_fn.rows].to(device)
            x0 = data[idx]
            g0 = None if score0 is None else score0[idx]
            levels = draw_levels(cfg.batch_size, grid.n, cfg.k, gen, cfg.level_sampling, cfg.level_window)
            levels = levels[step_fn.rows].to(device)
            eps = torch.randn((cfg.batch_size, cfg.k, data.shape[1]), generator=gen)[step_fn.rows]
            tsm = dict(score0=g0, tsm_scale=cfg.tsm_scale, tsm_weight=cfg.tsm_weight, eps=eps)
            if u0 is not None:
                tsm["u0"] = u0[idx]
            if cfg.loss == "dsm" or step < cfg.warmup_steps:
                res = step_fn(dsm_fn, x0, levels, sigma_d, **tsm)
            else:
                res = step_fn(clf_fn, x0, levels, sigma_d, lambda_clf=cfg.lambda_clf, **tsm)
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(res.total):
                n_bad += 1
                log.warning("step %d: non-finite loss, step skipped (%d so far)", step, n_bad)
                if n_bad > 20:
                    raise FloatingPointError(f"training diverged: {n_bad} non-finite losses; try a lower lr")
                step += 1
                continue
            res.total.backward()
            torch.nn.utils.clip_grad_norm_(net_params, cfg.grad_clip)
            opt.step()
            sched.step()
            model.apply_gauge()
            ema.update(model, step)
            step += 1
            if step % 50 == 0 or step == cfg.steps:
                rec = dict(
                    step=step,
                    loss=float(res.total.detach()),
                    dsm=float(res.dsm),
                    clf=None if res.clf is None else float(res.clf),
                )
                if monitor is not None and main:
                    rec.update(monitor(step, model, ema.model) or {})
                metrics_fh.write(json.dumps(rec) + "\n")
                metrics_fh.flush()
                bar.set_postfix(dsm=f"{rec['dsm']:.3f}", clf="-" if rec["clf"] is None else f"{rec['clf']:.3f}")
            bar.update(1)
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save()
        save(final=True)
    finally:
        stop.restore()
        metrics_fh.close()
        bar.close()
    wall = wall_prev + (time.time() - t0)
    summary = dict(steps=step, wall_s=wall, sec_per_step=wall / max(1, step), n_data=n, sigma_data=sigma_d)
    if main:
        summary.update(world_size=dist.world(), world_sizes=world_sizes)
        atomic_write_json(out / "train_summary.json", summary)
    return TrainResult(out, ema.model, step, wall, wall / max(1, step))


# -- loading a trained run ------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    run_dir: Path
    model: PreconditionedEnergy
    system: System
    config: dict


def load_run(run_dir: str | Path, ema: bool = True, device: str = "cpu") -> LoadedRun:
    """Rebuild a trained model (EMA weights, eval mode) and its system from a run directory."""
    rd = Path(run_dir)
    if not rd.is_dir():
        raise ConfigError(f"run dir {rd} does not exist")
    cfg_file = rd / "config.yaml"
    model_file, ckpt_file = rd / "model.pt", rd / "ckpt.pt"
    if not cfg_file.is_file() or not (model_file.is_file() or ckpt_file.is_file()):
        raise ConfigError(
            f"run dir {rd} has no trained model (expected config.yaml and model.pt; run `boltzdiff train`)"
        )
    raw = load_yaml_mapping(cfg_file, "the config.yaml that `boltzdiff train` wrote (a mapping of settings)")
    # runs written before input Fourier features existed had none
    raw.setdefault("input_fourier", 0)
    # ... and before the MLP's scalar head existed, none
    raw.setdefault("mlp_head", "inner")
    from boltzdiff.config import merge_config

    cfg = merge_config(TrainConfig(), raw, str(cfg_file))
    system = load_system(cfg.system, cfg.variant)
    if model_file.is_file():
        blob = torch_load(model_file, "a trained model written by `boltzdiff train`", device)
        state, meta = blob["state_dict"], blob["meta"]
    else:  # an unfinished run: use the latest checkpoint
        ck = torch_load(ckpt_file, "a training checkpoint written by `boltzdiff train`", device)
        state = ck["ema"] if ema else ck["model"]
        meta = None
    grid = grid_from_dict(meta["grid"]) if meta else build_grid(cfg)
    mu = torch.tensor(meta["mu"]) if meta else state["mu"]
    if meta:
        sigma_d = meta["sigma_data"]
    else:  # the a2 buffer holds the preconditioning width: undo precond_scale to get the data's sigma
        sigma_d = float(torch.sqrt(state["a2"][0] - grid.sigma[0] ** 2) / grid.alpha[0]) / float(cfg.precond_scale)
    if system.target.dim != mu.numel():
        raise ConfigError(
            f"run dir {rd}: model dimension {mu.numel()} does not match system {cfg.system} (dim {system.target.dim})"
        )
    model = build_model(cfg, grid, mu, sigma_d, system)
    model.load_state_dict(state)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedRun(rd, model, system, cfg.to_dict())
