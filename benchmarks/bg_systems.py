"""Boltzmann generator end to end on a system (`boltzdiff run`), DSM + DiffCLF vs DSM-only, one results file.

For each loss, runs (or resumes) the whole pipeline in benchmarks/_work/bg/<system>_<preset>_<loss>, then prints
ESS, the reweighted energy-histogram W1 against the run's reference chain (particles) or ΔF / PMF RMSE
(molecules), the target-energy evaluations (reference data + sampling) and the wall time, and writes
benchmarks/results/<system>.json: the keys of the DiffCLF run's analysis.json plus ``method``, ``preset``,
``wall_s`` (and, for alanine dipeptide, ``reference_delta_f_kT`` from benchmarks/aldp_reference_metad.py), with every
run under ``runs``.

    python benchmarks/bg_systems.py dw4 [--preset quick|full] [--losses diffclf,dsm] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "bg"
RESULTS = ROOT / "benchmarks" / "results"


def reference_evals(settings: dict, kind: str) -> int:
    """Target-energy evaluations spent on the training data (MD steps or MCMC steps x chains)."""
    ref = settings.get("reference", {})
    if kind == "molecule":  # metadynamics also spends its bias-building run
        ns = float(ref.get("ns", 1.0)) + (float(ref.get("build_ns", 0.0)) if ref.get("method") == "metad" else 0.0)
        return round(ns * 1e6 / float(ref.get("timestep_fs", 1.0)))
    if kind == "particles":
        return int(ref.get("n_steps", 20000)) * int(ref.get("n_chains", 64))
    return 0


def strict_json(v):
    """NaN/inf (e.g. ΔF when no particle reached the basin) become null, so the file is strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: strict_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [strict_json(x) for x in v]
    return v


def share_reference(out: Path, candidates: list[Path], loss: str) -> None:
    """Both losses train on the same reference data: copy a finished reference stage of the same settings from
    another run directory of this benchmark instead of simulating it again (it is counted for each method),
    with that run's pipeline.json for this loss (a folder holding a stage's output without one is refused)."""
    if (out / "reference").exists():
        return
    for c in candidates:
        prog = c / "reference" / "progress.json"
        if c != out and prog.is_file() and json.loads(prog.read_text()).get("completed"):
            out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(c / "reference", out / "reference")
            meta = json.loads((c / "pipeline.json").read_text())
            meta["settings"]["train"]["loss"] = loss
            (out / "pipeline.json").write_text(json.dumps(meta, indent=2) + "\n")
            print(f"reference data copied from {c.relative_to(ROOT)}")
            return


