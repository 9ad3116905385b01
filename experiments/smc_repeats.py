"""How much of a Boltzmann-generator ΔF's error is SMC noise? Independent SMC runs on one trained model.

For a finished `boltzdiff run` directory (molecule with a ΔF, or any system), reruns the sample and analyze
stages with ``--n`` particles and ``--repeats`` independent SMC seeds, each in its own directory under
``benchmarks/_work/smc_repeats/`` (the trained model and reference data are linked, not copied). Prints, per
particle count, every repeat's ΔF ± bootstrap SE, ESS and target evaluations, then the mean, the standard
deviation across repeats and the median bootstrap SE — if the spread across repeats exceeds the bootstrap SE,
the bootstrap (which treats resampled copies of one particle as independent) understates the sampling error.

    python experiments/smc_repeats.py benchmarks/_work/bg/aldp_implicit_full_diffclf_seed0 --n 4000 16000 \\
        --repeats 3 [--reference 3.48] [--sample bridge_mcmc_steps=10 ...] [--json FILE]

``--sample KEY=VALUE`` changes a sample-stage setting (e.g. more MCMC moves on the bridge to the target).
``--pool DIR ...`` runs no SMC and pools finished sample directories of the same model (the run directory itself,
earlier repeats) by their Z estimates, with the per-run log Z and ΔF and how they correlate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # _common
from _common import WORK, machine, print_table  # noqa: E402


def prepare(src: Path, dst: Path) -> None:
    """A run directory sharing ``src``'s trained model and reference data (symlinks) and its pipeline.json."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train", "reference"):
        if (src / name).exists() and not (dst / name).exists():
            os.symlink((src / name).resolve(), dst / name)
    for name in ("pipeline.json", "run_info.json"):
        if not (dst / name).exists():
            (dst / name).write_text((src / name).read_text())


def pool(work: Path, stem: str, repeats: int, src: Path, with_source: bool = False) -> Path:
    """One run directory holding every repeat's particles with run labels (as ``sample.n_runs`` writes);
    ``with_source`` adds the source run's own SMC run(s) as further runs."""
    out = work / f"{stem}_pooled{repeats}{'_and_source' if with_source else ''}"
    dirs = [work / f"{stem}_r{r}" for r in range(repeats)] + ([src] if with_source else [])
    return pool_dirs(dirs, src, out)


def pool_dirs(dirs, src: Path, out: Path) -> Path:
    """Pool the SMC runs of several sample directories of one model (each directory's ``run`` labels kept
    apart) into ``out``, a run directory sharing ``src``'s model, for ``analyze_run`` to pool by Z."""
    prepare(src, out)
    xs, lws, summ = [], [], []
    for d in dirs:
        meta = json.loads((Path(d) / "samples.json").read_text())
        with np.load(Path(d) / "samples.npz") as z:
            labels = z["run"] if "run" in z.files else np.zeros(len(z["x"]), dtype=int)
            for k, m in enumerate(meta.get("runs", [meta])):
                xs.append(z["x"][labels == k])
                lws.append(z["log_w"][labels == k])
                summ.append(m)
    runs = [np.full(len(x), r) for r, x in enumerate(xs)]
    np.savez(out / "samples.npz", x=np.concatenate(xs), log_w=np.concatenate(lws), run=np.concatenate(runs))
    merged = dict(
        summ[0],
        n=int(sum(len(x) for x in xs)),
        n_runs=len(xs),
        n_target_evals=sum(m["n_target_evals"] for m in summ),
        n_model_evals=sum(m["n_model_evals"] for m in summ),
        runs=[{k: v for k, v in m.items() if k != "ess_trace"} for m in summ],
    )
    (out / "samples.json").write_text(json.dumps(merged))
    return out


def pool_only(src: Path, dirs, system, reference) -> None:
    """``--pool``: no new SMC; pool the runs of finished sample directories and say how they scatter."""
    from boltzdiff.pipeline import analyze_run

    for d in dirs:
        if not (Path(d) / "samples.npz").exists() or not (Path(d) / "samples.json").exists():
            sys.exit(f"smc_repeats: --pool: {d} has no samples.npz and samples.json")
    out = WORK / "smc_repeats" / f"{src.name}_pooled_{len(dirs)}dirs"
    a = analyze_run(pool_dirs(dirs, src, out), system=system)
    runs = json.loads((out / "samples.json").read_text())["runs"]
    log_z = np.array([m["log_Z"] for m in runs])
    df = np.array([np.nan if v is None else v for v in a.get("delta_f_runs_kT", [None] * len(runs))], dtype=float)
    print(f"{len(runs)} SMC runs of {src} pooled by their Z estimates ({', '.join(str(d) for d in dirs)})")
    print_table(
        ["run", "log Z", "ΔF (kT)", "ESS"],
        [[i, f"{z:.2f}", f"{v:.2f}", f"{m['ess']:.2f}"] for i, (z, v, m) in enumerate(zip(log_z, df, runs))],
    )
    ok = np.isfinite(df)
    line = (
        f"pooled ΔF {a.get('delta_f_kT'):.3f} ± {a.get('delta_f_se_kT'):.3f} kT (delete-one-run jackknife); "
        f"single runs: mean {df[ok].mean():.2f}, SD {df[ok].std(ddof=1):.2f} ({ok.sum()} finite); "
        f"log Z SD {log_z.std(ddof=1):.2f}; corr(log Z, ΔF) {np.corrcoef(log_z[ok], df[ok])[0, 1]:.2f}"
    )
    if reference is not None:
        line += f"; |pooled - ref| {abs(a['delta_f_kT'] - reference):.3f}"
    print(line)


