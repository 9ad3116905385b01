"""PNG plots, a one-page Markdown report and an atomic JSON writer.

Plots are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot global state, no
display needed); matplotlib is imported inside each function so ``import boltzdiff`` stays fast. Every
plotting function takes already-computed arrays / analysis results and a ``path``, writes one PNG and returns
the path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from boltzdiff.analysis.free_energy import (
    FreeEnergyProfile,
    Histogram1D,
    free_energy_from_histogram,
    weighted_histogram_1d,
    weighted_histogram_2d,
)
from boltzdiff.analysis.weights import as_float64
from boltzdiff.io import atomic_write_text


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------
def _jsonable(obj):
    """Numpy/torch scalars and arrays to plain Python; non-finite floats to ``None`` (strict JSON)."""
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    Numpy/torch scalars and arrays are converted to plain Python; NaN/inf become ``null`` so the file is
    strict JSON. A reader never sees a half-written file, and an interrupted write leaves the old one.
    """
    path = Path(path)
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
def _figure(n_cols: int = 1, width: float = 5.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_cols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_cols, i + 1) for i in range(n_cols)]
    return fig, axes


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_ramachandran(
    phi_md_n,
    psi_md_n,
    phi_n,
    psi_n,
    log_w_n,
    path,
    bins: int = 60,
    f_max: float = 10.0,
    labels: Sequence[str] = ("MD", "reweighted model"),
) -> Path:
    """Two panels of ``F(phi, psi)`` (kT, clipped at ``f_max``): reference (e.g. MD) and reweighted samples.

    Parameters
    ----------
    phi_md_n, psi_md_n : (n,) radians
        Reference samples (equal weights); pass ``None`` to draw only the model panel.
    phi_n, psi_n : (m,) radians
    log_w_n : (m,) or None
        Log-weights of the model samples.
    """
    sets = []
    if phi_md_n is not None:
        sets.append((labels[0], phi_md_n, psi_md_n, None))
    sets.append((labels[-1], phi_n, psi_n, log_w_n))
    fig, axes = _figure(len(sets), 4.6, 4.0)
    im = None
    for ax, (label, phi, psi, lw) in zip(axes, sets):
        h = weighted_histogram_2d(phi, psi, lw, bins=bins, periodic=True)
        f = free_energy_from_histogram(h.p_xy)
        f = np.where(np.isfinite(f), np.minimum(f, f_max), np.nan)  # empty bins blank
        im = ax.pcolormesh(h.edges_x, h.edges_y, f.T, cmap="viridis", vmin=0, vmax=f_max, shading="flat")
        ax.set_xlabel(r"$\phi$ (rad)")
        ax.set_ylabel(r"$\psi$ (rad)")
        ax.set_title(label)
        ax.set_aspect("equal")
    fig.colorbar(im, ax=axes, label="F (kT)")
    return _save(fig, path)


def plot_free_energy_profiles(
    profiles: Mapping[str, FreeEnergyProfile],
    path,
    xlabel: str = r"$\phi$ (rad)",
    basin: tuple[float, float] | None = (0.0, 2.0),
) -> Path:
    """Overlay ``F(x)`` curves with their bootstrap ±1 sigma bands (percentile bands where available).

    ``basin`` shades the ΔF state A (default ``0 < phi < 2``); ``None`` for no shading.
    """
    fig, (ax,) = _figure(1, 6.0, 4.0)
    for label, prof in profiles.items():
        x = prof.centers
        f = np.where(np.isfinite(prof.f_b), prof.f_b, np.nan)
        (line,) = ax.plot(x, f, label=label)
        lo = np.where(np.isfinite(prof.lo_b), prof.lo_b, np.nan)
        hi = np.where(np.isfinite(prof.hi_b), prof.hi_b, np.nan)
        if np.isfinite(lo).any():
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
    if basin is not None:
        ax.axvspan(*basin, color="grey", alpha=0.1, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("F (kT)")
    ax.legend()
    return _save(fig, path)


def plot_energy_histograms(
    samples: Mapping[str, tuple],
    path,
    bins: int = 80,
    xlabel: str = "reduced energy (kT)",
    quantile_range: tuple[float, float] = (0.001, 0.995),
) -> Path:
    """Overlaid weighted energy histograms, e.g. ``{"MD": (u_md, None), "model": (u, None),
    "reweighted": (u, log_w)}``; values with zero weight or non-finite energy are left out. The common range
    spans the given quantiles of the pooled finite energies (clashes would otherwise flatten the plot).
    """
    cleaned = {}
    for label, (u, lw) in samples.items():
        u = as_float64(u).reshape(-1)
        lw = np.zeros(u.size) if lw is None else as_float64(lw).reshape(-1)
        keep = np.isfinite(u) & np.isfinite(lw)
        cleaned[label] = (u[keep], lw[keep])
    pooled = np.concatenate([u for u, _ in cleaned.values()]) if cleaned else np.array([])
    fig, (ax,) = _figure(1, 6.0, 4.0)
    if pooled.size:
        lo, hi = np.quantile(pooled, quantile_range)
        hi = hi if hi > lo else lo + 1.0
        for label, (u, lw) in cleaned.items():
            if u.size == 0:
                continue
            h = weighted_histogram_1d(u, lw, bins=bins, range=(lo, hi))
            ax.stairs(h.density, h.edges, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    return _save(fig, path)


def plot_ess_trace(ess_t, path, x_t=None, xlabel: str = "SMC step", resample_t=None) -> Path:
    """Normalised ESS along a sampler run (``ess_t: (T,)``, optional abscissa ``x_t`` and a boolean
    ``resample_t`` marking resampling steps)."""
    ess = as_float64(ess_t).reshape(-1)
    x = np.arange(ess.size) if x_t is None else as_float64(x_t).reshape(-1)
    fig, (ax,) = _figure(1, 6.0, 3.5)
    ax.plot(x, ess)
    if resample_t is not None:
        r = np.asarray(resample_t, dtype=bool).reshape(-1)
        ax.plot(x[r], ess[r], "v", ms=4, label="resampled")
        ax.legend()
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalised ESS")
    return _save(fig, path)


def plot_distance_histograms(
    hists: Mapping[str, Histogram1D], path, xlabel: str = "interparticle distance"
) -> Path:
    """Overlay interparticle-distance histograms (densities), e.g. MCMC reference vs reweighted model."""
    fig, (ax,) = _figure(1, 6.0, 4.0)
    for label, h in hists.items():
        ax.stairs(h.density, h.edges, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    if v is None:
        return "—"
    return str(v).replace("|", "\\|")


def write_report_md(
    path,
    title: str,
    numbers: Mapping[str, object],
    figures: Sequence[tuple[str, str | os.PathLike]] = (),
    notes: str | None = None,
) -> Path:
    """A one-page Markdown report: a title, a table of numbers, optional notes and embedded PNGs.

    Parameters
    ----------
    path : path of the ``report.md`` to write (atomically)
    title : str
    numbers : mapping ``name -> value`` (scalars; nested values are shown as text)
    figures : sequence of ``(caption, png_path)``; paths are written relative to the report's folder
    notes : optional Markdown paragraph(s) after the table
    """
    path = Path(path)
    lines = [f"# {title}", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in numbers.items()]
    lines.append("")
    if notes:
        lines += [notes.strip(), ""]
    for caption, png in figures:
        rel = os.path.relpath(Path(png).resolve(), path.parent.resolve())
        lines += [f"![{caption}]({Path(rel).as_posix()})", "", f"*{caption}*", ""]
    atomic_write_text(path, "\n".join(lines))
    return path
