"""Write ``initial.pdb`` (a local energy minimum of LJ-n) for the shipped LJ systems (lj13, lj55 and their
``_unique`` variants), each minimised on its own energy (``pair_sum`` included).

Run once from the repository root: ``python boltzdiff/systems/lj13/make_initial.py lj13 lj55`` (system folder
names; ``lj13_unique lj55_unique`` rewrite those). Particles start on a seeded random cluster of the right
density and are minimised with L-BFGS on the system's torch target; lengths are in reduced units (r_m = 1),
written to the PDB as nm.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.optimize import minimize

from boltzdiff.systems.builders import build_lennard_jones
from boltzdiff.targets.particles import particle_topology

SYSTEMS = Path(__file__).resolve().parent.parent


def minimum(target, seed: int = 0) -> np.ndarray:
    """A local minimum ``(n, 3)`` (centred) of an LJ-n target from a seeded random cluster."""
    n = target.n_particles
    rng = np.random.default_rng(seed)
    radius = 0.75 * n ** (1 / 3)
    x = rng.normal(size=(40 * n, 3))
    x = x / np.linalg.norm(x, axis=1, keepdims=True) * radius * rng.uniform(0, 1, (40 * n, 1)) ** (1 / 3)
    keep = [x[0]]
    for p in x[1:]:  # greedy: keep points at least 0.85 apart
        if len(keep) < n and min(np.linalg.norm(p - q) for q in keep) > 0.85:
            keep.append(p)
    x0 = np.array(keep[:n])
    assert len(x0) == n, "not enough well-separated points"

    def fg(v):
        t = torch.tensor(v, dtype=torch.float64, requires_grad=True)
        u = target.energy(t[None])[0]
        (g,) = torch.autograd.grad(u, t)
        return float(u.detach()), g.numpy()

    res = minimize(fg, x0.ravel(), jac=True, method="L-BFGS-B", options={"gtol": 1e-8, "maxiter": 10000})
    x = res.x.reshape(n, 3)
    print(f"LJ{n} ({target.pair_sum} pairs): minimum energy {res.fun:.4f} kT")
    return x - x.mean(0)


if __name__ == "__main__":
    import mdtraj

    for name in sys.argv[1:]:
        path = SYSTEMS / name / "system.yaml"
        spec = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "initial_positions"}
        target = build_lennard_jones({"name": name, **spec}, path).target
        out = path.parent / "initial.pdb"
        mdtraj.Trajectory(minimum(target)[None], particle_topology(target.n_particles)).save_pdb(str(out))
        print(f"wrote {out}")
