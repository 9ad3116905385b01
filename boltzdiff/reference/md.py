"""Reference MD: OpenMM Langevin dynamics of a molecule, resumable in a run folder.

The folder layout is described in :mod:`boltzdiff.reference.frames`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from boltzdiff.errors import ConfigError
from boltzdiff.io import atomic_save, atomic_write_bytes, atomic_write_json, load_npy
from boltzdiff.reference.frames import (
    RunResult,
    SimulationBlowUpError,
    load_frames,
    read_progress,
    read_start_structure,
    write_frames,
)
from boltzdiff.runinfo import write_run_info

if TYPE_CHECKING:
    from boltzdiff.systems import System

log = logging.getLogger(__name__)


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
    #: also checkpoint when this many seconds have passed since the last checkpoint (whichever comes first)
    checkpoint_every_s: float = 120.0
    #: a structure file (PDB) to start from instead of the system's own positions; a relative path is taken
    #: from the system's folder
    start: str | None = None


def kinetic_temperature(state: Any, n_dof: int) -> float:
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


def run_md(system: System, out_dir: str | Path, config: MDConfig | None = None, progress: bool = True) -> RunResult:
    """Langevin MD (LangevinMiddleIntegrator) of an OpenMM-backed system, resumable in ``out_dir``.

    Parameters
    ----------
    system : boltzdiff.systems.System
        Needs ``extras["openmm_system"]`` (``kind: openmm``) or ``extras["openmm_system_factory"]`` (LJ).
    out_dir : path
        Run folder; rerunning on the same folder resumes (extend with a larger ``ns``).
    config : MDConfig
    progress : bool
        Report progress (a bar with ns/day on a terminal, periodic log lines elsewhere).

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
    if n_total < 1:
        raise ConfigError(
            f"simulate: ns {cfg.ns} is shorter than one save interval ({cfg.save_every_ps} ps), so 0 frames would "
            "be saved; expected ns >= save_every_ps / 1000"
        )
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
    prog = read_progress(out, settings)
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
        pos_l, en_l = load_frames(out, n_ck)
        t_file = out / "temperatures.npy"
        temps = list(load_npy(t_file, "kinetic temperatures (F,)")[:n_ck]) if t_file.is_file() else []
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
        write_frames(out, np.asarray(pos_l), np.asarray(en_l), topology, {"temperatures": np.asarray(temps)})
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

    from boltzdiff.progress import progress as progress_of

    start = len(pos_l)
    t0 = last_ck = time.perf_counter()
    bar = progress_of(total=n_total, initial=start, enabled=progress, desc=f"MD {system.name}")
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
                write_frames(out, np.asarray(pos_l), np.asarray(en_l), topology, {"temperatures": np.asarray(temps)})
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
            if (
                (k + 1) % cfg.checkpoint_every == 0
                or k + 1 == n_total
                or time.perf_counter() - last_ck >= cfg.checkpoint_every_s
            ):
                checkpoint(k + 1)
                last_ck = time.perf_counter()
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
