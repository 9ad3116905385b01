"""The README's main job, repeated: ``boltzdiff run --seed S`` for several seeds, one after the other.

Each seed draws its own metadynamics training data (the preset's reference seed + S), trains and samples: the
runs are independent end to end. Per run the table lists ΔF of the system's state against the reference (from
``benchmarks/results/aldp_reference_implicit_metad.json``), the reweighted mean reduced energy against the
training frames', the bridge's final ESS, the model-alone figures and the cost in target-energy evaluations,
counting the metadynamics steps that made the training data.

    python benchmarks/aldp_repeats.py [--seeds 0-9] [--loss diffclf|dsm] [--preset quick] [--train-set lr=1e-3]

``--train-set KEY=VALUE`` and ``--sample-set KEY=VALUE`` (repeatable) change the preset's training or sampling
settings: the runs use a copy of the shipped system whose run.yaml has them
(``benchmarks/_work/repeats/systems/<tag>/``), and their directories and results file carry the tag
(``<loss>_<tag>_s<S>``, ``aldp_repeats_<loss>_<tag>.json``). The reference data depend on the seed only, so rows
with the same seeds are paired. ``--reuse-trained TAG`` (with ``--sample-set`` only) starts each seed from a copy
of the finished run ``<loss>_<TAG>_s<S>`` (``-`` for the untagged one) and redoes its sample and analysis stages:
the same data and models, sampled differently.

Work directories: ``benchmarks/_work/repeats/<loss>_s<S>/``
(finished runs are kept, interrupted ones resume). Writes ``benchmarks/results/aldp_repeats_<loss>.json``, merged
by seed into the runs it already holds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "repeats"
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = RESULTS / "aldp_reference_implicit_metad.json"


def cli() -> list[str]:
    return [sys.executable, "-c", "from boltzdiff.cli import main; raise SystemExit(main())"]


def parse_seeds(text: str) -> list[int]:
    """``0-9`` or ``0,3,5``."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def data_evals(run: Path) -> int:
    """Target-energy evaluations that made the run's training data: every metadynamics (or MD) step, plus the
    energies of the kept frames."""
    p = json.loads((run / "pipeline.json").read_text())
    ref = p["settings"].get("reference") or {}
    step_fs = float(ref.get("timestep_fs", 1.0))
    ps = 1000.0 * (float(ref.get("build_ns", 0.0)) + float(ref.get("ns", 0.0)))
    if ref.get("method", "md") == "md":
        ps *= max(1, len(ref.get("starts") or [None]))
    n_frames = 0
    pos = run / "reference" / "positions.npy"
    if pos.exists():
        import numpy as np

        n_frames = int(np.load(pos, mmap_mode="r").shape[0])
    return int(round(ps * 1000.0 / step_fs)) + n_frames


def _run_commit(run: Path) -> str | None:
    info = run / "run_info.json"
    return json.loads(info.read_text()).get("git_commit") if info.exists() else None


