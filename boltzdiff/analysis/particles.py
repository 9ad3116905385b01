"""Metrics of particle-system samples against a reference, as papers on LJ13/LJ55/DW4 report them: energy W1 and
W2, interatomic-distance W2 and total variation.

A 1-D distribution enters as its quantile function ``Q(q)``, ``q in [0, 1]``, piecewise linear in ``q``:

* weighted samples ``x_i`` (weights ``w_i``, normalised): ``Q`` is the step function that is ``x_(k)`` (the
  ``k``-th smallest) on ``[W_(k-1), W_(k)]`` (cumulative weights);
* a histogram (edges ``e``, masses ``p``): uniform within each bin, so ``Q`` rises linearly from ``e_b`` to
  ``e_{b+1}`` on the bin's share of ``[0, 1]``.

``W_p(A, B)^p = int_0^1 |Q_A(q) - Q_B(q)|^p dq`` (1-D); on the merged breakpoints the difference is linear, so
``W1`` and ``W2`` are integrated exactly. Total variation between two histograms on the same bins is
``1/2 sum_b |p_b - q_b|`` (each normalised), in ``[0, 1]``.

A reference is either samples (``(values, log_w or None)``) or a histogram (``{"edges": ..., "p": ...}``, e.g. the
``energy_hist`` / ``distance_hist`` of a ``benchmarks/lj_reference.py`` summary, or a
:class:`~boltzdiff.analysis.histograms.Histogram1D`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boltzdiff.analysis.compare import pairwise_distances
from boltzdiff.analysis.histograms import Histogram1D, _weights, weighted_histogram_1d
from boltzdiff.analysis.weights import as_float64


@dataclass(frozen=True)
class Quantiles:
    """A piecewise-linear quantile function: on ``[q_k, q_{k+1}]`` it runs linearly from ``lo_k`` to ``hi_k``.

    Attributes
    ----------
    q : (K + 1,) float64
        Breakpoints, ``q[0] = 0``, ``q[-1] = 1``, non-decreasing.
    lo, hi : (K,) float64
        The values at the left and right end of each segment (equal for samples).
    """

    q: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def at(self, s: np.ndarray, right: bool) -> np.ndarray:
        """Values at the points ``s`` (inside ``[0, 1]``), taken from the segment to the right of each point
        (``right=True``) or to its left."""
        k = np.searchsorted(self.q, s, side="right" if right else "left") - 1
        k = np.clip(k, 0, self.lo.size - 1)
        width = self.q[k + 1] - self.q[k]
        frac = np.where(width > 0, (s - self.q[k]) / np.where(width > 0, width, 1.0), 0.0)
        return self.lo[k] + (self.hi[k] - self.lo[k]) * np.clip(frac, 0.0, 1.0)


def sample_quantiles(x, log_w=None) -> Quantiles:
    """The quantile function of weighted samples ``x: (n,)`` (``log_w`` unnormalised; ``None`` = equal weights;
    zero-weight samples are dropped, the rest must be finite)."""
    x = as_float64(x).reshape(-1)
    w = _weights(x.size, log_w)
    keep = w > 0
    x, w = x[keep], w[keep]
    if x.size == 0:
        raise ValueError("no sample carries weight")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples with non-zero weight must be finite")
    o = np.argsort(x, kind="stable")
    c = np.concatenate([[0.0], np.cumsum(w[o])])
    return Quantiles(c / c[-1], x[o], x[o])


def histogram_quantiles(edges, p) -> Quantiles:
    """The quantile function of a histogram, uniform within each bin (``p`` masses, normalised here)."""
    e, p = as_float64(edges).reshape(-1), as_float64(p).reshape(-1)
    if e.size != p.size + 1 or np.any(np.diff(e) <= 0):
        raise ValueError("a histogram needs strictly increasing edges, one more than its masses")
    if np.any(p < 0) or not p.sum() > 0:
        raise ValueError("histogram masses must be non-negative with a positive total")
    keep = p > 0
    c = np.concatenate([[0.0], np.cumsum(p[keep])])
    return Quantiles(c / c[-1], e[:-1][keep], e[1:][keep])


def as_quantiles(dist) -> Quantiles:
    """:class:`Quantiles` of samples (an array, or ``(values, log_w)``), a histogram (``{"edges", "p"}`` or a
    :class:`Histogram1D`), or a :class:`Quantiles` itself."""
    if isinstance(dist, Quantiles):
        return dist
    if isinstance(dist, Histogram1D):
        return histogram_quantiles(dist.edges, dist.p_b)
    if isinstance(dist, dict):
        return histogram_quantiles(dist["edges"], dist["p"])
    if isinstance(dist, tuple) and len(dist) == 2:
        return sample_quantiles(dist[0], dist[1])
    return sample_quantiles(dist)


def _abs_integral(d0: np.ndarray, d1: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``int |d|`` over segments of ``length`` on which ``d`` runs linearly from ``d0`` to ``d1``."""
    same = d0 * d1 >= 0
    denom = np.where(same, 1.0, np.abs(d0 - d1))
    return length * np.where(same, np.abs(d0 + d1) / 2, (d0**2 + d1**2) / (2 * denom))


