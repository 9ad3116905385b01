"""``boltzdiff pool RUN_DIR... [--out FILE]``: one ΔF from the SMC runs of several run directories of one molecule.

Every SMC run, from whichever model, estimates the same target's normalising constant, so runs from different
run directories (other seeds, other trained models, other settings) pool exactly as the runs of one directory
do: each weighted by its normalising-constant estimate (:func:`boltzdiff.analysis.weights.pool_runs`). The error
bar is the delete-one-model jackknife over all the trained models (a directory without ``train.n_models`` counts
as one model). Each particle counts with its φ-basin probability integrated over its φ rotation where
``boltzdiff analyze`` left it (``basin_probability.npy``, as analysis.json's ΔF), else as in or out of the basin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def register(sub) -> None:
    p = sub.add_parser(
        "pool",
        help="pool the SMC runs of several `boltzdiff run` directories of one molecule into one ΔF",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.set_defaults(func=run)


def phi_of_samples(system, x) -> np.ndarray:
    """φ (radians) of a molecule's samples ``x: (n, 3 N)``, mirror images mapped back to the hand of the system's
    structure first (as the analysis does), ``(n,)``."""
    import torch

    from boltzdiff.cv import phi_psi
    from boltzdiff.models.egnn import chiral_quads_of, fix_chirality, reference_chirality

    n = system.target.event_shape[0]
    xs = torch.as_tensor(np.asarray(x).reshape(-1, n, 3))
    quads = chiral_quads_of(system)
    if quads:
        sign = reference_chirality(torch.as_tensor(np.asarray(system.positions))[None], quads)
        xs = fix_chirality(xs, quads, sign).x
    cvs = system.spec["cvs"]
    return phi_psi(xs.numpy(), system.topology, phi=cvs["phi"], psi=cvs["psi"])[0]


def _read_run_dir(d: Path):
    """``(x, log_w, run, model, log_Z per run, basin probability or None)`` of one finished run directory."""
    from boltzdiff.errors import ConfigError

    for name in ("pipeline.json", "samples.npz", "samples.json"):
        if not (d / name).exists():
            raise ConfigError(f"pool: {d} has no {name} (not a finished `boltzdiff run` directory)")
    with np.load(d / "samples.npz") as z:
        x, lw = z["x"], z["log_w"]
        run = z["run"] if "run" in z.files else np.zeros(len(x), dtype=int)
        model = z["model"] if "model" in z.files else np.zeros(len(x), dtype=int)
    summ = json.loads((d / "samples.json").read_text())
    log_z = [r["log_Z"] for r in summ["runs"]] if "runs" in summ else [summ["log_Z"]]
    bp = d / "basin_probability.npy"
    p = np.load(bp) if bp.exists() else None
    if p is not None and len(p) != len(x):
        p = None
    return x, lw, run.astype(int), model.astype(int), log_z, p


def pooled_delta_f(dirs, phi_of=None) -> dict:
    """Pool the SMC runs of ``dirs`` (finished run directories of one system) by their normalising constants.

    Parameters
    ----------
    dirs : sequence of paths
    phi_of : callable ``(x: (n, 3 N)) -> phi (n,)``, optional
        How to read φ where a directory has no ``basin_probability.npy``; default: the first directory's
        system (:func:`phi_of_samples`).

    Returns
    -------
    dict with ``delta_f_kT``, ``delta_f_se_kT`` (jackknife over models), ``n_models``, ``n_runs``,
    ``delta_f_models_kT`` (each model's runs alone) and ``basin`` (per directory: "phi integrated" or "count").
    """
    from boltzdiff.analysis.free_energy import in_phi_basin, two_state_delta_f
    from boltzdiff.analysis.weights import clean_log_weights, jackknife_se, leave_one_run_out, pool_runs

    dirs = [Path(d) for d in dirs]
    members, lws, runs, models, log_z, how = [], [], [], [], [], []
    n_run = n_model = 0
    for d in dirs:
        x, lw, run, model, lz, p = _read_run_dir(d)
        if p is not None:
            members.append(np.asarray(p, dtype=float))
            how.append("phi integrated")
        else:
            if phi_of is None:
                from boltzdiff.systems import load_system

                meta = json.loads((d / "pipeline.json").read_text())
                system = load_system(meta["system_path"], meta.get("variant"))

                def phi_of(y, _system=system):
                    return phi_of_samples(_system, y)

            members.append(in_phi_basin(phi_of(x)).astype(float))
            how.append("count")
        lws.append(clean_log_weights(lw).log_w_n)
        log_z += list(lz)
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
        delta_f_se_kT=float(jackknife_se(loo)),
        n_models=n_model,
        n_runs=n_run,
        delta_f_models_kT=[float(est(model == k)) for k in range(n_model)],
        basin=how,
        run_dirs=[str(d) for d in dirs],
    )


def run(args) -> int:
    from boltzdiff.errors import ConfigError

    for d in args.run_dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"pool: run dir {d} does not exist")
    res = pooled_delta_f(args.run_dirs)
    print(
        f"{res['n_runs']} SMC runs of {res['n_models']} models: ΔF {res['delta_f_kT']:.3f} ± "
        f"{res['delta_f_se_kT']:.3f} kT (jackknife over models)"
    )
    print("each model's runs: " + ", ".join(f"{v:.2f}" for v in res["delta_f_models_kT"]))
    print("basin membership per directory: " + ", ".join(res["basin"]))
    if args.out:
        from boltzdiff.io import atomic_write_json

        def finite_or_none(v):
            return v if not isinstance(v, float) or np.isfinite(v) else None

        out = {k: [finite_or_none(u) for u in v] if isinstance(v, list) else finite_or_none(v) for k, v in res.items()}
        atomic_write_json(args.out, out)
    return 0
