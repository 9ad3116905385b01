"""Reference sampling: OpenMM Langevin MD for molecules, MCMC chains (MALA / random walk) for torch targets.

Both write a run directory that can be resumed by calling the same function again on it:

===================  =========================================================================================
``positions.npy``    frames ``(F, n, d)`` float32, in nm (MD) or reduced units (MCMC) -- the training data
``energies.npy``     reduced energies ``(F,)`` float64 (kT) of those frames
``trajectory.dcd``   the frames for mdtraj (3-D systems with a topology), with ``topology.pdb``
``temperatures.npy`` MD only: instantaneous kinetic temperature (K) of each frame
``checkpoint.chk``   MD: OpenMM binary checkpoint (exact restart, same platform); ``state.xml`` as fallback
``mcmc_state.pt``    MCMC: chain states, step size and generator state
``progress.json``    frames written, frames covered by the checkpoint, settings (refuses a mismatched resume)
``run_info.json``    resolved config, seed, git commit, package versions
===================  =========================================================================================

Every file is written to a temporary name and renamed. On resume, frames after the last checkpoint are
dropped and regenerated, so the data always continue the checkpointed state. A NaN/inf energy or coordinate
stops the run with :class:`SimulationBlowUpError` naming the step; frames up to the last good one are kept.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boltzdiff.errors import BoltzdiffError, ConfigError
from boltzdiff.runinfo import atomic_save, atomic_write_bytes, atomic_write_json, write_run_info

log = logging.getLogger(__name__)


class SimulationBlowUpError(BoltzdiffError):
    """The simulation produced a NaN/inf energy or coordinate (the frames before it are kept)."""


@dataclass
class MDConfig:
    """Langevin MD settings.

    The default time step is 1 fs, not 2 fs: the systems here have no constraints, so X-H bonds vibrate with
    periods near 10 fs, and 2 fs without constraints is at the edge of LangevinMiddle's stability and biases
    the sampled distribution.
    """

    ns: float = 1.0
    temperature: float | None = None  # K; None: the system's
    friction_per_ps: float = 1.0
    timestep_fs: float = 1.0
    save_every_ps: float = 1.0
    seed: int = 0
    platform: str = "Reference"
    minimize: bool = True
    checkpoint_every: int = 100  # frames
    #: a structure file (PDB) to start from instead of the system's own positions; a relative path is taken
    #: from the system's folder
    start: str | None = None


@dataclass
class MCMCConfig:
    """MCMC settings for torch targets.

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
    checkpoint_every: int = 20  # saves
    threads: int | None = 1  # torch intra-op threads while running (1 is fastest for these small systems)


@dataclass
class RunResult:
    """What a reference run left in its folder.

    Attributes
    ----------
    out_dir : Path
    positions : numpy.ndarray (F, n, d) float32
    energies : numpy.ndarray (F,) reduced
    n_frames : int
    completed : bool
    speed : float
        ns/day (MD) or steps/s (MCMC) of this call.
    acceptance : float or None
        MCMC acceptance rate after burn-in.
    """

    out_dir: Path
    positions: np.ndarray
    energies: np.ndarray
    n_frames: int
    completed: bool
    speed: float
    acceptance: float | None = None
    extras: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------------
# shared bookkeeping


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def _write_frames(out: Path, pos: np.ndarray, energies: np.ndarray, topology: Any, extra: dict | None = None) -> None:
    _save_npy(out / "positions.npy", pos.astype(np.float32))
    _save_npy(out / "energies.npy", energies.astype(np.float64))
    for k, v in (extra or {}).items():
        _save_npy(out / f"{k}.npy", v)
    if topology is not None and pos.ndim == 3 and pos.shape[-1] == 3 and len(pos):
        import mdtraj

        traj = mdtraj.Trajectory(pos.astype(np.float32), topology)
        atomic_save(out / "trajectory.dcd", lambda p: traj.save_dcd(p))


def _read_progress(out: Path, settings: dict) -> dict | None:
    f = out / "progress.json"
    if not f.is_file():
        return None
    try:
        prog = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{f}: unreadable progress file ({e}); use a new --out") from None
    old = prog.get("settings", {})
    diff = [k for k in settings if k not in ("ns", "n_steps") and old.get(k) != settings[k]]
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{out}: holds a run with {k}={old.get(k)!r}, not {settings[k]!r}; rerun with the same settings "
            "to resume, or use a new --out"
        )
    return prog