#: bands of the noise scale sigma / alpha (in the data's units) for the log-weight variance table
BANDS = ((1.0, float("inf")), (0.25, 1.0), (0.05, 0.25), (0.01, 0.05), (0.002, 0.01), (0.0, 0.002))


def band_variances(run_dir: Path, grid, levels_setting=None) -> dict:
    """Log-weight variance of one SMC run summed over its level steps in each band of sigma / alpha, from
    ``samples.json``'s ``inc_sd_trace`` (the start, one entry per level step, then the bridge), as
    ``{"lo-hi": variance, ..., "bridge": variance}``; empty for runs that predate the trace.
    ``levels_setting``: the run's ``sample.levels``."""
    from boltzdiff.samplers.sde import resolve_levels

    meta = json.loads((run_dir / "samples.json").read_text())
    sd = meta.get("inc_sd_trace")
    levels = resolve_levels(grid.n, levels_setting)[::-1]  # visited noisy to clean
    if not sd or len(sd) < len(levels):
        return {}
    sig = (grid.sigma / grid.alpha).tolist()
    steps = sd[1 : len(levels)]  # the step into levels[i] for i = 1 .. (levels listed noisy to clean)
    out = {}
    for lo, hi in BANDS:
        out[f"{lo:g}-{hi:g}"] = float(sum(v**2 for v, lv in zip(steps, levels[1:]) if lo < sig[lv] <= hi))
    out["bridge"] = float(sum(v**2 for v in sd[len(levels) :]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a finished `boltzdiff run` directory (its train/ stage is reused)")
    ap.add_argument("--n", type=int, nargs="+", help="particle counts (required unless --pool)")
    ap.add_argument(
        "--pool",
        nargs="+",
        metavar="DIR",
        help="run no SMC: pool the SMC runs of these finished sample directories (same model as run_dir) by Z",
    )
    ap.add_argument("--repeats", type=int, default=3, help="independent SMC runs per particle count")
    ap.add_argument(
        "--start",
        type=int,
        default=0,
        help="index of the first repeat (its SMC seed is 1000 + index): run repeats in parallel processes",
    )
    ap.add_argument("--reference", type=float, help="reference ΔF in kT (adds |ΔF - ref| of the mean)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--sample",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sample-stage setting of the run (YAML value), e.g. bridge_mcmc_steps=10",
    )
    ap.add_argument("--json", help="also write the table to this JSON file")
    ap.add_argument(
        "--pool-with-source",
        action="store_true",
        help="add the source run's own SMC run(s) to the pooled estimate (same model, independent seeds)",
    )
    args = ap.parse_args()

    from boltzdiff.pipeline import analyze_run, stage_sample
    from boltzdiff.systems import load_system

    torch.set_num_threads(args.threads)
    src = Path(args.run_dir)
    pj = src / "pipeline.json"
    if not pj.exists() or not (src / "train" / "model.pt").exists():
        sys.exit(f"smc_repeats: {src} is not a finished `boltzdiff run` directory (pipeline.json, train/model.pt)")
    meta = json.loads(pj.read_text())
    system = load_system(meta["system_path"], meta.get("variant"))
    if args.pool:
        pool_only(src, args.pool, system, args.reference)
        return
    if not args.n:
        sys.exit("smc_repeats: --n: expected particle counts (or --pool DIR ...)")
    import yaml

    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sample)}
    # settings a preset may leave out
    optional = {
        "n_bridge",
        "max_bridge",
        "levels",
        "bridge_strata",
        "strata_max_sigma",
        "strata_min_share",
        "kernel_variance",
        "refine",
        "strata_denoised",
    }
    unknown = sorted(set(over) - set(meta["settings"]["sample"]) - optional)
    if unknown:
        sys.exit(f"smc_repeats: --sample: unknown setting(s) {unknown}; known: {sorted(meta['settings']['sample'])}")
    from boltzdiff.models.energy import refine_levels
    from boltzdiff.train import load_run

    grid0 = load_run(src / "train").model.grid
    tag = re.sub(r"[^A-Za-z0-9_.+-]", "", "".join(f"_{k}{v}" for k, v in over.items()))
    rows, results = [], []
    for n in args.n:
        if n < 1:
            sys.exit(f"smc_repeats: --n: expected positive particle counts, got {n}")
        for r in range(args.start, args.start + args.repeats):
            out = WORK / "smc_repeats" / f"{src.name}_n{n}{tag}_r{r}"
            prepare(src, out)
            settings = json.loads(json.dumps(meta["settings"]))
            settings["sample"].update(over, n=n)
            t0 = time.time()
            stage_sample(system, out, settings, progress=True, seed=1000 + r)  # skipped if done
            a = analyze_run(out, system=system)
            refine = settings["sample"].get("refine") or 1
            grid = grid0 if refine == 1 else refine_levels(load_run(src / "train").model, refine).grid
            bands = band_variances(out, grid, settings["sample"].get("levels"))
            res = dict(
                n=n,
                repeat=r,
                delta_f_kT=a.get("delta_f_kT"),
                delta_f_se_kT=a.get("delta_f_se_kT"),
                ess=a["ess"],
                n_target_evals=a["n_target_evals"],
                sample_wall_s=a.get("sample_wall_s", time.time() - t0),
                n_lineages=a.get("n_lineages"),
                logw_var_bands=bands,
                logw_var_0002_025=sum(v for k, v in bands.items() if k in ("0.05-0.25", "0.01-0.05", "0.002-0.01")),
            )
            results.append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)

    def fmt(v, spec="{:.2f}"):
        return "-" if v is None or not np.isfinite(v) else spec.format(v)

    print(f"SMC repeats on {src} ({meta['system']}, preset {meta['preset']}; sample settings {over or 'as run'})")
    print(machine())
    for r in results:
        rows.append(
            [
                r["n"],
                r["repeat"],
                fmt(r["delta_f_kT"]),
                fmt(r["delta_f_se_kT"]),
                fmt(r["ess"], "{:.3f}"),
                f"{r['n_target_evals']:.3g}",
                f"{r['sample_wall_s']:.0f}",
                r["n_lineages"] if r["n_lineages"] is not None else "-",
                fmt(r["logw_var_0002_025"], "{:.1f}"),
            ]
        )
    print_table(
        [
            "particles",
            "repeat",
            "ΔF (kT)",
            "bootstrap SE",
            "ESS",
            "target evals",
            "SMC wall s",
            "lineages",
            "log-w var, σ̄ 0.002-0.25",
        ],
        rows,
    )
    summary = []
    for n in args.n:
        d = np.array([r["delta_f_kT"] for r in results if r["n"] == n], dtype=float)
        se = np.array([r["delta_f_se_kT"] for r in results if r["n"] == n], dtype=float)
        ok = np.isfinite(d)
        s = dict(
            n=n,
            n_finite=int(ok.sum()),
            mean=float(d[ok].mean()) if ok.any() else None,
            sd_across=float(d[ok].std(ddof=1)) if ok.sum() > 1 else None,
            median_bootstrap_se=float(np.median(se[ok])) if ok.any() else None,
        )
        if args.reference is not None and s["mean"] is not None:
            s["abs_err_of_mean"] = abs(s["mean"] - args.reference)
        if args.repeats > 1 and args.start == 0:  # all repeats pooled by their Z estimates, jackknife over them
            pooled = pool(WORK / "smc_repeats", f"{src.name}_n{n}{tag}", args.repeats, src, args.pool_with_source)
            a = analyze_run(pooled, system=system)
            s.update(pooled_delta_f=a.get("delta_f_kT"), pooled_jackknife_se=a.get("delta_f_se_kT"))
            if args.reference is not None and a.get("delta_f_kT") is not None:
                s["abs_err_pooled"] = abs(a["delta_f_kT"] - args.reference)
        summary.append(s)
    print("\nper particle count (ΔF over the repeats with a finite value)")
    print_table(
        ["particles", "finite", "mean ΔF", "SD across repeats", "median bootstrap SE", "pooled ΔF ± jackknife SE"]
        + (["|pooled - ref|"] if args.reference is not None else []),
        [
            [
                s["n"],
                s["n_finite"],
                fmt(s["mean"]),
                fmt(s["sd_across"]),
                fmt(s["median_bootstrap_se"]),
                f"{fmt(s.get('pooled_delta_f'))} ± {fmt(s.get('pooled_jackknife_se'))}",
            ]
            + ([fmt(s.get("abs_err_pooled"))] if args.reference is not None else [])
            for s in summary
        ],
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(run_dir=str(src), machine=machine(), runs=results, summary=summary), indent=1)
        )


if __name__ == "__main__":
    main()
