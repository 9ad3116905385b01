"""Random Gaussian mixtures through `boltzdiff run`: how the default recipe does on mixtures nobody tuned it for.

Each mixture is drawn from a seed: K components (2-5), dimension (2, 4, 8 or 16), Dirichlet(1) weights floored at
``--min-weight`` and renormalised, one isotropic std per component in [0.3, 1.0], and means uniform in a box
(redrawn until every two modes are at least ``--min-sep`` of their summed stds apart, so the modes are distinct).
Each is written as a `system.yaml` and run with ``boltzdiff run PATH --preset P`` (reference, training, SMC to
the exact target, analysis), then ``boltzdiff evaluate RUN/train`` scores the trained model against the exact
answers. The table gives, per mixture, the model's own level-0 mode-weight error (max abs), its classification
excess, the SMC's mode-weight error (max abs, and max over modes of |error| / binomial SE at the run's ESS) and
ESS, and the wall time; then the medians and the worst cases.

    python benchmarks/gmm_heldout.py --n 8 --jobs 2            # two mixtures at a time, one thread each
    python benchmarks/gmm_heldout.py --start 8 --n 8 --jobs 2 --k-max 8 --dims 2,8,16,32   # a harder family
    python benchmarks/gmm_heldout.py --n 8 --jobs 2 --reuse-train --set sample.mcmc_steps=1  # same models, new sampler
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, machine, median, print_table  # noqa: E402

DIMS = (2, 4, 8, 16)


def draw_mixture(seed: int, min_weight: float, min_sep: float, k_max: int = 5, dims=DIMS) -> dict:
    """A random mixture spec (the YAML's fields) from ``seed``: 2..``k_max`` components, dimension drawn from
    ``dims`` (the defaults reproduce the mixtures of earlier tables seed for seed)."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, k_max + 1))
    dim = int(rng.choice(dims))
    w = rng.dirichlet(np.ones(k))
    w = np.maximum(w, min_weight)
    w = w / w.sum()
    std = rng.uniform(0.3, 1.0, size=k)
    half = 2.0 + 1.5 * k ** (1 / dim)  # a box that holds K well-separated modes in low dimension
    for _ in range(10_000):
        means = rng.uniform(-half, half, size=(k, dim))
        d = np.linalg.norm(means[:, None] - means[None], axis=-1)
        s = std[:, None] + std[None]
        if np.all((d >= min_sep * s)[~np.eye(k, dtype=bool)]):
            break
    else:
        raise RuntimeError(f"mixture {seed}: could not place {k} separated modes")
    w = [round(float(x), 6) for x in w]
    w[int(np.argmax(w))] += round(1.0 - sum(w), 6)  # sums to 1 after rounding (the loader warns otherwise)
    return dict(
        kind="gaussian_mixture",
        weights=w,
        means=[[round(float(v), 4) for v in m] for m in means],
        std=[round(float(x), 4) for x in std],
    )


def run_one(i: int, seed: int, args) -> dict:
    dims = tuple(int(d) for d in args.dims.split(","))
    spec = draw_mixture(seed, args.min_weight, args.min_sep, args.k_max, dims)
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    family = f"_k{args.k_max}_d{'-'.join(map(str, dims))}" if (args.k_max, dims) != (5, DIMS) else ""
    base = WORK / "gmm_heldout" / f"mix{seed}_{args.preset}{'_' + args.loss if args.loss else ''}{family}"
    base = Path(str(base) + "".join(f"_{k}{v}" for k, v in over.items() if not k.startswith("sample.")))
    root = Path(str(base) + "".join(f"_{k}{v}" for k, v in over.items() if k.startswith("sample.")))
    sysdir = root / "system"
    sysdir.mkdir(parents=True, exist_ok=True)
    if over:  # the system's run.yaml: these settings over the preset's
        stages: dict = {}
        for key, val in over.items():
            stage, _, name = key.partition(".")
            if stage not in ("train", "sample") or not name:
                raise SystemExit(f"--set {key}: expected train.NAME or sample.NAME")
            stages.setdefault(stage, {})[name] = val
        (sysdir / "run.yaml").write_text(yaml.safe_dump({"presets": {args.preset: stages}}, sort_keys=False))
    (sysdir / "system.yaml").write_text(
        f"# drawn by benchmarks/gmm_heldout.py, seed {seed}\n" + yaml.safe_dump(spec, sort_keys=False)
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out = root / "run"
    cmd = ["boltzdiff", "run", str(sysdir), "--preset", args.preset, "--out", str(out), "--no-progress"]
    cmd += ["--workers", "1"] + (["--loss", args.loss] if args.loss else [])
    if args.reuse_train and not (out / "analysis.json").exists():
        # only the sampler changes: start from the run without the sample.* settings (its data and model) and
        # redo its sample stage
        if root == base:
            raise SystemExit("--reuse-train: expected at least one --set sample.NAME=VALUE")
        if not (base / "run" / "train" / "model.pt").exists():
            raise SystemExit(f"--reuse-train: {base / 'run'} has no trained model; run without --set first")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(base / "run", out)
        meta = json.loads((out / "pipeline.json").read_text())
        meta["system_path"] = str((sysdir / "system.yaml").resolve())
        (out / "pipeline.json").write_text(json.dumps(meta, indent=2))
        (out / "analysis.json").unlink()  # until the redone sample stage writes its own
        cmd += ["--redo", "sample"]
    wall_file = root / "run_wall_s.json"  # the first invocation's wall time (a rerun reads the cached run)
    if not (out / "analysis.json").exists():
        t0 = time.time()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall_file.write_text(json.dumps(time.time() - t0))
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else float("nan")
    ev_file = out / "train" / "eval.json"
    if not ev_file.exists():
        subprocess.run(
            ["boltzdiff", "evaluate", str(out / "train"), "--n-chains", str(args.chains), "--smc-particles", "0"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    ev = json.loads(ev_file.read_text())
    an = json.loads((out / "analysis.json").read_text())
    n = json.loads((out / "samples.json").read_text())["n"]
    # the SMC's error in units of a binomial SE at its Kish ESS (resampled copies are not independent, so this
    # understates the SE: |z| up to ~3 is noise, a dropped mode reads far larger)
    w, est = np.array(an["true_mode_weights"]), np.array(an["mode_weights"])
    z = np.abs(est - w) / np.sqrt(w * (1 - w) / (n * an["ess"]))
    print(f"... mixture {seed} done ({wall:.0f} s)", file=sys.stderr, flush=True)
    return dict(
        seed=seed,
        k=len(spec["weights"]),
        dim=len(spec["means"][0]),
        min_w=min(spec["weights"]),
        model_err=ev["mode_weight_error"],
        clf_excess=ev["clf_excess"],
        clf_excess_se=ev.get("clf_excess_se", float("nan")),
        smc_err=an["mode_weight_error"],
        smc_z=float(z.max()),
        ess=an["ess"],
        wall_s=wall,
        train_s=an.get("train_wall_s", float("nan")),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="number of mixtures (seeds start .. start + n - 1)")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--preset", default="quick", choices=["quick", "full"])
    ap.add_argument("--loss", default=None, choices=["diffclf", "dsm"], help="default: the preset's (DiffCLF)")
    ap.add_argument("--jobs", type=int, default=1, help="mixtures run side by side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--chains", type=int, default=64, help="noising chains for the classification excess")
    ap.add_argument(
        "--set", action="append", default=[], metavar="STAGE.KEY=VALUE", help="e.g. train.steps=3000 (YAML value)"
    )
    ap.add_argument(
        "--reuse-train",
        action="store_true",
        help="copy the run without the --set sample.NAME=V settings (data and model) and redo just its sample stage",
    )
    ap.add_argument("--k-max", type=int, default=5, help="components per mixture: 2 .. K_MAX")
    ap.add_argument("--dims", default=",".join(map(str, DIMS)), help="dimensions to draw from (comma-separated)")
    ap.add_argument("--min-weight", type=float, default=0.05)
    ap.add_argument("--min-sep", type=float, default=3.0, help="minimum mode distance / (std_i + std_j)")
    args = ap.parse_args()
    seeds = list(range(args.start, args.start + args.n))
    with ThreadPoolExecutor(args.jobs) as ex:
        res = list(ex.map(lambda s: run_one(s, s, args), seeds))
    print(f"\nMachine: {machine()}; {args.jobs} job(s) side by side, {args.threads} thread(s) each")
    rows = [
        [
            r["seed"],
            r["k"],
            r["dim"],
            f"{r['min_w']:.3f}",
            f"{r['clf_excess']:.4f} ± {r['clf_excess_se']:.4f}",
            f"{r['model_err']:.3f}",
            f"{r['smc_err']:.3f}",
            f"{r['smc_z']:.1f}",
            f"{r['ess']:.2f}",
            f"{r['train_s']:.0f}",
            f"{r['wall_s']:.0f}",
        ]
        for r in res
    ]
    print_table(
        [
            "seed",
            "K",
            "dim",
            "smallest weight",
            "clf_excess (learned f)",
            "model level-0 err",
            "SMC err",
            "SMC max z",
            "ESS",
            "train s",
            "run s",
        ],
        rows,
    )
    for key in ("model_err", "smc_err", "smc_z", "ess"):
        v = [r[key] for r in res]
        print(f"{key}: median {median(v):.3f}, worst {max(v) if key != 'ess' else min(v):.3f}")


if __name__ == "__main__":
    main()
