"""Throughput: training steps/s and SMC particle-levels/s at 1 and 2 processes, and the Python-overhead share.

    python benchmarks/throughput.py [--quick] [--only training|smc|profile] [--repeats 3] [--device cpu|cuda]
        [--models gmm,aldp,lj55] [--procs 1,2] [--run MODEL=RUN_DIR] [--json PATH] [--work DIR]

Models: ``gmm`` (gmm2_unbalanced, the TrainConfig defaults: residual MLP, batch 256, k 4, 64 levels), ``aldp``
(alanine_dipeptide with its run.yaml train settings: pair-distance MLP, batch 128, k 2, 160 levels, target
score matching; trained on frames of a short 300 K MD run made once with ``boltzdiff simulate``) and ``lj55``
(lj55 with a small EGNN: hidden 32, 2 layers, batch 16, k 2, 64 levels; trained on the shipped minimum plus
0.02 noise, as the target has no exact sampler). Every process runs one thread (``OMP_NUM_THREADS=1``,
``num_threads: 1``), so the 2-process rows compare two cores with one.

1. Training. Each run is one ``train()`` under ``torchrun --standalone --nproc_per_node P`` (P = 1 or 2, the same
   global batch), as ``boltzdiff train`` runs it (:func:`boltzdiff.distributed.launched`, then
   :func:`boltzdiff.train.train`): ``warm`` DSM-only steps, ``window`` timed DSM-only steps, ``warm`` DiffCLF
   steps, ``window`` timed DiffCLF steps (``warmup_steps`` switches the loss). A global optimiser post-step hook
   notes the time after every step on rank 0, so the seconds per step are the training loop's own, warm-up and
   setup excluded (``train_summary.json``'s ``sec_per_step`` includes both; it is kept in the JSON). Repeats are
   interleaved (1, 2, 1, 2, ...); the tables give medians and the median of the per-repeat ratios 2-proc/1-proc.
2. SMC. ``torchrun ... -m boltzdiff -- sample RUN --n N`` on a trained run of each model, model-only and
   ``--to-target`` (the geometric bridge to the exact energy, 2 MALA steps per bridge step), P = 1 and 2
   interleaved; particle-levels/s = n x (levels + bridge steps) / the sampler's own ``wall_s``. The run is the
   short 1-process training run of section 1 (or ``--run MODEL=DIR``, e.g. a recipe's ``RUN/train``); the cost
   per level does not depend on how well it is trained, but an untrained ALDP model on a coarse sub-grid kills
   every particle on the bridge, so ALDP always runs all 160 levels.
3. Profile. One training run (both windows) and both SMC runs per model, in this process, 1 thread: the share of
   wall time outside torch operators and OpenMM calls (definition: benchmarks/_throughput_profile.py).

Targets (printed, not tuned for): ALDP training at 2 processes >= 1.6x one process; no stage over 20 % Python.
With ``--device cuda`` one process per GPU (nccl); with fewer than 2 GPUs the 2-process rows are skipped. Results
go to ``results/throughput.json`` beside this script, ``--quick`` ones to ``_work/throughput/throughput_quick.json``
(sections not measured in an invocation are kept from the old file when its device and ``--quick`` match).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _throughput_profile as tprof  # noqa: E402
from _common import ROOT, WORK, machine, median, print_table, system_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "throughput.json"
QUICK_JSON = WORK / "throughput" / "throughput_quick.json"  # a smoke test never overwrites the results
SPEEDUP_TARGET, OVERHEAD_TARGET = 1.6, 0.20

#: per model: the system, TrainConfig overrides, timed windows (normal / --quick) and SMC sizes (n, levels, bridge)
MODELS = {
    "gmm": dict(
        system="gmm2_unbalanced",
        over=dict(n_data=20000),
        layout=dict(warm=20, window=200),
        quick_layout=dict(warm=5, window=20),
        smc=dict(n=8192, levels=None, bridge=16),
        quick_smc=dict(n=512, levels=16, bridge=4),
    ),
    "aldp": dict(
        system="alanine_dipeptide",
        over={},
        layout=dict(warm=20, window=200),
        quick_layout=dict(warm=5, window=20),
        smc=dict(n=2048, levels=None, bridge=16),
        quick_smc=dict(n=128, levels=None, bridge=4),  # a 16-level sub-grid of a 50-step model: all killed
    ),
    "lj55": dict(
        system="lj55",
        over=dict(network="egnn", egnn=dict(hidden=32, n_layers=2), batch_size=16, k=2, n_levels=64),
        layout=dict(warm=5, window=30),
        quick_layout=dict(warm=2, window=4),
        smc=None,  # training only
        quick_smc=None,
    ),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data and configurations ---------------------------------------------------------------------------------
def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def training_data(model: str, work: Path) -> str | None:
    """The .npy of training frames for ``model`` (made once under ``work``), or None for exact samples."""
    if model == "aldp":
        md = work / "aldp_md"
        if not (md / "positions.npy").is_file():
            log("... 50 ps of 300 K MD for the alanine-dipeptide training frames")
            cmd = [sys.executable, "-m", "boltzdiff", "simulate", "alanine_dipeptide", "--ns", "0.05"]
            cmd += ["--save-every-ps", "0.1", "--out", str(md), "--no-progress"]
            subprocess.run(cmd, check=True, env=child_env(), cwd=ROOT, capture_output=True)
        return str(md / "positions.npy")
    if model == "lj55":
        f = work / "lj55_frames.npy"
        if not f.is_file():
            from boltzdiff.systems import load_system

            pos = np.asarray(load_system("lj55").positions, dtype=np.float64).reshape(1, -1)
            rng = np.random.default_rng(0)
            f.parent.mkdir(parents=True, exist_ok=True)
            np.save(f, pos + 0.02 * rng.standard_normal((1000, pos.shape[1])))
        return str(f)
    return None


def train_layout(model: str, quick: bool) -> dict:
    return dict(MODELS[model]["quick_layout" if quick else "layout"])


def train_config(model: str, work: Path, quick: bool, device: str):
    """The TrainConfig of a timed run: the model's recipe, steps laid out as DSM warm-up + window, DiffCLF
    warm-up + window, no checkpoint before the end, one thread."""
    lay = train_layout(model, quick)
    steps = 2 * (lay["warm"] + lay["window"])
    spec = MODELS[model]
    over = dict(spec["over"], loss="diffclf", steps=steps, warmup_steps=steps // 2, checkpoint_every=steps)
    over.update(num_threads=1, device=device, seed=0, data=training_data(model, work))
    return system_config(spec["system"], **over)


# -- subprocesses ---------------------------------------------------------------------------------------------
def torchrun(nproc: int, target: list[str], timeout: float) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *target]
    res = subprocess.run(cmd, env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        tail = (res.stdout + res.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {res.returncode}):\n{tail}")


def train_worker(spec_file: str) -> int:
    """Under torchrun: one timed training run as ``boltzdiff train`` does it; rank 0 writes the step times."""
    from boltzdiff import distributed as dist
    from boltzdiff.config import TrainConfig, merge_config
    from boltzdiff.train import train

    spec = json.loads(Path(spec_file).read_text())
    cfg = merge_config(TrainConfig(), spec["config"], spec_file)
    with dist.launched(cfg.device):
        with tprof.StepClock(cfg.device, sync_at=tprof.sync_steps(spec["layout"])) as clock:
            train(cfg, spec["out"], progress=False)
        if dist.is_main():
            Path(spec["times"]).write_text(json.dumps(dict(times=clock.times, world=dist.world())))
    return 0


def timed_training(model: str, nproc: int, work: Path, args, keep: Path | None = None) -> dict:
    cfg = train_config(model, work, args.quick, args.device)
    lay = train_layout(model, args.quick)
    tmp = work / "tmp" / f"{model}_p{nproc}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = dict(config=cfg.to_dict(), layout=lay, out=str(tmp / "run"), times=str(tmp / "times.json"))
    (tmp / "spec.json").write_text(json.dumps(spec))
    torchrun(nproc, [str(Path(__file__).resolve()), "--worker-train", str(tmp / "spec.json")], args.timeout)
    rec = json.loads((tmp / "times.json").read_text())
    summary = json.loads((tmp / "run" / "train_summary.json").read_text())
    assert rec["world"] == nproc, rec["world"]
    out = tprof.sec_per_step(rec["times"], lay)
    out["summary_sec_per_step"] = summary["sec_per_step"]
    if keep is not None and not (keep / "model.pt").is_file():
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(tmp / "run", keep)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- the three sections -------------------------------------------------------------------------------------------
def training_section(args, work: Path) -> dict:
    runs = {m: {p: [] for p in args.procs} for m in args.models}
    for r in range(args.repeats):
        for m in args.models:
            for p in args.procs:
                log(f"... training {m}, {p} process(es), repeat {r + 1}/{args.repeats}")
                keep = smc_run_dir(work, m, args) if p == "1" else None
                runs[m][p].append(timed_training(m, int(p), work, args, keep=keep))
    out = {}
    for m in args.models:
        lay, cfg = train_layout(m, args.quick), train_config(m, work, args.quick, args.device)
        entry = dict(
            system=cfg.system,
            network=cfg.network,
            batch_size=cfg.batch_size,
            k=cfg.k,
            n_levels=cfg.n_levels,
            warm_steps=lay["warm"],
            window_steps=lay["window"],
        )
        for loss in ("dsm", "diffclf"):
            per = {p: [run[loss] for run in runs[m][p]] for p in args.procs}
            row = {
                p: dict(sec_per_step=v, median_sec_per_step=median(v), steps_per_s=1.0 / median(v))
                for p, v in per.items()
            }
            row.update(ratios(per))
            entry[loss] = row
        entry["summary_sec_per_step"] = {p: [run["summary_sec_per_step"] for run in runs[m][p]] for p in args.procs}
        out[m] = entry
    return out


def ratios(per: dict) -> dict:
    """Speed-up 2-proc/1-proc from interleaved per-repeat times ``{"1": [s/step...], "2": [...]}``."""
    if "1" not in per or "2" not in per:
        return {}
    rs = [a / b for a, b in zip(per["1"], per["2"])]
    return dict(speedup=median(rs), speedup_range=[min(rs), max(rs)])


def smc_run_dir(work: Path, model: str, args) -> Path:
    return work / "runs" / f"{model}_{'quick' if args.quick else 'full'}_{args.device}"


def ensure_trained(model: str, work: Path, args) -> Path:
    """A trained run of ``model`` for the SMC rows: ``--run MODEL=DIR`` if given, else the 1-process training run
    kept by the training section, else one trained here (in-process, the same steps)."""
    if model in args.run:
        return Path(args.run[model])
    rd = smc_run_dir(work, model, args)
    if not (rd / "model.pt").is_file():
        from boltzdiff.train import train

        log(f"... training a {model} run for the SMC rows")
        shutil.rmtree(rd, ignore_errors=True)
        torch.set_num_threads(1)
        train(train_config(model, work, args.quick, args.device), rd, progress=False)
    return rd


def smc_sizes(model: str, quick: bool) -> dict:
    return dict(MODELS[model]["quick_smc" if quick else "smc"])


def timed_smc(model: str, kind: str, nproc: int, run_dir: Path, work: Path, args) -> dict:
    sz = smc_sizes(model, args.quick)
    out = work / "tmp" / f"smc_{model}_{kind}_p{nproc}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    for f in (out, out.with_suffix(".json")):
        f.unlink(missing_ok=True)
    cmd = ["-m", "boltzdiff", "--", "sample", str(run_dir), "--n", str(sz["n"]), "--out", str(out)]
    cmd += ["--device", args.device, "--no-progress", "--seed", "0"]
    if sz["levels"]:
        cmd += ["--levels", str(sz["levels"])]
    if kind == "to_target":
        cmd += ["--to-target", "--bridge-steps", str(sz["bridge"])]
    torchrun(nproc, cmd, args.timeout)
    s = json.loads(out.with_suffix(".json").read_text())
    steps = s["n_levels"] + s["n_bridge"]
    evals = s["n_model_evals"] + s["n_target_evals"]
    return dict(
        wall_s=s["wall_s"],
        n=s["n"],
        levels=steps,
        particle_levels_per_s=s["n"] * steps / s["wall_s"],
        evals_per_s=evals / s["wall_s"],
    )


SMC_KINDS = ("model_only", "to_target")


def smc_models(args) -> list[str]:
    return [m for m in args.models if MODELS[m]["smc"] is not None]


def smc_section(args, work: Path) -> dict:
    runs_dirs = {m: ensure_trained(m, work, args) for m in smc_models(args)}
    runs = {(m, k): {p: [] for p in args.procs} for m in runs_dirs for k in SMC_KINDS}
    for r in range(args.repeats):
        for (m, k), per in runs.items():
            for p in args.procs:
                log(f"... SMC {m} {k}, {p} process(es), repeat {r + 1}/{args.repeats}")
                per[p].append(timed_smc(m, k, int(p), runs_dirs[m], work, args))
    out = {}
    for (m, k), per in runs.items():
        rate = {str(p): [v["particle_levels_per_s"] for v in vs] for p, vs in per.items()}
        row = {
            str(p): dict(
                particle_levels_per_s=rate[str(p)],
                median_particle_levels_per_s=median(rate[str(p)]),
                median_wall_s=median([v["wall_s"] for v in vs]),
                median_evals_per_s=median([v["evals_per_s"] for v in vs]),
            )
            for p, vs in per.items()
        }
        first = per[args.procs[0]][0]
        row.update(n=first["n"], levels=first["levels"])
        if "1" in rate and "2" in rate:  # a rate: the speed-up is 2-proc / 1-proc of the rates
            rs = [b / a for a, b in zip(rate["1"], rate["2"])]
            row.update(speedup=median(rs), speedup_range=[min(rs), max(rs)])
        out.setdefault(m, {})[k] = row
    return out


def profile_section(args, work: Path) -> dict:
    """Python-overhead shares per stage, in this process at one thread."""
    from argparse import Namespace

    from boltzdiff.commands.sample import exact_target, smc_configs
    from boltzdiff.samplers import SMCConfig, smc
    from boltzdiff.train import load_run

    torch.set_num_threads(1)
    out = {}
    for m in args.models:
        cfg = train_config(m, work, args.quick, args.device)
        lay = train_layout(m, args.quick)
        if not args.quick:  # profile a shorter window: one event per operator adds up
            lay["window"] = min(lay["window"], 50)
            cfg.steps = 2 * (lay["warm"] + lay["window"])
            cfg.warmup_steps, cfg.checkpoint_every = cfg.steps // 2, cfg.steps
        tmp = work / "tmp" / f"profile_{m}"
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"... profiling {m} training")
        for loss, v in tprof.profile_training(cfg, tmp, lay).items():
            out[f"{m} train {loss}"] = v
        shutil.rmtree(tmp, ignore_errors=True)
    for m in smc_models(args):
        run_ = load_run(ensure_trained(m, work, args), device=args.device)
        sz = smc_sizes(m, args.quick)
        mcmc, bridge = smc_configs(Namespace(mcmc="mala", mcmc_steps=0))
        cfg = SMCConfig(levels=sz["levels"], mcmc=mcmc, n_bridge=sz["bridge"], bridge_mcmc=bridge)
        for kind in SMC_KINDS:
            target = exact_target(run_) if kind == "to_target" else None
            log(f"... profiling {m} SMC {kind}")

            def one(model=run_.model, n=sz["n"], cfg=cfg, target=target):
                smc(model, n, cfg, target=target, generator=torch.Generator().manual_seed(0))

            out[f"{m} smc {kind}"] = tprof.profile_smc(one)
    return out


# -- report ---------------------------------------------------------------------------------------------------
def fmt(v, spec=".3g"):
    return "-" if v is None else format(v, spec)


def report(res: dict, args) -> dict:
    """Print the tables of every section in ``res`` and return the targets' verdicts."""
    print(f"\nMachine: {res['machine']}; device {args.device}; one thread per process (OMP_NUM_THREADS=1)")
    for name, meta in res["sections"].items():
        if meta.get("kept"):
            print(f"({name}: kept from an earlier invocation, {meta['date']}: {meta['command']})")
    reps = {name: meta["repeats"] for name, meta in res["sections"].items()}
    targets = {}
    tr = res.get("training")
    if tr:
        rows = []
        for m, e in tr.items():
            for loss in ("dsm", "diffclf"):
                r = e[loss]
                rng = r.get("speedup_range")
                rows.append(
                    [m, e["network"], loss, e["batch_size"], f"{e['warm_steps']}+{e['window_steps']}",
                     fmt(r.get("1", {}).get("steps_per_s")),
                     fmt(r.get("2", {}).get("steps_per_s")), fmt(r.get("speedup"), ".2f"),
                     "-" if rng is None else f"{rng[0]:.2f}-{rng[1]:.2f}"]
                )  # fmt: skip
                if m == "aldp" and "speedup" in r:
                    targets[f"aldp training {loss}: 2 processes >= {SPEEDUP_TARGET}x one"] = dict(
                        value=r["speedup"], threshold=SPEEDUP_TARGET, met=r["speedup"] >= SPEEDUP_TARGET
                    )
        print(
            "\nTraining steps/s at a fixed global batch (steps: warm-up + timed window of each loss; medians of "
            f"{reps['training']} interleaved repeats; 2p/1p: median and range of the per-repeat ratios)"
        )
        print_table(["model", "network", "loss", "batch", "steps", "1 proc", "2 procs", "2p/1p", "range"], rows)
    sm = res.get("smc")
    if sm:
        rows = []
        for m, kinds in sm.items():
            for k, r in kinds.items():
                rng = r.get("speedup_range")
                rows.append(
                    [m, k, r["n"], r["levels"], fmt(r.get("1", {}).get("median_particle_levels_per_s")),
                     fmt(r.get("2", {}).get("median_particle_levels_per_s")), fmt(r.get("speedup"), ".2f"),
                     "-" if rng is None else f"{rng[0]:.2f}-{rng[1]:.2f}"]
                )  # fmt: skip
        print(f"\nSMC particle-levels/s (n x (levels + bridge steps) / wall; medians of {reps['smc']} repeats)")
        print_table(["model", "run", "n", "levels", "1 proc", "2 procs", "2p/1p", "range"], rows)
    pr = res.get("profile")
    if pr:
        rows = []
        for stage, v in pr.items():
            rows.append(
                [stage, f"{v['wall_s']:.3f}", f"{v['wall_unprofiled_s']:.3f}", f"{v['native_s']:.3f}",
                 f"{100 * v['share_raw']:.1f}", f"{100 * v['share_corrected']:.1f}",
                 "yes" if v["share_corrected"] <= OVERHEAD_TARGET else "no"]
            )  # fmt: skip
            targets[f"{stage}: Python share <= {OVERHEAD_TARGET:.0%}"] = dict(
                value=v["share_corrected"], value_raw=v["share_raw"], threshold=OVERHEAD_TARGET,
                met=v["share_corrected"] <= OVERHEAD_TARGET,
            )  # fmt: skip
        print("\nPython-overhead share per stage (1 thread, in-process; benchmarks/_throughput_profile.py)")
        hdr = ["stage", "wall (profiled) s", "wall (plain) s", "torch+OpenMM s", "Python % raw", "Python % corr."]
        hdr.append(f"<= {OVERHEAD_TARGET:.0%}")
        print_table(hdr, rows)
    if targets:
        print("\nTargets:")
        for name, t in targets.items():
            print(f"  {'MET    ' if t['met'] else 'NOT MET'}  {name} (measured {t['value']:.3g})")
    for note in res.get("notes", []):
        print(f"Note: {note}")
    return targets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny step counts and SMC runs (a smoke test)")
    ap.add_argument("--only", choices=["training", "smc", "profile"], help="run one section")
    ap.add_argument("--repeats", type=int, help="interleaved repeats of every timed row (3; with --quick 1)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--models", default="gmm,aldp,lj55", help="comma list among gmm, aldp, lj55")
    ap.add_argument("--procs", default="1,2", help="process counts (1,2)")
    ap.add_argument("--json", help=f"results file (default {RESULTS}; with --quick {QUICK_JSON})")
    ap.add_argument("--work", default=str(WORK / "throughput"), help="scratch folder (data, runs)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per subprocess")
    ap.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="MODEL=DIR",
        help="SMC and its profile on this trained run directory (e.g. a recipe's RUN/train) instead of the short "
        "run the training section leaves",
    )
    ap.add_argument("--worker-train", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_train:
        return train_worker(args.worker_train)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    args.json = args.json or str(QUICK_JSON if args.quick else RESULTS)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    procs = sorted({int(p) for p in args.procs.split(",")})
    if bad or not args.models or not set(procs) <= {1, 2} or args.repeats < 1:
        ap.error(f"--models among {sorted(MODELS)}, --procs among 1,2, --repeats >= 1")
    try:
        args.run = dict(kv.split("=", 1) for kv in args.run)
    except ValueError:
        ap.error("--run: expected MODEL=DIR")
    notes = [f"SMC of {m} on {d}" for m, d in args.run.items()]
    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is visible")
        if torch.cuda.device_count() < 2 and 2 in procs:
            procs = [1]
            notes.append("one GPU visible: the 2-process rows (one process per GPU) are skipped")
    args.procs = [str(p) for p in procs]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    gpu = f", {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res = dict(machine=machine() + gpu, device=args.device, quick=args.quick, command=command, notes=notes)
    res["sections"] = {}
    path = Path(args.json)
    t0 = time.time()
    for name in [args.only] if args.only else ["training", "smc", "profile"]:
        fn = {"training": training_section, "smc": smc_section, "profile": profile_section}[name]
        res[name] = fn(args, work)
        when = time.strftime("%Y-%m-%d %H:%M")
        res["sections"][name] = dict(command=command, machine=res["machine"], repeats=args.repeats, date=when)
    res["wall_s"] = time.time() - t0
    if path.is_file():  # keep the sections this invocation did not measure, from the same device and mode
        old = json.loads(path.read_text())
        if old.get("device") == args.device and old.get("quick") == args.quick:
            for name, meta in old.get("sections", {}).items():
                if name not in res and name in old:
                    res[name], res["sections"][name] = old[name], dict(meta, kept=True)
    res["targets"] = report(res, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\n-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
