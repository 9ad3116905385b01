"""Well-tempered metadynamics over two dihedrals to build a flattening bias, then MD under that bias, frozen.

This is the project's second, independent way to make reference free energies for molecules (the first is
2-D umbrella sampling, :mod:`boltzdiff.reference.umbrella`). It has two phases:

1. **Build** (well-tempered metadynamics, Barducci, Bussi & Parrinello 2008): every ``stride`` steps a periodic
   Gaussian of height ``h0 exp(-V(s)/(k_B ΔT))`` and width ``sigma`` is added to a bias grid V(φ, ψ), with
   ``ΔT = (bias_factor - 1) T``. OpenMM applies the grid as a ``CustomCVForce`` over a periodic
   ``Continuous2DFunction`` of the two ``CustomTorsionForce`` variables.
2. **Production**: the grid is frozen, and plain Langevin MD runs under ``U(x) + V(φ, ψ)``. The bias is then a
   fixed, known potential, so every frame ``n`` is reweighted to the unbiased ensemble exactly by
   ``w_n ∝ exp(+V(φ_n, ψ_n)/kT)``, with V read from the bias force's own energy (the spline OpenMM integrated,
   not a re-interpolation). No time-dependent-bias correction is needed, and because the flattened landscape
   crosses the φ ≈ 0 barrier often, contiguous blocks of the production run give an honest error bar.

Only the build phase depends on the metadynamics settings; a poor bias only makes the production estimate
noisier, never biased. Runs are resumable per production segment (``state.npz`` is written atomically).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from boltzdiff.errors import ConfigError
from boltzdiff.io import atomic_write_json, load_npz, save_npz
from boltzdiff.runinfo import write_run_info

if TYPE_CHECKING:
    from boltzdiff.systems import System

log = logging.getLogger(__name__)

TWO_PI = 2.0 * math.pi


@dataclass
class MetadConfig:
    """Settings of one metadynamics + frozen-bias replicate (see :func:`run_metad_2d`)."""

    build_ps: float = 3000.0  # well-tempered metadynamics phase
    prod_ps: float = 20000.0  # MD under the frozen bias
    height_kjmol: float = 1.2  # initial Gaussian height
    sigma_rad: float = 0.35  # Gaussian width on both variables
    bias_factor: float = 6.0  # gamma = (T + ΔT) / T
    stride_steps: int = 500  # deposit every ... steps (build); record every ... steps (production)
    n_grid: int = 73  # bias grid points per variable, both ends at ±pi (the same point)
    segment_ps: float = 500.0  # checkpoint interval
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    seed: int = 0
    platform: str = "Reference"
    save_positions: bool = False  # also keep every production frame's coordinates (nm), e.g. as training data


def periodic_gaussians(grid: np.ndarray, centers: np.ndarray, heights: np.ndarray, sigma: float) -> np.ndarray:
    """Sum of periodic 2-D Gaussians on a square grid: ``out[j, i] = Σ_c h_c exp(-(d(x_i, a_c)² + d(x_j,
    b_c)²) / 2σ²)`` for grid coordinates ``grid`` (n,), centres (C, 2) = (a, b), d the periodic distance.
    Row index j is the second variable, column index i the first (OpenMM's Continuous2DFunction order)."""
    c = np.atleast_2d(np.asarray(centers, dtype=float))
    h = np.asarray(heights, dtype=float).reshape(-1)
    da = np.abs(grid[None, :] - c[:, 0:1]) % TWO_PI
    db = np.abs(grid[None, :] - c[:, 1:2]) % TWO_PI
    da = np.minimum(da, TWO_PI - da)
    db = np.minimum(db, TWO_PI - db)
    ga = np.exp(-0.5 * (da / sigma) ** 2)  # (C, n)
    gb = np.exp(-0.5 * (db / sigma) ** 2) * h[:, None]
    out = gb.T @ ga  # (n_b, n_a)
    if math.isclose(grid[-1] - grid[0], TWO_PI):  # both ends are one point: make them equal to the last bit
        out[:, -1] = out[:, 0]
        out[-1, :] = out[0, :]
    return out


def _validate(cfg: MetadConfig) -> None:
    for name in ("build_ps", "prod_ps", "height_kjmol", "sigma_rad", "segment_ps", "timestep_fs", "friction_per_ps"):
        v = getattr(cfg, name)
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ConfigError(f"metad: {name} must be a positive number, got {v!r}")
    if not (isinstance(cfg.bias_factor, int | float) and cfg.bias_factor > 1):
        raise ConfigError(f"metad: bias_factor must be > 1, got {cfg.bias_factor!r}")
    if not (isinstance(cfg.stride_steps, int) and cfg.stride_steps > 0):
        raise ConfigError(f"metad: stride_steps must be a positive integer, got {cfg.stride_steps!r}")
    if not (isinstance(cfg.n_grid, int) and cfg.n_grid >= 8):
        raise ConfigError(f"metad: n_grid must be an integer >= 8, got {cfg.n_grid!r}")


def _save(path: Path, arrays: dict) -> None:
    save_npz(path, arrays)


def run_metad_2d(
    system: System,
    out_dir: str | Path,
    cfg: MetadConfig,
    phi_idx: Sequence[int],
    psi_idx: Sequence[int],
    progress: bool = True,
) -> dict:
    """Build a well-tempered metadynamics bias over (φ, ψ), then run MD under it frozen; resumable.

    Returns ``dict(phi, psi, bias_kjmol, kT_kjmol, grid, bias_grid, centers, heights)``: the production frames'
    dihedrals (rad) and bias energies (kJ/mol), the frozen bias grid ``(n, n)`` (row = ψ, column = φ) and the
    deposited Gaussians. ``out_dir/state.npz`` holds everything needed to resume after each segment.
    """
    import openmm
    import openmm.unit as unit

    from boltzdiff.targets.openmm import check_positions

    if "openmm_system" not in system.extras:
        raise ConfigError(f"metad: system {system.name!r} has no OpenMM System (kind: openmm expected)")
    _validate(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    temperature = float(system.temperature)
    kT = float(unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin) * temperature)
    kdT = kT * (cfg.bias_factor - 1.0)
    grid = np.linspace(-math.pi, math.pi, cfg.n_grid)
    steps_per_ps = round(1000.0 / cfg.timestep_fs)
    n_build = round(cfg.build_ps * steps_per_ps / cfg.stride_steps)  # depositions
    n_prod = round(cfg.prod_ps * steps_per_ps / cfg.stride_steps)  # recorded frames
    per_seg = max(1, round(cfg.segment_ps * steps_per_ps / cfg.stride_steps))
    settings = np.array(
        [cfg.build_ps, cfg.prod_ps, cfg.height_kjmol, cfg.sigma_rad, cfg.bias_factor, cfg.stride_steps, cfg.n_grid,
         cfg.timestep_fs, cfg.friction_per_ps]
    )  # fmt: skip
    path = out / "state.npz"
    if path.is_file():
        d = load_npz(path, "a metadynamics state written by run_metad_2d (or use a new folder)")
        if "settings" not in d or not np.allclose(d["settings"], settings):
            raise ConfigError(f"metad: {path} was written with other settings; use a new folder")
        state = {k: v.copy() for k, v in d.items()}
    else:
        state = dict(
            settings=settings,
            centers=np.zeros((0, 2)),
            heights=np.zeros(0),
            phi=np.zeros(0),
            psi=np.zeros(0),
            bias_kjmol=np.zeros(0),
            pos=np.zeros((0, 3)),
            vel=np.zeros((0, 3)),
            segment=np.array(0),
        )
    if cfg.save_positions and "frames" not in state:
        if len(state["phi"]):
            raise ConfigError(f"metad: {path} was started without save_positions; use a new folder")
        state["frames"] = np.zeros((0, len(np.asarray(system.positions).reshape(-1, 3)), 3), np.float32)
    write_run_info(out, {"kind": "metad_2d", **asdict(cfg), "spec": system.spec}, cfg.seed)

    omm = openmm.XmlSerializer.clone(system.extras["openmm_system"])
    cvs = []
    for idx in (phi_idx, psi_idx):
        t = openmm.CustomTorsionForce("theta")
        t.addTorsion(*[int(i) for i in idx], [])
        cvs.append(t)
    bias_grid = periodic_gaussians(grid, state["centers"], state["heights"], cfg.sigma_rad)
    table = openmm.Continuous2DFunction(
        cfg.n_grid, cfg.n_grid, bias_grid.reshape(-1), -math.pi, math.pi, -math.pi, math.pi, True
    )
    force = openmm.CustomCVForce("table(cv0, cv1)")
    force.addCollectiveVariable("cv0", cvs[0])
    force.addCollectiveVariable("cv1", cvs[1])
    force.addTabulatedFunction("table", table)
    used = {f.getForceGroup() for f in omm.getForces()}
    group = max(set(range(32)) - used)
    force.setForceGroup(group)
    omm.addForce(force)
    integ = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, cfg.friction_per_ps / unit.picosecond, cfg.timestep_fs * unit.femtosecond
    )
    seg = int(state["segment"])
    integ.setRandomNumberSeed((int(cfg.seed) * 1009 + seg) % (2**31 - 1) or 1)
    ctx = openmm.Context(omm, integ, openmm.Platform.getPlatformByName(cfg.platform))
    if state["pos"].size:
        ctx.setPositions(state["pos"])
        ctx.setVelocities(state["vel"])
    else:
        ctx.setPositions(check_positions(system.positions, omm.getNumParticles(), f"{system.name} positions")[0])
        ctx.setVelocitiesToTemperature(temperature * unit.kelvin, int(cfg.seed) % (2**31 - 1) or 1)

    def set_table(values: np.ndarray) -> None:
        table.setFunctionParameters(cfg.n_grid, cfg.n_grid, values.reshape(-1), -math.pi, math.pi, -math.pi, math.pi)
        force.updateParametersInContext(ctx)

    def observe() -> tuple[float, float, float]:
        a, b = force.getCollectiveVariableValues(ctx)
        v = ctx.getState(getEnergy=True, groups={group}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        return float(a), float(b), float(v)

    from boltzdiff.progress import progress as progress_of

    total = n_build + n_prod
    bar = progress_of(total=total, desc="metad strides", enabled=progress)
    done = len(state["heights"]) + len(state["phi"])
    bar.update(done)
    centers, heights = list(map(tuple, state["centers"])), list(state["heights"])
    phis, psis, vs = list(state["phi"]), list(state["psi"]), list(state["bias_kjmol"])
    frames = list(state["frames"]) if cfg.save_positions else None
    while done < total:
        stop = min(total, done + per_seg)
        for k in range(done, stop):
            integ.step(cfg.stride_steps)
            a, b, v = observe()
            if not all(math.isfinite(z) for z in (a, b, v)):
                raise ConfigError(f"metad: stride {k} gave non-finite values; lower timestep_fs")
            if k < n_build:
                h = cfg.height_kjmol * math.exp(-v / kdT)
                centers.append((a, b))
                heights.append(h)
                bias_grid += periodic_gaussians(grid, np.array([[a, b]]), np.array([h]), cfg.sigma_rad)
                set_table(bias_grid)
            else:
                phis.append(a)
                psis.append(b)
                vs.append(v)
                if frames is not None:
                    p = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                    frames.append(np.asarray(p, dtype=np.float32))
            bar.update(1)
        done = stop
        st = ctx.getState(getPositions=True, getVelocities=True)
        pos = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if not np.all(np.isfinite(pos)):
            raise ConfigError("metad: the run blew up (non-finite coordinates); lower timestep_fs")
        seg += 1
        state = dict(
            settings=settings,
            centers=np.array(centers, dtype=float).reshape(-1, 2),
            heights=np.array(heights, dtype=float),
            phi=np.array(phis),
            psi=np.array(psis),
            bias_kjmol=np.array(vs),
            pos=np.asarray(pos),
            vel=np.asarray(st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)),
            segment=np.array(seg),
        )
        if frames is not None:
            state["frames"] = np.asarray(frames, dtype=np.float32).reshape(len(frames), len(pos), 3)
        _save(path, state)
    bar.close()
    atomic_write_json(out / "metad.json", {"kT_kjmol": kT, "n_build": n_build, "n_prod": n_prod})
    return dict(
        phi=state["phi"],
        psi=state["psi"],
        bias_kjmol=state["bias_kjmol"],
        kT_kjmol=kT,
        grid=grid,
        bias_grid=bias_grid,
        centers=state["centers"],
        heights=state["heights"],
        frames=state.get("frames"),
    )


