"""Benchmark: composing level energies (product and mixture), checked against the analytic answer.

Two 2-D mixtures, A: weights (0.7, 0.3) at (-2, 0), (2, 0), std 1; B: weights (0.4, 0.6) at (-2, 0.5),
(2, -0.5), std 0.8. Their normalised product (``GaussianMixture.product``) has four components with unequal
weights (about 0.60 / 0.39 on the two matched pairs, ~0.01 on the crossed ones); the mixture with weights
(0.3, 0.7) is the concatenation.

Part A uses the exact level energies (no learning); part B models trained by ``boltzdiff train`` on A and B
(DSM-only and DSM + DiffCLF; run dirs ``<runs-dir>/comp_{a,b}_{dsm,diffclf}``, commands in
benchmarks/RESULTS.md). Methods: diffusion SMC on the composed energy (product: E_A + E_B at every level;
mixture: -logsumexp(-E_j - f_j + log pi_j)), with and without MALA rejuvenation, and plain reverse diffusion
with the composed score (what score-only models can do; not correct for a product).

Run from the repository root::

    python benchmarks/composition.py [--n 4000] [--runs-dir benchmarks/_work] [--write-systems]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers import MCMCConfig, SMCConfig, compose, reverse_sde, smc
from boltzdiff.samplers.diagnostics import mixture_of, total_variation, weighted_mode_weights
from boltzdiff.targets.gmm import GaussianMixture

SYSTEMS = {
    "comp_a": dict(weights=[0.7, 0.3], means=[[-2.0, 0.0], [2.0, 0.0]], std=1.0),
    "comp_b": dict(weights=[0.4, 0.6], means=[[-2.0, 0.5], [2.0, -0.5]], std=0.8),
}
MIX_WEIGHTS = [0.3, 0.7]
HEADER = (
    f"{'models':<16} {'op':<8} {'method':<22} {'max|dw|':>8} {'TV':>7} {'ESS':>6} {'log Z':>8} "
    f"{'model ev':>10} {'wall s':>7}"
)


def write_systems(root: Path) -> None:
    """Write the two system specs used for training (``<root>/systems/comp_{a,b}/system.yaml``)."""
    import yaml

    for name, spec in SYSTEMS.items():
        d = root / "systems" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "system.yaml").write_text(yaml.safe_dump(dict(kind="gaussian_mixture", name=name, dim=2, **spec)))


def row(models, op, method, exact, res, wall):
    w = weighted_mode_weights(exact, res.x, res.log_w)
    err = np.abs(w - exact.weights.numpy()).max()
    tv = total_variation(w, exact.weights)
    s = res.summary()
    log_z = s.get("log_Z", float("nan"))
    print(
        f"{models:<16} {op:<8} {method:<22} {err:8.4f} {tv:7.4f} {s['ess']:6.3f} {log_z:8.3f} "
        f"{s['n_model_evals']:10d} {wall:7.1f}",
        flush=True,
    )
    return dict(models=models, op=op, method=method, max_err=float(err), tv=tv, ess=s["ess"], weights=w.tolist())


def bench_pair(label, ma, mb, ga, gb, n, seed, methods=("SMC", "SMC + 2 MALA/level", "reverse SDE")):
    out = []
    exact_prod = ga.product(gb)
    exact_mix = mixture_of([ga, gb], MIX_WEIGHTS)
    for op, exact in (("product", exact_prod), ("mixture", exact_mix)):
        model = compose([ma, mb], op, weights=MIX_WEIGHTS if op == "mixture" else None)
        for method in methods:
            g = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            with torch.no_grad():
                if method == "SMC":
                    res = smc(model, n, generator=g)
                elif method.startswith("SMC +"):
                    res = smc(model, n, SMCConfig(mcmc=MCMCConfig("mala", 2)), generator=g)
                else:
                    res = reverse_sde(model, n, generator=g)
            out.append(row(label, op, method, exact, res, time.perf_counter() - t0))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="benchmarks/_work")
    p.add_argument("--write-systems", action="store_true", help="write the system specs under --runs-dir and exit")
    p.add_argument("--skip-exact", action="store_true")
    p.add_argument("--skip-trained", action="store_true")
    p.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="LABEL=RUN_A,RUN_B",
        help="trained runs to compose (repeatable); default <runs-dir>/comp_{a,b}_{dsm,diffclf}",
    )
    p.add_argument("--methods", default="SMC,SMC + 2 MALA/level,reverse SDE")
    args = p.parse_args(argv)
    root = Path(args.runs_dir)
    if args.write_systems:
        write_systems(root)
        return
    torch.set_num_threads(1)  # the development machine is shared
    warnings.simplefilter("ignore", UserWarning)
    ga, gb = (GaussianMixture(**SYSTEMS[k], name=k) for k in ("comp_a", "comp_b"))
    print(f"exact product weights {np.round(ga.product(gb).weights.numpy(), 4).tolist()}")
    print(HEADER)
    if not args.skip_exact:
        grid = make_grid(VPSchedule(), 128, "logsnr")
        bench_pair("exact", ExactMixtureEnergy(ga, grid), ExactMixtureEnergy(gb, grid), ga, gb, args.n, args.seed)
    if not args.skip_trained:
        from boltzdiff.train import load_run

        pairs = [(lab, dirs.split(",")) for lab, dirs in (q.split("=", 1) for q in args.pair)] or [
            (f"trained {loss}", [root / f"comp_a_{loss}", root / f"comp_b_{loss}"]) for loss in ("dsm", "diffclf")
        ]
        methods = [m.strip() for m in args.methods.split(",")]
        for label, dirs in pairs:
            if not all((Path(d) / "model.pt").is_file() for d in dirs):
                print(f"# {dirs}: no trained models, skipped")
                continue
            ra, rb = (load_run(d) for d in dirs)
            ta, tb = ra.system.target, rb.system.target
            print(f"# {label}: exact product weights {np.round(ta.product(tb).weights.numpy(), 4).tolist()}")
            bench_pair(label, ra.model, rb.model, ta, tb, args.n, args.seed, methods)


if __name__ == "__main__":
    main()