def _load_frames(out: Path, n: int) -> tuple[list, list]:
    if n == 0:
        return [], []
    pos = np.load(out / "positions.npy")[:n]
    en = np.load(out / "energies.npy")[:n]
    if len(pos) < n:
        raise ConfigError(f"{out}: positions.npy has {len(pos)} frames, the checkpoint expects {n}; use a new --out")
    return list(pos), list(en)


# ------------------------------------------------------------------------------------------------------------
# OpenMM Langevin MD


def kinetic_temperature(state, n_dof: int) -> float:
    """Instantaneous temperature (K) from an OpenMM State's kinetic energy and ``n_dof`` degrees of freedom"""
    import openmm.unit as unit

    ke = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    r = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    return 2.0 * ke / (n_dof * r)


def _n_dof(system) -> int:
    import openmm

    n = sum(1 for i in range(system.getNumParticles()) if system.getParticleMass(i)._value > 0)
    dof = 3 * n - system.getNumConstraints()
    if any(isinstance(system.getForce(k), openmm.CMMotionRemover) for k in range(system.getNumForces())):
        dof -= 3
    return dof


def read_start_structure(system, start: str) -> np.ndarray:
    """Positions ``(n_atoms, 3)`` nm of a PDB file (relative paths from the system's folder); one-line errors."""
    p = Path(start)
    if not p.is_absolute() and system.path is not None:
        p = Path(system.path).parent / p if Path(system.path).is_file() else Path(system.path) / p
    if not p.is_file():
        raise ConfigError(f"reference.starts: structure file {p} does not exist")
    import openmm.unit as unit

    from boltzdiff.targets.openmm import read_pdb

    pdb = read_pdb(p)
    n_sys = system.topology.n_atoms if system.topology is not None else None
    if n_sys is not None and pdb.topology.getNumAtoms() != n_sys:
        raise ConfigError(f"{p}: {pdb.topology.getNumAtoms()} atoms, expected {n_sys} (the system's)")
    return np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))


