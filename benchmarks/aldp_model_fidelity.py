"""Is the learned alanine-dipeptide energy right on its own, without the exact target's weights?

Trains models with ``boltzdiff train`` on Boltzmann frames of alanine dipeptide at 300 K (the quick preset's
recipe, from a ``boltzdiff run`` directory's ``pipeline.json``, plus each row's overrides), scores each with
``boltzdiff evaluate DIR --reference FRAMES --reference-energies ENERGIES`` and collects ``eval.json``'s
``model_only`` block (docs/method.md#model-only): the frames reweighted to the model's cleanest level, F(φ) on
72 bins against the frames' own, its RMSE where the reference F <= 6 kT, the model-only ΔF of the φ > 0 state
and the region offset (model ΔF minus reference ΔF).

    python benchmarks/aldp_model_fidelity.py --frames /tmp/aldp_ref/positions.npy \\
        --energies /tmp/aldp_ref/energies.npy --pipeline /tmp/aldp_ref/pipeline.json \\
        [--rows diffclf,dsm] [--seeds 0,1,2] [--jobs 2] [--dry-run]

``--from-runs DIR ...`` scores finished ``boltzdiff run`` directories instead (their ``analysis.json``'s
``model_only`` block) and adds **the plain sampler** to each: ``boltzdiff sample DIR/train --to-target`` with the
run's kernel and level refinement but no basin strata, no torsion moves and no sweeps at the target, as
``--plain-runs`` independent SMC runs of ``--plain-n`` particles; ΔF of the system's state from each run's
weighted particles, their mean, the half-range as its error (the jackknife over two runs), and the normalised ESS
at the end of the bridge (the lowest of the runs). Those records replace ones with the same name and seed.

    python benchmarks/aldp_model_fidelity.py --from-runs benchmarks/_work/repeats/diffclf_s{0,1,2}

``--pool-runs DIR ...`` gives the ``*_pooled`` rows their data: those runs' reference frames together (the same
recipe and number of steps on several times the frames).

Work directories: ``benchmarks/_work/model_fidelity/<row>_s<seed>/`` (a run whose ``eval.json`` exists is kept;
one with only ``ckpt.pt`` resumes). Writes ``benchmarks/results/aldp_model_fidelity.json``: each record
replaces the one with the same row name and seed, the other rows' records are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "model_fidelity"
RESULTS = ROOT / "benchmarks" / "results"

#: a row's ``data``: the run's raw metadynamics frames (``<frames dir>/metad/frames.npy``) with their log-weights
WEIGHTED_FRAMES = "metad frames, weighted"
#: a row's ``data``: the reference frames of the ``--pool-runs`` directories, concatenated (more data, same recipe)
POOLED_FRAMES = "pooled frames of --pool-runs"

#: (name, overrides of the recipe), in priority order
ROWS: list[tuple[str, dict]] = [
    ("diffclf", {}),
    ("dsm", {"loss": "dsm"}),
    ("diffclf_lclf1", {"lambda_clf": 1.0}),
    ("diffclf_precond1", {"precond_scale": 1.0}),
    ("diffclf_1500", {"steps": 1500}),
    ("diffclf_avg05", {"average_from": 0.5}),
    ("diffclf_lr5e-4", {"lr": 5.0e-4}),
    ("diffclf_torsions", {"pairmlp": {"stiffness_init": 1.0, "torsions": "cvs"}}),
    ("diffclf_k4", {"k": 4}),
    ("diffclf_levels64", {"n_levels": 64}),
    ("diffclf_12000", {"steps": 12000}),
    ("diffclf_12000_lr5e-4", {"steps": 12000, "lr": 5.0e-4}),
    # every metadynamics frame beside the resampled set, each batch drawn by the frames' exact weights exp(V/kT)
    ("diffclf_weighted_frames", {"data": WEIGHTED_FRAMES}),
    ("dsm_weighted_frames", {"loss": "dsm", "data": WEIGHTED_FRAMES}),
    # several independent runs' training frames together: does the basin offset shrink with the amount of data?
    ("diffclf_pooled", {"data": POOLED_FRAMES}),
    ("dsm_pooled", {"loss": "dsm", "data": POOLED_FRAMES}),
    # energy matching: E(x, t_0) - u(x) held constant over each batch of training frames (train.energy_weight)
    ("diffclf_energy1", {"energy_weight": 1.0}),
    ("dsm_energy1", {"loss": "dsm", "energy_weight": 1.0}),
    ("diffclf_pooled_energy1", {"data": POOLED_FRAMES, "energy_weight": 1.0}),
]
ROW_NAMES = [n for n, _ in ROWS]

#: the model_only fields copied into each run's record
FIELDS = (
    "phi_grid_rad",
    "f_phi_model_kT",
    "rmse_kT",
    "delta_f_model_kT",
    "delta_f_reference_kT",
    "region_offset_kT",
    "half_split_rms_kT",
    "ess_fraction",
    "log_weight_std",
)


def cli_prefix() -> list[str]:
    """The ``boltzdiff`` command line through this interpreter (works without an installed entry point)."""
    return [sys.executable, "-c", "from boltzdiff.cli import main; raise SystemExit(main())"]


def recipe(pipeline: Path) -> dict:
    """The training settings of a ``boltzdiff run`` directory's ``pipeline.json`` (its ``settings.train``),
    without the per-run fields (seed, device, n_models) that each row sets itself."""
    settings = json.loads(Path(pipeline).read_text())
    train = dict(settings["settings"]["train"])
    for k in ("seed", "device", "n_models"):
        train.pop(k, None)
    variant = settings.get("variant")
    return dict(train=train, variant=variant)


def row_config(
    base: dict, overrides: dict, data: Path, data_temperature: float, threads: int | None, pooled: Path | None = None
) -> dict:
    """The ``--config`` YAML mapping of one row: the recipe, the row's overrides, the frames and their
    temperature (for target score matching)."""
    train = dict(base["train"])
    train.update(overrides)
    if overrides.get("data") == POOLED_FRAMES:
        if pooled is None:
            raise SystemExit("--rows: a pooled row needs --pool-runs DIR ... (runs whose reference frames to pool)")
        train["data"] = str(pooled)
    elif overrides.get("data") == WEIGHTED_FRAMES:
        raw = Path(data).parent / "metad"
        train["data"], train["data_log_weights"] = str(raw / "frames.npy"), str(raw / "log_weights.npy")
    else:
        train["data"] = str(data)
    train["data_temperature"] = float(data_temperature)
    train["device"] = "cpu"
    if threads:
        train["num_threads"] = int(threads)
    out = dict(system="alanine_dipeptide", train=train)
    if base.get("variant"):
        out["variant"] = base["variant"]
    return out


def plan(args) -> list[dict]:
    """One job per (row, seed): its directory, config and the two commands."""
    base = recipe(args.pipeline)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROW_NAMES]
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {unknown}; known: {ROW_NAMES}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    jobs = []
    for name in wanted:  # priority order as given
        over = dict(ROWS[ROW_NAMES.index(name)][1])
        for seed in seeds:
            d = Path(args.work) / f"{name}_s{seed}"
            cfg = row_config(base, over, Path(args.frames), args.data_temperature, threads, args.pooled)
            train = [*cli_prefix(), "train", "--system", "alanine_dipeptide", "--data", cfg["train"]["data"]]
            train += ["--config", str(d / "cfg.yaml"), "--seed", str(seed), "--out", str(d / "train"), "--no-progress"]
            if (d / "train" / "ckpt.pt").exists() and not (d / "train" / "model.pt").exists():
                train.append("--resume")
            ev = [*cli_prefix(), "evaluate", str(d / "train"), "--reference", str(args.frames)]
            ev += ["--reference-energies", str(args.energies)]
            jobs.append(dict(name=name, seed=seed, overrides=over, dir=d, config=cfg, train=train, evaluate=ev))
    return jobs


def write_config(job: dict) -> Path:
    job["dir"].mkdir(parents=True, exist_ok=True)
    p = job["dir"] / "cfg.yaml"
    p.write_text(yaml.safe_dump(job["config"], sort_keys=False))
    return p


def run_job(job: dict) -> dict | None:
    """Train (unless model.pt exists) and evaluate (unless eval.json exists) one job; its record or None."""
    d, tdir = job["dir"], job["dir"] / "train"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = d / "log.txt"
    if not (tdir / "eval.json").exists():
        write_config(job)
        with open(log, "a") as fh:
            if not (tdir / "model.pt").exists():
                t0 = time.time()
                r = subprocess.run(job["train"], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
                print(f"  {job['name']} seed {job['seed']}: trained (rc {r.returncode}, {time.time() - t0:.0f} s)")
                if r.returncode != 0:
                    return None
            r = subprocess.run(job["evaluate"], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            if r.returncode != 0:
                print(f"  {job['name']} seed {job['seed']}: evaluate failed (rc {r.returncode}), see {log}")
                return None
    own = job.get("own_smc")
    if own is not None and not (d / "own_smc.json").exists():
        with open(log, "a") as fh:
            r = subprocess.run(own, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        print(f"  {job['name']} seed {job['seed']}: model's own SMC (rc {r.returncode})")
    return record(job)


def own_smc_command(job: dict, frames: Path, energies: Path, n: int, runs: int) -> list[str]:
    """``boltzdiff evaluate --estimator smc`` on a job's model: its own SMC, the profile scored against
    ``frames`` (``own_smc.json`` in the job's directory)."""
    cmd = [*cli_prefix(), "evaluate", str(job["dir"] / "train"), "--reference", str(frames)]
    cmd += ["--reference-energies", str(energies), "--estimator", "smc", "--smc-particles", str(n)]
    return cmd + [
        "--smc-runs",
        str(runs),
        "--seed",
        str(job["seed"]),
        "--model-only-out",
        str(job["dir"] / "own_smc.json"),
    ]


def record(job: dict) -> dict:
    tdir = job["dir"] / "train"
    mo = json.loads((tdir / "eval.json").read_text())["model_only"]
    summ = json.loads((tdir / "train_summary.json").read_text())
    loss = job["config"]["train"].get("loss", "diffclf")
    rec = dict(
        name=job["name"],
        loss=loss,
        seed=job["seed"],
        preset="quick-data",
        overrides=job["overrides"],
        steps=int(summ["steps"]),
    )
    rec.update({k: mo.get(k) for k in FIELDS})
    rec["train_wall_s"] = round(float(summ["wall_s"]), 1)
    if job.get("heldout") is not None:
        rec.update(heldout_scores(tdir, job["dir"] / "heldout.json", job["heldout"], job["config"].get("variant")))
    own = job["dir"] / "own_smc.json"
    if own.exists():
        mo = json.loads(own.read_text())["model_only"]
        rec.update({f"own_smc_{k}": mo.get(k) for k in FIELDS if k != "phi_grid_rad"})
        rec.update(own_smc_delta_f_runs_kT=mo.get("delta_f_model_runs_kT"), own_smc_runs=mo.get("smc"))
    return rec


def load_run_frames(runs: list[str]) -> tuple:
    """Frames and reduced energies of independent ``boltzdiff run`` directories' reference stages, concatenated
    (``reference/positions.npy``, ``reference/energies.npy``): the held-out frames, or the pooled rows' data."""
    import numpy as np

    xs = [np.load(Path(r) / "reference" / "positions.npy") for r in runs]
    us = [np.load(Path(r) / "reference" / "energies.npy") for r in runs]
    return np.concatenate(xs), np.concatenate(us)


def heldout_scores(tdir: Path, cache: Path, heldout: tuple, variant: str | None) -> dict:
    """The model-only figures of a trained model against the held-out frames (``heldout_*`` fields; cached)."""
    if not cache.exists():
        from boltzdiff.evaluate_molecule import model_only_block
        from boltzdiff.systems import load_system

        mo = model_only_block(load_system("alanine_dipeptide", variant=variant), tdir, heldout[0], heldout[1])
        cache.write_text(json.dumps({k: mo.get(k) for k in FIELDS}))
    mo = json.loads(cache.read_text())
    return {f"heldout_{k}": mo.get(k) for k in FIELDS if k != "phi_grid_rad"}


def plain_sampler(run: Path, n: int, n_runs: int, seed: int) -> dict:
    """The plain sampler on a run directory's first model (see the module's doc); its fields of the record."""
    import numpy as np

    from boltzdiff.analysis.states import delta_f_states, free_energy_spec, state_mask
    from boltzdiff.systems import load_system, system_cv_values

    meta = json.loads((run / "pipeline.json").read_text())
    s = meta["settings"]["sample"]
    system = load_system(meta["system_path"], meta.get("variant"))
    fe = free_energy_spec(system.spec)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    dfs, ess = [], []
    for r in range(n_runs):
        out = run / "plain_sampler" / f"run{r}.npz"
        if not out.with_suffix(".json").exists():
            out.parent.mkdir(exist_ok=True)
            cmd = [*cli_prefix(), "sample", str(run / "train"), "--sampler", "smc", "--to-target", "--n", str(n)]
            cmd += ["--seed", str(seed + 7919 * r + 1), "--refine", str(s.get("refine", 1))]
            cmd += [
                "--kernel-variance",
                str(s.get("kernel_variance", "fisher")),
                "--mcmc-steps",
                str(s.get("mcmc_steps", 1)),
            ]
            cmd += ["--out", str(out), "--no-progress"]
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        summ = json.loads(out.with_suffix(".json").read_text())
        with np.load(out) as z:
            x, log_w = z["x"], z["log_w"]
        vals = system_cv_values(system, x, mirror=True).values
        a = state_mask(vals, fe.state)
        b = None if fe.against is None else state_mask(vals, fe.against)
        dfs.append(float(delta_f_states(a, b, log_w, n_bootstrap=0).delta_f))
        ess.append(float(summ["ess"]))  # no resampling after the final reweighting: the bridge end's ESS
    finite = [d for d in dfs if np.isfinite(d)]
    return dict(
        delta_f_plain_sampler_kT=float(np.mean(finite)) if len(finite) == len(dfs) else None,
        delta_f_plain_sampler_se_kT=(max(dfs) - min(dfs)) / 2 if len(finite) == len(dfs) and len(dfs) > 1 else None,
        delta_f_plain_sampler_runs_kT=[d if np.isfinite(d) else None for d in dfs],
        ess_bridge_end=min(ess),
        plain_sampler=dict(n=n, runs=n_runs, refine=s.get("refine", 1), kernel_variance=s.get("kernel_variance")),
    )


def record_from_run(run: Path, n: int, n_runs: int) -> dict:
    a = json.loads((run / "analysis.json").read_text())
    meta = json.loads((run / "pipeline.json").read_text())
    train = meta["settings"]["train"]
    summ = json.loads((run / "train" / "train_summary.json").read_text())
    mo = a["model_only"]
    rec = dict(
        name=f"run_{train.get('loss', 'diffclf')}",
        loss=train.get("loss", "diffclf"),
        seed=int(meta.get("seed", 0)),
        preset=f"{meta.get('preset')} (boltzdiff run, its own training data)",
        overrides={},
        steps=int(summ["steps"]),
    )
    rec.update({k: mo.get(k) for k in FIELDS})
    rec["train_wall_s"] = round(float(summ["wall_s"]), 1)
    rec["delta_f_pipeline_kT"] = a.get("delta_f_kT")
    rec.update(plain_sampler(run, n, n_runs, int(meta.get("seed", 0))))
    return rec


def write_merged(out: Path, new: list[dict]) -> None:
    """Write ``new`` into the results file ``out``, replacing the records with the same (name, seed) and keeping
    every other row's (atomically: a temporary file renamed over ``out``)."""
    old = json.loads(out.read_text()) if out.exists() else []
    keys = {(r["name"], r["seed"]) for r in new}
    recs = [r for r in old if (r["name"], r["seed"]) not in keys] + new
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(recs, indent=1) + "\n")
    os.replace(tmp, out)


