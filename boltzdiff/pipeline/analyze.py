"""The analyze stage of ``boltzdiff run``: reads a run directory (pipeline.json, samples, reference data, the
trainings' summaries) and writes ESS, weighted observables, free energies, the comparison with the reference
data, plots and a one-page report (``analysis.json``, ``*.png``, ``report.md``). The numerics are the pure
functions of :mod:`boltzdiff.analysis`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from boltzdiff.analysis.free_energy import (
    distance_histogram,
    free_energy_profile,
    free_energy_profile_from_probabilities,
    jensen_shannon,
    pmf_rmse,
    two_state_delta_f,
    wasserstein_1,
    weighted_histogram_2d,
)
from boltzdiff.analysis.pipeline_analysis import (
    PROFILE_EDGES,
    delta_f_over_models,
    over_runs,
    runs_table_md,
    target_energies,
)
from boltzdiff.analysis.report import (
    plot_distance_histograms,
    plot_energy_histograms,
    plot_ess_trace,
    plot_free_energy_profiles,
    plot_ramachandran,
    write_json_atomic,
    write_report_md,
)
from boltzdiff.analysis.states import as_two_state, delta_f_states, free_energy_spec, state_mask
from boltzdiff.analysis.weights import (
    clean_log_weights,
    jackknife_se,
    leave_one_run_out,
    pool_runs,
    top_lineage_share,
    weighted_mean,
)
from boltzdiff.errors import ConfigError
from boltzdiff.pipeline.rundir import read_pipeline_json, reference_starts, reference_temperature
from boltzdiff.pipeline.settings import kind_of
from boltzdiff.samplers.resampling import kish_ess

log = logging.getLogger(__name__)


def load_samples(out: Path):
    """The sample stage's particles and their log-weights: ``(x, log_w, run_of, summary, cleaned)``.

    Non-finite weights are mapped to zero weight (``cleaned`` counts them); with several independent SMC runs
    (``sample.n_runs``) the weights are pooled, run ``r`` weighted by its normalising-constant estimate, and
    ``run_of`` labels each particle's run (else None)."""
    out = Path(out)
    with np.load(out / "samples.npz") as z:
        x, log_w_raw = z["x"], z["log_w"]
        run_of = z["run"] if "run" in z.files else None
    summ = json.loads((out / "samples.json").read_text())
    cw = clean_log_weights(log_w_raw)
    log_w = cw.log_w_n
    if run_of is not None:
        log_w = pool_runs(log_w, run_of, [r["log_Z"] for r in summ["runs"]])
    return x, log_w, run_of, summ, cw


