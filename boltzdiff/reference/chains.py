"""Reference MCMC chains (MALA / random-walk Metropolis) for particle systems with a torch target.

The chains write a resumable run folder like reference MD (:mod:`boltzdiff.reference.frames`). They are the
reference sampler for systems without an OpenMM System; the MCMC kernels that rejuvenate SMC particles are a
separate thing, :class:`boltzdiff.samplers.MCMCConfig` / :func:`boltzdiff.samplers.run_mcmc`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.io import atomic_save, atomic_write_json, torch_load
from boltzdiff.reference.frames import RunResult, SimulationBlowUpError, load_frames, read_progress, write_frames
from boltzdiff.runinfo import write_run_info

if TYPE_CHECKING:
    from boltzdiff.systems import System
    from boltzdiff.targets.base import Target


@dataclass
class ChainConfig:
    """Settings of the reference MCMC chains (MALA or random-walk Metropolis) on a particle system's torch target.

    Chains move in the subspace with zero centre of mass (the targets are translation invariant, so the
    centre would otherwise random-walk); the step size adapts towards ``target_accept`` during burn-in only
    and is frozen afterwards, so the saved chain is a valid Markov chain for the target.
    """

    n_steps: int = 20000
    n_chains: int = 64
    method: str = "mala"  # "mala" or "rw"
    step_size: float = 1e-3
    burn_in: int = 2000
    save_every: int = 100
    seed: int = 0
    target_accept: float | None = None  # default 0.574 (MALA) / 0.234 (RW)
    init_noise: float = 0.05
    relax_steps: int = 300  # capped steepest-descent steps on the jittered starts (0: none)
    checkpoint_every: int = 20  # saves
    threads: int | None = 1  # torch intra-op threads while running (1 is fastest for these small systems)


def _project(v: torch.Tensor) -> torch.Tensor:
    """Remove the centre-of-mass component of ``v: (C, n, d)``."""
    return v - v.mean(-2, keepdim=True)


def relax_starts(target: Target, x: torch.Tensor, n_steps: int, max_move: float = 0.01) -> torch.Tensor:
    """Steepest descent on ``target`` from ``x: (C, n, d)``, every particle moving at most ``max_move`` (length
    units) per step, centre of mass fixed.

    A jittered start can put two particles so close that the force is in the thousands; MALA's drift then
    overshoots by far more than their distance and every proposal is rejected, so that chain never moves (the LJ13
    structure with a 0.05 jitter froze 2 of 64 chains for whole runs). Relaxing the starts removes such contacts;
    the burn-in then brings the chains to the target's temperature.
    """
    x = x.detach().clone()
    for _ in range(int(n_steps)):
        xr = x.requires_grad_(True)
        (g,) = torch.autograd.grad(target.energy(xr).sum(), xr)
        step = 1e-3 * _project(torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0))
        norm = step.norm(dim=-1, keepdim=True)
        x = (x - step * torch.clamp(max_move / norm.clamp_min(1e-300), max=1.0)).detach()
    return x


def chain_step(
    target: Target,
    x: torch.Tensor,
    u: torch.Tensor,
    g: torch.Tensor | None,
    step: float,
    method: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One MALA or random-walk Metropolis step for chains ``x: (C, n, d)`` with energies ``u: (C,)``.

    ``g`` is ``grad u`` at ``x`` (MALA only). Proposals keep the centre of mass fixed. Returns the new
    ``(x, u, g, accepted (C,) bool)``; NaN/inf proposals are rejected.
    """
    noise = _project(torch.randn(x.shape, generator=generator, dtype=x.dtype))
    if method == "rw":
        y = x + math.sqrt(step) * noise
        uy = target.energy(y).detach()
        log_a = u - uy
        gy = None
    else:
        y = x - step * g + math.sqrt(2 * step) * noise
        yr = y.detach().requires_grad_(True)
        uy = target.energy(yr)
        (gy,) = torch.autograd.grad(uy.sum(), yr)
        uy, gy = uy.detach(), _project(gy)
        fwd = ((y - x + step * g) ** 2).sum((-2, -1))
        bwd = ((x - y + step * gy) ** 2).sum((-2, -1))
        log_a = u - uy + (fwd - bwd) / (4 * step)
    log_a = torch.nan_to_num(log_a, nan=-math.inf)
    acc = torch.log(torch.rand(u.shape, generator=generator, dtype=x.dtype)) < log_a
    m = acc[:, None, None]
    x = torch.where(m, y, x)
    u = torch.where(acc, uy, u)
    if g is not None:
        g = torch.where(m, gy, g)
    return x, u, g, acc


