"""Torsion-move sweeps at the exact target, applied to the final particles of finished `boltzdiff run` directories.

SMC's last step leaves weighted particles at the exact target. Any move that leaves the target invariant keeps
every estimate consistent (the weights stay), and a move that crosses the torsional barriers lets each particle's
basin relax to the target's basin populations, whatever the model's were. This script takes the saved
``samples.npz`` of one or more run directories, runs ``--sweeps`` sweeps of Metropolis-Hastings torsion moves
(``boltzdiff.samplers.torsion``; optionally one MALA step per sweep) on each SMC run's particles, and prints ΔF
of the phi > 0 basin after 0, ... sweeps: every directory pooled over its runs (jackknife over its models, or
over its runs where it has one model),
all directories pooled, and the single runs' spread. The same sweeps run inside the sampler with
``sample: {torsion: {bonds: cvs}, final_mcmc_steps: N}``.

    python experiments/aldp_final_mcmc.py RUN_DIR [RUN_DIR ...] [--sweeps 50] [--mala] [--as-sampler]
        [--bonds cvs|auto] [--jobs 2] [--rb-angles 72]

``--rb-angles N`` adds a row for the last sweep with each particle's basin probability integrated over its
rotation about the phi bond (``boltzdiff.analysis.torsion_rb``, what ``boltzdiff analyze`` reports as ΔF).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # _common

CHECKPOINTS = (0, 5, 10, 20, 50, 100, 200, 400)


class _EnergyOnly:
    """``log pi = -u`` without forces (torsion moves need no gradient): half the cost of a force call."""

    def __init__(self, target):
        self.target = target

    def evaluate(self, x):
        from boltzdiff.samplers.mcmc import DensityEval

        u = self.target.energy(x.detach()).detach().to(torch.float64)
        return DensityEval(-u, torch.zeros(x.shape[0], 1, dtype=x.dtype))


def sweep_dir(args: tuple) -> dict:
    """Sweep every SMC run of one directory; φ of all particles at each checkpoint."""
    d, sweeps, bonds, mala, seed, avg_from, resample, as_sampler, rb_angles = args
    torch.set_num_threads(1)
    from _common import phi_of_samples

    from boltzdiff.pipeline import torsion_spec
    from boltzdiff.samplers.mcmc import MCMCConfig, TargetDensity, run_mcmc
    from boltzdiff.samplers.torsion import torsion_step
    from boltzdiff.systems import load_system

    meta = json.loads((d / "pipeline.json").read_text())
    system = load_system(meta["system_path"], meta.get("variant"))
    moves, _ = torsion_spec(system, {"bonds": bonds}, 0)
    with np.load(d / "samples.npz") as z:
        x = torch.as_tensor(z["x"], dtype=torch.float64)
        run = z["run"] if "run" in z.files else np.zeros(len(x), dtype=int)
        lw = z["log_w"]
    g = torch.Generator().manual_seed(seed)
    resampled = None
    if resample:  # within each SMC run, by its weights: every particle then carries its run's mean weight
        from boltzdiff.samplers.resampling import systematic_resample

        idx = np.arange(len(x))
        for r in np.unique(run):
            m = np.flatnonzero(run == r)
            pick = systematic_resample(torch.as_tensor(np.nan_to_num(lw[m], nan=-np.inf)), len(m), generator=g)
            idx[m] = m[pick.numpy()]
        x, resampled = x[idx], idx
    target, scale = system.target, 1.0
    if as_sampler:  # the sampler's own target (centre-of-mass gauge) and MALA step scale (level 0's variance),
        # taken from the directory's first model for all its runs (the models share data and level grid)
        from boltzdiff.pipeline import model_dir, sampling_target
        from boltzdiff.samplers.smc import level_variance
        from boltzdiff.train import load_run

        model = load_run(model_dir(d, 0)).model
        target, scale = sampling_target(system, model), level_variance(model, 0)
    dens = TargetDensity(target) if mala else _EnergyOnly(target)
    state = dens.evaluate(x)
    cfg = MCMCConfig("mala", n_steps=1, step_size=1e-6 / scale) if mala else None
    phis, acc, avg = {0: phi_of_samples(system, x.numpy())}, [], []
    t0 = time.perf_counter()
    for s in range(1, sweeps + 1):
        x, state, a = torsion_step(dens, x, state, moves, g)
        acc.append(float(a.double().mean()))
        if cfg is not None:
            r = run_mcmc(dens, x, cfg, g, state=state, scale=scale)
            x, state = r.x, r.state
        if s in CHECKPOINTS or s == sweeps or (avg_from and s >= avg_from):
            phi = phi_of_samples(system, x.numpy())
            if s in CHECKPOINTS or s == sweeps:
                phis[s] = phi
            if avg_from and s >= avg_from:
                avg.append(((phi > 0) & (phi < 2)).astype(np.float32))
    rb = None
    if rb_angles:
        from boltzdiff.analysis.torsion_rb import torsion_state_probability

        bonds_all = [(b[0].index, b[1].index) for b in system.topology.bonds]
        rb = torsion_state_probability(
            system.target.energy,
            x,
            bonds_all,
            system.target.event_shape[0],
            system.spec["cvs"]["phi"],
            lambda y: phi_of_samples(system, y),
            0.0,
            2.0,
            rb_angles,
        ).p
    return dict(
        rb=rb,
        dir=str(d),
        phis=phis,
        run=run,
        acc=float(np.mean(acc)),
        mala_step=None if cfg is None else float(cfg.step_size * scale),
        wall_s=time.perf_counter() - t0,
        basin_avg=np.mean(avg, 0) if avg else None,
        resampled=resampled,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--sweeps", type=int, default=50)
    ap.add_argument("--bonds", default="cvs")
    ap.add_argument("--mala", action="store_true", help="one MALA step at the target after every torsion move")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--average-from", type=int, default=0, help="also average each particle's basin indicator over sweeps >= this"
    )
    ap.add_argument("--resample", action="store_true", help="resample each SMC run by its weights before the sweeps")
    ap.add_argument(
        "--rb-angles", type=int, default=0, help="also ΔF after the last sweep with phi integrated over N angles"
    )
    ap.add_argument(
        "--as-sampler",
        action="store_true",
        help="sweep the sampler's target (with its centre-of-mass gauge) with its MALA step scale, as smc() does",
    )
    args = ap.parse_args()

    from _common import delta_f_basin

    from boltzdiff.analysis.weights import clean_log_weights, jackknife_se, leave_one_run_out, pool_runs

    todo = [
        (
            d,
            args.sweeps,
            args.bonds,
            args.mala,
            args.seed + i,
            args.average_from,
            args.resample,
            args.as_sampler,
            args.rb_angles,
        )
        for i, d in enumerate(args.run_dirs)
    ]
    with mp.get_context("spawn").Pool(min(args.jobs, len(todo))) as pool:
        done = pool.map(sweep_dir, todo)
    # weights, runs and models of every directory, pooled as `boltzdiff pool` does: every SMC run's
    # weights normalised within the run and scaled by its normalising-constant estimate, so one directory's
    # slice of the pooled weights is that directory's own pool
    clean, runs, models, log_z, n_run, n_model = [], [], [], [], 0, 0
    for d, res in zip(args.run_dirs, done, strict=True):
        with np.load(d / "samples.npz") as z:
            lw = z["log_w"] if res["resampled"] is None else np.zeros(len(z["log_w"]))
            model = z["model"] if "model" in z.files else np.zeros(len(lw), dtype=int)
        summ = json.loads((d / "samples.json").read_text())
        log_z += [r["log_Z"] for r in summ["runs"]] if "runs" in summ else [summ["log_Z"]]
        clean.append(clean_log_weights(lw).log_w_n)
        runs.append(res["run"] + n_run)
        models.append(model + n_model)
        n_run += int(res["run"].max()) + 1
        n_model += int(model.max()) + 1
        step = "" if res["mala_step"] is None else f", final MALA step {res['mala_step']:.3g} nm^2"
        print(f"{d}: torsion acceptance {res['acc']:.3f}{step}, {res['wall_s']:.0f} s")
    run_all, model_all = np.concatenate(runs), np.concatenate(models)
    lw_all = pool_runs(np.concatenate(clean), run_all, log_z)
    lws = np.split(lw_all, np.cumsum([len(c) for c in clean])[:-1])

    print(f"\n| sweeps | {' | '.join(Path(d).name for d in args.run_dirs)} | all pooled | single runs: mean, SD |")
    print("|---|" + "---|" * (len(args.run_dirs) + 2))
    for s in sorted(done[0]["phis"]):
        cells = []
        for res, lw, model in zip(done, lws, models, strict=True):
            phi = res["phis"][s]

            def est(m, phi=phi, lw=lw):
                return delta_f_basin(phi[m], lw[m], n_bootstrap=0).delta_f

            # jackknife over the directory's trained models, or over its runs where it has one model
            loo = leave_one_run_out(est, model if len(np.unique(model)) > 1 else res["run"])
            cells.append(f"{est(np.ones(len(phi), bool)):.2f} ± {jackknife_se(loo):.2f}")
        phi = np.concatenate([r["phis"][s] for r in done])

        def est_all(m, phi=phi):
            return delta_f_basin(phi[m], lw_all[m], n_bootstrap=0).delta_f

        loo = leave_one_run_out(est_all, model_all)
        single = [est_all(run_all == r) for r in range(n_run)]
        single = np.asarray([v for v in single if np.isfinite(v)])
        cells.append(f"**{est_all(np.ones(len(phi), bool)):.3f} ± {jackknife_se(loo):.3f}**")
        cells.append(f"{single.mean():.2f}, {single.std(ddof=1):.2f}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    if args.rb_angles:
        from boltzdiff.analysis.free_energy import two_state_delta_f

        cells = []
        for res, lw, model in zip(done, lws, models, strict=True):

            def est_rb(m, p=res["rb"], lw=lw):
                return two_state_delta_f(p[m], lw[m], n_bootstrap=0).delta_f

            loo = leave_one_run_out(est_rb, model if len(np.unique(model)) > 1 else res["run"])
            cells.append(f"{est_rb(np.ones(len(lw), bool)):.2f} ± {jackknife_se(loo):.2f}")
        p_all = np.concatenate([r["rb"] for r in done])

        def est_rb_all(m):
            return two_state_delta_f(p_all[m], lw_all[m], n_bootstrap=0).delta_f

        loo = leave_one_run_out(est_rb_all, model_all)
        single = np.asarray([est_rb_all(run_all == r) for r in range(n_run)])
        cells.append(f"**{est_rb_all(np.ones(len(p_all), bool)):.3f} ± {jackknife_se(loo):.3f}**")
        cells.append(f"{single.mean():.2f}, {single.std(ddof=1):.2f}")
        print(f"| {args.sweeps}, phi integrated ({args.rb_angles} angles) | " + " | ".join(cells) + " |")
    if args.average_from:
        # each particle's basin indicator averaged over sweeps >= average_from: the weighted mean is the
        # basin's probability (time average along every chain, same weights)
        b = np.concatenate([r["basin_avg"] for r in done]).astype(np.float64)
        w = np.exp(lw_all - np.max(lw_all))

        def est_avg(m):
            p = float((w[m] * b[m]).sum() / w[m].sum())
            return -np.log(p / (1 - p))

        loo = leave_one_run_out(est_avg, model_all)
        single = np.asarray([est_avg(run_all == r) for r in range(n_run)])
        print(
            f"| mean over sweeps {args.average_from}-{args.sweeps} | | | | | **{est_avg(np.ones(len(b), bool)):.3f} ± "
            f"{jackknife_se(loo):.3f}** | {single.mean():.2f}, {single.std(ddof=1):.2f} |"
        )


if __name__ == "__main__":
    main()