def _fmt(v, nd=2) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def table(records: list[dict]) -> str:
    """Markdown table: per row the median (and per-seed values) of the model-only figures."""
    lines = [
        "| row | ΔF model (kT) | offset (kT) | F(φ) RMSE (kT) | half-split (kT) | log-w std | ESS frac "
        "| held-out offset | own SMC ΔF | own SMC offset | own SMC RMSE |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = [r["delta_f_reference_kT"] for r in records if r.get("delta_f_reference_kT") is not None]
    for name in dict.fromkeys(r["name"] for r in records):
        rs = sorted((r for r in records if r["name"] == name), key=lambda r: r["seed"])

        def cell(key, nd=2, rs=rs):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if not vals:
                return "—"
            return f"**{statistics.median(vals):.{nd}f}** ({', '.join(_fmt(v, nd) for v in vals)})"

        cols = [f"{name} (seeds {','.join(str(r['seed']) for r in rs)})"]
        cols += [cell("delta_f_model_kT"), cell("region_offset_kT"), cell("rmse_kT"), cell("half_split_rms_kT")]
        cols += [cell("log_weight_std"), cell("ess_fraction", 3)]
        cols += [cell("heldout_region_offset_kT"), cell("own_smc_delta_f_model_kT"), cell("own_smc_region_offset_kT")]
        cols += [cell("own_smc_rmse_kT")]
        lines.append("| " + " | ".join(cols) + " |")
    if ref:
        lines.append(f"\nReference ΔF of the frames: {statistics.median(ref):.2f} kT.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", default="/tmp/aldp_ref/positions.npy", help="Boltzmann frames (F, 22, 3) nm")
    p.add_argument("--energies", default="/tmp/aldp_ref/energies.npy", help="their reduced energies (F,)")
    p.add_argument("--pipeline", default="/tmp/aldp_ref/pipeline.json", help="pipeline.json with the recipe")
    p.add_argument("--data-temperature", type=float, default=300.0, help="K the frames were sampled at")
    p.add_argument("--rows", default=",".join(ROW_NAMES), help=f"comma list, in priority order, of {ROW_NAMES}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (subprocesses)")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--out", default=str(RESULTS / "aldp_model_fidelity.json"))
    p.add_argument("--dry-run", action="store_true", help="write the configs and print the commands only")
    p.add_argument("--from-runs", nargs="+", default=None, metavar="DIR", help="score `boltzdiff run` directories")
    p.add_argument("--plain-n", type=int, default=2000, help="particles per plain-sampler SMC run")
    p.add_argument("--plain-runs", type=int, default=2, help="independent plain-sampler SMC runs")
    p.add_argument(
        "--heldout-runs",
        nargs="+",
        default=None,
        metavar="DIR",
        help="also score each model on these independent runs' reference frames (heldout_* fields)",
    )
    p.add_argument(
        "--own-smc",
        type=int,
        default=0,
        metavar="N",
        help="also run each model's own SMC (no target energy) with N particles per run (own_smc_* fields)",
    )
    p.add_argument("--own-smc-runs", type=int, default=2, help="independent runs of --own-smc")
    p.add_argument(
        "--pool-runs",
        nargs="+",
        default=None,
        metavar="DIR",
        help="the pooled rows' training data: these runs' reference frames, concatenated",
    )
    args = p.parse_args(argv)
    args.pooled = None
    if args.pool_runs:
        import numpy as np

        args.pooled = Path(args.work) / "pooled_frames.npy"
        args.pooled.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.pooled, load_run_frames(args.pool_runs)[0])
    if args.from_runs:
        out = Path(args.out)
        new = [record_from_run(Path(d), args.plain_n, args.plain_runs) for d in args.from_runs]
        write_merged(out, new)
        print(table(new))
        for r in new:
            print(
                f"{r['name']} seed {r['seed']}: plain sampler ΔF {_fmt(r['delta_f_plain_sampler_kT'])} ± "
                f"{_fmt(r['delta_f_plain_sampler_se_kT'])}, ESS at the bridge end {r['ess_bridge_end']:.3f}; "
                f"full sampler {_fmt(r['delta_f_pipeline_kT'])}"
            )
        print(f"wrote {out}")
        return 0

    jobs = plan(args)
    heldout = load_run_frames(args.heldout_runs) if args.heldout_runs else None
    frames, energies = Path(args.frames), Path(args.energies)
    if heldout is not None:  # the own SMC's profile is scored against the held-out frames too
        Path(args.work).mkdir(parents=True, exist_ok=True)
        frames, energies = Path(args.work) / "heldout_frames.npy", Path(args.work) / "heldout_energies.npy"
        import numpy as np

        np.save(frames, heldout[0])
        np.save(energies, heldout[1])
    for job in jobs:
        job["heldout"] = heldout
        if args.own_smc:
            job["own_smc"] = own_smc_command(job, frames, energies, args.own_smc, args.own_smc_runs)
    if args.dry_run:
        for job in jobs:
            cfg = write_config(job)
            print(f"# {job['name']} seed {job['seed']} ({cfg})")
            print(shlex.join(job["train"]))
            print(shlex.join(job["evaluate"]))
        return 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        recs = [r for r in pool.map(run_job, jobs) if r is not None]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_merged(out, recs)
    print(table(recs))
    print(f"wrote {out} ({len(recs)} of {len(jobs)} runs)")
    return 0 if len(recs) == len(jobs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