def wasserstein(a, b, p: int = 1) -> float:
    """1-D Wasserstein-``p`` distance (``p`` = 1 or 2) between ``a`` and ``b`` (anything :func:`as_quantiles`
    takes), integrated exactly over ``q``."""
    if p not in (1, 2):
        raise ValueError(f"wasserstein: p must be 1 or 2, got {p}")
    qa, qb = as_quantiles(a), as_quantiles(b)
    s = np.unique(np.concatenate([qa.q, qb.q]))
    s0, s1 = s[:-1], s[1:]
    length = s1 - s0
    d0 = qa.at(s0, right=True) - qb.at(s0, right=True)
    d1 = qa.at(s1, right=False) - qb.at(s1, right=False)
    if p == 1:
        return float(np.sum(_abs_integral(d0, d1, length)))
    return float(math.sqrt(max(float(np.sum(length * (d0**2 + d0 * d1 + d1**2) / 3)), 0.0)))


def histogram_tv(p, q) -> float:
    """Total variation ``1/2 sum_b |p_b - q_b|`` between two histograms on the same bins (each normalised)."""
    p, q = as_float64(p).reshape(-1), as_float64(q).reshape(-1)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {p.shape} vs {q.shape}")
    if not (p.sum() > 0 and q.sum() > 0):
        raise ValueError("a histogram has no mass")
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def distance_samples(x, log_w=None) -> tuple[np.ndarray, np.ndarray | None]:
    """All interparticle distances of ``x: (B, n, dim)`` as weighted samples ``(d (B * n_pairs,), log_w)``: each
    configuration's distances share its weight."""
    d = pairwise_distances(x)
    lw = None if log_w is None else np.repeat(as_float64(log_w).reshape(-1), d.shape[1])
    return d.reshape(-1), lw


def particle_metrics(
    u,
    x,
    log_w=None,
    ref_energy=None,
    ref_distances=None,
    distance_edges=None,
    prefix: str = "",
) -> dict:
    """Energy W1/W2 and interatomic-distance W2/TV of weighted samples against a reference.

    Parameters
    ----------
    u : (B,) reduced energies of the samples; x : (B, n, dim) the samples; log_w : (B,) or None
    ref_energy : reference energies (samples, ``(values, log_w)`` or a histogram), or None
    ref_distances : reference distances: configurations ``(M, n, dim)`` or a histogram ``{"edges", "p"}``
    distance_edges : the fixed bins of the distance TV when the reference is configurations (default 0..6 by
        0.05); a histogram reference brings its own bins
    prefix : put before every key (e.g. ``"summary_"`` for the comparison with a reference summary)

    Returns ``{energy_w1, energy_w2}`` and ``{distance_w2, distance_tv, distance_mass_outside_bins}`` for the
    references given; ``energy_w1_unweighted`` / ``energy_w2_unweighted`` score the samples without their
    weights. Samples with a non-finite energy get weight zero.
    """
    out: dict = {}
    u = as_float64(u).reshape(-1)
    ok = np.isfinite(u)
    lw_eq = np.where(ok, 0.0, -np.inf)
    lw = lw_eq if log_w is None else np.where(ok, as_float64(log_w).reshape(-1), -np.inf)
    if ref_energy is not None:
        u0 = np.where(ok, u, 0.0)
        for tag, w in (("", lw), ("_unweighted", lw_eq)):
            out[f"{prefix}energy_w1{tag}"] = wasserstein((u0, w), ref_energy, 1)
            out[f"{prefix}energy_w2{tag}"] = wasserstein((u0, w), ref_energy, 2)
    if ref_distances is not None:
        if isinstance(ref_distances, Histogram1D):
            ref_distances = {"edges": ref_distances.edges, "p": ref_distances.p_b}
        if isinstance(ref_distances, dict):
            ref_q = as_quantiles(ref_distances)
            edges, ref_p = as_float64(ref_distances["edges"]), as_float64(ref_distances["p"])
        else:
            ref_d = distance_samples(ref_distances)[0]
            ref_q = as_quantiles(ref_d)
            edges = np.linspace(0.0, 6.0, 121) if distance_edges is None else as_float64(distance_edges)
            ref_p = weighted_histogram_1d(ref_d, None, bins=edges).p_b
        d, dlw = distance_samples(as_float64(x)[ok], lw[ok])
        out[f"{prefix}distance_w2"] = wasserstein((d, dlw), ref_q, 2)
        h = weighted_histogram_1d(d, dlw, bins=edges)
        out[f"{prefix}distance_tv"] = histogram_tv(h.p_b, ref_p) if h.p_b.sum() > 0 else 1.0
        out[f"{prefix}distance_mass_outside_bins"] = float(1.0 - h.mass_in_range)
    return out