def record(run: Path, seed: int, loss: str, wall_s: float | None, ref: dict) -> dict:
    a = json.loads((run / "analysis.json").read_text())
    mo = a.get("model_only") or {}
    dfe = a.get("delta_f_kT")
    rec = dict(
        seed=seed,
        loss=loss,
        temperature_K=float(a.get("temperature_K", 300.0)),
        delta_f_kT=dfe,
        delta_f_se_kT=a.get("delta_f_se_kT"),
        abs_error_kT=None if dfe is None else abs(dfe - ref["reference_delta_f_kT"]),
        mean_energy_kT=a.get("mean_energy_kT"),
        reference_mean_energy_kT=a.get("reference_mean_energy_kT"),
        ess=a.get("ess"),
        ess_bridge_end=a.get("ess_final_step"),
        model_only_delta_f_kT=mo.get("delta_f_model_kT"),
        model_only_offset_kT=mo.get("region_offset_kT"),
        model_only_rmse_kT=mo.get("rmse_kT"),
        data_delta_f_kT=a.get("md_delta_f_kT"),
        n_sample_evals=int(a.get("n_target_evals", 0)),
        n_data_evals=data_evals(run),
        lr=(json.loads((run / "pipeline.json").read_text())["settings"]["train"].get("lr")),
        train_wall_s=a.get("train_wall_s"),
        sample_wall_s=a.get("sample_wall_s"),
        wall_s=wall_s,
        sanity_ok=(a.get("sanity") or {}).get("ok"),
        # which recipe made the run: its commit, and the HMC trajectories after the sweeps (0 before they existed)
        commit=_run_commit(run),
        n_final_hmc=int(a.get("n_final_hmc") or 0),
    )
    if rec["mean_energy_kT"] is not None and rec["reference_mean_energy_kT"] is not None:
        rec["mean_energy_diff_kT"] = rec["mean_energy_kT"] - rec["reference_mean_energy_kT"]
    long_e = ref.get("mean_energy_kT")
    if rec["mean_energy_kT"] is not None and long_e is not None:
        # against the independent metadynamics replicates' pooled mean (equal_cost.json), not the run's own
        # 1.4 ns of frames, whose mean scatters by ~0.25 kT from seed to seed
        rec["mean_energy_diff_long_ref_kT"] = rec["mean_energy_kT"] - long_e
    md_e = ref.get("md_mean_energy_kT")
    if rec["mean_energy_kT"] is not None and md_e is not None:
        # against plain MD without bias or reweighting (benchmarks/aldp_reference_energy.py)
        rec["mean_energy_diff_md_ref_kT"] = rec["mean_energy_kT"] - md_e
    rec["n_target_evals"] = rec["n_sample_evals"] + rec["n_data_evals"]
    rec.update(alternative_estimates(a, ref["reference_delta_f_kT"]))
    return rec


def alternative_estimates(a: dict, reference: float) -> dict:
    """Two other readings of the same run, recorded beside the pipeline's ΔF to be judged on fresh seeds:
    the plain mean of the independent SMC runs' ΔF (each run counted once, where the pipeline pools the runs by
    their normalising constants), and the inverse-variance combination of the pipeline's ΔF with its training
    data's own estimate (the generator's error bar: the larger of the jackknife over runs and the particle
    bootstrap)."""
    out: dict = {}
    runs = a.get("delta_f_runs_kT") or []
    if runs:
        m = statistics.mean(runs)
        out.update(delta_f_mean_of_runs_kT=m, abs_error_mean_of_runs_kT=abs(m - reference))
    d, md, md_se = a.get("delta_f_kT"), a.get("md_delta_f_kT"), a.get("md_delta_f_se_kT")
    se = max(a.get("delta_f_se_kT") or 0.0, a.get("delta_f_se_particles_kT") or 0.0)
    if d is not None and md is not None and md_se and se:
        w1, w2 = 1.0 / se**2, 1.0 / md_se**2
        c = (w1 * d + w2 * md) / (w1 + w2)
        out.update(delta_f_with_data_kT=c, abs_error_with_data_kT=abs(c - reference))
    return out


def variant_system(args) -> tuple[str, str]:
    """The system argument and the tag of ``--train-set``/``--sample-set`` (``("alanine_dipeptide", "")``
    without them)."""
    if not args.train_set and not args.sample_set:
        return "alanine_dipeptide", ""
    import shutil

    import yaml

    from boltzdiff.commands._common import parse_key_values
    from boltzdiff.systems import SYSTEMS_DIR

    over = {
        "train": parse_key_values(args.train_set, "--train-set"),
        "sample": parse_key_values(args.sample_set, "--sample-set"),
    }
    tag = "_".join(f"{k}{v}" for stage in ("train", "sample") for k, v in over[stage].items())
    d = Path(args.work) / "systems" / tag / "alanine_dipeptide"
    if not d.exists():
        shutil.copytree(SYSTEMS_DIR / "alanine_dipeptide", d)
        ry = yaml.safe_load((d / "run.yaml").read_text())
        for stage in ("train", "sample"):
            ry["presets"][args.preset].setdefault(stage, {}).update(over[stage])
        (d / "run.yaml").write_text(yaml.safe_dump(ry, sort_keys=False))
    return str(d), tag


