"""ΔF error against the reference vs target-energy evaluations: plain MD and the Boltzmann generator.

Plain MD: one long Langevin trajectory of alanine dipeptide (implicit solvent, 300 K, 1 fs, resumable in
benchmarks/_work/aldp_md_long) is cut into independent blocks of each budget; every block gives its own ΔF
(METHOD.md §6), and the table reports the root-mean-square error of the block estimates against the reference
(benchmarks/aldp_reference.py) and the fraction of blocks that never visited the φ > 0 basin (ΔF undefined; those
count as failures, not as zero error). One MD step = one target energy+force evaluation.

The whole trajectory also gives one estimate of its own (``plain MD (whole run)``): run it for about the
generator's budget (``--md-ns 26`` for the full preset's 26 M evaluations) for the equal-budget row.

Boltzmann generator: each ``--bg LABEL=RUN_DIR`` (a `boltzdiff run` directory) contributes one row: its ΔF ± SE,
|ΔF − reference| and the evaluations it spent (the MD steps of its training data plus the SMC's target
evaluations). ``--bg-results FILE`` takes the rows from a results file written by ``bg_systems.py`` instead
(one per entry of its ``runs``), so the comparison can be redone after the run directories are gone.

    python benchmarks/aldp_vs_md.py [--md-ns 10] [--bg "DiffCLF=benchmarks/_work/bg/aldp_implicit_full_diffclf_seed0"]
    python benchmarks/aldp_vs_md.py --md-ns 26 --bg-results benchmarks/results/aldp_implicit.json

Writes benchmarks/results/aldp_vs_md.json and aldp_vs_md.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"


def md_block_errors(phi_t: np.ndarray, frames_per_ns: float, ref: float, budgets_ns) -> list[dict]:
    """RMS error of ΔF over non-overlapping blocks of each budget (ns)."""
    from boltzdiff.analysis.free_energy import delta_f_phi

    rows = []
    for b in budgets_ns:
        m = int(round(b * frames_per_ns))
        n_blocks = len(phi_t) // m if m > 0 else 0
        if n_blocks < 2:
            continue
        vals = np.array([delta_f_phi(phi_t[i * m : (i + 1) * m], n_bootstrap=0).delta_f for i in range(n_blocks)])
        ok = np.isfinite(vals)
        rms = float(np.sqrt(np.mean((vals[ok] - ref) ** 2))) if ok.any() else float("nan")
        rows.append(
            dict(
                method="plain MD (block estimates)",
                budget_ns=b,
                n_target_evals=int(round(b * 1e6)),
                n_blocks=int(n_blocks),
                failed_fraction=float(1 - ok.mean()),
                rms_error_kT=rms,
                mean_delta_f_kT=float(vals[ok].mean()) if ok.any() else float("nan"),
            )
        )
    return rows


def md_whole_run(phi_t: np.ndarray, frames_per_ns: float, md_ns: float, ref: float) -> dict:
    """The whole trajectory as one estimate, with a moving-block bootstrap SE over 1 ns blocks (with a handful
    of basin visits this SE is itself rough: the visits, not the frames, are the independent samples)."""
    from boltzdiff.analysis.free_energy import delta_f_phi

    est = delta_f_phi(
        phi_t, n_bootstrap=200, rng=np.random.default_rng(0), block_length=max(1, int(round(frames_per_ns)))
    )
    ok = math.isfinite(est.delta_f)
    return dict(
        method="plain MD (whole run)",
        budget_ns=md_ns,
        n_target_evals=int(round(md_ns * 1e6)),
        n_blocks=1,
        failed_fraction=0.0 if ok else 1.0,
        delta_f_kT=float(est.delta_f) if ok else None,
        delta_f_se_kT=float(est.se) if ok and math.isfinite(est.se) else None,
        rms_error_kT=abs(est.delta_f - ref) if ok else float("nan"),
        mean_delta_f_kT=float(est.delta_f) if ok else None,
        basin_fraction=float(np.mean((phi_t > 0) & (phi_t < 2))),
    )


LOSS_LABELS = {"diffclf": "DiffCLF", "dsm": "DSM-only"}


def bg_rows_from_results(path: Path, ref: float) -> list[dict]:
    """One row per run recorded in a ``bg_systems.py`` results file (``runs``)."""
    d = json.loads(path.read_text())
    rows = []
    for r in d.get("runs", [d]):
        dfk = r.get("delta_f_kT")
        ok = isinstance(dfk, int | float) and math.isfinite(dfk)
        if "n_total_target_evals" not in r:
            raise SystemExit(f"aldp_vs_md: {path}: a run has no 'n_total_target_evals' (not a bg_systems.py file?)")
        rows.append(
            dict(
                method=LOSS_LABELS.get(r.get("loss"), str(r.get("loss"))) + f" ({r.get('preset', '?')} preset)",
                budget_ns=r.get("n_reference_evals", 0) / 1e6,
                n_target_evals=int(r["n_total_target_evals"]),
                delta_f_kT=dfk,
                delta_f_se_kT=r.get("delta_f_se_kT"),
                rms_error_kT=abs(dfk - ref) if ok else float("nan"),
                failed_fraction=0.0 if ok else 1.0,
                n_blocks=1,
                ess=r.get("ess"),
                ess_final_step=r.get("ess_final_step"),
                source=str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md-ns", type=float, default=10.0, help="length of the long MD trajectory (resumed/extended)")
    ap.add_argument("--save-every-ps", type=float, default=1.0)
    ap.add_argument(
        "--reference",
        default=None,
        help="reference JSON (default: the metadynamics reference where it exists, else the umbrella one)",
    )
    ap.add_argument("--bg", action="append", default=[], metavar="LABEL=RUN_DIR")
    ap.add_argument("--bg-results", action="append", default=[], metavar="FILE", help="bg_systems.py results JSON")
    ap.add_argument("--budgets", default="0.25,0.5,1,2,5,10,20,50")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from the results file")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((RESULTS / "aldp_vs_md.json").read_text()), RESULTS / "aldp_vs_md.png")
        return

    from _common import aldp_reference_file

    from boltzdiff import md
    from boltzdiff.cv import phi_psi
    from boltzdiff.systems import load_system

    ref_path = Path(args.reference) if args.reference else aldp_reference_file("implicit")
    if not ref_path.is_file():
        sys.exit(f"aldp_vs_md: no reference {ref_path}; run benchmarks/aldp_reference.py first")
    ref_json = json.loads(ref_path.read_text())
    ref, ref_se = ref_json["reference_delta_f_kT"], ref_json["reference_delta_f_se_kT"]
    system = load_system("alanine_dipeptide", "implicit")
    res = md.run_md(
        system,
        WORK / "aldp_md_long",
        md.MDConfig(ns=args.md_ns, save_every_ps=args.save_every_ps, seed=7),
        progress=True,
    )
    phi, _ = phi_psi(res.positions, system.topology, phi=system.spec["cvs"]["phi"], psi=system.spec["cvs"]["psi"])
    budgets = [float(b) for b in args.budgets.split(",")]
    rows = md_block_errors(
        np.asarray(phi), 1000.0 / args.save_every_ps, ref, [b for b in budgets if b <= args.md_ns / 2]
    )
    rows.append(md_whole_run(np.asarray(phi), 1000.0 / args.save_every_ps, args.md_ns, ref))
    for path in args.bg_results:
        rows.extend(bg_rows_from_results(Path(path).resolve(), ref))
    for spec in args.bg:
        label, run_dir = spec.split("=", 1)
        a = json.loads((Path(run_dir) / "analysis.json").read_text())
        pj = json.loads((Path(run_dir) / "pipeline.json").read_text())
        # MD steps of the training data, the metadynamics bias build included (as bg_systems.py counts them)
        from bg_systems import reference_evals

        n_md = reference_evals(pj["settings"], "molecule")
        dfk = a.get("delta_f_kT")
        ok = isinstance(dfk, int | float) and math.isfinite(dfk)
        rows.append(
            dict(
                method=label,
                budget_ns=n_md / 1e6,
                n_target_evals=n_md + int(a.get("n_target_evals", 0)),
                delta_f_kT=a.get("delta_f_kT"),
                delta_f_se_kT=a.get("delta_f_se_kT"),
                rms_error_kT=abs(a["delta_f_kT"] - ref) if ok else float("nan"),
                failed_fraction=0.0 if ok else 1.0,  # no weighted particle in the basin: ΔF undefined
                n_blocks=1,
                ess=a.get("ess"),
                reference_temperature_K=a.get("reference_temperature_K"),
            )
        )
    print(f"reference ΔF = {ref:.3f} ± {ref_se:.3f} kT ({ref_json.get('method')})")
    print(f"{'method':<34} {'target evals':>13} {'ΔF ± SE kT':>14} {'|err| / RMS kT':>15} {'failed':>7} {'blocks':>7}")
    for r in rows:
        dfk, se = r.get("delta_f_kT"), r.get("delta_f_se_kT")
        dfs = f"{dfk:.2f} ± {se:.2f}" if isinstance(dfk, float) and isinstance(se, float) else "-"
        print(
            f"{r['method']:<34} {r['n_target_evals']:13.3g} {dfs:>14} {r['rms_error_kT']:15.3f} "
            f"{r.get('failed_fraction', 0.0):7.2f} {r.get('n_blocks', 1):7d}"
        )

    def _finite(v):  # strict JSON: NaN/inf become null
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    rows = [{k: _finite(v) for k, v in r.items()} for r in rows]
    out = dict(
        reference_delta_f_kT=ref,
        reference_delta_f_se_kT=ref_se,
        md_ns=args.md_ns,
        rows=rows,
        command="python benchmarks/aldp_vs_md.py " + " ".join(sys.argv[1:]),
    )
    from boltzdiff.runinfo import atomic_write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "aldp_vs_md.json", out)
    plot(out, RESULTS / "aldp_vs_md.png")


def plot(out: dict, path: Path) -> None:
    """ΔF error vs evaluations; a budget at which a method gave no ΔF (no frame/particle in the basin) is
    drawn as a cross on the top edge."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"(plot skipped: {e})")
        return
    rows, ref_se = out["rows"], out["reference_delta_f_se_kT"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_xscale("log")
    ax.set_yscale("log")
    top = 10.0
    for kind, marker in (("plain MD (block estimates)", "o-"), ("plain MD (whole run)", "D")):
        mdr = [r for r in rows if r["method"] == kind]
        ok = [r for r in mdr if r["rms_error_kT"] is not None and r.get("failed_fraction", 0) < 1]
        if ok:
            ax.plot([r["n_target_evals"] for r in ok], [r["rms_error_kT"] for r in ok], marker, label=kind)
        bad = [r for r in mdr if r not in ok]
        if bad:
            ax.plot(
                [r["n_target_evals"] for r in bad],
                [top] * len(bad),
                "x",
                ms=9,
                color="C3" if kind.endswith("estimates)") else "C1",
                label=f"{kind}: never in the basin",
            )
    for k, r in enumerate(r for r in rows if not r["method"].startswith("plain MD")):
        if r["rms_error_kT"] is None:
            ax.plot([r["n_target_evals"]], [top], "x", ms=9, color=f"C{k + 4}", label=f"{r['method']}: no ΔF")
            continue
        se = r.get("delta_f_se_kT") or 0.0
        ax.errorbar(
            [r["n_target_evals"]],
            [max(r["rms_error_kT"], 1e-3)],
            yerr=[[0.0], [se]],
            fmt="s",
            capsize=3,
            color=f"C{k + 4}",
            label=f"{r['method']} (bar: +SE)",
        )
    ax.axhline(max(ref_se, 1e-3), color="0.6", ls=":", label="reference SE")
    ax.axhline(top, color="0.85", lw=0.8)
    ax.set_xlim(1e5, 1e8)
    ax.set_ylim(3e-3, top * 1.6)
    ax.set(
        xlabel="target energy evaluations", ylabel="|ΔF − reference| (kT)", title="ALDP implicit: ΔF error vs budget"
    )
    ax.legend(fontsize=6.5, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
