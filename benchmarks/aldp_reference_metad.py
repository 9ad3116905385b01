"""Independent reference ΔF for alanine dipeptide: well-tempered metadynamics bias, then MD under it frozen.

A second method beside the 2-D umbrella sampling of ``aldp_reference.py``, so that a bias common to one
protocol can show up (METHOD.md §6; ``boltzdiff.metad``). Each replicate (its own seed) builds a bias over
(φ, ψ) by well-tempered metadynamics, freezes it, and runs plain Langevin MD under it; the production frames are
reweighted exactly by exp(+V/kT). Two error bars are printed: the jackknife SE over contiguous blocks of each
replicate (for several block counts, which should agree if the blocks are longer than the correlation time),
and the spread of the replicates, which also covers the build phase's randomness.

    python benchmarks/aldp_reference_metad.py [--replicates 2] [--jobs 2] [--build-ps 3000] [--prod-ps 20000]

Run data go to benchmarks/_work/aldp_reference_metad/<settings>/rep<seed>/ (resumable per 0.5 ns segment); the
summary to benchmarks/results/aldp_reference_<variant>_metad<tag>.json with a PNG of F(φ) and the bias beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import mean_phi_profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "aldp_reference_metad"
RESULTS = ROOT / "benchmarks" / "results"
BLOCKS = (10, 20, 40)


def _one(args) -> dict:
    seed, variant, build_ps, prod_ps, height, sigma, gamma, first = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from boltzdiff.metad import MetadConfig, run_metad_2d
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide", variant=variant)
    phi_idx, psi_idx = system.spec["cvs"]["phi"], system.spec["cvs"]["psi"]
    cfg = MetadConfig(
        build_ps=build_ps, prod_ps=prod_ps, height_kjmol=height, sigma_rad=sigma, bias_factor=gamma, seed=seed
    )
    t0 = time.perf_counter()
    folder = WORK / f"{variant}_b{build_ps:g}_p{prod_ps:g}_h{height:g}_s{sigma:g}_g{gamma:g}" / f"rep{seed}"
    res = run_metad_2d(system, folder, cfg, phi_idx, psi_idx, progress=seed == first)
    res["wall_s"] = time.perf_counter() - t0
    res["md_steps"] = round((build_ps + prod_ps) * 1000 / cfg.timestep_fs)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--build-ps", type=float, default=3000.0)
    ap.add_argument("--prod-ps", type=float, default=20000.0)
    ap.add_argument("--height", type=float, default=1.2, help="initial Gaussian height, kJ/mol")
    ap.add_argument("--sigma", type=float, default=0.35, help="Gaussian width, rad")
    ap.add_argument("--bias-factor", type=float, default=6.0)
    ap.add_argument("--variant", default="implicit")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument(
        "--combine",
        action="append",
        default=[],
        metavar="JSON",
        help="also pool the replicates of an earlier results file of this script (another protocol) into the "
        "reference; repeatable",
    )
    args = ap.parse_args()

    from boltzdiff.analysis.free_energy import free_energy_profile
    from boltzdiff.metad import block_delta_f, reweight_log_weights

    t0 = time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.replicates))
    tasks = [
        (s, args.variant, args.build_ps, args.prod_ps, args.height, args.sigma, args.bias_factor, seeds[0])
        for s in seeds
    ]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        runs = list(ex.map(_one, tasks))
    protocol = f"b{args.build_ps:g}_p{args.prod_ps:g}_h{args.height:g}_s{args.sigma:g}_g{args.bias_factor:g}"
    stem = f"aldp_reference_{args.variant}_metad{args.tag}"
    old_file = RESULTS / f"{stem}.json"
    old_rows = {}
    if old_file.is_file():  # replicates resumed finished report ~0 s: keep the wall time measured earlier
        old = json.loads(old_file.read_text()).get("replicates", [])
        old_rows = {(r["seed"], r.get("protocol", protocol)): r for r in old}
    rows, profiles = [], []
    for seed, r in zip(seeds, runs, strict=True):
        lw = reweight_log_weights(r["bias_kjmol"], r["kT_kjmol"])
        est = {nb: block_delta_f(r["phi"], lw, nb) for nb in BLOCKS}
        w = np.exp(lw - lw.max())
        ess = float(w.sum() ** 2 / (w**2).sum() / w.size)
        phi = (r["phi"] + math.pi) % (2 * math.pi) - math.pi
        inside = (phi > 0) & (phi < 2)
        crossings = int(np.count_nonzero(inside[1:] != inside[:-1]))
        profiles.append(free_energy_profile(r["phi"], lw, bins=36, n_bootstrap=0))
        rows.append(
            dict(
                seed=seed,
                protocol=protocol,
                delta_f_kT=est[BLOCKS[0]][0],
                **{f"block_se_{nb}_kT": est[nb][1] for nb in BLOCKS},
                ess=ess,
                basin_fraction_unweighted=float(inside.mean()),
                basin_crossings=crossings,
                n_frames=len(phi),
                max_bias_kT=float(r["bias_grid"].max() / r["kT_kjmol"]),
                wall_s=r["wall_s"],
                md_steps=r["md_steps"],
            )
        )
        if rows[-1]["wall_s"] < 5.0:
            o = old_rows.get((seed, protocol))
            rows[-1]["wall_s"] = o["wall_s"] if o and (o.get("wall_s") or 0) >= 5.0 else None
    own = list(rows)
    for path in args.combine:
        other = json.loads(Path(path).read_text())
        rows += [r for r in other["replicates"] if r.get("protocol") != protocol or r["seed"] not in seeds]
    vals = np.array([r["delta_f_kT"] for r in rows])
    ses = np.array([r[f"block_se_{BLOCKS[1]}_kT"] for r in rows])
    mean = float(vals.mean())
    se_rep = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    # inverse-variance mean with the block SEs, and whether the replicates agree with them (chi^2 per dof)
    wts = 1.0 / ses**2
    mean_iv = float((wts * vals).sum() / wts.sum())
    se_iv = float(1.0 / math.sqrt(wts.sum()))
    chi2 = float(((vals - mean_iv) ** 2 * wts).sum() / max(1, len(vals) - 1))
    print(
        f"well-tempered metadynamics over (phi, psi) then frozen-bias MD, ALDP {args.variant} 300 K: build "
        f"{args.build_ps:g} ps, production {args.prod_ps:g} ps, height {args.height:g} kJ/mol, sigma "
        f"{args.sigma:g} rad, bias factor {args.bias_factor:g}, {len(seeds)} replicates"
        + (f", pooled with {len(rows) - len(own)} from {', '.join(args.combine)}" if args.combine else "")
    )
    head = " ".join(f"{'SE/' + str(nb) + 'blk':>9}" for nb in BLOCKS)
    print(f"{'protocol':<28} {'replicate':>9} {'ΔF kT':>8} {head} {'ESS':>6} {'crossings':>9} {'wall s':>7}")
    for r in rows:
        ses_txt = " ".join(f"{r[f'block_se_{nb}_kT']:9.3f}" for nb in BLOCKS)
        wall = f"{r['wall_s']:7.0f}" if r.get("wall_s") is not None else f"{'n/a':>7}"
        print(
            f"{r.get('protocol', '?'):<28} {r['seed']:>9d} {r['delta_f_kT']:8.3f} {ses_txt} {r['ess']:6.3f} "
            f"{r['basin_crossings']:9d} {wall}"
        )
    print(
        f"mean of replicates {mean:.3f} ± {se_rep:.3f} kT (SE over replicates); inverse-variance mean "
        f"{mean_iv:.3f} ± {se_iv:.3f} (block SEs, {BLOCKS[1]} blocks), chi^2/dof {chi2:.2f}"
    )
    print(
        f"reference (results file): {mean if len(vals) > 1 else mean_iv:.3f} ± "
        f"{max(se_iv, se_rep) if len(vals) > 1 else se_iv:.3f} kT"
    )
    out = dict(
        system=f"alanine_dipeptide/{args.variant}",
        method="well-tempered metadynamics bias over (phi, psi), then MD under the frozen bias, reweighted by "
        "exp(V/kT); block-jackknife SE per replicate, independent replicates",
        # the replicates' spread is the honest error bar when there are several (their block SEs disagree with
        # it when chi^2/dof > 1); a single replicate has only its block SE
        reference_delta_f_kT=mean if len(vals) > 1 else mean_iv,
        reference_delta_f_se_kT=max(se_iv, se_rep) if len(vals) > 1 else se_iv,
        inverse_variance_mean_kT=mean_iv,
        inverse_variance_se_kT=se_iv,
        replicate_mean_kT=mean,
        replicate_se_kT=se_rep,
        chi2_per_dof=chi2,
        replicates=rows,
        reference_f_phi=mean_phi_profile(profiles),
        settings=vars(args),
        n_target_evals=int(sum(r["md_steps"] for r in rows)),
        combined=args.combine,
        wall_s=time.perf_counter() - t0,
        command="python benchmarks/aldp_reference_metad.py " + " ".join(sys.argv[1:]),
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    from boltzdiff.runinfo import atomic_write_json

    atomic_write_json(RESULTS / f"{stem}.json", out)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axs = plt.subplots(1, 2, figsize=(9, 3.5))
        for r, p in zip(own, profiles, strict=True):
            axs[0].plot(p.centers, p.f_b, label=f"replicate {r['seed']}: ΔF {r['delta_f_kT']:.2f}")
        axs[0].axvspan(0, 2, color="0.9")
        axs[0].set(xlabel="φ (rad)", ylabel="F(φ) (kT)", title="F(φ), metad bias + frozen-bias MD")
        axs[0].legend(fontsize=7)
        g = runs[0]["grid"]
        im = axs[1].pcolormesh(g, g, runs[0]["bias_grid"] / runs[0]["kT_kjmol"], shading="auto")
        axs[1].set(xlabel="φ (rad)", ylabel="ψ (rad)", title=f"frozen bias V/kT, replicate {seeds[0]}")
        fig.colorbar(im, ax=axs[1])
        fig.tight_layout()
        fig.savefig(RESULTS / f"{stem}.png", dpi=120)
    except Exception as e:  # noqa: BLE001 - the numbers matter more than the plot
        print(f"(plot skipped: {e})")
    print(json.dumps({k: out[k] for k in ("reference_delta_f_kT", "reference_delta_f_se_kT", "wall_s")}))


if __name__ == "__main__":
    main()
