"""Ablation: which training choices make DiffCLF get the lowest level's mode weights right.

Trains each variant on a 3-mode 6-D unbalanced mixture (experiments/systems/gmm3_6d) and prints, per variant,
the excess classification loss (learned f), the lowest level's mode-weight error (max abs), the median
per-level log-ratio std and the wall time. Variants are explicit settings over the TrainConfig defaults (a
system's run.yaml is not applied). Results are cached per variant in benchmarks/_work/ablation/<name>
(delete a folder to rerun it).

    python experiments/ablation.py [--steps 3000] [--only 'name;name'] [--system PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # _common
from _common import WORK, machine, print_table, train_and_eval  # noqa: E402

from boltzdiff.config import TrainConfig  # noqa: E402

# the paper-like starting point: linear grid in t, uniform level draws, raw t as the time input, joint training
BASE = dict(
    spacing="linear",
    level_sampling="uniform",
    time_input="t",
    warmup_steps=0,
    lr_f=1e-3,
    k=4,
    lambda_clf=1.0,
    fourier_scale=4.0,
)
# the recipe we ship as the mixture default (TrainConfig defaults)
RECIPE = {k: getattr(TrainConfig(), k) for k in BASE}

VARIANTS: dict[str, dict] = {
    "paper-like (linear t, uniform, t input, lr_f=lr)": BASE,
    "recipe (defaults)": RECIPE,
    "recipe, dsm only": {**RECIPE, "loss": "dsm"},
    "recipe - logsnr grid (linear t)": {**RECIPE, "spacing": "linear"},
    "recipe - neighbour draws (uniform)": {**RECIPE, "level_sampling": "uniform"},
    "recipe - logsnr input (t)": {**RECIPE, "time_input": "t"},
    "recipe - fast f (lr_f = lr)": {**RECIPE, "lr_f": 1e-3},
    "recipe, local draws only": {**RECIPE, "level_sampling": "local"},
    "recipe, two-stage (1/3 DSM warm-up)": {**RECIPE, "warmup_steps": -1},
    "recipe, k=2": {**RECIPE, "k": 2},
    "recipe, k=8": {**RECIPE, "k": 8},
    "recipe, lambda_clf=0.1": {**RECIPE, "lambda_clf": 0.1},
    "recipe, lambda_clf=10": {**RECIPE, "lambda_clf": 10.0},
    "recipe, k=3": {**RECIPE, "k": 3},
    "recipe, N=32 levels": {**RECIPE, "n_levels": 32},
    "recipe, N=64 levels": {**RECIPE, "n_levels": 64},
    "recipe, N=64 levels, k=3": {**RECIPE, "n_levels": 64, "k": 3},
    "recipe, N=64, input Fourier 64 x scale 4": {
        **RECIPE,
        "n_levels": 64,
        "input_fourier": 64,
        "input_fourier_scale": 4.0,
    },
    "recipe, N=64, input Fourier 64 x scale 8": {
        **RECIPE,
        "n_levels": 64,
        "input_fourier": 64,
        "input_fourier_scale": 8.0,
    },
    "recipe, N=64, k=3, input Fourier 64 x scale 4": {
        **RECIPE,
        "n_levels": 64,
        "k": 3,
        "input_fourier": 64,
        "input_fourier_scale": 4.0,
    },
    "recipe, input Fourier 64 x scale 4": {**RECIPE, "input_fourier": 64, "input_fourier_scale": 4.0},
    "recipe, input Fourier 64 x scale 8": {**RECIPE, "input_fourier": 64, "input_fourier_scale": 8.0},
    "recipe, N=32 levels, k=3": {**RECIPE, "n_levels": 32, "k": 3},
    "recipe, smooth time embedding (fourier_scale=1)": {**RECIPE, "fourier_scale": 1.0},
    "recipe, fourier_scale=1, k=2": {**RECIPE, "fourier_scale": 1.0, "k": 2},
    # the MLP's scalar head (an energy term that does not vanish at the data mean)
    "recipe, inner head": {**RECIPE, "mlp_head": "inner"},
    "recipe, inner+scalar head": {**RECIPE, "mlp_head": "inner+scalar"},
    "recipe, scalar head": {**RECIPE, "mlp_head": "scalar"},
    "recipe, inner head, input Fourier 64 x scale 4": {
        **RECIPE,
        "mlp_head": "inner",
        "input_fourier": 64,
        "input_fourier_scale": 4.0,
    },
    "recipe, inner+scalar head, input Fourier 64 x scale 4": {
        **RECIPE,
        "mlp_head": "inner+scalar",
        "input_fourier": 64,
        "input_fourier_scale": 4.0,
    },
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:60]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--system", default="gmm2_unbalanced")
    ap.add_argument("--only", default="", help="';'-separated variant names (exact) or substrings of them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for name, over in VARIANTS.items():
        wanted = [s.strip() for s in args.only.split(";") if s.strip()]
        exact = [w for w in wanted if w in VARIANTS]
        if wanted and name not in exact and not any(w in name for w in wanted if w not in VARIANTS):
            continue
        over = dict(over)
        if over.get("warmup_steps") == -1:
            over["warmup_steps"] = args.steps // 3
        cfg = TrainConfig(
            system=args.system,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            num_threads=args.threads,
            **over,
        )
        out = (
            WORK
            / "ablation"
            / Path(args.system).name
            / f"s{args.steps}_b{args.batch_size}_seed{args.seed}"
            / slug(name)
        )
        print(f"... {name}", file=sys.stderr, flush=True)
        ev = train_and_eval(cfg, out)
        med_std = sorted(ev["log_ratio_std"])[len(ev["log_ratio_std"]) // 2]
        rows.append(
            [
                name,
                f"{ev['clf_excess']:.4f} ± {ev['clf_excess_se']:.4f}",
                f"{ev['clf_excess_fitted_f']:.4f}",
                f"{ev['mode_weight_error']:.3f}",
                " ".join(f"{w:.3f}" for w in ev["mode_weights"]),
                f"{med_std:.3f}",
                f"{ev['train_wall_s']:.0f}",
            ]
        )
    print(
        f"\nAblation on {Path(args.system).name}: {args.steps} steps, batch {args.batch_size}, "
        f"seed {args.seed}; {machine()}"
    )
    print_table(
        [
            "variant",
            "clf_excess (learned f)",
            "clf_excess (fitted f)",
            "mode-weight err",
            "mode weights",
            "median log-ratio std",
            "train s",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
