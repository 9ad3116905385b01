"""Reverse kernels of the diffusion SMC on an exact, strongly anisotropic Gaussian: where the weights spread.

The levels are exact and normalised (``log Z = 0``): data ``N(0, diag(v))`` with per-coordinate standard
deviations log-spaced from ``--std-min`` to ``--std-max`` (default 0.003-0.2 nm in 66 coordinates, the spread
between alanine dipeptide's bond vibrations and its torsions), on the alanine-dipeptide grid (VP, 160 levels
even in log-SNR, t_min 1e-6). For each kernel the log-weight variance summed over the level steps in bands of
sigma / alpha, the number of resamplings, the lineages the final particles rest on and log Z are printed
(medians over ``--seeds``). Any kernel leaves the weights exact; a better one spreads them less.

    python experiments/smc_kernels.py [--n 2000] [--seeds 3] [--dim 66]

With ``--run RUN_DIR`` (a trained molecule or particle model), one-step diagnostics instead: particles are
carried down the levels (isotropic kernel, resampling at ESS 0.3), and at levels with sigma / alpha near 0.25,
0.1, 0.05, 0.02, 0.01, 0.005 and 0.002 the same equal-weight population makes one step with each kernel. The
SD of the incremental log-weights is printed for the isotropic Fisher kernel, the matrix kernel (mean Hessian in
a common frame), a per-particle Hessian kernel (the second-order Tweedie covariance at every particle; d
Hessian-vector products per particle, too costly to sample with) and the floor no kernel can beat with this
backward kernel, the model's own inconsistency between the two levels, SD over particles of
``log int q_k(y) K(x | y) dy - log q_l(x)`` (the integral by importance sampling, ``--floor-draws`` draws of
the per-particle Hessian kernel).

    python experiments/smc_kernels.py --run RUN_DIR [--n 256] [--floor-draws 32]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # _common
from _common import machine, print_table  # noqa: E402

from boltzdiff.models.exact import DiagonalGaussianEnergy  # noqa: E402
from boltzdiff.noise import make_grid, make_schedule  # noqa: E402
from boltzdiff.samplers import SMCConfig, smc  # noqa: E402

BANDS = ((1.0, math.inf), (0.25, 1.0), (0.05, 0.25), (0.01, 0.05), (0.002, 0.01), (0.0, 0.002))


def one_step_diagnostics(run_dir: str, n: int, floor_draws: int, seed: int = 0) -> list[list]:
    """Rows ``[level, sigma/alpha, SD fisher, SD matrix, SD per-particle Hessian, SD floor]``."""
    from boltzdiff.samplers.mcmc import model_energy_and_score
    from boltzdiff.samplers.resampling import kish_ess, systematic_resample
    from boltzdiff.samplers.sde import (
        fisher_level_variances,
        hessian_curvature,
        initial_particles,
        level_hessians,
        matrix_move,
        particle_frames,
        reverse_kernel,
    )
    from boltzdiff.train import load_run

    run = load_run(run_dir)
    model, grid = run.model.eval(), run.model.grid
    shape = tuple(run.system.target.event_shape)
    if len(shape) != 2:
        raise SystemExit(f"smc_kernels: --run needs a particle or molecule system, {run.system.name} is not one")
    g = torch.Generator().manual_seed(seed)
    sig = grid.sigma / grid.alpha
    diag = sorted({int(torch.argmin((sig - s).abs())) for s in (0.25, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002)})

    def inc_of(mv_sample, mv_logd, x, ef_l, i_to, i_from, eps):
        xn = mv_sample(eps).to(x)
        efn, sn = model_energy_and_score(model, xn, i_to)
        lk = grid.forward_log_density(x, xn, i_to, i_from).double()
        return -efn + ef_l + lk - mv_logd(xn), xn, efn, sn

    def sd(v):
        return float(v[torch.isfinite(v)].std())

    x, lp = initial_particles(model, n, g)
    top = grid.n - 1
    ef, s = model_energy_and_score(model, x, top)
    logw = (-ef - lp).double()
    rows = []
    for i_from in range(top, 0, -1):
        i_to = i_from - 1
        if i_from in diag:
            idx = systematic_resample(logw, n, generator=g)
            xs, efs, ss = x[idx], ef[idx], s[idx]
            z = torch.zeros(n, dtype=torch.float64)
            eps = torch.randn(xs.shape, generator=g, dtype=torch.float64)
            var = fisher_level_variances(grid, i_from, ss, z)
            iso = reverse_kernel(grid, i_to, i_from, xs, ss, "gaussian", var)
            r_iso = inc_of(iso.sample, iso.log_density, xs, efs, i_to, i_from, eps)[0]
            rot = particle_frames(xs, z, shape)
            mat = matrix_move(grid, i_to, i_from, xs, ss, hessian_curvature(model, i_from, xs, z, rot, 16, g), rot)
            r_mat = inc_of(mat.sample, mat.log_density, xs, efs, i_to, i_from, eps)[0]
            H = level_hessians(model, i_from, xs)
            a, s_ = grid.transition_coeffs(i_to, i_from)
            lam, U = torch.linalg.eigh(0.5 * (H + H.transpose(-1, -2)))
            std = (s_ / a) * torch.clamp(1 - s_**2 * lam.clamp(min=0), 1e-6, 1).sqrt()
            mean = ((xs + s_**2 * ss) / a).double()

            def pp_sample(e, U=U, std=std, mean=mean):
                return mean + torch.einsum("bij,bj->bi", U, std * e)

            def pp_logd(y, U=U, std=std, mean=mean):
                zz = torch.einsum("bij,bi->bj", U, y.double() - mean) / std
                return -0.5 * (zz**2).sum(-1) - torch.log(std).sum(-1) - 0.5 * y.shape[1] * math.log(2 * math.pi)

            r_pp = inc_of(pp_sample, pp_logd, xs, efs, i_to, i_from, eps)[0]
            draws = []
            for _ in range(floor_draws):
                e2 = torch.randn(xs.shape, generator=g, dtype=torch.float64)
                draws.append(inc_of(pp_sample, pp_logd, xs, efs, i_to, i_from, e2)[0])
            floor = torch.logsumexp(torch.stack(draws), 0) - math.log(floor_draws)
            rows.append([i_from, f"{float(sig[i_from]):.4f}"] + [f"{sd(v):.3f}" for v in (r_iso, r_mat, r_pp, floor)])
        var = fisher_level_variances(grid, i_from, s, logw)
        mv = reverse_kernel(grid, i_to, i_from, x, s, "gaussian", var)
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
        inc, x, ef, s = inc_of(mv.sample, mv.log_density, x, ef, i_to, i_from, eps)
        logw = logw + torch.nan_to_num(inc, nan=-math.inf)
        if kish_ess(logw) < 0.3:
            idx = systematic_resample(logw, n, generator=g)
            x, ef, s = x[idx], ef[idx], s[idx]
            logw = torch.zeros(n, dtype=torch.float64)
    return rows[::-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="particles")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dim", type=int, default=66)
    ap.add_argument("--std-min", type=float, default=0.003)
    ap.add_argument("--std-max", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run", help="one-step diagnostics on this trained run directory (see above)")
    ap.add_argument("--floor-draws", type=int, default=32, dest="floor_draws")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        n = args.n if args.n != 2000 else 256
        rows = one_step_diagnostics(args.run, n, args.floor_draws)
        print(f"One-step SD of the incremental log-weights on {args.run}, {n} equal-weight particles per level")
        print(machine())
        print_table(
            ["level", "σ/α", "isotropic fisher", "matrix (frame Hessian)", "per-particle Hessian", "floor (model)"],
            rows[::-1],
        )
        return
    grid = make_grid(make_schedule({"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "t_min": 1e-6}), 160, "logsnr")
    v = torch.logspace(math.log10(args.std_min**2), math.log10(args.std_max**2), args.dim, dtype=torch.float64)
    model = DiagonalGaussianEnergy(grid, v)
    sig = (grid.sigma / grid.alpha).flip(0)[1:].tolist()  # the level each step moves into, noisy to clean
    rows = []
    for kv in ("model", "fisher", "matrix"):
        per = []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            r = smc(model, args.n, SMCConfig(kernel_variance=kv), generator=torch.Generator().manual_seed(seed))
            steps = r.inc_sd_trace[1:]
            bands = [sum(sd**2 for sd, s in zip(steps, sig) if lo < s <= hi) for lo, hi in BANDS]
            per.append(
                dict(
                    bands=bands,
                    total=sum(bands),
                    n_resample=r.n_resample,
                    lineages=r.ancestors[0][1] if r.ancestors else args.n,
                    log_Z=r.log_Z,
                    wall=time.perf_counter() - t0,
                )
            )

        def med(key, i=None, per=per):
            return statistics.median(p[key] if i is None else p[key][i] for p in per)

        rows.append(
            [kv]
            + [f"{med('bands', i):.2f}" for i in range(len(BANDS))]
            + [
                f"{med('total'):.2f}",
                f"{med('n_resample'):.0f}",
                f"{med('lineages'):.0f}",
                f"{med('log_Z'):+.3f}",
                f"{med('wall'):.1f}",
            ]
        )
    print(
        f"Exact anisotropic Gaussian, d = {args.dim}, per-coordinate std {args.std_min:g}-{args.std_max:g}, "
        f"{args.n} particles, medians over {args.seeds} seeds; log-weight variance summed per band of sigma/alpha"
    )
    print(machine())
    print_table(
        ["kernel_variance"]
        + [f"σ̄ {lo:g}-{hi:g}" for lo, hi in BANDS]
        + ["total", "resamplings", "lineages", "log Z (exact 0)", "wall s"],
        rows,
    )


if __name__ == "__main__":
    main()
