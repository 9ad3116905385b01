"""The mean reduced energy <u> of alanine dipeptide at 300 K from plain MD, without metadynamics or reweighting.

<u> is set almost entirely by the fast modes, which plain MD equilibrates in picoseconds; the only slow part is
the phi > 0 basin (~2 % of the mass), which plain MD rarely enters. So the estimate is split by the system's
ΔF state: <u> = (1 - p) <u>_rest + p <u>_state, with each conditional mean from plain Langevin MD frames in that
state (replicas started in each basin) and p = 1 / (1 + exp(ΔF)) from the metadynamics reference's ΔF.
<u>_state enters with weight p ≈ 0.02, so its error hardly matters. A high friction decorrelates the potential
energy quickly; it does not change the sampled distribution. Error bars: block standard errors (20 blocks per
replica) combined over replicas, plus the propagated error of p.

    python benchmarks/aldp_reference_energy.py [--ns 8] [--replicas 2] [--state-ns 2] [--friction 5] [--jobs 1]

Writes ``benchmarks/results/aldp_reference_energy.json`` (MD frames under ``benchmarks/_work/reference_energy``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work" / "reference_energy"
BURN_IN_PS = 10.0
SAVE_PS = 0.2
STATE_START = "alanine-dipeptide-phi-pos.pdb"  # in the system's folder: a structure inside the phi > 0 basin


def one_replica(job: dict) -> dict:
    os.environ.setdefault("OPENMM_CPU_THREADS", "1")
    from boltzdiff.reference.md import MDConfig, run_md
    from boltzdiff.systems import load_system

    system = load_system("alanine_dipeptide", "implicit")
    cfg = MDConfig(
        ns=job["ns"],
        friction_per_ps=job["friction"],
        timestep_fs=job["timestep_fs"],
        save_every_ps=SAVE_PS,
        seed=job["seed"],
        platform="Reference",
        start=job["start"],
    )
    t0 = time.time()
    r = run_md(system, WORK / job["name"], cfg, progress=False)
    return dict(job, positions=np.asarray(r.positions), energies=np.asarray(r.energies), wall_s=time.time() - t0)


def block_mean_se(u: np.ndarray, n_blocks: int = 20) -> tuple[float, float]:
    blocks = np.array([b.mean() for b in np.array_split(u, n_blocks) if len(b)])
    return float(u.mean()), float(blocks.std(ddof=1) / math.sqrt(len(blocks)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ns", type=float, default=8.0, help="ns per replica started in the phi < 0 region")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--state-ns", type=float, default=2.0, help="ns of the replica started in the phi > 0 basin")
    ap.add_argument("--friction", type=float, default=5.0, help="Langevin friction (1/ps)")
    ap.add_argument("--timestep-fs", type=float, default=1.0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "aldp_reference_energy.json"))
    a = ap.parse_args(argv)
    from boltzdiff.systems import load_system
    from boltzdiff.systems.base import dihedral_of

    system = load_system("alanine_dipeptide", "implicit")
    lo, hi = system.spec["states"]["phi_pos"]["phi"]
    ref = json.loads((RESULTS / "aldp_reference_implicit_metad.json").read_text())
    dF, dF_se = ref["reference_delta_f_kT"], ref["reference_delta_f_se_kT"]
    jobs = [
        dict(name=f"rest_s{i + 1}", seed=i + 1, start=None, ns=a.ns, friction=a.friction, timestep_fs=a.timestep_fs)
        for i in range(a.replicas)
    ]
    jobs.append(dict(jobs[0], name="state_s1", seed=101, start=STATE_START, ns=a.state_ns))
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        done = list(ex.map(one_replica, jobs))
    per_state: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
    reps = []
    for r in done:
        keep = slice(int(round(BURN_IN_PS / SAVE_PS)), None)  # the minimised start warms up within picoseconds
        r["positions"], r["energies"] = r["positions"][keep], r["energies"][keep]
        phi = dihedral_of(system, r["positions"], "phi")
        inside = (phi >= lo) & (phi <= hi)
        row = dict(name=r["name"], ns=r["ns"], n_frames=int(len(phi)), fraction_in_state=float(inside.mean()))
        for flag in (False, True):
            u = r["energies"][inside == flag]
            if len(u) >= 200:
                m, se = block_mean_se(u)
                per_state[flag].append((m, se, len(u)))
                row["state" if flag else "rest"] = dict(mean_kT=m, se_kT=se, n_frames=int(len(u)))
        reps.append(row)
        print(f"{r['name']}: {row}", flush=True)

    def combine(parts):  # inverse-variance mean over replicas
        w = np.array([1.0 / max(se, 1e-9) ** 2 for _, se, _ in parts])
        m = np.array([m for m, _, _ in parts])
        return float((w * m).sum() / w.sum()), float(1.0 / math.sqrt(w.sum()))

    u_rest, se_rest = combine(per_state[False])
    u_state, se_state = combine(per_state[True])
    p = 1.0 / (1.0 + math.exp(dF))
    dp = p * (1.0 - p) * dF_se
    mean = (1.0 - p) * u_rest + p * u_state
    se = math.sqrt(((1.0 - p) * se_rest) ** 2 + (p * se_state) ** 2 + ((u_state - u_rest) * dp) ** 2)
    res = dict(
        system="alanine_dipeptide/implicit",
        method="plain Langevin MD (LangevinMiddleIntegrator, no bias), split by the ΔF state; p from the reference ΔF",
        mean_energy_kT=mean,
        mean_energy_se_kT=se,
        rest_mean_kT=u_rest,
        rest_se_kT=se_rest,
        state_mean_kT=u_state,
        state_se_kT=se_state,
        state_probability=p,
        reference_delta_f_kT=dF,
        replicas=reps,
        settings=dict(vars(a), out=os.path.relpath(Path(a.out).resolve(), ROOT)),
        n_target_evals=int(sum(r["ns"] * 1e6 / a.timestep_fs for r in done)),
        wall_s=time.time() - t0,
        command="python benchmarks/aldp_reference_energy.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"<u> = {mean:.3f} +- {se:.3f} kT (rest {u_rest:.3f} +- {se_rest:.3f}, phi>0 {u_state:.3f}, p {p:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
