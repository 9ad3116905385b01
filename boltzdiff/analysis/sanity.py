"""Sanity gates: refuse to present a degenerate run's numbers as a result.

An importance-weighted estimate can look precise and be meaningless: after a final resampling every particle
carries the same weight, so the Kish ESS reads 1 even when all of them descend from one ancestor. These checks
read what the analysis already measured (see :func:`boltzdiff.pipeline.analyze_run`) and return the reasons a
run's estimates should not be trusted; ``boltzdiff run`` then exits non-zero unless ``--allow-degenerate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SanityLimits:
    """Where a run counts as degenerate (each a documented floor, not a tuned number)."""

    #: fewest distinct ancestors (at the first resampling) the final particles of an SMC run may descend from
    min_lineages: int = 2
    #: lowest normalised Kish ESS of the last step's weights, before any final resampling
    min_ess_final_step: float = 1e-3
    #: the weighted mean energy may lie at most this many reference ranges (max - min of the reference's
    #: energies) outside that range
    energy_range_margin: float = 1.0


def energy_range(u_ref: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of the finite reference energies ``u_ref: (m,)`` (kT)."""
    u = np.asarray(u_ref, dtype=np.float64)
    u = u[np.isfinite(u)]
    if u.size == 0:
        raise ValueError("energy_range: no finite reference energy")
    return float(u.min()), float(u.max())


def sanity_flags(res: dict, limits: SanityLimits | None = None) -> list[str]:
    """The reasons (one line each) why the analysis ``res`` (analysis.json's mapping) describes a degenerate run;
    empty when none applies. Reads ``n_lineages``, ``ess_final_step``, ``mean_energy_kT``, ``ess`` and
    ``reference_energy_range_kT`` where present (a key that is absent is not checked)."""
    lim = limits or SanityLimits()
    out = []
    lin = res.get("n_lineages")
    if lin is not None and int(lin) < lim.min_lineages:
        out.append(
            f"n_lineages = {int(lin)}: the particles of an SMC run descend from fewer than {lim.min_lineages} "
            f"ancestors, so its weighted estimates rest on one path"
        )
    ess_last = res.get("ess_final_step")
    if ess_last is not None and not (float(ess_last) >= lim.min_ess_final_step):
        out.append(
            f"ess_final_step = {float(ess_last):.2g} < {lim.min_ess_final_step:g}: the weights before the final "
            f"resampling were carried by a handful of particles"
        )
    ess = res.get("ess")
    if ess is not None and not math.isfinite(float(ess)):
        out.append("ess is not finite: no particle has a usable weight")
    mean_u = res.get("mean_energy_kT")
    rng = res.get("reference_energy_range_kT")
    if mean_u is not None and rng is not None:
        lo, hi = float(rng[0]), float(rng[1])
        pad = lim.energy_range_margin * max(hi - lo, 1.0)
        if not (math.isfinite(float(mean_u)) and lo - pad <= float(mean_u) <= hi + pad):
            out.append(
                f"mean_energy_kT = {float(mean_u):.4g} lies far outside the reference's energies "
                f"[{lo:.4g}, {hi:.4g}] kT"
            )
    return out