def seed_from_trained(d: Path, seed: int, args) -> bool:
    """Copy the finished run of ``--reuse-trained`` for ``seed`` into ``d`` without its sample and analysis
    outputs, pointed at this variant's system; True when ``d`` must then be run with ``--redo sample``."""
    if not args.reuse_trained or d.exists():
        return bool(args.reuse_trained) and not (d / "analysis.json").exists()
    import shutil

    src_tag = "" if args.reuse_trained == "-" else args.reuse_trained
    src = Path(args.work) / (f"{args.loss}_{src_tag}_s{seed}" if src_tag else f"{args.loss}_s{seed}")
    if not (src / "train").exists():
        raise SystemExit(f"--reuse-trained: {src} has no finished train stage")
    d.mkdir(parents=True)
    for name in ("reference", "train", "train_models", "pipeline.json", "run_info.json"):
        if (src / name).is_dir():
            shutil.copytree(src / name, d / name)
        elif (src / name).exists():
            shutil.copy2(src / name, d / name)
    p = json.loads((d / "pipeline.json").read_text())
    p["system_path"] = str((Path(args.system_arg) / "system.yaml").resolve())
    (d / "pipeline.json").write_text(json.dumps(p, indent=1))
    return True


def run_dir_of(args, seed: int) -> Path:
    tag = args.tag
    return Path(args.work) / (f"{args.loss}_{tag}_s{seed}" if tag else f"{args.loss}_s{seed}")


def run_one(seed: int, args, ref: dict) -> dict | None:
    d = run_dir_of(args, seed)
    system_arg = args.system_arg
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    wall = None
    redo = seed_from_trained(d, seed, args)
    if not (d / "analysis.json").exists():
        d.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            *cli(),
            "run",
            system_arg,
            "--preset",
            args.preset,
            "--seed",
            str(seed),
            "--loss",
            args.loss,
            "--out",
            str(d),
        ]
        cmd += ["--no-progress", "--allow-degenerate"] + (["--redo", "sample"] if redo else [])
        t0 = time.time()
        with open(d.parent / f"{d.name}.log", "a") as fh:
            r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        wall = time.time() - t0
        print(f"  seed {seed}: rc {r.returncode}, {wall:.0f} s", flush=True)
        if not (d / "analysis.json").exists():
            return None
    wall_file = d / "bench_wall_s.json"
    if wall is not None:
        wall_file.write_text(json.dumps(wall))
    elif wall_file.exists():
        wall = json.loads(wall_file.read_text())
    return record(d, seed, args.loss, wall, ref)


def _wall(w) -> str:
    return "—" if w is None else f"{w // 60:.0f} min {w % 60:02.0f} s"


