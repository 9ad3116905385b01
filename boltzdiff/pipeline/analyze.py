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

from boltzdiff.analysis.free_energy import distance_histogram, wasserstein_1
from boltzdiff.analysis.particles import find_reference_summary, run_particle_metrics
from boltzdiff.analysis.pipeline_analysis import over_runs, runs_table_md, target_energies
from boltzdiff.analysis.report import (
    plot_distance_histograms,
    plot_energy_histograms,
    plot_ess_trace,
    write_json_atomic,
    write_report_md,
)
from boltzdiff.analysis.sanity import energy_range, sanity_flags
from boltzdiff.analysis.weights import (
    clean_log_weights,
    jackknife_over_runs,
    mean_of_runs,
    pool_runs,
    weighted_mean,
)
from boltzdiff.errors import ConfigError
from boltzdiff.io import load_json, load_npy, load_npz
from boltzdiff.pipeline.analyze_molecule import analyze_molecule, states_note
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
    z = load_npz(out / "samples.npz", "the sample stage's particles (x, log_w)")
    if "x" not in z or "log_w" not in z:
        raise ConfigError(f"{out / 'samples.npz'}: expected arrays 'x' and 'log_w', found {sorted(z)}")
    x, log_w_raw, run_of = z["x"], z["log_w"], z.get("run")
    summ = load_json(out / "samples.json", "the sample stage's summary")
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
    at_t = meta.get("temperature_K")  # a run re-sampled at another temperature (boltzdiff.pipeline.retemper)
    if at_t is not None and system.temperature != at_t:
        from boltzdiff.samplers.tempering import tempered_system

        system = tempered_system(system, at_t)[0]
    if not (out / "samples.npz").exists() or not (out / "samples.json").exists():
        raise ConfigError(f"analyze: {out} has no samples.npz; run the sample stage first (`boltzdiff run` resumes)")
    x, log_w, run_of, summ, cw = load_samples(out)
    kind = kind_of(system)
    res: dict = dict(
        system=system.name,
        temperature_K=system.temperature,
        variant=system.variant,
        preset=meta.get("preset"),
        kind=kind,
        n_samples=int(len(x)),
        ess=kish_ess(log_w),
        n_zero_weight=int(cw.n_zero + cw.n_invalid),
        n_target_evals=int(summ.get("n_target_evals", 0))
        + int((meta.get("reference_reweighting") or {}).get("n_target_evals", 0)),
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
        # the ESS of the bridge's weights just before that final resampling (the lowest over the SMC runs)
        ess_before_final_resample=over_runs(summ, "ess_before_final_resample", min),
        final_torsion_acceptance=over_runs(summ, "final_torsion_acceptance", np.mean),
        # HMC trajectories at the target after the sweeps (sample.final_hmc_steps), mean acceptance over runs
        n_final_hmc=int(over_runs(summ, "n_final_hmc", max) or 0),
        final_hmc_acceptance=over_runs(summ, "final_hmc_acceptance", np.mean),
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
    u_f = np.where(finite, u, 0.0)
    u_avg = _u_average(out, finite)
    if u_avg is not None:  # sample.final_hmc_average: the energies averaged over the last HMC states
        res["mean_energy_final_states_kT"] = weighted_mean(u_f, log_w)
        res["mean_energy_states"] = int(summ.get("n_final_hmc_average") or 0)
    u_m = u_f if u_avg is None else u_avg
    res["mean_energy_kT"] = weighted_mean(u_m, log_w)
    if run_of is not None:  # its error bar: the jackknife over the independent SMC runs, as for ΔF
        se = jackknife_over_runs(lambda m: weighted_mean(u_m[m], log_w[m]), run_of)[1]
        res["mean_energy_se_kT"] = se if np.isfinite(se) else None
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
        u_exact = target_energies(target, target.sample(len(x), torch.Generator().manual_seed(7)).double().numpy())
        res["reference_energy_range_kT"] = list(energy_range(u_exact))
        figs.append(
            (
                "energy histograms: exact samples, reweighted SMC",
                plot_energy_histograms(
                    {
                        "exact": (u_exact, None),
                        "model (unweighted)": (u, None),
                        "reweighted": (u, log_w),
                    },
                    out / "energy_hist.png",
                ),
            )
        )
    else:
        ref_pos = out / "reference" / "positions.npy"
        ref_x = load_npy(ref_pos, "the reference positions").reshape(-1, target.dim) if ref_pos.exists() else None
        ref_e = out / "reference" / "energies.npy"
        ref_u = load_npy(ref_e, "the reference energies") if ref_e.exists() else None
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
            res["reference_energy_range_kT"] = list(energy_range(ref_u))
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
                analyze_molecule(
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
            combine = ((meta.get("settings") or {}).get("sample") or {}).get("combine_runs", "pooled")
            if combine == "mean" and len(res.get("delta_f_runs_kT") or []) > 1:
                _mean_of_runs_headline(res)
            res["n_target_evals"] += int(res.get("rao_blackwell_evals", 0))
            if ref_x is not None and not seeded and at_t is None:  # the model learnt the source temperature
                n_run = int(summ.get("n") or 1000) // max(1, int(summ.get("n_runs") or 1))
                seed = int(meta.get("seed", 0))
                res.update(_model_only(system, out, figs, min(MODEL_ONLY_PARTICLES, n_run), seed))
        else:
            n, sd = target.event_shape
            h_s = distance_histogram(x.reshape(-1, n, sd), log_w, bins=80)
            hists = {"reweighted": h_s}
            if ref_x is not None:
                hists["reference"] = distance_histogram(ref_x.reshape(-1, n, sd), None, bins=h_s.edges)
            figs.append(("interatomic distances", plot_distance_histograms(hists, out / "distances.png")))
            # energy W2, distance W2 and TV against the run's reference (same ensemble only) and against the
            # system's reference summary (boltzdiff/analysis/particles.py)
            same = not (hot or seeded)
            summary, why = find_reference_summary(system)
            if why:
                res["reference_summary_skipped"] = why
            res.update(
                run_particle_metrics(
                    system, x, log_w, u, ref_x if same else None, ref_u if same else None, summary=summary
                )
            )
    if meta.get("source_run"):
        res["source_run"] = meta["source_run"]
    flags = sanity_flags(res)
    res["sanity"] = {"ok": not flags, "flags": flags}
    if flags:
        log.warning("analyze: degenerate run (%s)", "; ".join(flags))
    write_json_atomic(out / "analysis.json", res)
    numbers = {k: v for k, v in res.items() if not isinstance(v, (list, dict))}
    notes = (
        "Weighted quantities use the SMC importance weights of particles annealed to the exact "
        "target energy; `ess` is the normalised Kish ESS."
    )
    if flags:
        notes = "**Degenerate run: do not use these numbers.** " + " ".join(f"{f}." for f in flags) + "\n\n" + notes
    if res.get("delta_f_state"):
        notes += " " + states_note(system, res["delta_f_state"], res["delta_f_against"])
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
    if res.get("n_final_hmc"):
        notes += (
            f" Then {res['n_final_hmc']} HMC trajectories at the exact target"
            f" ({res['final_hmc_acceptance']:.0%} accepted) relaxed the slow modes that MALA steps barely move."
        )
    if res.get("mean_energy_states"):
        notes += (
            f" The mean energy averages each particle's energy over its states after the last"
            f" {res['mean_energy_states']} of them (final states alone: {res['mean_energy_final_states_kT']:.3f} kT)."
        )
    write_report_md(
        out / "report.md",
        f"boltzdiff run: {system.name} ({meta.get('preset')})",
        numbers,
        figs,
        notes="\n\n".join(t for t in (notes, runs_table_md(res)) if t),
    )
    return res


#: particles per run of the model-only SMC (two runs), at most the sample stage's per run
MODEL_ONLY_PARTICLES = 500


def _model_only(system, out: Path, figs: list, n: int, seed: int) -> dict:
    """The learned energy alone (no target energy, no importance weights to it): two SMC runs of ``n`` particles
    on the first model, from noise to its lowest level, F(CV) and ΔF against the reference frames'
    (:func:`boltzdiff.evaluate_molecule.model_only_block` estimator C, docs/method.md#model-only; the frames the
    model was trained on would bias a reweighting of them); {} for a system without a dihedral CV."""
    from boltzdiff.evaluate_molecule import model_only_block, plot_model_only, reference_from_run_dir
    from boltzdiff.systems import dihedral_cvs

    if not dihedral_cvs(system):
        return {}
    ref_x, ref_u, u_target = reference_from_run_dir(out, system)
    mo = model_only_block(
        system, out, ref_x, ref_u, u_target=u_target, estimator="smc", n_chains=max(2, n), n_steps=2, seed=seed
    )
    figs.append(
        (
            f"model-only F({mo['cv']}): the learned energy alone (its own SMC, no target energy) vs the reference",
            plot_model_only(mo, out / "model_only.png"),
        )
    )
    return dict(
        model_only=mo,
        model_only_rmse_kT=mo["rmse_kT"],
        model_only_delta_f_kT=mo.get("delta_f_model_kT"),
        model_only_region_offset_kT=mo.get("region_offset_kT"),
    )


def _model_labels(out: Path) -> np.ndarray | None:
    """Which trained model each particle was sampled from (``samples.npz`` ``model``; None with one model)."""
    z = load_npz(out / "samples.npz", "the sample stage's particles")
    return np.asarray(z["model"]) if "model" in z else None


def _mean_of_runs_headline(res: dict) -> None:
    """``sample.combine_runs: mean``: ΔF becomes the plain mean of the independent SMC runs' ΔF, its error the
    SD over runs / sqrt(R); the pooled estimate stays beside it (``delta_f_pooled_kT``)."""
    res["delta_f_pooled_kT"], res["delta_f_pooled_se_kT"] = res["delta_f_kT"], res["delta_f_se_kT"]
    res["delta_f_kT"], res["delta_f_se_kT"] = mean_of_runs(res["delta_f_runs_kT"])
    res["delta_f_se_method"] = f"SD over {len(res['delta_f_runs_kT'])} independent SMC runs / sqrt(runs)"
    res["delta_f_combine"] = "mean of runs"


def _u_average(out: Path, finite: np.ndarray) -> np.ndarray | None:
    """The sample stage's per-particle energies averaged over the last HMC states (0 where the final state's
    energy is not finite), or None where the stage kept none."""
    z = load_npz(out / "samples.npz", "the sample stage's particles")
    if "u_average" not in z:
        return None
    u = np.asarray(z["u_average"], dtype=np.float64)
    if u.shape != finite.shape:
        raise ConfigError(f"{out / 'samples.npz'}: u_average has shape {u.shape}, expected {finite.shape}")
    return np.where(finite & np.isfinite(u), u, 0.0)


def _lineage(out: Path) -> np.ndarray | None:
    """The SMC lineage label of each particle (``samples.npz`` ``lineage``), or None for older runs."""
    z = load_npz(out / "samples.npz", "the sample stage's particles")
    return np.asarray(z["lineage"]) if "lineage" in z else None