#: fixed bins (reduced length units) of the distance TV against a run's own reference configurations
DISTANCE_EDGES = np.linspace(0.0, 8.0, 161)
#: at most this many reference configurations (evenly strided) enter the distance metrics
MAX_REFERENCE_CONFIGS = 4000
#: a system's reference summary (``benchmarks/lj_reference.py``), looked up beside its ``system.yaml``
SUMMARY_FILE = "reference_summary.json"


def _renamed(m: dict, prefix: str) -> dict:
    """``energy_w1`` -> ``<prefix>energy_w1_reweighted`` (the run's weights); ``*_unweighted`` keep their tag."""
    return {prefix + (k if k.endswith("_unweighted") or "mass" in k else k + "_reweighted"): v for k, v in m.items()}


def summary_matches(summary: dict, system) -> str | None:
    """Why a reference summary does not describe ``system`` (particle count, ``pair_sum``, temperature), or
    None when it does."""
    sysd = summary.get("system") or {}
    target = getattr(system.target, "inner", system.target)  # a tempered target: the pair sum of the one inside
    want = {
        "n_particles": system.target.event_shape[0],
        "pair_sum": getattr(target, "pair_sum", None),
        "temperature": system.temperature,
    }
    for k, v in want.items():
        if k not in sysd:
            return f"the summary does not state its {k}"
        if v is not None and (sysd[k] != v if isinstance(v, str) else not math.isclose(sysd[k], v, rel_tol=1e-9)):
            return f"{k} {sysd[k]!r} in the summary, {v!r} in the system"
    return None


def find_reference_summary(system) -> tuple[dict | None, str | None]:
    """The reference summary beside a system's ``system.yaml`` (:data:`SUMMARY_FILE`) if it describes the
    system: ``(summary, None)``; ``(None, why)`` when one exists but does not match; ``(None, None)`` without one."""
    if getattr(system, "path", None) is None:
        return None, None
    summary = load_reference_summary(system.path.parent / SUMMARY_FILE)
    if summary is None:
        return None, None
    why = summary_matches(summary, system)
    return (None, why) if why else (summary, None)


def run_particle_metrics(system, x, log_w, u, ref_x=None, ref_u=None, summary: dict | None = None) -> dict:
    """The analyze stage's particle metrics of a run's samples ``x: (B, dim)`` with log-weights and reduced
    energies ``u``: against the run's own reference data (``ref_u`` energies, ``ref_x`` configurations; keys
    ``energy_w2_reweighted``, ``distance_w2_reweighted``, ``distance_tv_reweighted``, ...) and against a reference
    summary (keys ``summary_*``; the summary's mean energy as ``summary_mean_energy_kT``). Pass only references
    of the same ensemble as the samples."""
    n, sd = system.target.event_shape
    xs = as_float64(x).reshape(-1, n, sd)
    out: dict = {}
    if ref_u is not None or ref_x is not None:
        rx = None
        if ref_x is not None:
            rx = as_float64(ref_x).reshape(-1, n, sd)
            rx = rx[:: max(1, math.ceil(len(rx) / MAX_REFERENCE_CONFIGS))]
        m = particle_metrics(u, xs, log_w, ref_energy=ref_u, ref_distances=rx, distance_edges=DISTANCE_EDGES)
        out.update(_renamed(m, ""))
    if summary is not None:
        m = particle_metrics(u, xs, log_w, ref_energy=summary["energy_hist"], ref_distances=summary["distance_hist"])
        out.update(_renamed(m, "summary_"))
        out["summary_mean_energy_kT"] = summary.get("mean_energy_kT")
    return out


def load_reference_summary(path: str | Path) -> dict | None:
    """A reference summary JSON (``benchmarks/lj_reference.py``): its ``energy_hist`` and ``distance_hist``
    (``{"edges", "p"}``) and scalars; None if the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    for key in ("energy_hist", "distance_hist"):
        h = d.get(key)
        if not isinstance(h, dict) or "edges" not in h or "p" not in h:
            raise ValueError(f"{path}: expected {key!r} with 'edges' and 'p'")
    return d


__all__ = [
    "Quantiles",
    "as_quantiles",
    "distance_samples",
    "find_reference_summary",
    "histogram_quantiles",
    "histogram_tv",
    "load_reference_summary",
    "particle_metrics",
    "run_particle_metrics",
    "sample_quantiles",
    "summary_matches",
    "wasserstein",
]
