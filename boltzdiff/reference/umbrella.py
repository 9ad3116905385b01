"""Two-dimensional umbrella sampling over two dihedrals, and MBAR to reweight it to the unbiased ensemble.

This is how the project makes its own reference free energies for molecules (experiments/aldp_reference.py):
one-dimensional umbrella sampling along φ does not converge for alanine dipeptide in affordable time because ψ
relaxes slowly inside φ windows, so both dihedrals are restrained together. Each window adds
``0.5 k (Δφ)² + 0.5 k (Δψ)²`` (Δ = periodic difference, kJ/mol/rad²) to the OpenMM system; windows run one
after another, each starting from the previous window's last configuration, along a snake path over the grid.

MBAR (Shirts & Chodera 2008; solved by pymbar) then solves for the window free energies f_k from the reduced
bias energies of every sample in every window, and gives every sample a weight for the unbiased state. Only the
bias depends on the window, so the unbiased energy cancels and only (φ, ψ) per sample are needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.special import logsumexp

from boltzdiff.errors import ConfigError
from boltzdiff.geometry import dihedral
from boltzdiff.io import atomic_write_json, load_npz, save_npz
from boltzdiff.runinfo import write_run_info

if TYPE_CHECKING:
    from boltzdiff.systems import System

log = logging.getLogger(__name__)


def periodic_delta(a, b) -> np.ndarray:
    """``a - b`` wrapped to ``[-pi, pi)``."""
    return (np.asarray(a) - np.asarray(b) + math.pi) % (2 * math.pi) - math.pi


def bias_reduced(
    phi_n: ArrayLike,
    psi_n: ArrayLike,
    centers_k2: ArrayLike,
    k_kjmol: float,
    kT_kjmol: float,
    k_psi_kjmol: float | None = None,
) -> np.ndarray:
    """Reduced bias energy ``u_k(x_n)``, shape (K, n), of samples with dihedrals (φ_n, ψ_n) in every window
    (force constant ``k_kjmol`` on φ and ``k_psi_kjmol``, default the same, on ψ)."""
    c = np.asarray(centers_k2, dtype=float)
    k_psi = k_kjmol if k_psi_kjmol is None else k_psi_kjmol
    dphi = periodic_delta(np.asarray(phi_n)[None, :], c[:, 0:1])
    dpsi = periodic_delta(np.asarray(psi_n)[None, :], c[:, 1:2])
    return 0.5 * (k_kjmol * dphi**2 + k_psi * dpsi**2) / kT_kjmol


def _import_pymbar() -> ModuleType:
    """``import pymbar`` without the banner it logs on first import (the "JAX NOT FOUND" box and the
    timeseries caution); later warnings of pymbar, e.g. about convergence, still show."""
    import sys

    if "pymbar" in sys.modules:
        return sys.modules["pymbar"]
    quiet = logging.getLogger("pymbar")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import pymbar
    finally:
        quiet.setLevel(level)
    return pymbar


def mbar(u_kn: np.ndarray, n_k, tol: float = 1e-10, max_iter: int = 10000) -> np.ndarray:
    """MBAR free energies ``f_k`` (gauge f_0 = 0), solved by :class:`pymbar.MBAR`.

    Parameters
    ----------
    u_kn : (K, n) array
        Reduced energy of every sample (all windows pooled) in every state.
    n_k : (K,) ints
        Number of samples drawn from each state; ``sum(n_k) == n``.
    tol : float
        pymbar's ``relative_tolerance`` of the solver.
    max_iter : int
        pymbar's ``maximum_iterations``.

    Raises
    ------
    ConfigError
        On a shape mismatch or non-finite energies.
    """
    u_kn = np.asarray(u_kn, dtype=np.float64)
    n_k = np.asarray(n_k)
    if u_kn.ndim != 2 or u_kn.shape[0] != n_k.size or int(n_k.sum()) != u_kn.shape[1]:
        raise ConfigError(f"mbar: u_kn has shape {u_kn.shape}, expected (K, sum(n_k)) with K = {n_k.size}")
    if not np.all(np.isfinite(u_kn)):
        raise ConfigError("mbar: u_kn contains non-finite energies")
    pymbar = _import_pymbar()
    solver = pymbar.MBAR(
        u_kn, n_k.astype(np.int64), relative_tolerance=tol, maximum_iterations=int(max_iter), verbose=False
    )
    f = np.array(solver.f_k, dtype=np.float64)
    return f - f[0]


def mbar_log_weights(u_kn: np.ndarray, n_k, f_k: np.ndarray, u_target_n=None) -> np.ndarray:
    """Log-weights (unnormalised, float64) of the pooled samples for a target state, by default the unbiased
    one (``u_target = 0`` relative to the biased states' common part)."""
    u_kn = np.asarray(u_kn, dtype=np.float64)
    log_n = np.log(np.maximum(np.asarray(n_k, dtype=np.float64), 1e-300))
    log_den = logsumexp(log_n[:, None] + np.asarray(f_k)[:, None] - u_kn, axis=0)
    u_t = 0.0 if u_target_n is None else np.asarray(u_target_n, dtype=np.float64)
    return -u_t - log_den


def grid_centers(n_phi: int, n_psi: int | None = None) -> np.ndarray:
    """Window centres on an even periodic grid, in snake order (neighbouring windows are adjacent): (K, 2)."""
    n_psi = n_psi or n_phi
    phis = -math.pi + (np.arange(n_phi) + 0.5) * 2 * math.pi / n_phi
    psis = -math.pi + (np.arange(n_psi) + 0.5) * 2 * math.pi / n_psi
    out = []
    for i, p in enumerate(phis):
        col = psis if i % 2 == 0 else psis[::-1]
        out.extend((p, q) for q in col)
    return np.asarray(out)


@dataclass
class UmbrellaConfig:
    """Settings of one 2-D umbrella-sampling replicate (see :func:`run_umbrella_2d`)."""

    n_grid: int = 12  # windows along phi
    k_kjmol: float = 25.0  # kJ/mol/rad^2 on phi
    n_grid_psi: int | None = None  # windows along psi (default: n_grid)
    k_psi_kjmol: float | None = None  # on psi (default: k_kjmol)
    equil_ps: float = 10.0
    prod_ps: float = 50.0
    save_every_ps: float = 0.5
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    seed: int = 0
    platform: str = "Reference"


def run_umbrella_2d(
    system: System,
    out_dir: str | Path,
    cfg: UmbrellaConfig,
    phi_idx: Sequence[int],
    psi_idx: Sequence[int],
    progress: bool = True,
) -> dict:
    """Run every window of a 2-D umbrella replicate; resumable per window (a finished window is kept).

    Writes ``out_dir/windows.npz`` (``centers (K, 2)``, ``phi (K, m)``, ``psi (K, m)``, ``done (K,)``) after
    each window and returns its arrays. Dihedral indices are 0-based atom indices.
    """
    import openmm
    import openmm.unit as unit

    from boltzdiff.targets.openmm import check_positions

    if "openmm_system" not in system.extras:
        raise ConfigError(f"umbrella: system {system.name!r} has no OpenMM System (kind: openmm expected)")
    for name in ("k_kjmol", "equil_ps", "prod_ps", "save_every_ps", "timestep_fs"):
        v = getattr(cfg, name)
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ConfigError(f"umbrella: {name} must be a positive number, got {v!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    temperature = system.temperature
    kT = float(unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin) * temperature)
    centers = grid_centers(cfg.n_grid, cfg.n_grid_psi)
    k_psi = cfg.k_psi_kjmol if cfg.k_psi_kjmol is not None else cfg.k_kjmol
    n_win = len(centers)
    steps_per_save = round(cfg.save_every_ps * 1000 / cfg.timestep_fs)
    n_equil = round(cfg.equil_ps * 1000 / cfg.timestep_fs)
    m = round(cfg.prod_ps / cfg.save_every_ps)
    path = out / "windows.npz"
    settings = np.array([cfg.k_kjmol, k_psi, cfg.equil_ps, cfg.prod_ps, cfg.save_every_ps, cfg.timestep_fs])
    if path.is_file():
        d = load_npz(path, "umbrella windows written by run_umbrella_2d (or use a new folder)")
        same = "settings" not in d or np.allclose(d["settings"], settings)  # files without it predate the check
        if d["phi"].shape != (n_win, m) or not np.allclose(d["centers"], centers) or not same:
            raise ConfigError(f"umbrella: {path} was written with other settings; use a new folder")
        phi_km, psi_km, done = d["phi"].copy(), d["psi"].copy(), d["done"].copy()
        last_pos = d["last_pos"].copy()
    else:
        phi_km = np.full((n_win, m), np.nan)
        psi_km = np.full((n_win, m), np.nan)
        done = np.zeros(n_win, dtype=bool)
        last_pos = None
    write_run_info(out, {"kind": "umbrella_2d", **cfg.__dict__, "spec": system.spec}, cfg.seed)

    omm = openmm.XmlSerializer.clone(system.extras["openmm_system"])
    bias = openmm.CustomTorsionForce(
        "0.5*kb*d^2; d = min(dt, 2*pi - dt); dt = abs(theta - theta0); pi = 3.141592653589793"
    )
    bias.addPerTorsionParameter("kb")
    bias.addPerTorsionParameter("theta0")
    bias.addTorsion(*[int(i) for i in phi_idx], [cfg.k_kjmol, float(centers[0, 0])])
    bias.addTorsion(*[int(i) for i in psi_idx], [k_psi, float(centers[0, 1])])
    omm.addForce(bias)
    integ = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, cfg.friction_per_ps / unit.picosecond, cfg.timestep_fs * unit.femtosecond
    )
    integ.setRandomNumberSeed(int(cfg.seed) % (2**31 - 1) or 1)
    ctx = openmm.Context(omm, integ, openmm.Platform.getPlatformByName(cfg.platform))
    if last_pos is not None and last_pos.size:
        ctx.setPositions(last_pos)
    else:
        pos0 = check_positions(system.positions, omm.getNumParticles(), f"{system.name} positions")[0]
        ctx.setPositions(pos0)
    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, int(cfg.seed) % (2**31 - 1) or 1)

    from boltzdiff.progress import progress as progress_of

    bar = progress_of(total=n_win, initial=int(done.sum()), desc="umbrella windows", enabled=progress)
    for w in range(n_win):
        if done[w]:
            continue
        bias.setTorsionParameters(0, *[int(i) for i in phi_idx], [cfg.k_kjmol, float(centers[w, 0])])
        bias.setTorsionParameters(1, *[int(i) for i in psi_idx], [k_psi, float(centers[w, 1])])
        bias.updateParametersInContext(ctx)
        integ.step(n_equil)
        frames = []
        for _ in range(m):
            integ.step(steps_per_save)
            st = ctx.getState(getPositions=True)
            pos = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            if not np.all(np.isfinite(pos)):
                raise ConfigError(f"umbrella: window {w} blew up (non-finite coordinates); lower timestep_fs")
            frames.append(np.asarray(pos))
        xw = torch.as_tensor(np.stack(frames), dtype=torch.float64)
        phi_km[w] = dihedral(xw, phi_idx).numpy()
        psi_km[w] = dihedral(xw, psi_idx).numpy()
        done[w] = True
        last_pos = np.asarray(pos)
        arrays = dict(centers=centers, phi=phi_km, psi=psi_km, done=done, last_pos=last_pos, settings=settings)
        save_npz(path, arrays)
        bar.update(1)
    bar.close()
    atomic_write_json(out / "umbrella.json", {"kT_kjmol": kT, "n_windows": n_win, "samples_per_window": m})
    return dict(centers=centers, phi=phi_km, psi=psi_km, kT_kjmol=kT, k_kjmol=cfg.k_kjmol, k_psi_kjmol=k_psi)


def unbiased_log_weights(
    phi_km: np.ndarray,
    psi_km: np.ndarray,
    centers: np.ndarray,
    k_kjmol: float,
    kT_kjmol: float,
    k_psi_kjmol: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool the windows and return ``(phi_n, psi_n, log_w_n)``: MBAR weights for the unbiased ensemble."""
    phi_n = np.asarray(phi_km).reshape(-1)
    psi_n = np.asarray(psi_km).reshape(-1)
    n_k = np.full(len(centers), np.asarray(phi_km).shape[1])
    u_kn = bias_reduced(phi_n, psi_n, centers, k_kjmol, kT_kjmol, k_psi_kjmol)
    f_k = mbar(u_kn, n_k)
    return phi_n, psi_n, mbar_log_weights(u_kn, n_k, f_k)
