"""The molecule part of the analyze stage (:func:`boltzdiff.pipeline.analyze.analyze_run` calls it for a
``kind: molecule`` run): ΔF between the named states of the system's spec, the free-energy profile F(CV) over
one of its dihedrals, the comparison with the MD reference data (PMF RMSE, Ramachandran Jensen-Shannon) and
their figures. The numerics are the pure functions of :mod:`boltzdiff.analysis`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from boltzdiff.analysis.free_energy import (
    free_energy_profile,
    free_energy_profile_from_probabilities,
    jensen_shannon,
    pmf_rmse,
    two_state_delta_f,
    weighted_histogram_2d,
)
from boltzdiff.analysis.pipeline_analysis import PROFILE_EDGES, delta_f_over_models
from boltzdiff.analysis.report import plot_free_energy_profiles, plot_ramachandran
from boltzdiff.analysis.states import as_two_state, delta_f_states, free_energy_spec, state_mask
from boltzdiff.analysis.weights import jackknife_se, leave_one_run_out, top_lineage_share
from boltzdiff.io import save_npy

log = logging.getLogger(__name__)


def states_note(system, a: str, b: str) -> str:
    """One sentence for report.md: which states ΔF is between, as the system's spec declares them."""
    states = system.spec.get("states") or {}

    def show(name: str) -> str:
        if name not in states:
            return f"`{name}` (the complement)"
        ivs = ", ".join(
            f"{lo:g} < {cv} < {hi:g}" if lo < hi else f"{cv} > {lo:g} or < {hi:g}"
            for cv, (lo, hi) in states[name].items()
        )
        return f"`{name}` ({ivs} rad)"

    return f"ΔF = -ln[P({a}) / P({b})] between the system's states {show(a)} and {show(b)}."


def _state_rao_blackwell(system, x, fe, cv_of, n_angles: int, u, r: dict, progress: bool = True):
    """Each particle's probability of the ΔF state given its rotation orbit about the central bond of the one
    dihedral that defines it (:func:`~boltzdiff.analysis.torsion_rb.torsion_state_probability`), and, where the
    profile is over that dihedral, its orbit distribution over the profile's bins
    (:data:`~boltzdiff.analysis.pipeline_analysis.PROFILE_EDGES`; else None). ``fe``: the system's
    :class:`~boltzdiff.analysis.states.FreeEnergySpec` (its ``rotation_interval`` set); ``cv_of``:
    configurations -> that CV as the analysis reads it (mirror images mapped back). Records how in ``r``."""
    from boltzdiff.analysis.torsion_rb import torsion_state_probability

    iv = fe.rotation_interval
    n = system.target.event_shape[0]
    bonds = [(b[0].index, b[1].index) for b in system.topology.bonds]
    # an interval across +-pi: integrate its complement, an ordinary interval, and take one minus it
    lo, hi = (iv.hi, iv.lo) if iv.wraps else (iv.lo, iv.hi)
    res = torsion_state_probability(
        system.target.energy,
        x,
        bonds,
        n,
        system.spec["cvs"][iv.cv],
        cv_of,
        lo,
        hi,
        n_angles=n_angles,
        u0=u,
        progress=progress,
        profile_edges=PROFILE_EDGES if fe.profile == iv.cv else None,
    )
    r.update(
        delta_f_estimator=(
            f"{iv.cv}-basin probability of each particle integrated over its rotation about the {iv.cv} bond "
            f"({n_angles} angles; boltzdiff.analysis.torsion_rb)"
        ),
        rao_blackwell_angles=n_angles,
        rao_blackwell_evals=res.n_evals,
        rao_blackwell_nonfinite=res.n_nonfinite,
    )
    if res.n_unresolved:
        log.warning(
            "analyze: %d particles had no finite energy on their %s orbit; their count kept", res.n_unresolved, iv.cv
        )
    return (1.0 - res.p if iv.wraps else res.p), res.profile_p


