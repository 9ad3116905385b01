"""Write ``initial.pdb`` (a local energy minimum of LJ-n) for boltzdiff/systems/lj13 and boltzdiff/systems/lj55.

Run once from the repository root: ``python boltzdiff/systems/lj13/make_initial.py 13 55``. Particles start on a
seeded random cluster of the right density and are minimised with L-BFGS on the torch target; lengths are in
reduced units (r_m = 1), written to the PDB as nm.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize

from boltzdiff.targets.particles import LennardJonesCluster, particle_topology


def minimum(n: int, seed: int = 0) -> np.ndarray:
    target = LennardJonesCluster(n, 3)
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
    print(f"LJ{n}: minimum energy {res.fun:.4f} kT")
    return x - x.mean(0)


if __name__ == "__main__":
    import mdtraj

    for arg in sys.argv[1:]:
        n = int(arg)
        out = Path(__file__).resolve().parent.parent / f"lj{n}" / "initial.pdb"
        mdtraj.Trajectory(minimum(n)[None], particle_topology(n)).save_pdb(str(out))
        print(f"wrote {out}")