def run_md(system, out_dir: str | Path, config: MDConfig | None = None, progress: bool = True) -> RunResult:
    """Langevin MD (LangevinMiddleIntegrator) of an OpenMM-backed system, resumable in ``out_dir``.

    Parameters
    ----------
    system : boltzdiff.systems.System
        Needs ``extras["openmm_system"]`` (``kind: openmm``) or ``extras["openmm_system_factory"]`` (LJ).
    out_dir : path
        Run folder; rerunning on the same folder resumes (extend with a larger ``ns``).
    config : MDConfig
    progress : bool
        Show a tqdm bar with ns/day.

    Returns
    -------
    RunResult
        ``positions (F, n_atoms, 3)`` nm, ``energies (F,)`` kT.

    Raises
    ------
    SimulationBlowUpError
        NaN/inf energy or coordinates; the frames before are kept on disk.
    """
    import openmm
    import openmm.unit as unit

    cfg = config or MDConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "openmm_system" in system.extras:
        omm_system = system.extras["openmm_system"]
        temperature = cfg.temperature or system.temperature
    elif "openmm_system_factory" in system.extras:
        omm_system = system.extras["openmm_system_factory"]()
        temperature = cfg.temperature or system.extras["openmm_temperature_K"]
    else:
        raise ConfigError(f"simulate: system {system.name!r} (kind {system.kind}) has no OpenMM System; use MCMC")
    for name, v in (
        ("ns", cfg.ns),
        ("timestep_fs", cfg.timestep_fs),
        ("save_every_ps", cfg.save_every_ps),
        ("temperature", temperature),
        ("friction_per_ps", cfg.friction_per_ps),
    ):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ConfigError(f"simulate: {name} must be a positive number, got {v!r}")
    steps_per_frame = round(cfg.save_every_ps * 1000.0 / cfg.timestep_fs)
    if steps_per_frame < 1:
        raise ConfigError(f"simulate: save interval {cfg.save_every_ps} ps is shorter than the time step")
    n_total = round(cfg.ns * 1000.0 / cfg.save_every_ps)
    kT = float(unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin) * temperature)
    settings = {
        "system": system.name,
        "variant": system.variant,
        "temperature": temperature,
        "friction_per_ps": cfg.friction_per_ps,
        "timestep_fs": cfg.timestep_fs,
        "save_every_ps": cfg.save_every_ps,
        "seed": cfg.seed,
    }
    if cfg.start is not None:  # (absent otherwise, so that folders from before the option still resume)
        settings["start"] = cfg.start
    prog = _read_progress(out, settings)
    n_dof = _n_dof(omm_system)

    integ = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, cfg.friction_per_ps / unit.picosecond, cfg.timestep_fs * unit.femtosecond
    )
    integ.setRandomNumberSeed(int(cfg.seed) % (2**31 - 1) or 1)
    try:
        plat = openmm.Platform.getPlatformByName(cfg.platform)
    except Exception:  # noqa: BLE001
        names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        raise ConfigError(f"simulate: unknown platform {cfg.platform!r}; available: {names}") from None
    ctx = openmm.Context(omm_system, integ, plat)
    topology = system.topology

    if prog is not None and prog.get("checkpoint_frame", 0) > 0:
        n_ck = int(prog["checkpoint_frame"])
        pos_l, en_l = _load_frames(out, n_ck)
        temps = list(np.load(out / "temperatures.npy")[:n_ck]) if (out / "temperatures.npy").is_file() else []
        try:
            ctx.loadCheckpoint((out / "checkpoint.chk").read_bytes())
        except Exception:  # noqa: BLE001 - other platform / missing: fall back to the state XML
            ctx.setState(openmm.XmlSerializer.deserialize((out / "state.xml").read_text()))
        log.info("resuming %s at frame %d of %d", out, n_ck, n_total)
    else:
        from boltzdiff.targets.openmm import check_positions

        pos0 = check_positions(
            system.positions if cfg.start is None else read_start_structure(system, cfg.start),
            omm_system.getNumParticles(),
            f"{system.name} positions" if cfg.start is None else f"reference start {cfg.start}",
            system.extras.get("bonds"),
        )[0]
        ctx.setPositions(pos0)
        if cfg.minimize:
            openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 0)
        ctx.setVelocitiesToTemperature(temperature * unit.kelvin, int(cfg.seed) % (2**31 - 1) or 1)
        pos_l, en_l, temps = [], [], []
    run_config = {"kind": "md", "settings": settings, "ns": cfg.ns, **asdict(cfg), "spec": system.spec}
    write_run_info(out, run_config, cfg.seed)

    def checkpoint(n_ck: int) -> None:
        _write_frames(out, np.asarray(pos_l), np.asarray(en_l), topology, {"temperatures": np.asarray(temps)})
        atomic_write_bytes(out / "checkpoint.chk", ctx.createCheckpoint())
        st = ctx.getState(getPositions=True, getVelocities=True)
        atomic_write_bytes(out / "state.xml", openmm.XmlSerializer.serialize(st).encode())
        atomic_write_json(
            out / "progress.json",
            {
                "settings": settings,
                "frames": len(pos_l),
                "checkpoint_frame": n_ck,
                "n_total": n_total,
                "completed": n_ck >= n_total,
            },
        )

    if topology is not None and not (out / "topology.pdb").is_file():
        import mdtraj

        top_traj = mdtraj.Trajectory(np.asarray(system.positions, dtype=np.float32)[None], topology)
        atomic_save(out / "topology.pdb", lambda p: top_traj.save_pdb(p))

    from tqdm.auto import tqdm

    start = len(pos_l)
    t0 = time.perf_counter()
    bar = tqdm(total=n_total, initial=start, unit="frame", disable=not progress, desc=f"MD {system.name}")
    ns_day = float("nan")
    try:
        for k in range(start, n_total):
            step = (k + 1) * steps_per_frame
            err = None
            try:
                integ.step(steps_per_frame)
                st = ctx.getState(getEnergy=True, getPositions=True)
                e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT
                x = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                if not (math.isfinite(e) and np.isfinite(x).all() and np.abs(x).max() < 1e5):
                    err = "NaN/inf energy or coordinates"
            except Exception as ex:  # noqa: BLE001 - OpenMM raises on NaN coordinates
                err = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
            if err is not None:
                _write_frames(out, np.asarray(pos_l), np.asarray(en_l), topology, {"temperatures": np.asarray(temps)})
                raise SimulationBlowUpError(
                    f"simulation blew up ({err}) within steps {step - steps_per_frame + 1}-{step} "
                    f"(t <= {step * cfg.timestep_fs / 1000:.3f} ps); kept {len(pos_l)} good frames in {out}"
                )
            pos_l.append(np.asarray(x, dtype=np.float32))
            en_l.append(e)
            temps.append(kinetic_temperature(ctx.getState(getEnergy=True), n_dof))
            done = k + 1 - start
            el = time.perf_counter() - t0
            ns_day = done * steps_per_frame * cfg.timestep_fs * 1e-6 / max(el, 1e-9) * 86400
            bar.update(1)
            if done % 10 == 0 or k + 1 == n_total:
                bar.set_postfix_str(f"{ns_day:.0f} ns/day")
            if (k + 1) % cfg.checkpoint_every == 0 or k + 1 == n_total:
                checkpoint(k + 1)
    finally:
        bar.close()
    if start == n_total:
        checkpoint(n_total)
    return RunResult(
        out,
        np.asarray(pos_l, dtype=np.float32).reshape(-1, omm_system.getNumParticles(), 3),
        np.asarray(en_l),
        len(pos_l),
        True,
        ns_day,
        extras={"temperatures": np.asarray(temps)},
    )