def compare_with_reference_profile(run_dir: Path, system, ref: dict) -> dict:
    """F(phi) RMSE of a run's reweighted samples against the reference profile, over the bins the reference
    populates, weighted by its probabilities: from the analysis's profile (each particle's phi integrated over
    its rotation) where analysis.json has one on the reference's bins, the plain weighted histogram's kept as
    ``pmf_rmse_vs_reference_count_kT``."""
    import numpy as np
    from _common import phi_of_samples

    from boltzdiff.analysis.free_energy import free_energy_profile, pmf_rmse
    from boltzdiff.pipeline import load_samples

    prof_ref = ref.get("reference_f_phi")
    if not prof_ref:
        return {}
    edges = np.asarray(prof_ref["edges"])
    f_ref = np.array([np.inf if v is None else v for v in prof_ref["f_kT"]])
    x, log_w = load_samples(run_dir)[:2]  # pooled over independent SMC runs where there are several
    phi = phi_of_samples(system, x)
    prof = free_energy_profile(phi, log_w, bins=len(edges) - 1, range=(edges[0], edges[-1]), n_bootstrap=0)
    out = dict(pmf_rmse_vs_reference_kT=float(pmf_rmse(prof.f_b, f_ref, weights=np.asarray(prof_ref["p"])).rmse))
    ana = json.loads((run_dir / "analysis.json").read_text()) if (run_dir / "analysis.json").exists() else {}
    run_edges = np.asarray(ana.get("f_phi_edges") or [])
    if ana.get("f_phi_kT") and run_edges.shape == edges.shape and np.allclose(run_edges, edges):
        # the analysis's own profile, with each particle's phi integrated over its rotation (Rao-Blackwell)
        f_run = np.array([np.inf if v is None else v for v in ana["f_phi_kT"]])
        out["pmf_rmse_vs_reference_count_kT"] = out["pmf_rmse_vs_reference_kT"]
        out["pmf_rmse_vs_reference_kT"] = float(pmf_rmse(f_run, f_ref, weights=np.asarray(prof_ref["p"])).rmse)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("system")
    ap.add_argument("--preset", default="quick", choices=["quick", "full"])
    ap.add_argument("--variant", default=None)
    ap.add_argument("--losses", default="diffclf,dsm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from boltzdiff.pipeline import run_pipeline
    from boltzdiff.systems import load_system

    system = load_system(args.system, args.variant)
    short = "aldp" if system.name == "alanine_dipeptide" else system.name
    name = short + (f"_{system.variant}" if system.variant else "")
    runs = []
    losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    for loss in losses:
        out = WORK / f"{name}_{args.preset}_{loss}_seed{args.seed}"
        share_reference(out, [WORK / f"{name}_{args.preset}_{lo}_seed{args.seed}" for lo in ("diffclf", "dsm")], loss)
        t0 = time.perf_counter()
        res = run_pipeline(
            args.system, out, preset=args.preset, variant=args.variant, seed=args.seed, loss=loss, progress=False
        )
        wall = time.perf_counter() - t0
        meta = json.loads((out / "pipeline.json").read_text())
        timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {}
        if not timing:  # first complete run: record what this call took (a resumed call would under-count)
            timing = dict(wall_s=wall)
            (out / "timing.json").write_text(json.dumps(timing))
        n_ref = reference_evals(meta["settings"], meta["kind"])
        runs.append(
            dict(
                res,
                method="DSM + DiffCLF, SMC to target" if loss == "diffclf" else "DSM only, SMC to target",
                loss=loss,
                preset=args.preset,
                wall_s=timing["wall_s"],
                n_reference_evals=n_ref,
                n_total_target_evals=n_ref + int(res.get("n_target_evals", 0)),
                run_dir=str(out.relative_to(ROOT)),
            )
        )
    keys = [
        "ess",
        "ess_final_step",
        "energy_w1_reweighted",
        "energy_w1_unweighted",
        "delta_f_kT",
        "delta_f_se_kT",
        "pmf_rmse_kT",
        "mean_energy_kT",
        "n_total_target_evals",
        "wall_s",
    ]
    print(f"{name}, preset {args.preset}, seed {args.seed}")
    print(f"{'method':<30} " + " ".join(f"{k[:14]:>14}" for k in keys))
    for r in runs:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"{v:14.4g}" if isinstance(v, (int, float)) else f"{'-':>14}")
        print(f"{r['method']:<30} " + " ".join(cells))
    main_run = next((r for r in runs if r["loss"] == "diffclf"), runs[0])
    out = dict(main_run, system=name, command="python benchmarks/bg_systems.py " + " ".join(sys.argv[1:]), runs=runs)
    from _common import aldp_reference_file

    ref_file = aldp_reference_file(system.variant)
    if system.kind == "openmm" and ref_file.exists():
        ref = json.loads(ref_file.read_text())
        out["reference_delta_f_kT"] = ref["reference_delta_f_kT"]
        out["reference_delta_f_se_kT"] = ref["reference_delta_f_se_kT"]
        for r in runs:
            if isinstance(r.get("delta_f_kT"), float):
                r["abs_delta_f_error_kT"] = abs(r["delta_f_kT"] - ref["reference_delta_f_kT"])
            r.update(compare_with_reference_profile(ROOT / r["run_dir"], system, ref))
            if isinstance(r.get("md_delta_f_kT"), float):  # the training data's own (raw) estimate
                r["abs_md_delta_f_error_kT"] = abs(r["md_delta_f_kT"] - ref["reference_delta_f_kT"])
        out.update({k: v for k, v in runs[runs.index(main_run)].items() if k.startswith(("abs_", "pmf_rmse_vs"))})
        out["reference_file"] = ref_file.name
        print(
            f"reference ΔF {ref['reference_delta_f_kT']:.3f} ± {ref['reference_delta_f_se_kT']:.3f} kT "
            f"({ref_file.name}: {ref.get('method', '')})"
        )
        for r in runs:
            print(
                f"  {r['method']:<30} ΔF {r.get('delta_f_kT', float('nan')):7.3f} ± "
                f"{r.get('delta_f_se_kT', float('nan')):.3f}  |err| {r.get('abs_delta_f_error_kT', float('nan')):.3f}"
                f"  F(phi) RMSE {r.get('pmf_rmse_vs_reference_kT', float('nan')):.3f}  ESS {r['ess']:.3f}"
                f" (last step before resampling {r.get('ess_final_step') or float('nan'):.3f})"
                f"  raw training-data ΔF {r.get('md_delta_f_kT', float('nan')):.3f}"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    from boltzdiff.io import atomic_write_json

    atomic_write_json(RESULTS / f"{name}{args.tag}.json", strict_json(out))
    print(f"wrote {RESULTS / f'{name}{args.tag}.json'}")


if __name__ == "__main__":
    main()
