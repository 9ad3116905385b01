"""Alanine dipeptide, vacuum -> OBC implicit solvent (amber99sbildn, amber99_obc, 300 K, no constraints):
F_B - F_A from the interpolant energy (``boltzdiff freeenergy``, both of its estimates) against MBAR over an
alchemical lambda path, each with the target-energy evaluations it spent (end-state sampling included).

    python benchmarks/aldp_solvation.py [--seeds 0-2] [--mbar-repeats 3] [--ps-per-window 200] [--windows 12]
                                        [--loss diffclf] [--table-only] [--md-bar-ns 3]
                                        [--state-ns NS] [--state-method md|metad]

Work directories: ``benchmarks/_work/solvation/`` (finished runs are kept). Writes
``benchmarks/results/aldp_solvation.json`` (one row per estimate and run: ``delta_f_kT, delta_f_se_kT,
method, n_target_evals``, plus the summary) and ``aldp_solvation.png`` (ΔF against cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "solvation"
RESULTS = ROOT / "benchmarks" / "results"
STATES = ("alanine_dipeptide:vacuum", "alanine_dipeptide:implicit")


def parse_seeds(text: str) -> list[int]:
    a, _, b = text.partition("-")
    return list(range(int(a), int(b or a) + 1))


def _alchemical(f: Path, lambdas, ps: float, seed: int, equilibrate_ps: float) -> dict:
    """``alchemical_mbar`` between the two states, cached in ``f`` (its scalar results)."""
    if not f.exists():
        from boltzdiff.freeenergy.alchemical import alchemical_mbar

        r = alchemical_mbar(
            "alanine_dipeptide",
            "vacuum",
            "implicit",
            lambdas,
            ps_per_window=ps,
            save_every_ps=1.0,
            seed=seed,
            equilibrate_ps=equilibrate_ps,
        )
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({k: v for k, v in r.items() if not isinstance(v, np.ndarray)}, default=float))
    r = json.loads(f.read_text())
    return {k: r[k] for k in ("delta_f_kT", "delta_f_se_kT", "n_target_evals")}


def mbar_row(seed: int, args) -> dict:
    f = WORK / f"mbar_w{args.windows}_ps{args.ps_per_window:g}_s{seed}.json"
    r = _alchemical(f, np.linspace(0.0, 1.0, args.windows), args.ps_per_window, 1000 + seed, 10.0)
    return dict(method="mbar_alchemical", seed=seed, **r, windows=args.windows, ps_per_window=args.ps_per_window)


def md_bar_row(seed: int, args) -> dict:
    """A check of the baseline that shares none of its windows: long plain MD of each end state alone (after
    0.5 ns of equilibration, so its start structure is forgotten) and BAR between the two (MBAR over lambda 0
    and 1; u_B - u_A spreads over ~2 kT, so the end states overlap directly)."""
    ns = args.md_bar_ns
    r = _alchemical(WORK / f"bar_md_ns{ns:g}_s{seed}.json", [0.0, 1.0], 1000.0 * ns, 2000 + seed, 500.0)
    return dict(method="bar_plain_md_end_states", seed=seed, **r, ns_per_state=ns)


def interpolant_rows(seed: int, args) -> list[dict]:
    tag = (f"_ns{args.state_ns:g}" if args.state_ns else "") + (f"_{args.state_method}" if args.state_method else "")
    d = WORK / f"{args.loss}{tag}_s{seed}"
    done = (d / "estimates.json").exists() and "endpoint_bar" in json.loads((d / "estimates.json").read_text())
    if not done and not args.table_only:
        cmd = [
            sys.executable,
            "-m",
            "boltzdiff.cli",
            "freeenergy",
            *STATES,
            "--out",
            str(d),
            "--seed",
            str(seed),
            "--loss",
            args.loss,
            "--no-progress",
            *(["--set", f"state_ns={args.state_ns}"] if args.state_ns else []),
            *(["--set", f"state_method={args.state_method}"] if args.state_method else []),
        ]
        with open(WORK / f"{d.name}.log", "a") as fh:
            subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if not (d / "estimates.json").exists():
        return []
    e = json.loads((d / "estimates.json").read_text())
    n = e["n_target_evals"]
    states = n["state_a"] + n["state_b"]
    rows = []
    label = f"interpolant_{args.loss}{tag}"
    c = e["classifier"]
    if c.get("delta_f_kT") is not None:
        rows.append(
            dict(
                method=f"{label}_classifier",
                seed=seed,
                delta_f_kT=c["delta_f_kT"],
                delta_f_se_kT=None,
                n_target_evals=states + n["train"] + n["refit"],
            )
        )
    ais = e["ais"]
    for k in ("forward", "reverse", "bar"):
        if k in ais:
            rows.append(
                dict(
                    method=f"{label}_ais_{k}",
                    seed=seed,
                    delta_f_kT=ais[k]["delta_f_kT"],
                    delta_f_se_kT=ais[k]["delta_f_se_kT"],
                    n_target_evals=n["total"],
                    ess=ais[k].get("ess"),
                )
            )
    if "endpoint_bar" in e:  # the same end-state samples, BAR between them directly (no interpolant)
        ep = e["endpoint_bar"]
        rows.append(
            dict(
                method=f"endpoint_bar{tag}",
                seed=seed,
                delta_f_kT=ep["delta_f_kT"],
                delta_f_se_kT=ep["delta_f_se_kT"],
                n_target_evals=states + ep["n_target_evals"],
            )
        )
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for m in dict.fromkeys(r["method"] for r in rows):
        v = [r["delta_f_kT"] for r in rows if r["method"] == m]
        out.append(
            dict(
                method=m,
                repeats=len(v),
                mean_delta_f_kT=statistics.mean(v),
                sd_kT=statistics.stdev(v) if len(v) > 1 else None,
                se_of_mean_kT=statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else None,
                n_target_evals=statistics.median(r["n_target_evals"] for r in rows if r["method"] == m),
            )
        )
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, m in enumerate(dict.fromkeys(r["method"] for r in rows)):
        rr = [r for r in rows if r["method"] == m]
        ax.errorbar(
            [r["n_target_evals"] for r in rr],
            [r["delta_f_kT"] for r in rr],
            yerr=[r["delta_f_se_kT"] or 0 for r in rr],
            fmt="os^vD"[i % 5],
            label=m,
            alpha=0.8,
        )
    ax.set(
        xscale="log",
        xlabel="target-energy evaluations",
        ylabel="F(implicit) − F(vacuum) (kT)",
        title="alanine dipeptide, vacuum → OBC, 300 K",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--mbar-repeats", type=int, default=3)
    p.add_argument("--ps-per-window", type=float, default=200.0)
    p.add_argument("--windows", type=int, default=12)
    p.add_argument("--loss", default="diffclf", choices=["diffclf", "dsm"])
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--state-ns", type=float, default=None, help="ns of each state's sampling (default: the preset's)")
    p.add_argument("--state-method", choices=["md", "metad"], default=None, help="each state's sampling")
    p.add_argument("--md-bar-ns", type=float, default=0.0, help="also BAR between NS of plain MD per end state")
    p.add_argument("--md-bar-repeats", type=int, default=3)
    args = p.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(args.mbar_repeats):
        if args.table_only and not (WORK / f"mbar_w{args.windows}_ps{args.ps_per_window:g}_s{s}.json").exists():
            continue
        rows.append(mbar_row(s, args))
        print(f"mbar seed {s}: {rows[-1]['delta_f_kT']:.3f} ± {rows[-1]['delta_f_se_kT']:.3f}", flush=True)
    for s in range(args.md_bar_repeats if args.md_bar_ns > 0 else 0):
        rows.append(md_bar_row(s, args))
        print(f"plain-MD BAR seed {s}: {rows[-1]['delta_f_kT']:.3f} ± {rows[-1]['delta_f_se_kT']:.3f}", flush=True)
    for s in parse_seeds(args.seeds):
        rows += interpolant_rows(s, args)
    out = RESULTS / "aldp_solvation.json"
    old = json.loads(out.read_text())["runs"] if out.exists() else []
    keep = [r for r in old if (r["method"], r["seed"]) not in {(x["method"], x["seed"]) for x in rows}]
    rows = keep + rows
    summary = summarise(rows)
    out.write_text(
        json.dumps(
            dict(
                command="python benchmarks/aldp_solvation.py " + " ".join(argv or sys.argv[1:]),
                machine="2-core CPU",
                states=list(STATES),
                summary=summary,
                runs=rows,
            ),
            indent=1,
        )
        + "\n"
    )
    plot(rows, RESULTS / "aldp_solvation.png")
    print("| method | repeats | mean F_B − F_A (kT) | SD | evals |\n|---|---|---|---|---|")
    for r in summary:
        sd = "—" if r["sd_kT"] is None else f"{r['sd_kT']:.3f}"
        print(f"| {r['method']} | {r['repeats']} | {r['mean_delta_f_kT']:.3f} | {sd} | {r['n_target_evals']:,.0f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