def _grad(target: Target, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xr = x.detach().requires_grad_(True)
    u = target.energy(xr)
    (g,) = torch.autograd.grad(u.sum(), xr)
    return u.detach(), _project(g)


def run_chains(
    system: System, out_dir: str | Path, config: ChainConfig | None = None, progress: bool = True
) -> RunResult:
    """Parallel MCMC chains (MALA or random-walk Metropolis) on a torch target, resumable in ``out_dir``.

    Frames are the states of all chains every ``save_every`` steps after ``burn_in``, stored chain-minor:
    ``positions.npy`` is ``(n_saves * n_chains, n, d)``.

    Parameters
    ----------
    system : boltzdiff.systems.System
        A particle system with ``positions`` (the chains start there, jittered by ``init_noise``).
    out_dir : path
    config : ChainConfig
    progress : bool

    Returns
    -------
    RunResult
        ``positions (F, n, d)``, ``energies (F,)`` kT, ``acceptance``.
    """
    cfg = config or ChainConfig()
    if cfg.method not in ("mala", "rw"):
        raise ConfigError(f"simulate: --mcmc must be 'mala' or 'rw', got {cfg.method!r}")
    for name in ("n_steps", "n_chains", "save_every"):
        if int(getattr(cfg, name)) < 1:
            raise ConfigError(f"simulate: {name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.n_steps // cfg.save_every < 1:
        raise ConfigError(
            f"simulate: n_steps {cfg.n_steps} is fewer than one save interval ({cfg.save_every} steps), so 0 frames "
            "would be saved; expected n_steps >= save_every"
        )
    if not cfg.step_size > 0:
        raise ConfigError(f"simulate: step size must be > 0, got {cfg.step_size}")
    if int(cfg.relax_steps) < 0:
        raise ConfigError(f"simulate: relax_steps must be >= 0, got {cfg.relax_steps}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = system.target
    shape = target.event_shape
    if len(shape) != 2 or system.positions is None:
        raise ConfigError(f"simulate: MCMC needs a particle system with initial positions; {system.name} has none")
    target_accept = cfg.target_accept or (0.574 if cfg.method == "mala" else 0.234)
    settings = {
        "system": system.name,
        "variant": system.variant,
        "method": cfg.method,
        "n_chains": cfg.n_chains,
        "burn_in": cfg.burn_in,
        "save_every": cfg.save_every,
        "seed": cfg.seed,
        "step_size": cfg.step_size,
        "temperature": system.temperature,
    }
    prog = read_progress(out, settings)
    dtype = torch.float64
    gen = torch.Generator().manual_seed(int(cfg.seed))
    state_file = out / "mcmc_state.pt"
    if prog is not None and prog.get("checkpoint_frame", 0) > 0 and state_file.is_file():
        st = torch_load(state_file, "the chains' checkpoint (or use a new --out)")
        x, step_size, it, n_acc, n_prop = st["x"], st["step_size"], st["step"], st["n_acc"], st["n_prop"]
        gen.set_state(st["generator"])
        n_saves = int(prog["checkpoint_frame"])
        pos_f, en_f = load_frames(out, n_saves * cfg.n_chains)
        pos_l = list(np.asarray(pos_f).reshape(n_saves, cfg.n_chains, *shape))
        en_l = list(np.asarray(en_f).reshape(n_saves, cfg.n_chains))
    else:
        x0 = torch.as_tensor(np.asarray(system.positions), dtype=dtype).reshape(1, *shape)
        x = _project(x0 + cfg.init_noise * torch.randn((cfg.n_chains, *shape), generator=gen, dtype=dtype))
        x = relax_starts(target, x, cfg.relax_steps) if cfg.relax_steps > 0 else x
        step_size, it, n_acc, n_prop = float(cfg.step_size), 0, 0, 0
        pos_l, en_l = [], []
    write_run_info(out, {"kind": "mcmc", "settings": settings, **asdict(cfg), "spec": system.spec}, cfg.seed)
    if cfg.method == "mala":
        u, g = _grad(target, x)
    else:
        u, g = target.energy(x).detach(), None

    def checkpoint() -> None:
        write_frames(out, np.asarray(pos_l).reshape(-1, *shape), np.asarray(en_l).reshape(-1), system.topology)
        atomic_save(
            state_file,
            lambda p: torch.save(
                {
                    "x": x,
                    "step_size": step_size,
                    "step": it,
                    "n_acc": n_acc,
                    "n_prop": n_prop,
                    "generator": gen.get_state(),
                },
                p,
            ),
        )
        atomic_write_json(
            out / "progress.json",
            {
                "settings": settings,
                "frames": len(en_l) * cfg.n_chains,
                "checkpoint_frame": len(en_l),
                "step": it,
                "step_size": step_size,
                "n_steps": cfg.n_steps,
                "acceptance": n_acc / max(n_prop, 1),
                "completed": it >= cfg.n_steps + cfg.burn_in,
            },
        )

    from boltzdiff.progress import progress as progress_of

    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    total = cfg.n_steps + cfg.burn_in
    bar = progress_of(total=total, initial=it, enabled=progress, desc=f"MCMC {system.name}")
    t0, start = time.perf_counter(), it
    log_step = math.log(step_size)
    try:
        while it < total:
            x, u, g, acc = chain_step(target, x, u, g, step_size, cfg.method, gen)
            it += 1
            rate = acc.double().mean().item()
            if it <= cfg.burn_in:
                log_step += 0.05 * (rate - target_accept)
                step_size = math.exp(log_step)
            else:
                n_acc += int(acc.sum())
                n_prop += acc.numel()
                if (it - cfg.burn_in) % cfg.save_every == 0:
                    if not torch.isfinite(u).all():
                        raise SimulationBlowUpError(f"MCMC: non-finite energy at step {it}; kept {len(en_l)} saves")
                    pos_l.append(x.numpy().astype(np.float32))
                    en_l.append(u.numpy().copy())
                    if len(en_l) % cfg.checkpoint_every == 0:
                        checkpoint()
            bar.update(1)
            if it % 100 == 0:
                bar.set_postfix_str(f"acc {rate:.2f} h {step_size:.2e}")
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
    checkpoint()
    speed = (it - start) / max(time.perf_counter() - t0, 1e-9)
    pos = np.asarray(pos_l, dtype=np.float32).reshape(-1, *shape)
    return RunResult(
        out,
        pos,
        np.asarray(en_l).reshape(-1),
        len(pos),
        True,
        speed,
        acceptance=n_acc / max(n_prop, 1),
        extras={"step_size": step_size},
    )