def analyze_run(
    run_dir: str | Path, system=None, n_bootstrap: int = 200, rb_angles: int = 72, progress: bool = True
) -> dict:
    """Analyse a run directory (see :mod:`boltzdiff.pipeline.rundir`); returns and writes ``analysis.json``.
    ``rb_angles``: a molecule whose ΔF state is defined by one dihedral (its spec's ``states``) integrates each
    particle's probability of the state over that many rotations about that dihedral's bond (0: count the
    particles in the state); the energies it costs are added to ``n_target_evals``."""
    from boltzdiff.systems import load_system

    out = Path(run_dir)
    meta = read_pipeline_json(out)
    if meta is None:
        raise ConfigError(f"analyze: {out} is not a `boltzdiff run` directory (no pipeline.json)")
    system = system or load_system(meta["system_path"], meta.get("variant"))
    if not (out / "samples.npz").exists() or not (out / "samples.json").exists():
        raise ConfigError(f"analyze: {out} has no samples.npz; run the sample stage first (`boltzdiff run` resumes)")
    x, log_w, run_of, summ, cw = load_samples(out)
    kind = kind_of(system)
    res: dict = dict(
        system=system.name,
        variant=system.variant,
        preset=meta.get("preset"),
        kind=kind,
        n_samples=int(len(x)),
        ess=kish_ess(log_w),
        n_zero_weight=int(cw.n_zero + cw.n_invalid),
        n_target_evals=int(summ.get("n_target_evals", 0)),
        n_model_evals=int(summ.get("n_model_evals", 0)),
        sample_wall_s=summ.get("wall_s"),
        # the final ESS is measured after the last resampling (1 if SMC resampled at its last step);
        # ess_final_step is the ESS of the last step's weights before any resampling, the lowest ESS along the
        # way and the number of resamplings say how much the particle system degenerated
        ess_final_step=(
            min(float(r["ess_final_step"]) for r in summ["runs"])  # several SMC runs: the lowest
            if summ.get("runs") and all("ess_final_step" in r for r in summ["runs"])
            else float(summ["ess_trace"][-1])
            if summ.get("ess_trace")
            else None
        ),
        ess_min=summ.get("ess_min"),
        n_resample=summ.get("n_resample"),
        n_bridge=summ.get("n_bridge"),
        # how many distinct particles at the first resampling the final ones descend from (the fewest of the
        # SMC runs); what a quantity decided at the noisy levels, like a basin's mass, rests on
        n_lineages=(
            min(int(r["n_lineages"]) for r in summ["runs"])
            if summ.get("runs") and all("n_lineages" in r for r in summ["runs"])
            else summ.get("n_lineages")
        ),
        # sweeps at the exact target after the bridge (sample.final_mcmc_steps) and their torsion moves'
        # acceptance, mean over the SMC runs (None without them)
        n_final_mcmc=int(over_runs(summ, "n_final_mcmc", max) or 0),
        # sample.final_resample: the particles were resampled after the bridge, so `ess` reads ~1 and the
        # bridge's weights are judged by ess_final_step
        final_resampled=over_runs(summ, "ess_before_final_resample", min) is not None,
        final_torsion_acceptance=over_runs(summ, "final_torsion_acceptance", np.mean),
    )
    train_summaries = [out / "train" / "train_summary.json"]
    if (out / "train_models").is_dir():  # train.n_models > 1: the further models' training
        train_summaries += sorted((out / "train_models").glob("*/train_summary.json"))
    # summed over the models (with train.n_models > 1 they may have trained side by side, so the stage took less)
    walls = [json.loads(f.read_text())["wall_s"] for f in train_summaries if f.exists()]
    if walls:
        res["train_wall_s"] = float(sum(walls))
    if summ.get("n_models"):
        res["n_models"] = int(summ["n_models"])
    figs = []
    if summ.get("ess_trace"):
        figs.append(("ESS over the SMC steps", plot_ess_trace(np.array(summ["ess_trace"]), out / "ess_trace.png")))
    target = system.target
    u = target_energies(target, x)
    finite = np.isfinite(u)
    if (~finite).any():
        log.warning("analyze: %d samples have non-finite target energy; weight set to zero", (~finite).sum())
        log_w = np.where(finite, log_w, -np.inf)
        res["n_zero_weight"] += int((~finite & np.isfinite(cw.log_w_n)).sum())
    res["mean_energy_kT"] = weighted_mean(np.where(finite, u, 0.0), log_w)
    res["ess"] = kish_ess(log_w)

    if kind == "analytic":
        from boltzdiff.samplers.diagnostics import mode_report

        rep = mode_report(target, torch.as_tensor(x), torch.as_tensor(log_w))
        res.update(
            mode_weights=rep["estimated"],
            true_mode_weights=rep["exact"],
            mode_weight_error=rep["max_abs_error"],
            mode_weight_tv=rep["tv"],
        )
        figs.append(
            (
                "energy histograms: exact samples, reweighted SMC",
                plot_energy_histograms(
                    {
                        "exact": (
                            target_energies(
                                target,
                                target.sample(len(x), torch.Generator().manual_seed(7)).double().numpy(),
                            ),
                            None,
                        ),
                        "model (unweighted)": (u, None),
                        "reweighted": (u, log_w),
                    },
                    out / "energy_hist.png",
                ),
            )
        )
    else:
        ref_pos = out / "reference" / "positions.npy"
        ref_x = np.load(ref_pos).reshape(-1, target.dim) if ref_pos.exists() else None
        ref_u = np.load(out / "reference" / "energies.npy") if (out / "reference" / "energies.npy").exists() else None
        ref_t = reference_temperature(out)
        hot = ref_t is not None and system.temperature is not None and abs(ref_t - system.temperature) > 1e-6
        # MD replicas from several start structures (reference.starts): their populations are set by the
        # starts, so the data are no Boltzmann sample to score against either
        starts = reference_starts(out)
        seeded = len(set(starts)) > 1
        if seeded:
            res["reference_starts"] = starts
        if hot:
            # training data from another temperature: its reduced energies are U / kT_ref; express them in the
            # target's kT for the plot, and do not score the samples against them (different ensembles)
            res["reference_temperature_K"] = ref_t
            ref_u = None if ref_u is None else ref_u * ref_t / system.temperature
        if ref_u is not None:
            res["reference_mean_energy_kT"] = float(np.mean(ref_u))
            if not (hot or seeded):
                res["energy_w1_reweighted"] = wasserstein_1(u[finite], ref_u, log_w[finite])
                res["energy_w1_unweighted"] = wasserstein_1(u[finite], ref_u)
            figs.append(
                (
                    "reduced energy: reference, model samples, reweighted",
                    plot_energy_histograms(
                        {
                            (
                                f"reference data ({ref_t:g} K)"
                                if hot
                                else ("reference data (seeded replicas)" if seeded else "reference")
                            ): (ref_u, None),
                            "model (unweighted)": (u, None),
                            "reweighted": (u, log_w),
                        },
                        out / "energy_hist.png",
                    ),
                )
            )
        if kind == "molecule":
            res.update(
                _molecule(
                    system,
                    out,
                    x,
                    log_w,
                    ref_x,
                    n_bootstrap,
                    figs,
                    same_ensemble=not (hot or seeded),
                    run_of=run_of,
                    lineage=_lineage(out),
                    model_of=_model_labels(out),
                    u=u,
                    rb_angles=rb_angles,
                    progress=progress,
                )
            )
            res["n_target_evals"] += int(res.get("rao_blackwell_evals", 0))
        else:
            n, sd = target.event_shape
            h_s = distance_histogram(x.reshape(-1, n, sd), log_w, bins=80)
            hists = {"reweighted": h_s}
            if ref_x is not None:
                hists["reference"] = distance_histogram(ref_x.reshape(-1, n, sd), None, bins=h_s.edges)
            figs.append(("interatomic distances", plot_distance_histograms(hists, out / "distances.png")))
    write_json_atomic(out / "analysis.json", res)
    numbers = {k: v for k, v in res.items() if not isinstance(v, (list, dict))}
    notes = (
        "Weighted quantities use the SMC importance weights of particles annealed to the exact "
        "target energy; `ess` is the normalised Kish ESS."
    )
    if res.get("delta_f_state"):
        notes += " " + _states_note(system, res["delta_f_state"], res["delta_f_against"])
    if res.get("n_final_mcmc"):
        notes += (
            f" After the bridge every particle made {res['n_final_mcmc']} MCMC sweeps at the exact target"
            + (
                f" (each a torsion move, {res['final_torsion_acceptance']:.0%} accepted, and a MALA step)"
                if res.get("final_torsion_acceptance") is not None
                else ""
            )
            + "; they leave the target invariant, so the weights stay as the bridge made them."
        )
    write_report_md(
        out / "report.md",
        f"boltzdiff run: {system.name} ({meta.get('preset')})",
        numbers,
        figs,
        notes="\n\n".join(t for t in (notes, runs_table_md(res)) if t),
    )
    return res


def _states_note(system, a: str, b: str) -> str:
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


def _model_labels(out: Path) -> np.ndarray | None:
    """Which trained model each particle was sampled from (``samples.npz`` ``model``; None with one model)."""
    with np.load(out / "samples.npz") as z:
        return np.asarray(z["model"]) if "model" in z.files else None


def _lineage(out: Path) -> np.ndarray | None:
    """The SMC lineage label of each particle (``samples.npz`` ``lineage``), or None for older runs."""
    with np.load(out / "samples.npz") as z:
        return np.asarray(z["lineage"]) if "lineage" in z.files else None


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


def _molecule(
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
        tmp = out / "basin_probability.tmp.npy"
        np.save(tmp, member)
        tmp.replace(out / "basin_probability.npy")
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
        tmp = out / f"{c}_profile_probability.tmp.npy"
        np.save(tmp, prof_prob.astype(np.float32))
        tmp.replace(out / f"{c}_profile_probability.npy")
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
