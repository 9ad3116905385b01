"""ΔF error against the reference vs target-energy evaluations: plain MD and the Boltzmann generator.

Plain MD: one long Langevin trajectory of alanine dipeptide (implicit solvent, 300 K, 1 fs, resumable in
benchmarks/_work/aldp_md_long) is cut into independent blocks of each budget; every block gives its own ΔF
(METHOD.md §6), and the table reports the root-mean-square error of the block estimates against the reference
(benchmarks/aldp_reference.py) and the fraction of blocks that never visited the φ > 0 basin (ΔF undefined; those
count as failures, not as zero error). One MD step = one target energy+force evaluation.

Boltzmann generator: each ``--bg LABEL=RUN_DIR`` (a `boltzdiff run` directory) contributes one row: its ΔF ± SE,
|ΔF − reference| and the evaluations it spent (the MD steps of its training data plus the SMC's target
evaluations).

    python benchmarks/aldp_vs_md.py [--md-ns 10] [--bg "DiffCLF=benchmarks/_work/bg/aldp_implicit_full_diffclf_seed0"]

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
    ap.add_argument("--budgets", default="0.25,0.5,1,2,5,10,20,50")
    args = ap.parse_args()

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
    phi, _ = phi_psi(res.positions, system.topology)
    budgets = [float(b) for b in args.budgets.split(",")]
    rows = md_block_errors(
        np.asarray(phi), 1000.0 / args.save_every_ps, ref, [b for b in budgets if b <= args.md_ns / 2]
    )
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
    print(f"{'method':<34} {'target evals':>13} {'|err| / RMS kT':>15} {'failed':>7} {'blocks':>7}")
    for r in rows:
        print(
            f"{r['method']:<34} {r['n_target_evals']:13.3g} {r['rms_error_kT']:15.3f} "
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        mdr = [r for r in rows if r["method"].startswith("plain MD")]
        ax.loglog(
            [r["n_target_evals"] for r in mdr],
            [r["rms_error_kT"] if r["rms_error_kT"] is not None else np.nan for r in mdr],
            "o-",
            label="plain MD (RMS)",
        )
        for r in rows:
            if not r["method"].startswith("plain MD") and r["rms_error_kT"] is not None:
                ax.loglog([r["n_target_evals"]], [max(r["rms_error_kT"], 1e-3)], "s", label=r["method"])
        ax.axhline(max(ref_se, 1e-3), color="0.6", ls=":", label="reference SE")
        ax.set(xlabel="target energy evaluations", ylabel="ΔF error (kT)", title="ALDP ΔF error vs budget")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "aldp_vs_md.png", dpi=120)
    except Exception as e:  # noqa: BLE001
        print(f"(plot skipped: {e})")


if __name__ == "__main__":
    main()
