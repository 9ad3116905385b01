"""How the lowest level's relative mode weights move during training (raw model and EMA), one run per call.

For a Gaussian mixture: the level-0 weight of every component, by self-normalised importance weights on
20 000 fixed exact samples (``boltzdiff.evaluate.labelled_mode_weights``), reported as the largest absolute error.
For a molecule with a ``phi`` CV (alanine dipeptide): the basin offset of the level-0 energy against the model's
own training data, ``offset = -[lme_basin(r) - lme_rest(r)]`` with ``r = -E(x, t_0) + (T_sys / T_data) u(x)`` on
every 8th data frame (``lme`` = log-mean-exp, so the offset is the error of ln[q(basin)/q(rest)] relative to the
data's temperature-T_data Boltzmann populations, in kT; positive = basin underweighted), and the same for the β
region against αR (columns ``_beta``; β = φ < 0 outside −2 < ψ < 1). For data at the system's temperature whose
region populations are not Boltzmann (e.g. MD replicas started in several basins), both offsets are against the
target's populations instead, since r then only sees the within-region shapes. Also the final model's error at
every 8th level (mixtures only; exact samples of each level). Each value is logged every ``--every`` steps into
the run's metrics.jsonl.

    python experiments/training_drift.py gmm2_unbalanced --steps 3000 --seed 0 [--set lambda_clf=3 ...]
    python experiments/training_drift.py alanine_dipeptide --preset full --steps 6000 \\
        --data benchmarks/_work/aldp_md500/positions.npy --data-temperature 500 --set warmup_steps=1200

(``--preset`` takes the train settings of ``boltzdiff run``'s preset, i.e. the system's run.yaml presets.)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # _common
from _common import WORK, basin_probe, machine, print_table  # noqa: E402


def mixture_probe(target):
    from boltzdiff.evaluate import labelled_mode_weights

    K = target.n_components
    true_w = target.weights.double().numpy()
    cache = {}

    def err(model, level: int = 0) -> float:
        a, s = model.grid.alpha[level], model.grid.sigma[level]
        if level not in cache:
            cache[level] = target.sample_with_labels(20000, torch.Generator().manual_seed(7), a, s)
        x, lab = cache[level]
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            lq = model.log_q(x.to(dtype), level).double()
        w, _ = labelled_mode_weights(lq - target.log_prob_t(x, a, s), lab, K)
        return float(np.abs(w - true_w).max())

    return err, "max |mode weight error|"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("system")
    ap.add_argument("--preset", choices=["quick", "full"], help="train settings of this `boltzdiff run` preset")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=250, help="a multiple of 50")
    ap.add_argument("--data", help="training data (molecules)")
    ap.add_argument("--data-temperature", type=float)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train setting (YAML value)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--averages",
        action="store_true",
        help="also probe parameter averages of the raw model taken every 50 steps: EMA over ~1000 and ~3000 "
        "steps, and the uniform average over the second half of training",
    )
    ap.add_argument("--out", help="run directory (default benchmarks/_work/drift/<system>_<settings>_s<seed>)")
    args = ap.parse_args()
    if args.every % 50:
        sys.exit("training_drift: --every must be a multiple of 50 (the metrics records of boltzdiff.train)")

    from boltzdiff.config import TrainConfig, merge_config
    from boltzdiff.pipeline import resolve_settings
    from boltzdiff.systems import load_system
    from boltzdiff.train import load_run, train

    torch.set_num_threads(args.threads)
    system = load_system(args.system)
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.preset:
        base = dict(resolve_settings(system, args.preset, seed=args.seed)["train"])
    else:
        base = dict(system.run_defaults.get("train", {}))
    base.update({"steps": args.steps, "seed": args.seed, "num_threads": args.threads, **over})
    if args.data:
        base.update(data=args.data, data_temperature=args.data_temperature)
    cfg = merge_config(TrainConfig(), base, "training_drift settings")
    cfg.system = str(system.path)
    cfg.variant = system.variant
    cfg.validate()
    if system.target.has_exact_samples:
        probe, what = mixture_probe(system.target)
    else:
        if not args.data or args.data_temperature is None:
            sys.exit("training_drift: a molecule needs --data and --data-temperature")
        probe, what = basin_probe(system, args.data, args.data_temperature)
    tag = "_".join(f"{k}{v}" for k, v in over.items()) or "defaults"
    tag += "_avg" if args.averages else ""
    out = Path(args.out) if args.out else WORK / "drift" / f"{system.name}_{tag}_s{args.seed}_{args.steps}"

    averages = {}  # name -> [model copy, number of snapshots averaged]

    @torch.no_grad()
    def update_averages(step, model):
        for name, window in (("avg1k", 1000), ("avg3k", 3000), ("swa", None)):
            if name == "swa" and step <= args.steps // 2:
                continue
            if name not in averages:
                averages[name] = [copy.deepcopy(model).eval(), 1]
                continue
            avg, n = averages[name]
            n += 1
            w = 1.0 / n if window is None else max(1.0 / n, 50.0 / window)
            for pa, p in zip(avg.parameters(), model.parameters()):
                pa.lerp_(p.detach(), w)
            averages[name][1] = n

    def monitor(step, model, ema_model):
        if args.averages:
            update_averages(step, model)
        if step % args.every and step != args.steps:
            return {}
        rec = {}
        for name, m in (("raw", model), ("ema", ema_model), *((k, m) for k, (m, _) in averages.items())):
            v = probe(m)
            if not isinstance(v, dict):
                v = {"": v}
            rec.update({f"probe_{name}{sfx}": x for sfx, x in v.items()})
        return rec

    if not (out / "model.pt").exists():
        train(cfg, out, resume=(out / "ckpt.pt").exists(), progress=True, monitor=monitor)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "probe_raw" in r]
    print(f"{system.name}, settings {over or 'defaults'}, seed {args.seed}; {machine()}")
    print(f"{what} at level 0 during training")
    fmt = "{:.3f}" if system.target.has_exact_samples else "{:+.2f}"
    cols = ["raw", "ema"] + [k for k in ("avg1k", "avg3k", "swa") if any(f"probe_{k}" in r for r in recs)]
    cols += [c + "_beta" for c in cols if any(f"probe_{c}_beta" in r for r in recs)]
    rows = [[r["step"]] + [fmt.format(r[f"probe_{c}"]) if f"probe_{c}" in r else "" for c in cols] for r in recs]
    print_table(["step"] + cols, rows)
    if system.target.has_exact_samples:  # exact samples of every level: where does the error build up?
        model = load_run(out).model
        levels = range(0, model.grid.n, max(1, model.grid.n // 8))
        rows = [
            [lv, f"{float(model.grid.sigma[lv] / model.grid.alpha[lv]):.4g}", f"{probe(model, lv):.3f}"]
            for lv in levels
        ]
        print(f"final EMA model, {what} by level (sbar = noise std / alpha)")
        print_table(["level", "sbar", "value"], rows)


if __name__ == "__main__":
    main()
