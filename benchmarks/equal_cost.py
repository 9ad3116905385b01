"""ΔF error against cost: the generator, metadynamics alone and plain MD on alanine dipeptide, counting every
target-energy evaluation (the ones that made the training data included).

Methods (temperature 300 K unless said):

- **plain MD**: the block estimates of ``benchmarks/results/aldp_vs_md.json`` (26 ns; no block ever enters
  0 < φ < 2, so no ΔF at any budget);
- **metadynamics alone**: well-tempered metadynamics over (φ, ψ) with the bias frozen after its build phase and
  the frames reweighted by exp(V/kT): the code that makes the training data (``stage_reference``), at several
  lengths with the quick preset's build fraction, each repeat its own seed; ΔF from the weighted frames. The
  quick length's repeats are the generator runs' own training data;
- **generator (DiffCLF)**, **generator (DSM-only)**: ``boltzdiff run`` repeats from ``benchmarks/aldp_repeats.py``
  (``aldp_repeats_diffclf.json``, ``aldp_repeats_dsm.json`` where they exist), cost = metadynamics steps + frame
  energies + sampling + the rotation integral; and the full preset's single runs of each loss from
  ``aldp_vs_md.json``;
- **generator reused at T** (330, 360 K): repeat runs' models asked again (``--stem``: which repeats),
  ``boltzdiff sample RUN_DIR --temperature T``, counting only the new evaluations;
- **metadynamics data reweighted to T**: each generator run's 300 K metadynamics frames reweighted by
  exp((1 − T₀/T) u) — the other way to reuse what was paid for; new cost: the frames' energies.

References: 300 K, the long metadynamics replicates of ``aldp_reference_implicit_metad.json``; at T, every
metadynamics-alone run pooled (each run's normalised weights times its length) and reweighted to T, its error
the jackknife over runs, checked at 300 K against the long replicates. The generator runs' own data are not in
it.

    python benchmarks/equal_cost.py metad [--ns 0.7,2.8] [--repeats 5]   # metadynamics-alone runs
    python benchmarks/equal_cost.py reuse [--temperatures 330,360] [--runs 5] [--stem diffclf]
    python benchmarks/equal_cost.py report    # -> benchmarks/results/equal_cost.json and .png

Work directories under ``benchmarks/_work/equal_cost/`` (finished runs are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "_work" / "equal_cost"
REPEATS = ROOT / "benchmarks" / "_work" / "repeats"
RESULTS = ROOT / "benchmarks" / "results"
T0 = 300.0
#: the quick preset's metadynamics: 0.4 ns of bias build-up in 1.4 ns
BUILD_FRACTION = 0.4 / 1.4
#: metadynamics-alone seeds start here (the generator runs use the preset's 21 + their --seed)
METAD_SEED0 = 1000


def _lse(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return -math.inf
    m = a.max()
    return float(m + np.log(np.exp(a - m).sum()))


def system():
    from boltzdiff.systems import load_system

    return load_system("alanine_dipeptide")


def state_masks(sys_, run: dict) -> tuple[np.ndarray, np.ndarray]:
    """Which of a run's frames lie in the system's ΔF state and in the state it is measured against (computed
    once per run and kept in it)."""
    if "masks" not in run:
        from boltzdiff.analysis.states import free_energy_spec, state_mask
        from boltzdiff.systems import system_cv_values

        fe = free_energy_spec(sys_.spec)
        vals = system_cv_values(sys_, run["frames"], mirror=False).values
        a = state_mask(vals, fe.state)
        run["masks"] = (a, ~a if fe.against is None else state_mask(vals, fe.against))
    return run["masks"]


def energies(sys_, run: dict) -> np.ndarray:
    """The reduced energies (at the system's temperature) of a run's frames, cached beside them."""
    from boltzdiff.analysis.pipeline_analysis import target_energies

    cache = run["dir"] / "raw_energies.npy"
    if cache.exists():
        return np.load(cache)
    u = target_energies(sys_.target, run["frames"].reshape(len(run["frames"]), -1).astype(np.float64))
    np.save(cache, u)
    return u


def metad_run_dir(ns: float, seed: int) -> Path:
    return WORK / f"metad_{ns:g}ns_s{seed}"


def metad_settings(ns: float, seed: int) -> dict:
    """The quick preset's metadynamics settings at ``ns`` in total (build + production)."""
    from boltzdiff.pipeline import resolve_settings

    ref = dict(resolve_settings(system(), "quick")["reference"])
    ref.update(build_ns=round(ns * BUILD_FRACTION, 6), ns=round(ns * (1 - BUILD_FRACTION), 6), seed=int(seed))
    return ref


def cmd_metad(args) -> int:
    from boltzdiff.pipeline import stage_reference

    sys_ = system()
    for ns in [float(v) for v in args.ns.split(",")]:
        for i in range(args.repeats):
            seed = METAD_SEED0 + 100 * i + int(round(ns * 10))
            d = metad_run_dir(ns, seed)
            if (d / "reference" / "progress.json").exists() and (d / "reference" / "positions.npy").exists():
                continue
            t0 = time.time()
            stage_reference(sys_, d, {"reference": metad_settings(ns, seed)}, progress=not args.no_progress)
            print(f"metad {ns:g} ns seed {seed}: {time.time() - t0:.0f} s", flush=True)
    return 0


def cmd_reuse(args) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs = sorted(REPEATS.glob(f"{args.stem}_s*/analysis.json"), key=lambda p: int(p.parent.name.rsplit("_s", 1)[1]))
    for a in runs[: args.runs]:
        run = a.parent
        seed = int(run.name.rsplit("_s", 1)[1])
        for t in [float(v) for v in args.temperatures.split(",")]:
            out = run / f"at_{t:g}K"
            if (out / "analysis.json").exists():
                continue
            cmd = [sys.executable, "-c", "from boltzdiff.cli import main; raise SystemExit(main())", "sample", str(run)]
            cmd += ["--temperature", f"{t:g}", "--seed", str(seed), "--no-progress"]
            t0 = time.time()
            with open(WORK / f"reuse_{run.name}_{t:g}K.log", "a") as fh:
                r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            print(f"{run.name} at {t:g} K: rc {r.returncode}, {time.time() - t0:.0f} s", flush=True)
    return 0


def metad_runs() -> list[dict]:
    """Every finished metadynamics-alone run: its length, seed, raw frames, log-weights and cost."""
    out = []
    for d in sorted(WORK.glob("metad_*ns_s*")):
        ref = d / "reference"
        if not (ref / "metad" / "log_weights.npy").exists():
            continue
        ns = float(d.name.split("_")[1][:-2])
        settings = json.loads((ref / "progress.json").read_text()).get("settings", {})
        frames = np.load(ref / "metad" / "frames.npy")
        out.append(
            dict(
                dir=d,
                ns=ns,
                seed=int(d.name.split("_s")[-1]),
                frames=frames,
                log_w=np.load(ref / "metad" / "log_weights.npy").astype(np.float64),
                n_target_evals=int(round(ns * 1e6 / float(settings.get("timestep_fs", 1.0))))
                + len(np.load(ref / "positions.npy", mmap_mode="r")),
            )
        )
    return out


def log_masses(sys_, run: dict, t: float) -> tuple[float, float, float]:
    """log of a run's weight at temperature ``t`` in the ΔF state, in the state against it, and in all frames."""
    lw = run["log_w"]
    if t != T0:
        lw = lw + (1.0 - T0 / t) * energies(sys_, run)
    a, b = state_masks(sys_, run)
    return _lse(lw[a]), _lse(lw[b]), _lse(lw)


def delta_f_at(sys_, run: dict, t: float) -> float:
    """ΔF of one metadynamics run's weighted frames at temperature ``t``."""
    la, lb, _ = log_masses(sys_, run, t)
    return -(la - lb)


def pooled_reference(sys_, runs: list[dict], t: float) -> tuple[float, float]:
    """ΔF at ``t`` of all runs pooled (each run's normalised weights times its frame count) and its jackknife
    error over the runs."""
    m = np.array([log_masses(sys_, r, t) for r in runs])  # (runs, 3)
    scale = np.log([len(r["log_w"]) for r in runs]) - m[:, 2]  # normalise each run, times its length

    def pooled(keep: np.ndarray) -> float:
        return -(_lse((m[:, 0] + scale)[keep]) - _lse((m[:, 1] + scale)[keep]))

    n = len(runs)
    full = pooled(np.ones(n, bool))
    jk = np.array([pooled(np.arange(n) != i) for i in range(n)])
    se = math.sqrt((n - 1) / n * np.sum((jk - jk.mean()) ** 2)) if n > 1 else math.nan
    return full, se


def pooled_mean_energy(sys_, runs: list[dict], t: float) -> tuple[float, float]:
    """The reduced energy's mean at ``t`` (in kT at ``t``: (T0/t) u) over all runs pooled like
    :func:`pooled_reference`, and its jackknife error over the runs."""
    parts = []
    for r in runs:
        u = energies(sys_, r)
        lw = r["log_w"] + ((1.0 - T0 / t) * u if t != T0 else 0.0)
        w = np.exp(lw - lw.max())
        parts.append((len(u), float((w * u).sum() / w.sum()) * T0 / t))
    n_frames = np.array([p[0] for p in parts], float)
    means = np.array([p[1] for p in parts])
    full = float((n_frames * means).sum() / n_frames.sum())
    n = len(parts)
    jk = np.array(
        [(np.delete(n_frames, i) * np.delete(means, i)).sum() / np.delete(n_frames, i).sum() for i in range(n)]
    )
    se = math.sqrt((n - 1) / n * np.sum((jk - jk.mean()) ** 2)) if n > 1 else math.nan
    return full, se


def row(method: str, t: float, evals: list[int], dfs: list[float | None], ref: float, **extra) -> dict:
    ok = [d for d in dfs if d is not None and math.isfinite(d)]
    return dict(
        method=method,
        temperature_K=t,
        n_target_evals=int(np.median(evals)) if evals else None,
        repeats=len(dfs),
        rms_error_kT=None if not ok else float(math.sqrt(np.mean([(d - ref) ** 2 for d in ok]))),
        mean_delta_f_kT=None if not ok else float(np.mean(ok)),
        failed=len(dfs) - len(ok),
        **extra,
    )


def cmd_report(args) -> int:
    sys_ = system()
    long_ref = json.loads((RESULTS / "aldp_reference_implicit_metad.json").read_text())
    runs = metad_runs()
    temps = [T0] + [float(v) for v in args.temperatures.split(",")]
    refs = {}
    for t in temps:
        f, se = pooled_reference(sys_, runs, t) if runs else (math.nan, math.nan)
        refs[t] = dict(pooled_delta_f_kT=f, pooled_se_kT=se)
        if runs:
            e, e_se = pooled_mean_energy(sys_, runs, t)
            refs[t].update(mean_energy_kT=e, mean_energy_se_kT=e_se)
    refs[T0].update(delta_f_kT=long_ref["reference_delta_f_kT"], se_kT=long_ref["reference_delta_f_se_kT"])
    for t in temps[1:]:
        refs[t].update(delta_f_kT=refs[t]["pooled_delta_f_kT"], se_kT=refs[t]["pooled_se_kT"])
    rows = []
    md = json.loads((RESULTS / "aldp_vs_md.json").read_text())
    for r in md["rows"]:
        if r["method"].startswith("plain MD"):
            rows.append(
                dict(
                    method="plain MD",
                    temperature_K=T0,
                    n_target_evals=r["n_target_evals"],
                    repeats=r.get("n_blocks", 1),
                    rms_error_kT=None,
                    mean_delta_f_kT=None,
                    failed=r.get("n_blocks", 1),
                    note="no frame in 0 < phi < 2 (from aldp_vs_md.json)",
                )
            )
    ref0 = refs[T0]["delta_f_kT"]
    reps = long_ref.get("replicates") or []
    if len(reps) > 2:  # the long replicates, each against the mean of the others (leave-one-out)
        dfs = [r["delta_f_kT"] for r in reps]
        loo = [np.mean(dfs[:i] + dfs[i + 1 :]) for i in range(len(dfs))]
        errs = [d - m for d, m in zip(dfs, loo)]
        rows.append(
            dict(
                method="metadynamics alone, long (reference replicates, each against the mean of the others)",
                temperature_K=T0,
                n_target_evals=int(np.median([r["md_steps"] + r["n_frames"] for r in reps])),
                repeats=len(reps),
                rms_error_kT=float(math.sqrt(np.mean(np.square(errs)))),
                mean_delta_f_kT=float(np.mean(dfs)),
                failed=0,
            )
        )
    for r in md["rows"]:  # the full preset's single runs (their cost counts the 10 ns of metadynamics)
        if "full preset" in r["method"]:
            name = "generator (DiffCLF)" if r["method"].startswith("DiffCLF") else "generator (DSM-only)"
            rows.append(row(f"{name}, full preset, one run", T0, [r["n_target_evals"]], [r["delta_f_kT"]], ref0))
    for ns in sorted({r["ns"] for r in runs}):
        rs = [r for r in runs if r["ns"] == ns]
        rows.append(
            row(
                "metadynamics alone",
                T0,
                [r["n_target_evals"] for r in rs],
                [delta_f_at(sys_, r, T0) for r in rs],
                ref0,
                ns=ns,
            )
        )
    gen = {}  # results file stem -> runs; "diffclf" / "dsm" for the default recipe, "<loss>_<tag>" for variants
    for f in sorted(RESULTS.glob("aldp_repeats_*.json")):
        gen[f.stem[len("aldp_repeats_") :]] = json.loads(f.read_text())["runs"]
    # the generator runs' own training data, as metadynamics alone at the quick length
    data_runs, seen = [], set()
    for stem, recs in gen.items():
        for rec in recs:
            d = REPEATS / f"{stem}_s{rec['seed']}" / "reference" / "metad"
            if rec["seed"] not in seen and (d / "log_weights.npy").exists():  # one per seed: the data are the seed's
                seen.add(rec["seed"])
                data_runs.append(
                    dict(
                        dir=d.parent,
                        frames=np.load(d / "frames.npy"),
                        log_w=np.load(d / "log_weights.npy").astype(np.float64),
                        n_target_evals=rec["n_data_evals"],
                        seed=rec["seed"],
                        loss=rec["loss"],
                    )
                )
    if data_runs:
        rows.append(
            row(
                "metadynamics alone (the generator runs' training data)",
                T0,
                [r["n_target_evals"] for r in data_runs],
                [delta_f_at(sys_, r, T0) for r in data_runs],
                ref0,
                ns=1.4,
            )
        )
    names = {"diffclf": "generator (DiffCLF)", "dsm": "generator (DSM-only)"}
    for stem, all_recs in gen.items():
        loss, _, tag = stem.partition("_")
        # one row per recipe: runs made before the HMC trajectories after the sweeps existed are kept apart
        by_hmc: dict[int, list] = {}
        for r in all_recs:
            by_hmc.setdefault(int(r.get("n_final_hmc") or 0), []).append(r)
        for n_hmc, recs in sorted(by_hmc.items(), reverse=True):
            name = names[loss] + (f", {tag}" if tag else "")
            if len(by_hmc) > 1:
                name += f", {n_hmc} HMC trajectories after the sweeps" if n_hmc else ", no HMC after the sweeps"
            rows.append(
                row(
                    name,
                    T0,
                    [r["n_target_evals"] for r in recs],
                    [r["delta_f_kT"] for r in recs],
                    ref0,
                    seeds=[r["seed"] for r in recs],
                    lr=recs[0].get("lr"),
                )
            )
    for t in temps[1:]:
        ref_t = refs[t]["delta_f_kT"]
        for stem, recs in gen.items():
            reuse = []
            for rec in recs:
                a = REPEATS / f"{stem}_s{rec['seed']}" / f"at_{t:g}K" / "analysis.json"
                if a.exists():
                    reuse.append(json.loads(a.read_text()))
            if reuse:
                loss, _, tag = stem.partition("_")
                name = (
                    "generator reused ("
                    + ("DiffCLF" if loss == "diffclf" else "DSM-only")
                    + (f", {tag})" if tag else ")")
                )
                rows.append(
                    row(name, t, [r["n_target_evals"] for r in reuse], [r.get("delta_f_kT") for r in reuse], ref_t)
                )
        dr = data_runs
        if dr:
            rows.append(
                row(
                    "metadynamics data reweighted to T",
                    t,
                    [len(r["frames"]) for r in dr],
                    [delta_f_at(sys_, r, t) for r in dr],
                    ref_t,
                )
            )
    payload = dict(
        command="python benchmarks/equal_cost.py report",
        machine=args.machine,
        references={f"{t:g}": v for t, v in refs.items()},
        reference_note="300 K: long metadynamics replicates; other T: every metadynamics-alone run pooled and "
        "reweighted to T (jackknife over runs); pooled_* at 300 K checks that estimator against the replicates",
        rows=rows,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "equal_cost.json").write_text(json.dumps(payload, indent=1) + "\n")
    plot(rows, refs, RESULTS / "equal_cost.png")
    print(table(rows, refs))
    print(f"wrote {RESULTS / 'equal_cost.json'} and .png")
    return 0


def _evals(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.0f} k"


def table(rows: list[dict], refs: dict) -> str:
    lines = [
        "| method | T (K) | target evals (median) | repeats | RMS error (kT) | mean ΔF (kT) | reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = refs[r["temperature_K"]]
        rms = "no ΔF" if r["rms_error_kT"] is None else f"{r['rms_error_kT']:.2f}"
        mean = "—" if r["mean_delta_f_kT"] is None else f"{r['mean_delta_f_kT']:.2f}"
        lines.append(
            f"| {r['method']} | {r['temperature_K']:g} | {_evals(r['n_target_evals'])} | {r['repeats']} | "
            f"{rms} | {mean} | {ref['delta_f_kT']:.2f} ± {ref['se_kT']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], refs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = sorted({r["temperature_K"] for r in rows})
    fig, axes = plt.subplots(1, len(temps), figsize=(4.6 * len(temps), 5.2), squeeze=False, sharey=True)

    def marker(m: str) -> str:
        if "one run" in m:
            return "x"
        return "s" if m.startswith("metadynamics") else ("^" if "DSM" in m else ("D" if "lr" in m else "o"))

    for ax, t in zip(axes[0], temps):
        for m in dict.fromkeys(r["method"] for r in rows if r["temperature_K"] == t):
            rs = sorted(
                (r for r in rows if r["temperature_K"] == t and r["method"] == m), key=lambda r: r["n_target_evals"]
            )
            xs = [r["n_target_evals"] for r in rs if r["rms_error_kT"] is not None]
            ys = [r["rms_error_kT"] for r in rs if r["rms_error_kT"] is not None]
            if xs:
                ax.plot(xs, ys, marker=marker(m), label=m)
            elif m == "plain MD":
                ax.axvspan(
                    min(r["n_target_evals"] for r in rs),
                    max(r["n_target_evals"] for r in rs),
                    color="0.9",
                    label="plain MD: no ΔF (never enters φ > 0)",
                )
        se = refs[t].get("se_kT")
        if se is not None and math.isfinite(se):
            ax.axhline(se, color="0.4", ls=":", lw=1, label="the reference's own error")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(0.005, 3.0)
        ax.set_xlabel("target-energy evaluations")
        ax.set_ylabel("ΔF RMS error (kT)")
        ax.set_title(f"{t:g} K (reference {refs[t]['delta_f_kT']:.2f} ± {refs[t]['se_kT']:.2f} kT)", fontsize=9)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("metad")
    m.add_argument("--ns", default="0.7,2.8", help="total lengths (build + production), ns")
    m.add_argument("--repeats", type=int, default=5)
    m.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("reuse")
    r.add_argument("--temperatures", default="330,360")
    r.add_argument("--runs", type=int, default=5, help="how many repeat runs to ask again")
    r.add_argument("--stem", default="diffclf", help="which repeats: benchmarks/_work/repeats/<stem>_s<S>/")
    rp = sub.add_parser("report")
    rp.add_argument("--temperatures", default="330,360")
    rp.add_argument("--machine", default="2-core CPU (no GPU)")
    args = p.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    return {"metad": cmd_metad, "reuse": cmd_reuse, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