def reweight_log_weights(bias_kjmol: ArrayLike, kT_kjmol: float) -> np.ndarray:
    """Log-weights of frames sampled under a frozen bias V, for the unbiased ensemble: ``+V/kT`` (up to a
    constant). Raises on non-finite biases."""
    v = np.asarray(bias_kjmol, dtype=float)
    if not np.all(np.isfinite(v)):
        raise ConfigError("metad: non-finite bias energies; the run is corrupt")
    return v / kT_kjmol


def block_delta_f(
    phi_n: ArrayLike, log_w_n: ArrayLike, n_blocks: int, lo: float = 0.0, hi: float = 2.0
) -> tuple[float, float]:
    """ΔF = −ln[P(lo < φ < hi) / P(rest)] from weighted, time-ordered frames, and its jackknife SE over
    ``n_blocks`` contiguous blocks (the blocks must be longer than the correlation time; compare several)."""
    phi = (np.asarray(phi_n, dtype=float) + math.pi) % TWO_PI - math.pi
    lw = np.asarray(log_w_n, dtype=float)
    w = np.exp(lw - lw.max())
    inside = (phi > lo) & (phi < hi)
    n = len(phi)
    if n_blocks < 2 or n < n_blocks:
        raise ConfigError(f"block_delta_f: need at least 2 blocks and one frame per block, got {n_blocks}, {n}")
    edges = np.linspace(0, n, n_blocks + 1).astype(int)
    a = np.array([w[s:e][inside[s:e]].sum() for s, e in zip(edges[:-1], edges[1:], strict=True)])
    b = np.array([w[s:e][~inside[s:e]].sum() for s, e in zip(edges[:-1], edges[1:], strict=True)])
    with np.errstate(divide="ignore"):
        full = -math.log(a.sum() / b.sum()) if a.sum() > 0 else math.inf
        jk = -np.log((a.sum() - a) / (b.sum() - b))
    m = n_blocks
    se = float(math.sqrt((m - 1) / m * np.sum((jk - jk.mean()) ** 2)))
    return float(full), se