def analyze_molecule(
    system,
    out: Path,
    x: np.ndarray,
    log_w: np.ndarray,
    ref_x,
    n_bootstrap: int,
    figs: list,
    same_ensemble: bool = True,
    run_of: np.ndarray | None = None,
    lineage: np.ndarray | None = None,
    model_of: np.ndarray | None = None,
    u: np.ndarray | None = None,
    rb_angles: int = 72,
    progress: bool = True,
) -> dict:
    """ΔF between the named states of the system's spec, the profile F(CV) and the Ramachandran comparison
    (``states``, ``free_energy``, :mod:`boltzdiff.analysis.states`; nothing without states).
    ``same_ensemble=False`` (reference data from another temperature): the data's ΔF is still reported
    (``md_delta_f_kT``, the raw-data estimate) but no PMF RMSE / Jensen-Shannon against it. ``rb_angles`` > 0
    and a state defined by one dihedral against the rest: ΔF from each particle's probability of the state
    integrated over its rotation about that dihedral's bond on that many angles
    (:mod:`boltzdiff.analysis.torsion_rb`; ``u``: the particles' energies), with the plain count kept as
    ``delta_f_indicator_kT``; otherwise the count alone (``delta_f_estimator`` says which).

    The profile's keys are named after its CV (``f_<cv>_kT``, ``f_<cv>_se_kT``, ``f_<cv>_edges``,
    ``f_<cv>_estimator``) and ``f_cv`` names it; ``delta_f_state`` and ``delta_f_against`` name the states."""
    from boltzdiff.systems import system_cv_values

    fe = free_energy_spec(system.spec, str(system.path or system.name))
    if fe is None:
        return {}
    cvs = system.spec["cvs"]
    n = system.target.event_shape[0]
    reference = ref_x.reshape(-1, n, 3) if ref_x is not None else None
    read = system_cv_values(system, x, reference=reference)
    values = read.values
    r: dict = {}
    if read.n_mirrored is not None:
        r["n_mirrored"] = read.n_mirrored
    r.update(delta_f_state=fe.state.name, delta_f_against=fe.against_name, f_cv=fe.profile)

    def masks(v: dict) -> tuple[np.ndarray, np.ndarray | None]:
        return state_mask(v, fe.state), (None if fe.against is None else state_mask(v, fe.against))

    cv_p = values[fe.profile]
    rng = np.random.default_rng(0)
    in_a, in_b = masks(values)
    member = in_a
    prof_prob = None  # each particle's orbit distribution over the F(CV) bins, with rb_angles
    iv = fe.rotation_interval
    if rb_angles and system.topology is not None and iv is not None:

        def cv_of(y):  # the same reading of the CV for the rotated copies
            return system_cv_values(system, y, [iv.cv], reference=reference).values[iv.cv]

        member, prof_prob = _state_rao_blackwell(system, x, fe, cv_of, rb_angles, u, r, progress)
        # kept beside samples.npz (same order) so that pooled estimates over run directories
        # (`boltzdiff pool`) reuse it instead of paying the energies again
        save_npy(out / "basin_probability.npy", member)
        r["delta_f_indicator_kT"] = float(delta_f_states(in_a, in_b, log_w, n_bootstrap=0).delta_f)
    elif fe.against is None:
        r["delta_f_estimator"] = "weighted count of the particles in the basin"
    else:
        r["delta_f_estimator"] = "weighted count of the particles in each state"
    if rb_angles and iv is None:
        r["delta_f_estimator"] += (
            " (no rotation integral: that needs one state defined by one dihedral, against the rest)"
        )
    # ΔF = -ln[P(A) / P(B)] as a two-state estimate of (share of A, weight): every estimate below is the same
    # function of them whether B is A's complement or a second state
    member, log_w_df = as_two_state(member, in_b, log_w)

    def est(m):
        return two_state_delta_f(member[m], log_w_df[m], n_bootstrap=0).delta_f

    df = two_state_delta_f(member, log_w_df, n_bootstrap=n_bootstrap, rng=rng)
    r.update(delta_f_kT=float(df.delta_f), delta_f_se_kT=float(df.se), delta_f_se_method="bootstrap over particles")
    if lineage is not None and len(lineage) == len(cv_p):
        # resampled copies of one ancestor are not independent: draw whole SMC lineages (the particle
        # bootstrap's SE was 7-25x below the spread of independent runs; docs/decisions.md#smc-runs)
        dl = two_state_delta_f(member, log_w_df, n_bootstrap=n_bootstrap, rng=rng, clusters=lineage)
        r.update(
            delta_f_se_kT=float(dl.se),
            delta_f_se_particles_kT=float(df.se),
            delta_f_se_method=f"bootstrap over {np.unique(lineage).size} SMC lineages",
        )
    if lineage is not None and len(lineage) == len(cv_p):
        # how many independent SMC paths state A's mass rests on (its estimate is only as good as that
        # count; docs/decisions.md#strata-share): distinct lineages among its particles, per run
        runs = np.zeros(len(cv_p), dtype=int) if run_of is None else np.asarray(run_of)
        counts = [int(np.unique(lineage[(runs == k) & in_a]).size) for k in np.unique(runs)]
        # how much of each run's weight one ancestor's copies carry: a run's populations are only as good as
        # its few heaviest paths (13-73 % per run on the full preset; docs/decisions.md#n-models)
        top = [top_lineage_share(log_w[runs == k], lineage[runs == k]) for k in np.unique(runs)]
        r.update(basin_lineages=min(counts), basin_lineages_runs=counts, top_lineage_share_runs=top)
    if run_of is not None and np.unique(run_of).size > 1:
        # resampled SMC particles are not independent and their weights are heavy-tailed: the particle
        # bootstrap understated the spread between independent SMC runs ~5x (benchmarks/RESULTS.md), so the
        # standard error comes from the runs (delete-one-run jackknife of the pooled estimate)
        loo = leave_one_run_out(est, run_of)
        r.update(
            delta_f_se_kT=jackknife_se(loo),
            delta_f_loo_kT=loo.tolist(),
            delta_f_se_bootstrap_kT=float(df.se),
            delta_f_se_method=f"jackknife over {np.unique(run_of).size} independent SMC runs",
            delta_f_runs_kT=[float(est(run_of == k)) for k in np.unique(run_of)],
        )
    if model_of is not None and len(model_of) == len(cv_p) and np.unique(model_of).size > 1:
        r.update(delta_f_over_models(member, log_w_df, model_of, run_of, se_runs=r.get("delta_f_se_kT")))
    c = fe.profile
    prof_count = free_energy_profile(
        cv_p, log_w, bins=PROFILE_EDGES, range=(-np.pi, np.pi), n_bootstrap=n_bootstrap, rng=rng
    )
    if prof_prob is not None:
        # every particle spreads its weight over its orbit (the same energies as ΔF's): a Rao-Blackwellised
        # profile, less noisy where few particles sit (a sparse basin, the barriers)
        prof = free_energy_profile_from_probabilities(prof_prob, PROFILE_EDGES, log_w, n_bootstrap, rng)
        profiles = {f"reweighted model ({c} integrated)": prof, "reweighted model (count)": prof_count}
        r[f"f_{c}_estimator"] = f"each particle's {c} distribution over its rotation about the {c} bond"
        save_npy(out / f"{c}_profile_probability.npy", prof_prob.astype(np.float32))
    else:
        prof = prof_count
        profiles = {"reweighted model": prof}
        r[f"f_{c}_estimator"] = f"weighted histogram of the particles' {c}"
    r[f"f_{c}_kT"] = [None if not np.isfinite(v) else float(v) for v in prof.f_b]
    r[f"f_{c}_se_kT"] = [None if not np.isfinite(v) else float(v) for v in prof.se_b]
    r[f"f_{c}_edges"] = PROFILE_EDGES.tolist()
    names = list(cvs)
    rama = names[:2] if len(names) >= 2 else None  # every cv is a dihedral: the first two make the map
    if ref_x is not None:
        values_r = system_cv_values(system, ref_x, mirror=False).values
        cv_r = values_r[c]
        a_r, b_r = masks(values_r)
        df_r = delta_f_states(a_r, b_r, None, n_bootstrap=n_bootstrap, rng=rng, block_length=max(1, len(cv_r) // 50))
        r.update(md_delta_f_kT=float(df_r.delta_f), md_delta_f_se_kT=float(df_r.se))
        prof_r = free_energy_profile(
            cv_r,
            None,
            bins=PROFILE_EDGES,
            range=(-np.pi, np.pi),
            n_bootstrap=n_bootstrap,
            rng=rng,
            block_length=max(1, len(cv_r) // 50),
        )
        profiles["MD" if same_ensemble else "MD data (other temperature)"] = prof_r
        if same_ensemble:
            cmp = pmf_rmse(prof.f_b, prof_r.f_b, weights=prof_r.p_b)
            r["pmf_rmse_kT"] = float(cmp.rmse)
            if prof is not prof_count:
                r["pmf_rmse_count_kT"] = float(pmf_rmse(prof_count.f_b, prof_r.f_b, weights=prof_r.p_b).rmse)
            if rama:
                rng2 = ((-np.pi, np.pi), (-np.pi, np.pi))
                h_m = weighted_histogram_2d(values[rama[0]], values[rama[1]], log_w, bins=36, range=rng2)
                h_r = weighted_histogram_2d(values_r[rama[0]], values_r[rama[1]], None, bins=36, range=rng2)
                r["ramachandran_js"] = float(jensen_shannon(h_m.p_xy, h_r.p_xy))
        if rama:
            figs.append(
                (
                    f"Ramachandran plot ({rama[0]}, {rama[1]}): MD vs reweighted model",
                    plot_ramachandran(
                        values_r[rama[0]],
                        values_r[rama[1]],
                        values[rama[0]],
                        values[rama[1]],
                        log_w,
                        out / "ramachandran.png",
                    ),
                )
            )
    shade = next((iv for iv in fe.state.intervals if iv.cv == c and not iv.wraps), None)
    figs.append(
        (
            f"F({c}) with bootstrap bands",
            plot_free_energy_profiles(
                profiles,
                out / f"free_energy_{c}.png",
                xlabel=rf"$\{c}$ (rad)" if c in ("phi", "psi", "chi", "omega") else f"{c} (rad)",
                basin=None if shade is None else (shade.lo, shade.hi),
            ),
        )
    )
    return r
