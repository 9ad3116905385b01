"""``boltzdiff pool RUN_DIR... [--out FILE]``: one ΔF from the SMC runs of several run directories of one molecule.

Every SMC run, from whichever model, estimates the same target's normalising constant, so runs from different
run directories (other seeds, other trained models, other settings) pool exactly as the runs of one directory
do: each weighted by its normalising-constant estimate (:func:`boltzdiff.analysis.weights.pool_runs`). The error
bar is the delete-one-model jackknife over all the trained models (a directory without ``train.n_models`` counts
as one model). The states are the system's (``states`` and ``free_energy`` of its spec). Each particle counts
with its probability of the state integrated over its rotation about the state's dihedral where ``boltzdiff
analyze`` left it (``basin_probability.npy``, as analysis.json's ΔF), else as in or out of the states.
"""

from __future__ import annotations

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


def state_membership(system, x) -> tuple[np.ndarray, np.ndarray | None]:
    """Which of a molecule's samples ``x: (n, 3 N)`` lie in the states of its ΔF (the spec's ``states`` and
    ``free_energy``, :mod:`boltzdiff.analysis.states`), mirror images mapped back to the hand of the system's
    structure first (as the analysis does): ``(in A, in B)``, bools ``(n,)``; ``in B`` is None where B is A's
    complement."""
    from boltzdiff.analysis.states import free_energy_spec, state_mask
    from boltzdiff.errors import ConfigError
    from boltzdiff.systems import system_cv_values

    fe = free_energy_spec(system.spec, str(system.path or system.name))
    if fe is None:
        raise ConfigError(f"pool: system {system.name!r} declares no named states (field 'states' of its spec)")
    values = system_cv_values(system, x).values
    return state_mask(values, fe.state), (None if fe.against is None else state_mask(values, fe.against))


def _read_run_dir(d: Path):
    """``(x, log_w, run, model, log_Z per run, basin probability or None)`` of one finished run directory."""
    from boltzdiff.errors import ConfigError
    from boltzdiff.io import load_json, load_npy, load_npz
    from boltzdiff.pipeline import read_pipeline_json

    for name in ("pipeline.json", "samples.npz", "samples.json"):
        if not (d / name).exists():
            raise ConfigError(f"pool: {d} has no {name} (not a finished `boltzdiff run` directory)")
    read_pipeline_json(d)
    z = load_npz(d / "samples.npz", "the sample stage's particles (x, log_w)")
    if "x" not in z or "log_w" not in z:
        raise ConfigError(f"{d / 'samples.npz'}: has arrays {sorted(z)}; expected x and log_w")
    x, lw = z["x"], z["log_w"]
    run = z["run"] if "run" in z else np.zeros(len(x), dtype=int)
    model = z["model"] if "model" in z else np.zeros(len(x), dtype=int)
    summ = load_json(d / "samples.json", "the sample stage's summary (a JSON object with log_Z)")
    if not isinstance(summ, dict) or not ("runs" in summ or "log_Z" in summ):
        raise ConfigError(f"{d / 'samples.json'}: no 'log_Z' or 'runs'; expected the sample stage's summary")
    log_z = [r["log_Z"] for r in summ["runs"]] if "runs" in summ else [summ["log_Z"]]
    bp = d / "basin_probability.npy"
    p = load_npy(bp, "the analysis's per-particle basin probabilities") if bp.exists() else None
    if p is not None and len(p) != len(x):
        p = None
    return x, lw, run.astype(int), model.astype(int), log_z, p


def pooled_delta_f(dirs, state_of=None) -> dict:
    """Pool the SMC runs of ``dirs`` (finished run directories of one system) by their normalising constants.

    Parameters
    ----------
    dirs : sequence of paths
    state_of : callable ``(x: (n, 3 N)) -> (in A (n,), in B (n,) or None)``, optional
        Which samples lie in the ΔF's states where a directory has no ``basin_probability.npy``; default: the
        first such directory's system (:func:`state_membership`).

    Returns
    -------
    dict with ``delta_f_kT``, ``delta_f_se_kT`` (jackknife over models), ``n_models``, ``n_runs``,
    ``delta_f_models_kT`` (each model's runs alone) and ``basin`` (per directory: "rotation integrated" or
    "count").
    """
    from boltzdiff.analysis.free_energy import two_state_delta_f
    from boltzdiff.analysis.states import as_two_state
    from boltzdiff.analysis.weights import clean_log_weights, jackknife_se, leave_one_run_out, pool_runs

    dirs = [Path(d) for d in dirs]
    members, others, lws, runs, models, log_z, how = [], [], [], [], [], [], []
    n_run = n_model = 0
    for d in dirs:
        x, lw, run, model, lz, p = _read_run_dir(d)
        if p is not None:  # the analysis's rotation integral: a state against the rest
            members.append(np.asarray(p, dtype=float))
            others.append(None)
            how.append("rotation integrated")
        else:
            if state_of is None:
                from boltzdiff.pipeline import read_pipeline_json
                from boltzdiff.systems import load_system

                meta = read_pipeline_json(d) or {}
                system = load_system(meta["system_path"], meta.get("variant"))

                def state_of(y, _system=system):
                    return state_membership(_system, y)

            in_a, in_b = state_of(x)
            members.append(np.asarray(in_a, dtype=float))
            others.append(None if in_b is None else np.asarray(in_b, dtype=float))
            how.append("count")
        lws.append(clean_log_weights(lw).log_w_n)
        log_z += list(lz)
        runs.append(run + n_run)
        models.append(model + n_model)
        n_run += int(run.max()) + 1
        n_model += int(model.max()) + 1
    if any(o is not None for o in others) and any(o is None for o in others):
        raise ValueError("pool: the directories' ΔF are not between the same states (a state vs. the rest and two)")
    member, run, model = np.concatenate(members), np.concatenate(runs), np.concatenate(models)
    other = None if others[0] is None else np.concatenate(others)
    member, log_w = as_two_state(member, other, pool_runs(np.concatenate(lws), run, log_z))

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
    from boltzdiff.commands._common import check_out_file
    from boltzdiff.errors import ConfigError

    for d in args.run_dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"pool: run dir {d} does not exist")
    if args.out:
        check_out_file(args.out)
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