# ------------------------------------------------------------------------------------------------------------
# MCMC for torch targets


def _project(v: torch.Tensor) -> torch.Tensor:
    """Remove the centre-of-mass component of ``v: (C, n, d)``."""
    return v - v.mean(-2, keepdim=True)


def mcmc_step(
    target,
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


def _grad(target, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xr = x.detach().requires_grad_(True)
    u = target.energy(xr)
    (g,) = torch.autograd.grad(u.sum(), xr)
    return u.detach(), _project(g)


def run_mcmc(system, out_dir: str | Path, config: MCMCConfig | None = None, progress: bool = True) -> RunResult:
    """Parallel MCMC chains (MALA or random-walk Metropolis) on a torch target, resumable in ``out_dir``.

    Frames are the states of all chains every ``save_every`` steps after ``burn_in``, stored chain-minor:
    ``positions.npy`` is ``(n_saves * n_chains, n, d)``.

    Parameters
    ----------
    system : boltzdiff.systems.System
        A particle system with ``positions`` (the chains start there, jittered by ``init_noise``).
    out_dir : path
    config : MCMCConfig
    progress : bool

    Returns
    -------
    RunResult
        ``positions (F, n, d)``, ``energies (F,)`` kT, ``acceptance``.
    """
    cfg = config or MCMCConfig()
    if cfg.method not in ("mala", "rw"):
        raise ConfigError(f"simulate: --mcmc must be 'mala' or 'rw', got {cfg.method!r}")
    for name in ("n_steps", "n_chains", "save_every"):
        if int(getattr(cfg, name)) < 1:
            raise ConfigError(f"simulate: {name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.step_size > 0:
        raise ConfigError(f"simulate: step size must be > 0, got {cfg.step_size}")
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
    prog = _read_progress(out, settings)
    dtype = torch.float64
    gen = torch.Generator().manual_seed(int(cfg.seed))
    state_file = out / "mcmc_state.pt"
    if prog is not None and prog.get("checkpoint_frame", 0) > 0 and state_file.is_file():
        st = torch.load(state_file, weights_only=False)
        x, step_size, it, n_acc, n_prop = st["x"], st["step_size"], st["step"], st["n_acc"], st["n_prop"]
        gen.set_state(st["generator"])
        n_saves = int(prog["checkpoint_frame"])
        pos_f, en_f = _load_frames(out, n_saves * cfg.n_chains)
        pos_l = list(np.asarray(pos_f).reshape(n_saves, cfg.n_chains, *shape))
        en_l = list(np.asarray(en_f).reshape(n_saves, cfg.n_chains))
    else:
        x0 = torch.as_tensor(np.asarray(system.positions), dtype=dtype).reshape(1, *shape)
        x = _project(x0 + cfg.init_noise * torch.randn((cfg.n_chains, *shape), generator=gen, dtype=dtype))
        step_size, it, n_acc, n_prop = float(cfg.step_size), 0, 0, 0
        pos_l, en_l = [], []
    write_run_info(out, {"kind": "mcmc", "settings": settings, **asdict(cfg), "spec": system.spec}, cfg.seed)
    if cfg.method == "mala":
        u, g = _grad(target, x)
    else:
        u, g = target.energy(x).detach(), None

    def checkpoint() -> None:
        _write_frames(out, np.asarray(pos_l).reshape(-1, *shape), np.asarray(en_l).reshape(-1), system.topology)
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

    from tqdm.auto import tqdm

    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    total = cfg.n_steps + cfg.burn_in
    bar = tqdm(total=total, initial=it, unit="step", disable=not progress, desc=f"MCMC {system.name}")
    t0, start = time.perf_counter(), it
    log_step = math.log(step_size)
    try:
        while it < total:
            x, u, g, acc = mcmc_step(target, x, u, g, step_size, cfg.method, gen)
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
