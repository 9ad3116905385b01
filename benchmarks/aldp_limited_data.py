"""Alanine dipeptide trained on data with the wrong basin populations, reweighted to 300 K.

The shipped presets train on metadynamics frames that already carry the 300 K populations. Here the training
data are replaced by plain MD whose φ > 0 basin population is wrong — by default a short run at 500 K (the
basin is visited, but with the 500 K population) — and everything else is the preset's recipe. For each loss
(DSM + DiffCLF, DSM only) the script trains once and samples the same models with each of ``--samplers``:
``sweeps``, the preset's sampler as shipped (SMC to the exact 300 K energy with basin strata on the noisy
levels, then the torsion + MALA sweeps at the target); ``nosweeps``, the same without the sweeps; ``plain``,
also without the basin strata and torsion moves, so that no move carries particles between the basins and
their populations rest on the model's energies and the importance weights alone. It prints, against the
metadynamics reference (``benchmarks/results/aldp_reference_implicit_metad.json``): ΔF of the raw training
data, of each run, their |error|, F(φ) RMSE, ESS and target evaluations, and the trained model's own basin
offset before any sampling (the error of its level-0 ln[q(basin)/q(rest)] against the training data's
populations, which DiffCLF is meant to fix); it writes ``benchmarks/results/aldp_limited_data<tag>.json``.

    python benchmarks/aldp_limited_data.py [--preset quick] [--temperature 500] [--ns 2] [--seeds 0,1] \\
        [--samplers sweeps,nosweeps,plain]

Work directories: ``benchmarks/_work/limited/<T>K_<ns>ns_<preset>/`` (each stage resumes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import aldp_reference_file, machine  # noqa: E402
from bg_systems import compare_with_reference_profile, strict_json  # noqa: E402

from boltzdiff.systems import SYSTEMS_DIR  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SYSTEM = SYSTEMS_DIR / "alanine_dipeptide"


SAMPLERS = ("sweeps", "nosweeps", "plain")


def system_copy(dest: Path, preset: str, reference: dict, sampler: str) -> Path:
    """A copy of the alanine-dipeptide folder whose ``preset`` trains on ``reference`` and samples with
    ``sampler``: ``sweeps`` as shipped; ``nosweeps`` without the final sweeps at the target; ``plain`` also
    without the basin strata and torsion moves, so that no move carries particles between the basins and their
    populations rest on the model's energies and the importance weights alone."""
    if not dest.exists():
        shutil.copytree(SYSTEM, dest)
    cfg = yaml.safe_load((SYSTEM / "run.yaml").read_text())
    p = cfg["presets"][preset]
    p["reference"] = dict(reference)
    if sampler in ("nosweeps", "plain"):
        p["sample"]["final_mcmc_steps"] = 0
        p["sample"]["final_resample"] = False
    if sampler == "plain":
        for k in ("bridge_strata", "strata_max_sigma", "strata_min_share", "strata_denoised", "torsion"):
            p["sample"].pop(k, None)
    (dest / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def copy_stages(src: Path, dst: Path, stages: tuple[str, ...]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for s in stages:
        if (src / s).exists() and not (dst / s).exists():
            shutil.copytree(src / s, dst / s)


def model_basin_offsets(run_dir: Path, t_data: float) -> dict:
    """The trained model's own basin weights, before any sampling: the level-0 offset of ln[q(basin)/q(rest)]
    against its training data's temperature-``t_data`` populations (``_common.basin_probe``; kT,
    positive = basin underweighted; 0 for a model without mode blindness) and the same for β against αR."""
    from _common import basin_probe

    from boltzdiff.train import load_run

    run = load_run(run_dir / "train")
    offset, _ = basin_probe(run.system, str(run_dir / "reference" / "positions.npy"), t_data)
    o = offset(run.model.double(), 0)
    return dict(model_basin_offset_kT=o[""], model_beta_offset_kT=o["_beta"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["quick", "full"], default="quick")
    ap.add_argument("--temperature", type=float, default=500.0, help="MD temperature of the training data (K)")
    ap.add_argument("--ns", type=float, default=2.0, help="length of the training MD (ns)")
    ap.add_argument("--save-every-ps", type=float, default=0.25)
    ap.add_argument("--md-seed", type=int, default=31)
    ap.add_argument("--seeds", default="0", help="training/sampling seeds, comma-separated")
    ap.add_argument("--losses", default="diffclf,dsm")
    ap.add_argument("--samplers", default="sweeps,nosweeps", help=f"comma-separated, of {', '.join(SAMPLERS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    args = ap.parse_args()
    samplers = [v.strip() for v in args.samplers.split(",") if v.strip()]
    if not samplers or any(v not in SAMPLERS for v in samplers):
        sys.exit(
            f"aldp_limited_data: --samplers: expected a comma-separated subset of {SAMPLERS}, got {args.samplers!r}"
        )
    torch.set_num_threads(args.threads)

    from boltzdiff.pipeline import run_pipeline
    from boltzdiff.systems import load_system

    reference = dict(
        method="md", temperature=args.temperature, ns=args.ns, save_every_ps=args.save_every_ps, seed=args.md_seed
    )
    name = f"{args.temperature:g}K_{args.ns:g}ns_{args.preset}"
    work = ROOT / "benchmarks" / "_work" / "limited" / name
    systems = {sw: system_copy(work / f"system_{sw}", args.preset, reference, sw) for sw in samplers}
    ref = json.loads(aldp_reference_file("implicit").read_text())
    ref_df = ref["reference_delta_f_kT"]
    system = load_system(str(systems[samplers[0]]))

    rows = []
    shared_ref = None
    for seed in [int(s) for s in args.seeds.split(",")]:
        for loss in [s.strip() for s in args.losses.split(",") if s.strip()]:
            first, offsets = None, {}
            for sw in samplers:
                out = work / f"{loss}_{sw}_seed{seed}"
                if shared_ref is not None:
                    copy_stages(shared_ref, out, ("reference",))
                if first is not None:  # the same trained models, sampled the other way
                    copy_stages(first, out, ("reference", "train", "train_models"))
                t0 = time.perf_counter()
                res = run_pipeline(str(systems[sw]), out, preset=args.preset, seed=seed, loss=loss, progress=False)
                wall = time.perf_counter() - t0
                timing = out / "timing.json"
                if not timing.exists():
                    timing.write_text(json.dumps(dict(wall_s=wall)))
                shared_ref = shared_ref or out
                first = first or out
                offsets = offsets or model_basin_offsets(out, args.temperature)
                df = res.get("delta_f_kT")
                raw = res.get("md_delta_f_kT")
                rows.append(
                    dict(
                        loss=loss,
                        sampler=sw,
                        sweeps=sw == "sweeps",
                        seed=seed,
                        delta_f_kT=df,
                        delta_f_se_kT=res.get("delta_f_se_kT"),
                        # the count of particles in the basin (ΔF above integrates each over its φ rotation,
                        # which gives a basin probability even to a run with no particle left in the basin)
                        delta_f_indicator_kT=res.get("delta_f_indicator_kT"),
                        basin_lineages_runs=res.get("basin_lineages_runs"),
                        abs_delta_f_error_kT=abs(df - ref_df) if isinstance(df, float) else None,
                        raw_data_delta_f_kT=raw,
                        abs_raw_data_error_kT=abs(raw - ref_df) if isinstance(raw, float) else None,
                        **compare_with_reference_profile(out, system, ref),
                        **offsets,
                        ess=res.get("ess"),
                        ess_final_step=res.get("ess_final_step"),
                        energy_w1_reweighted=res.get("energy_w1_reweighted"),
                        n_target_evals=res.get("n_target_evals"),
                        wall_s=json.loads(timing.read_text())["wall_s"],
                        run_dir=str(out.relative_to(ROOT)),
                    )
                )

    def f(v, w=7, p=2):
        return f"{v:{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"

    print(f"alanine dipeptide trained on {args.ns:g} ns of MD at {args.temperature:g} K, {args.preset} preset")
    print(machine())
    print(
        f"reference ΔF {ref_df:.3f} ± {ref['reference_delta_f_se_kT']:.3f} kT ({aldp_reference_file('implicit').name})"
    )
    print(
        f"{'loss':<8} {'sampler':<8} {'seed':>4} {'ΔF':>7} {'± SE':>6} {'|err|':>6} {'raw ΔF':>7} {'|err|':>6} "
        f"{'F(φ)RMSE':>8} {'offset':>7} {'ESS':>5} {'evals':>9} {'wall s':>7}"
    )
    for r in rows:
        print(
            f"{r['loss']:<8} {r['sampler']:<8} {r['seed']:>4} {f(r['delta_f_kT'])} "
            f"{f(r['delta_f_se_kT'], 6)} {f(r['abs_delta_f_error_kT'], 6)} {f(r['raw_data_delta_f_kT'])} "
            f"{f(r['abs_raw_data_error_kT'], 6)} {f(r.get('pmf_rmse_vs_reference_kT'), 8)} "
            f"{f(r['model_basin_offset_kT'])} {f(r['ess'], 5)} "
            f"{r['n_target_evals'] or 0:>9.3g} {f(r['wall_s'], 7, 0)}"
        )
    from boltzdiff.io import atomic_write_json

    out = dict(
        system="aldp_implicit",
        preset=args.preset,
        data=dict(reference, kind="plain MD"),
        reference_delta_f_kT=ref_df,
        reference_delta_f_se_kT=ref["reference_delta_f_se_kT"],
        reference_file=aldp_reference_file("implicit").name,
        machine=machine(),
        command="python benchmarks/aldp_limited_data.py " + " ".join(sys.argv[1:]),
        runs=rows,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"aldp_limited_data{args.tag}.json"
    atomic_write_json(path, strict_json(out))
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