def table(recs: list[dict], ref: dict) -> str:
    lines = [
        "| seed | ΔF (kT) | \\|err\\| | ⟨u⟩ − ⟨u⟩_frames / _replicates / _plain MD | ESS (bridge end) "
        "| model alone ΔF / offset / RMSE "
        "| evals (data + sampling) | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        lines.append(
            f"| {r['seed']} | {r['delta_f_kT']:.2f} ± {r['delta_f_se_kT']:.2f} | {r['abs_error_kT']:.2f} | "
            f"{r.get('mean_energy_diff_kT', float('nan')):+.2f} / "
            f"{r.get('mean_energy_diff_long_ref_kT', float('nan')):+.2f} / "
            f"{r.get('mean_energy_diff_md_ref_kT', float('nan')):+.2f} | "
            f"{r['ess']:.2f} ({r['ess_bridge_end']:.2f}) | "
            f"{r['model_only_delta_f_kT']:.2f} / {r['model_only_offset_kT']:+.2f} / {r['model_only_rmse_kT']:.2f} | "
            f"{r['n_data_evals'] / 1e6:.2f} M + {r['n_sample_evals'] / 1e6:.2f} M | "
            f"{_wall(r['wall_s'])} |"
        )
    dfs = [r["delta_f_kT"] for r in recs]
    tol = 0.25
    n_in = sum(r["abs_error_kT"] <= tol for r in recs)
    n_e = sum(abs(r.get("mean_energy_diff_kT", 9.9)) <= 0.3 for r in recs)
    n_el = sum(abs(r.get("mean_energy_diff_long_ref_kT", 9.9)) <= 0.3 for r in recs)
    n_md = sum(abs(r.get("mean_energy_diff_md_ref_kT", 9.9)) <= 0.3 for r in recs)
    sd = statistics.stdev(dfs) if len(dfs) > 1 else 0.0
    lines.append(
        f"\n{len(recs)} runs: mean ΔF {statistics.mean(dfs):.2f}, SD {sd:.2f}, "
        f"RMS error {statistics.mean([(x - ref['reference_delta_f_kT']) ** 2 for x in dfs]) ** 0.5:.2f} kT "
        f"(reference {ref['reference_delta_f_kT']:.3f} ± {ref['reference_delta_f_se_kT']:.3f}); "
        f"{n_in}/{len(recs)} within {tol} kT; mean energy within 0.3 kT of the run's own frames in {n_e}/{len(recs)}, "
        f"of the metadynamics replicates' ({ref.get('mean_energy_kT') or float('nan'):.2f}) in {n_el}/{len(recs)}, "
        f"of plain MD's ({ref.get('md_mean_energy_kT') or float('nan'):.2f}) in {n_md}/{len(recs)}."
    )
    for key, label in (
        ("abs_error_mean_of_runs_kT", "the plain mean of the SMC runs"),
        ("abs_error_with_data_kT", "combined with the data's estimate"),
    ):
        errs = [r[key] for r in recs if r.get(key) is not None]
        if errs:
            rms = statistics.mean([e**2 for e in errs]) ** 0.5
            lines.append(
                f"ΔF read as {label}: RMS error {rms:.2f} kT, {sum(e <= tol for e in errs)}/{len(errs)} "
                f"within {tol} kT."
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-9")
    p.add_argument("--loss", default="diffclf", choices=["diffclf", "dsm"])
    p.add_argument("--preset", default="quick", choices=["quick", "full"])
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--out", default=None, help="default: benchmarks/results/aldp_repeats_<loss>.json")
    p.add_argument("--table-only", action="store_true", help="tabulate finished runs, start none")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE", help="a training setting")
    p.add_argument("--sample-set", action="append", default=[], metavar="KEY=VALUE", help="a sampling setting")
    p.add_argument("--reuse-trained", default=None, metavar="TAG", help="redo only sampling on these runs' models")
    args = p.parse_args(argv)
    args.system_arg, args.tag = variant_system(args)  # the system to run and the tag of --train-set
    ref = json.loads(REFERENCE.read_text())
    ec = RESULTS / "equal_cost.json"
    if ec.exists():
        ref["mean_energy_kT"] = (json.loads(ec.read_text()).get("references", {}).get("300") or {}).get(
            "mean_energy_kT"
        )
    md = RESULTS / "aldp_reference_energy.json"
    if md.exists():
        ref["md_mean_energy_kT"] = json.loads(md.read_text())["mean_energy_kT"]
    recs = []
    for seed in parse_seeds(args.seeds):
        d = run_dir_of(args, seed)
        if args.table_only and not (d / "analysis.json").exists():
            continue
        rec = run_one(seed, args, ref)
        if rec is not None:
            recs.append(rec)
    if not recs:
        print("no finished runs")
        return 1
    tag = args.tag
    out = Path(args.out or RESULTS / f"aldp_repeats_{args.loss}{'_' + tag if tag else ''}.json")
    command = "python benchmarks/" + Path(__file__).name + " " + " ".join(argv if argv is not None else sys.argv[1:])
    # merged by seed into what the file holds (other seeds' runs and the commands that made them are kept)
    old = json.loads(out.read_text()) if out.exists() else {}
    seeds = {r["seed"] for r in recs}
    runs = sorted([r for r in old.get("runs", []) if r["seed"] not in seeds] + recs, key=lambda r: r["seed"])
    commands = old.get("commands") or ([old["command"]] if old.get("command") else [])
    payload = dict(
        command=command,
        commands=[c for c in commands if c != command] + [command],
        reference_delta_f_kT=ref["reference_delta_f_kT"],
        reference_delta_f_se_kT=ref["reference_delta_f_se_kT"],
        runs=runs,
    )
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, out)
    print(table(recs, ref))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
