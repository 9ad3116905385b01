"""Pool the SMC runs of several `boltzdiff run` directories of one molecule into one ΔF estimate.

Every SMC run, from whichever model, estimates the same target's normalising constant, so runs from different
run directories (other seeds, other trained models, other settings) pool exactly as the runs of one directory
do: each weighted by its normalising-constant estimate. The error bar is the delete-one-model jackknife over
all the trained models (a directory without ``train.n_models`` counts as one model). Each particle counts with
its phi-basin probability integrated over its phi rotation where ``boltzdiff analyze`` left it
(``basin_probability.npy``, as analysis.json's ΔF), else as in or out of the basin.

    python benchmarks/pool_run_dirs.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def pooled_delta_f(dirs: list[Path]) -> dict:
    from _common import phi_of_samples

    from boltzdiff.analysis.free_energy import in_phi_basin, two_state_delta_f
    from boltzdiff.analysis.weights import clean_log_weights, jackknife_se, leave_one_run_out, pool_runs
    from boltzdiff.systems import load_system

    members, lws, runs, models, log_z, how = [], [], [], [], [], []
    n_run = n_model = 0
    system = None
    for d in dirs:
        meta = json.loads((d / "pipeline.json").read_text())
        if system is None:
            system = load_system(meta["system_path"], meta.get("variant"))
        with np.load(d / "samples.npz") as z:
            x, lw = z["x"], z["log_w"]
            run = z["run"] if "run" in z.files else np.zeros(len(x), dtype=int)
            model = z["model"] if "model" in z.files else np.zeros(len(x), dtype=int)
        summ = json.loads((d / "samples.json").read_text())
        log_z += [r["log_Z"] for r in summ["runs"]] if "runs" in summ else [summ["log_Z"]]
        bp = d / "basin_probability.npy"
        p = np.load(bp) if bp.exists() else None
        if p is not None and len(p) == len(x):
            members.append(p)
            how.append("phi integrated")
        else:
            members.append(in_phi_basin(phi_of_samples(system, x)).astype(float))
            how.append("count")
        lws.append(clean_log_weights(lw).log_w_n)
        runs.append(run + n_run)
        models.append(model + n_model)
        n_run += int(run.max()) + 1
        n_model += int(model.max()) + 1
    member, run, model = np.concatenate(members), np.concatenate(runs), np.concatenate(models)
    log_w = pool_runs(np.concatenate(lws), run, log_z)

    def est(m):
        return two_state_delta_f(member[m], log_w[m], n_bootstrap=0).delta_f

    loo = leave_one_run_out(est, model)
    return dict(
        delta_f_kT=float(est(np.ones(len(member), dtype=bool))),
        delta_f_se_kT=jackknife_se(loo),
        n_models=n_model,
        n_runs=n_run,
        delta_f_models_kT=[float(est(model == k)) for k in range(n_model)],
        basin=how,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", type=Path)
    args = ap.parse_args()
    res = pooled_delta_f(args.run_dirs)
    print(
        f"{res['n_runs']} SMC runs of {res['n_models']} models: ΔF {res['delta_f_kT']:.3f} ± "
        f"{res['delta_f_se_kT']:.3f} kT (jackknife over models)"
    )
    print("each model's runs: " + ", ".join(f"{v:.2f}" for v in res["delta_f_models_kT"]))
    print("basin membership per directory: " + ", ".join(res["basin"]))


if __name__ == "__main__":
    main()
