"""Fixed-seed fingerprints of the pipeline, to show that a restructuring changed no number.

Runs, through the command line only (so the same script works on any version of the package):

* ``boltzdiff run dw4 --preset quick --seed 0`` and prints the analysis figures and a checksum of the particles
  and their log-weights;
* ``boltzdiff train --system gmm2_unbalanced`` for a few hundred steps with DSM + DiffCLF and with DSM only
  (seed 0), then ``boltzdiff evaluate``, and prints the final losses, the lowest level's mode weights and a
  checksum of the model's parameters.

Two versions give the same numbers when every row is identical. Usage::

    python benchmarks/reproducibility.py --out /tmp/repro [--json results.json]

Everything runs on one CPU thread, the only setting in which CPU training is bit-reproducible. About 8 min.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def _cli(*args: str) -> None:
    cmd = [sys.executable, "-c", "from boltzdiff.cli import main; main()", *args]
    # one thread: with several, CPU reductions that accumulate in parallel (the backward of an indexed gather)
    # add in a varying order, so two trainings with one seed differ in the last bits and then drift apart
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _model_digest(run: Path) -> str:
    import torch

    blob = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    state = blob.get("state_dict", blob.get("model", blob)) if isinstance(blob, dict) else blob
    if not isinstance(state, dict):
        return "n/a"
    tensors = [v.detach().double().cpu().numpy() for k, v in sorted(state.items()) if hasattr(v, "detach")]
    return _digest(*tensors)


def dw4(out: Path) -> dict:
    run = out / "dw4_quick"
    _cli("run", "dw4", "--preset", "quick", "--seed", "0", "--out", str(run), "--no-progress", "--workers", "1")
    a = json.loads((run / "analysis.json").read_text())
    s = np.load(run / "samples.npz")
    keys = ("ess", "ess_min", "n_lineages", "mean_energy_kT", "reference_mean_energy_kT", "energy_w1_reweighted")
    return {
        **{k: a[k] for k in keys},
        "samples_sha": _digest(s["x"], s["log_w"]),
        "model_sha": _model_digest(run / "train"),
    }


def gmm(out: Path, loss: str, steps: int) -> dict:
    run = out / f"gmm2_{loss}"
    _cli("train", "--system", "gmm2_unbalanced", "--loss", loss, "--steps", str(steps), "--seed", "0",
         "--out", str(run), "--no-progress")  # fmt: skip
    _cli("evaluate", str(run), "--seed", "0")
    ev = json.loads((run / "eval.json").read_text())
    flat = {k: v for k, v in ev.items() if isinstance(v, int | float)}
    picked = {k: flat[k] for k in sorted(flat)[:8]}
    return {**picked, "model_sha": _model_digest(run)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="scratch folder for the runs (made fresh)")
    p.add_argument("--gmm-steps", type=int, default=400)
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"--out: {out} is not empty; give a fresh folder")
    rows = {"dw4_quick_seed0": dw4(out)}
    for loss in ("diffclf", "dsm"):
        rows[f"gmm2_unbalanced_{loss}_{a.gmm_steps}steps"] = gmm(out, loss, a.gmm_steps)
    for name, row in rows.items():
        print(f"| {name} |")
        for k, v in row.items():
            print(f"|   {k} | {v!r} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
