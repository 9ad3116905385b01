"""Reference summary of an LJ-n system (or any torch particle system): many independent MALA chains, optionally
with parallel tempering over a temperature ladder, summarised in a small JSON that the analysis compares runs
against (boltzdiff/analysis/particles.py).

    python benchmarks/lj_reference.py lj13 --out benchmarks/results/lj13_reference.json
    python benchmarks/lj_reference.py lj55 --temperatures 1,1.1,1.21,1.33,1.46 --out ...

Every chain makes MALA steps with the project's kernel (:func:`boltzdiff.reference.chains.chain_step`, centre of
mass fixed); with a ladder ``T_k`` (multiples of the system's temperature, the first 1) chain ``c`` is a copy of
the whole ladder: rung ``k`` samples ``exp(-u / T_k)``, and every ``--swap-every`` steps neighbouring rungs of the
same chain propose to exchange configurations, accepted with ``min(1, exp((1/T_k - 1/T_{k+1}) (u_k - u_{k+1})))``.
Step sizes adapt per rung towards 57.4 % acceptance during the burn-in and are frozen afterwards. Only rung 0
(the system's temperature) is saved.

The JSON holds the mean reduced energy with its standard error (from the spread of the independent chains'
means), energy quantiles, fixed-bin energy and interatomic-distance histograms, the energy's integrated
autocorrelation time, chain and step counts, target evaluations, and two convergence checks: the chains split
into two halves (mean energies and histograms compared: difference, z-score, TV, per-bin z) and the production
split into its first and second half in time (drift of the chains' mean energy).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

#: fixed energy bins (lo, hi, width in kT) per shipped system; other systems need --energy-range
ENERGY_BINS = {
    "lj13": (-90.0, 0.0, 0.5),
    "lj13_unique": (-45.0, 30.0, 0.5),
    "lj55": (-440.0, -200.0, 1.0),
    "lj55_unique": (-160.0, 40.0, 1.0),
}
#: a particle whose nearest neighbour is farther than this (r_m) counts as detached from the cluster (its pair
#: energy with the nearest one is above -0.12 eps there): held only by the harmonic centre term
DETACHED = 1.6
#: fixed interatomic-distance bins (the analysis's default bins, boltzdiff.analysis.particles.DISTANCE_EDGES)
DISTANCE_RANGE = (0.0, 8.0, 0.05)


def edges_of(lo: float, hi: float, width: float) -> np.ndarray:
    return lo + width * np.arange(round((hi - lo) / width) + 1)


def integrated_autocorrelation(e: np.ndarray, c: float = 5.0) -> float:
    """Integrated autocorrelation time (in saves) of ``e: (n_saves, n_chains)``, from the chains' mean
    autocovariance with Sokal's self-consistent window ``M >= c tau``."""
    y = e - e.mean(0)
    n = len(y)
    if n < 4:
        return math.nan
    f = np.fft.rfft(y, n=2 * n, axis=0)
    acov = np.fft.irfft(f * np.conj(f), axis=0)[:n].mean(1) / n
    if acov[0] <= 0:
        return math.nan
    rho = acov / acov[0]
    tau = 1.0
    for m in range(1, n):
        tau = 1.0 + 2.0 * rho[1 : m + 1].sum()
        if m >= c * tau:
            break
    return float(tau)


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of independent values ``(C,)``."""
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def per_chain_hist(idx: np.ndarray, n_bins: int) -> np.ndarray:
    """Counts ``(C, n_bins)`` of bin indices ``idx: (rows, C)`` (``-1`` = outside the bins)."""
    n_chains = idx.shape[1]
    counts = np.zeros((n_chains, n_bins))
    cols = np.broadcast_to(np.arange(n_chains), idx.shape)
    keep = idx >= 0
    np.add.at(counts, (cols[keep], idx[keep]), 1.0)
    return counts


def bin_index(v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    i = np.searchsorted(edges, v, side="right") - 1
    return np.where((i >= 0) & (i < len(edges) - 1) & np.isfinite(v), i, -1)


def compare_halves(counts: np.ndarray, per_chain_total: np.ndarray) -> dict:
    """Two halves of the chains' histograms ``counts: (C, n_bins)`` (``per_chain_total``: each chain's number of
    values, in range or not): TV between the halves' pooled histograms, and per-bin z of the difference of the
    halves' mean bin fractions (SE from the spread over each half's chains)."""
    from boltzdiff.analysis.particles import histogram_tv

    frac = counts / per_chain_total[:, None]
    h = len(frac) // 2
    a, b = frac[:h], frac[h:]
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    ok = se > 0
    z = (a.mean(0) - b.mean(0))[ok] / se[ok]
    return {
        "tv": histogram_tv(counts[:h].sum(0), counts[h:].sum(0)),
        "max_abs_bin_z": float(np.abs(z).max()) if z.size else None,
        "mean_bin_z2": float(np.mean(z**2)) if z.size else None,
        "n_bins_compared": int(ok.sum()),
    }


def sample(system, args) -> dict:
    """Run the chains; returns the rung-0 energies ``(n_saves, C)``, per-chain distance counts and statistics."""
    from boltzdiff.reference.chains import _project, chain_step, relax_starts
    from boltzdiff.samplers.tempering import TemperedTarget

    target = system.target
    n, sd = target.event_shape
    temps = [float(t) for t in args.temperatures.split(",")]
    if temps[0] != 1.0 or any(b <= a for a, b in zip(temps, temps[1:], strict=False)):
        sys.exit("--temperatures: expected an increasing ladder starting at 1")
    betas = [1.0 / t for t in temps]
    rungs = [target if b == 1.0 else TemperedTarget(target, b) for b in betas]
    K, C = len(temps), args.chains
    gen = torch.Generator().manual_seed(args.seed)
    x0 = torch.as_tensor(np.asarray(system.positions), dtype=torch.float64).reshape(1, n, sd)
    xs, us, gs = [], [], []
    for k in range(K):
        x = _project(x0 + args.init_noise * torch.randn((C, n, sd), generator=gen, dtype=torch.float64))
        xr = relax_starts(target, x, args.relax_steps).requires_grad_(True)
        u = rungs[k].energy(xr)
        (g,) = torch.autograd.grad(u.sum(), xr)
        xs.append(xr.detach())
        us.append(u.detach())
        gs.append(_project(g))
    log_h = [math.log(args.step_size)] * K
    d_edges = edges_of(*DISTANCE_RANGE)
    d_counts = np.zeros((C, len(d_edges) - 1))
    energies, detached, acc_prod, acc_chain = [], [], np.zeros(K), np.zeros(C)
    swap_try, swap_acc = np.zeros(max(K - 1, 0)), np.zeros(max(K - 1, 0))
    iu = torch.triu_indices(n, n, 1)
    total = args.burn_in + args.steps
    t0, it, n_swap_rounds = time.perf_counter(), 0, 0
    stop = t0 + 60.0 * args.max_minutes if args.max_minutes else math.inf
    while it < total:
        for k in range(K):
            xs[k], us[k], gs[k], acc = chain_step(rungs[k], xs[k], us[k], gs[k], math.exp(log_h[k]), "mala", gen)
            rate = acc.double().mean().item()
            if it < args.burn_in:
                log_h[k] += 0.05 * (rate - 0.574)
            else:
                acc_prod[k] += rate
                if k == 0:
                    acc_chain += acc.double().numpy()
        it += 1
        if K > 1 and it % args.swap_every == 0:
            for k in range(n_swap_rounds % 2, K - 1, 2):  # (0,1), (2,3), ... then (1,2), (3,4), ...
                ua, ub = us[k] / betas[k], us[k + 1] / betas[k + 1]  # energies at the system's temperature
                log_a = (betas[k] - betas[k + 1]) * (ua - ub)
                sw = torch.log(torch.rand(C, generator=gen, dtype=torch.float64)) < log_a
                m = sw[:, None, None]
                ga, gb = gs[k] / betas[k], gs[k + 1] / betas[k + 1]
                xs[k], xs[k + 1] = torch.where(m, xs[k + 1], xs[k]), torch.where(m, xs[k], xs[k + 1])
                ua, ub = torch.where(sw, ub, ua), torch.where(sw, ua, ub)
                ga, gb = torch.where(m, gb, ga), torch.where(m, ga, gb)
                us[k], us[k + 1] = betas[k] * ua, betas[k + 1] * ub
                gs[k], gs[k + 1] = betas[k] * ga, betas[k + 1] * gb
                swap_try[k] += C
                swap_acc[k] += float(sw.sum())
            n_swap_rounds += 1
        if it > args.burn_in and (it - args.burn_in) % args.save_every == 0:
            energies.append(us[0].numpy().copy())
            p = xs[0]
            d = (p[:, iu[0]] - p[:, iu[1]]).norm(dim=-1).numpy()  # (C, n_pairs)
            d_counts += per_chain_hist(bin_index(d, d_edges).T, len(d_edges) - 1)
            nn = torch.cdist(p, p) + torch.diag(torch.full((n,), math.inf, dtype=p.dtype))
            detached.append((nn.min(-1).values > DETACHED).any(-1).numpy())
        if it % 1000 == 0:
            el = time.perf_counter() - t0
            msg = f"step {it}/{total}  {el:.0f} s  h0 {math.exp(log_h[0]):.2e}  u0 {us[0].mean().item():.2f}"
            print(msg, flush=True)
            if time.perf_counter() > stop and it > args.burn_in + 10 * args.save_every:
                print(f"--max-minutes {args.max_minutes} reached: production stopped at step {it}", flush=True)
                break
    wall = time.perf_counter() - t0
    n_prod = it - args.burn_in
    return dict(
        energies=np.asarray(energies),
        detached=np.asarray(detached),
        d_counts=d_counts,
        d_edges=d_edges,
        temps=temps,
        step_sizes=[math.exp(v) for v in log_h],
        acceptance=[float(a / max(n_prod, 1)) for a in acc_prod],
        chain_acceptance=acc_chain / max(n_prod, 1),
        swap_acceptance=[float(a / t) if t else None for a, t in zip(swap_acc, swap_try, strict=False)],
        n_prod=n_prod,
        n_steps_total=it,
        n_target_evals=int(K * C * (it + 1)),
        wall_s=wall,
    )


def summarise(system, args, r: dict) -> dict:
    e = r["energies"]  # (n_saves, C)
    n_saves, C = e.shape
    lo, hi, width = ENERGY_BINS.get(system.name, (None, None, None)) if not args.energy_range else args.energy_range
    e_edges = edges_of(lo, hi, width)
    mean, se = mean_se(e.mean(0))
    tau = integrated_autocorrelation(e)
    h = C // 2
    ma, sa = mean_se(e[:, :h].mean(0))
    mb, sb = mean_se(e[:, h:].mean(0))
    half_t = n_saves // 2
    drift = e[half_t:].mean(0) - e[:half_t].mean(0)
    dm, dse = mean_se(drift)
    e_counts = per_chain_hist(bin_index(e, e_edges), len(e_edges) - 1)
    d_counts = r["d_counts"]
    n_pairs = system.target.n_particles * (system.target.n_particles - 1) // 2
    e_tot = np.full(C, float(n_saves))
    d_tot = np.full(C, float(n_saves * n_pairs))

    def rnd(v, k=6):
        return [float(f"{x:.{k}g}") for x in np.asarray(v, dtype=float).ravel()]

    qs = [1, 5, 25, 50, 75, 95, 99]
    target = system.target
    return {
        "system": {
            "name": system.name,
            "n_particles": target.n_particles,
            "pair_sum": getattr(target, "pair_sum", None),
            "temperature": system.temperature,
            "eps": getattr(target, "eps", None),
            "rm": getattr(target, "rm", None),
            "oscillator_scale": getattr(target, "oscillator_scale", None),
        },
        "mean_energy_kT": mean,
        "mean_energy_se_kT": se,
        "energy_sd_kT": float(e.std()),
        "energy_quantiles_kT": {f"{q}%": float(v) for q, v in zip(qs, np.percentile(e, qs), strict=True)},
        "energy_tau_steps": tau * args.save_every,
        "detached": {
            "what": f"configurations with a particle whose nearest neighbour is farther than {DETACHED} r_m",
            "fraction": float(r["detached"].mean()),
            "mean_energy_without_kT": float(e[~r["detached"]].mean()) if (~r["detached"]).any() else None,
            "mean_energy_with_kT": float(e[r["detached"]].mean()) if r["detached"].any() else None,
        },
        "energy_ess": float(e.size / tau) if tau == tau else None,
        "energy_hist": {
            "edges": rnd(e_edges),
            "p": rnd(e_counts.sum(0) / max(e_counts.sum(), 1)),
            "mass_outside": float(1.0 - e_counts.sum() / e.size),
        },
        "distance_hist": {
            "edges": rnd(r["d_edges"]),
            "p": rnd(d_counts.sum(0) / max(d_counts.sum(), 1)),
            "mass_outside": float(1.0 - d_counts.sum() / d_tot.sum()),
        },
        "halves": {
            "chains": [h, C - h],
            "mean_energy_kT": [ma, mb],
            "mean_energy_se_kT": [sa, sb],
            "difference_kT": ma - mb,
            "z": (ma - mb) / math.sqrt(sa**2 + sb**2),
            "energy_hist": compare_halves(e_counts, e_tot),
            "distance_hist": compare_halves(d_counts, d_tot),
        },
        "drift": {
            "what": "second minus first half of the production, mean over chains (SE over chains)",
            "difference_kT": dm,
            "se_kT": dse,
            "z": dm / dse,
        },
        "sampler": {
            "method": "MALA" + (" + parallel tempering" if len(r["temps"]) > 1 else ""),
            "n_chains": C,
            "temperatures": r["temps"],
            "burn_in_steps": args.burn_in,
            "production_steps": r["n_prod"],
            "save_every": args.save_every,
            "n_saves_per_chain": n_saves,
            "step_sizes": rnd(r["step_sizes"], 4),
            "acceptance": rnd(r["acceptance"], 4),
            "swap_acceptance": [None if v is None else round(v, 4) for v in r["swap_acceptance"]],
            "lowest_chain_acceptance": float(r["chain_acceptance"].min()),
            "n_chains_below_10pct_acceptance": int((r["chain_acceptance"] < 0.1).sum()),
            "relax_steps": args.relax_steps,
            "seed": args.seed,
            "init_noise": args.init_noise,
        },
        "n_target_evals": r["n_target_evals"],
        "wall_s": round(r["wall_s"], 1),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "commit": _commit(),
        "command": "python benchmarks/lj_reference.py " + " ".join(sys.argv[1:]),
    }


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("system", help="a shipped system name or a system.yaml (a torch particle target)")
    ap.add_argument("--out", required=True, help="the summary JSON to write")
    ap.add_argument("--chains", type=int, default=256)
    ap.add_argument("--burn-in", type=int, default=20000, help="MALA steps before saving (step sizes adapt)")
    ap.add_argument("--steps", type=int, default=40000, help="production MALA steps")
    ap.add_argument("--save-every", type=int, default=20)
    ap.add_argument("--step-size", type=float, default=5e-4, help="initial MALA step size (adapted in burn-in)")
    ap.add_argument("--temperatures", default="1", help="comma-separated ladder T_k / T (first 1): tempering")
    ap.add_argument("--swap-every", type=int, default=10)
    ap.add_argument("--init-noise", type=float, default=0.05, help="jitter of the start structure (r_m)")
    ap.add_argument("--relax-steps", type=int, default=300, help="steepest-descent steps on the jittered starts")
    ap.add_argument("--energy-range", type=float, nargs=3, metavar=("LO", "HI", "WIDTH"))
    ap.add_argument("--max-minutes", type=float, default=None, help="stop the production early after this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from boltzdiff import load_system

    torch.set_num_threads(args.threads)
    system = load_system(args.system)
    if system.name not in ENERGY_BINS and not args.energy_range:
        sys.exit(f"{system.name}: no default energy bins; give --energy-range LO HI WIDTH")
    r = sample(system, args)
    res = summarise(system, args, r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    hv, dr = res["halves"], res["drift"]
    print(
        f"{system.name}: mean energy {res['mean_energy_kT']:.3f} +- {res['mean_energy_se_kT']:.3f} kT "
        f"(tau {res['energy_tau_steps']:.0f} steps, ESS {res['energy_ess']:.0f}); halves differ by "
        f"{hv['difference_kT']:.3f} kT (z {hv['z']:.2f}), drift {dr['difference_kT']:.3f} kT (z {dr['z']:.2f}); "
        f"lowest chain acceptance {res['sampler']['lowest_chain_acceptance']:.2f}; "
        f"{res['n_target_evals']} target evaluations, {res['wall_s']:.0f} s -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
