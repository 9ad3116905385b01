"""How close is a trained molecular model's low-noise energy to the exact target? (what SMC's last levels and
its bridge to the target have to make up for)

For each `boltzdiff run` directory (or its train/ folder) of a molecule, on frames of the run's reference MD:
- ``sd(E - u)``: spread of the model's energy at a level minus the target's reduced energy, overall and within
  the phi < 0 region (the basins differ by a constant the SMC weights correct; the spread within a basin is
  what makes importance weights heavy-tailed: log-weights of a bridge from E to u spread by about this);
- the median relative error of the model's gradient against the target's ``grad u`` (forces / kT);
for levels 0, 10, 20, 30 of the model's grid. Energies of frames at another temperature than the target's are
compared as they are (the model then learned u * T_target / T_data), so compare runs with the same data.

    python experiments/level0_fidelity.py RUN_DIR [RUN_DIR ...] [--frames 2000] [--levels 0 10 20 30] \
        [--frames-from MD_DIR]      # held-out frames: another MD run's positions.npy instead of the training data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # _common
from _common import machine, print_table  # noqa: E402


def fidelity(run_dir: Path, frames: int, levels, seed: int = 0, frames_from: Path | None = None) -> list[list]:
    from boltzdiff.cv import dihedrals
    from boltzdiff.geometry import fix_chirality, reference_chirality
    from boltzdiff.systems import chiral_quads_of
    from boltzdiff.train import load_run

    train_dir = run_dir / "train" if (run_dir / "train").is_dir() else run_dir
    ref = (train_dir.parent if train_dir != run_dir else run_dir) / "reference" / "positions.npy"
    if frames_from is not None:
        ref = Path(frames_from) / "positions.npy"
    if not ref.is_file():
        sys.exit(f"level0_fidelity: {ref} not found (expected a `boltzdiff run` directory of a molecule)")
    run = load_run(train_dir)
    model, system = run.model, run.system
    pos = np.load(ref)
    n_atoms = pos.shape[1]
    idx = np.random.default_rng(seed).choice(len(pos), min(frames, len(pos)), replace=False)
    x = torch.as_tensor(pos[idx], dtype=torch.float64)
    x = (x - x.mean(1, keepdim=True)).reshape(len(idx), -1)
    u = system.target.energy(x).numpy()
    grad_u = -system.target.force(x).reshape(len(idx), -1).numpy()
    cvs = system.spec.get("cvs") or {}
    main = np.ones(len(idx), dtype=bool)
    if "phi" in cvs:
        quads = chiral_quads_of(system)
        xs = x.reshape(-1, n_atoms, 3)
        if quads:
            sign = reference_chirality(torch.as_tensor(np.asarray(system.positions))[None], quads)
            xs = fix_chirality(xs, quads, sign).x
        phi = dihedrals(xs.numpy(), [cvs["phi"]], system.topology)[:, 0]
        main = phi < 0
    rows = []
    for lv in levels:
        xf = x.to(next(model.parameters()).dtype).requires_grad_(True)
        e = model.energy(xf, lv)
        (g,) = torch.autograd.grad(e.sum(), xf)
        d = e.detach().double().numpy() - u
        ok = np.isfinite(d)
        rel = np.linalg.norm(g.double().numpy() - grad_u, axis=1) / np.linalg.norm(grad_u, axis=1)
        rows.append(
            [
                str(run_dir),
                lv,
                f"{float(model.grid.sigma[lv]):.2g}",
                f"{d[ok].std():.2f}",
                f"{d[ok & main].std():.2f}" if (ok & main).sum() > 1 else "-",
                f"{np.median(rel[ok]):.3f}",
            ]
        )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 10, 20, 30])
    ap.add_argument("--frames-from", type=Path, help="an MD directory whose positions.npy to use (held out)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    rows = []
    for d in args.run_dirs:
        rows += fidelity(d, args.frames, args.levels, frames_from=args.frames_from)
    header = ["run", "level", "sigma", "sd(E - u)", "sd(E - u), phi < 0", "median |grad E - grad u| / |grad u|"]
    print_table(header, rows)


if __name__ == "__main__":
    main()
