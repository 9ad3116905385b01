"""Throughput of the OpenMM bridge vs a raw single-Context OpenMM loop, and MD speed (ns/day).

    python benchmarks/openmm_bridge.py [--n 2000] [--repeats 5] [--md-ps 20]

For ALDP vacuum and implicit, the same configurations (the shipped structure with 0.01 nm Gaussian jitter,
float64) are evaluated (energy + forces) by

- ``raw``: one OpenMM Context in this process, ``setPositions`` + ``getState(energy, forces)`` per config
  (values read in OpenMM's native units, the fastest plain loop);
- ``bridge w=0``: ``OpenMMBridge(n_workers=0)`` (in-process, same loop plus unit conversion and checks);
- ``bridge w=1`` / ``w=2``: one / two persistent worker processes, one chunk per worker per call.

Methods are timed round-robin within each repeat (so load from other processes hits all of them alike); the
table shows medians over repeats of configurations/s and the ratio to ``raw``. Workers are started and warmed
up before timing. The "parallel ceiling" line measures what two processes can gain on the machine at that
moment (2 copies of a pure-Python loop vs 1), independent of OpenMM. MD: LangevinMiddleIntegrator, 300 K,
1/ps, 1 fs, ALDP implicit, default platform (Reference), median of 3 runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def raw_loop(system, pos: np.ndarray) -> np.ndarray:
    import openmm

    ctx = raw_loop.ctx.get(id(system))
    if ctx is None:
        ctx = openmm.Context(
            system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
        )
        raw_loop.ctx[id(system)] = ctx
    e = np.empty(len(pos))
    f = np.empty(pos.shape)
    for k in range(len(pos)):
        ctx.setPositions(pos[k])
        st = ctx.getState(getEnergy=True, getForces=True)
        # native units (kJ/mol, kJ/mol/nm) read directly, as fast as OpenMM allows from Python
        e[k] = st.getPotentialEnergy()._value
        f[k] = st.getForces(asNumpy=True)._value
    return e


raw_loop.ctx = {}


def _busy(n: int) -> float:
    t = time.perf_counter()
    acc = 0
    for i in range(n):
        acc += i * i
    return time.perf_counter() - t


def cpu_parallel_ceiling(n: int = 3_000_000, repeats: int = 3) -> float:
    """Wall-clock speed-up of 2 processes over 1 on a fixed pure-Python loop: what 2 workers can get now."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_busy, [1000, 1000])  # start the processes
        ratios = []
        for _ in range(repeats):
            t = time.perf_counter()
            pool.map(_busy, [n], chunksize=1)
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            pool.map(_busy, [n, n], chunksize=1)
            t2 = time.perf_counter() - t
            ratios.append(2 * t1 / t2)
    return statistics.median(ratios)


def md_ns_per_day(ps: float, repeats: int) -> list[float]:
    import openmm
    import openmm.unit as unit

    import boltzdiff

    s = boltzdiff.load_system("alanine_dipeptide", "implicit")
    out = []
    for r in range(repeats):
        integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
        integ.setRandomNumberSeed(r + 1)
        ctx = openmm.Context(s.extras["openmm_system"], integ, openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(s.positions)
        ctx.setVelocitiesToTemperature(300 * unit.kelvin, r + 1)
        integ.step(500)
        n = int(ps * 1000)
        t = time.perf_counter()
        integ.step(n)
        dt = time.perf_counter() - t
        out.append(n * 1e-6 / dt * 86400)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="configurations per evaluation")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--md-ps", type=float, default=20.0, help="MD length per repeat (ps); 0 skips MD")
    args = ap.parse_args()

    import boltzdiff
    from boltzdiff.targets.openmm import OpenMMBridge

    print(f"# {os.cpu_count()} CPUs visible; load average before: {os.getloadavg()[0]:.2f}")
    ceiling = cpu_parallel_ceiling()
    print(f"# parallel ceiling now: 2 processes run a fixed pure-Python loop {ceiling:.2f}x as fast as 1")
    rows = []
    for variant in ("vacuum", "implicit"):
        s = boltzdiff.load_system("alanine_dipeptide", variant)
        omm = s.extras["openmm_system"]
        rng = np.random.default_rng(0)
        pos = s.positions[None] + 0.01 * rng.standard_normal((args.n, 22, 3))
        bridges = {f"bridge w={w}": OpenMMBridge(omm, 300.0, n_workers=w) for w in (0, 1, 2)}
        methods = {"raw": lambda p, omm=omm: raw_loop(omm, p)}
        for name, br in bridges.items():
            methods[name] = lambda p, br=br: br.evaluate(p)
        for fn in methods.values():  # warm up: contexts and worker processes
            fn(pos[:50])
        # correctness on the way: all methods agree with the raw loop
        e_raw = raw_loop(omm, pos[:100])
        for br in bridges.values():
            assert np.abs(br.evaluate(pos[:100]).energy * br.kT - e_raw).max() < 1e-4
        times: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t = time.perf_counter()
                fn(pos)
                times[name].append(time.perf_counter() - t)
        for br in bridges.values():
            br.close()
        raw_med = statistics.median(times["raw"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append((variant, name, args.n / med, raw_med / med, args.n / max(ts), args.n / min(ts)))

    print("\n| system | method | configs/s (median) | ratio to raw | range (configs/s) |")
    print("|---|---|---:|---:|---|")
    for v, name, cps, ratio, lo, hi in rows:
        print(f"| ALDP {v} | {name} | {cps:,.0f} | {ratio:.2f}x | {lo:,.0f} - {hi:,.0f} |")
    if args.md_ps > 0:
        nsd = md_ns_per_day(args.md_ps, 3)
        print(
            f"\nMD ALDP implicit, Reference, LangevinMiddle 1 fs: median {statistics.median(nsd):.0f} ns/day "
            f"(runs: {', '.join(f'{x:.0f}' for x in nsd)}; {args.md_ps:g} ps each)"
        )
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
