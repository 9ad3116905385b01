"""Pure helpers of the run analysis (:mod:`boltzdiff.pipeline.analyze`): functions of arrays and summaries,
with no knowledge of run directories."""

from __future__ import annotations

import numpy as np
import torch

from boltzdiff.analysis.free_energy import two_state_delta_f
from boltzdiff.analysis.weights import jackknife_se, leave_one_run_out

#: the bins (radians) of a run's profile F(CV) over a dihedral; the same grid as benchmarks' reference profiles
PROFILE_EDGES = np.linspace(-np.pi, np.pi, 37)


def target_energies(target, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``target.energy`` of the rows of ``x`` (float64, in chunks of ``chunk``, no gradients)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            out.append(target.energy(torch.as_tensor(x[s : s + chunk], dtype=torch.float64)).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def over_runs(summ: dict, key: str, how):
    """``how`` of ``key`` over a sample stage's SMC runs (or its one summary); None where no run has it."""
    vals = [r.get(key) for r in summ.get("runs") or [summ]]
    vals = [v for v in vals if v is not None]
    return float(how(vals)) if vals else None


def runs_table_md(res: dict) -> str | None:
    """A Markdown table of the independent SMC runs behind a pooled ΔF (None with fewer than two): each run's
    own ΔF, its basin lineages, the largest share of its weight on one lineage, and the pooled ΔF without it.
    A run that moves the pooled value far more than the others do is one whose few heavy paths decide it."""
    dfs = res.get("delta_f_runs_kT")
    if not dfs or len(dfs) < 2:
        return None
    models = res.get("model_of_run")
    cols = {
        **({"model": models} if models else {}),
        "ΔF of the run (kT)": dfs,
        "basin lineages": res.get("basin_lineages_runs"),
        "largest lineage's share of the run's weight": res.get("top_lineage_share_runs"),
        "pooled ΔF without the run (kT)": res.get("delta_f_loo_kT"),
    }
    cols = {k: v for k, v in cols.items() if v is not None and len(v) == len(dfs)}

    def cell(v):
        return "-" if v is None or not np.isfinite(v) else (f"{v}" if isinstance(v, int) else f"{v:.3g}")

    over = "trained models" if models else "runs"
    pooled = "delta_f_pooled_kT" in res  # sample.combine_runs: mean reports the mean of runs as ΔF
    key = "delta_f_pooled" if pooled else "delta_f"
    f_p, se_p = res.get(f"{key}_kT"), res.get(f"{key}_se_kT")
    head = (
        f"ΔF {cell(res.get('delta_f_kT'))} ± {cell(res.get('delta_f_se_kT'))} kT is the plain mean of the runs "
        f"(SD / √runs); pooled, "
        if pooled
        else "pooled "
    )
    lines = [
        f"Independent SMC runs ({head}ΔF {cell(f_p)} ± {cell(se_p)} kT, "
        f"each run weighted by its normalising-constant estimate; the error bar is the jackknife over {over}):",
        "",
        "| run | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    lines += [f"| {i} | " + " | ".join(cell(v[i]) for v in cols.values()) + " |" for i in range(len(dfs))]
    dfm = res.get("delta_f_models_kT")
    if dfm:
        loo = res.get("delta_f_loo_models_kT") or [None] * len(dfm)
        lines += [
            "",
            f"The same pooled over each trained model's runs (jackknife over runs alone: "
            f"± {cell(res.get('delta_f_se_runs_kT'))} kT):",
            "",
            "| model | ΔF of the model's runs (kT) | pooled ΔF without the model (kT) |",
            "|---|---|---|",
        ]
        lines += [f"| {i} | {cell(dfm[i])} | {cell(loo[i])} |" for i in range(len(dfm))]
    return "\n".join(lines)


def delta_f_over_models(member, log_w, model_of, run_of=None, se_runs=None) -> dict:
    """ΔF's error bar when the runs come from several models trained on the same data (``train.n_models``):
    the delete-one-model jackknife of the pooled ΔF. Two trainings of one recipe differ by more than one
    model's SMC runs do (docs/decisions.md#n-models: four models' pooled ΔF spread 0.43 kT, each with
    a 0.2 kT jackknife over its own runs), so a jackknife over runs alone understates the error. Returns the
    keys analysis.json gets: the SE and its method, each model's own pooled ΔF, the pooled ΔF without each
    model, ``se_runs`` (the jackknife over runs, kept for comparison) and, given ``run_of``, each run's model.
    ``member``: each particle's membership of state A (bool or probability; for ΔF between two named states,
    the share and weights of :func:`boltzdiff.analysis.states.as_two_state`).
    """
    model_of = np.asarray(model_of)
    member = np.asarray(member)

    def est(m):
        return two_state_delta_f(member[m], log_w[m], n_bootstrap=0).delta_f

    labels = np.unique(model_of)
    loo = leave_one_run_out(est, model_of)
    n_runs = np.unique(run_of).size if run_of is not None else labels.size
    out = dict(
        delta_f_se_kT=jackknife_se(loo),
        delta_f_se_method=f"jackknife over {labels.size} independently trained models ({n_runs} SMC runs in all)",
        delta_f_models_kT=[float(est(model_of == k)) for k in labels],
        delta_f_loo_models_kT=loo.tolist(),
        delta_f_se_runs_kT=se_runs,
    )
    if run_of is not None:
        run_of = np.asarray(run_of)
        out["model_of_run"] = [int(model_of[run_of == k][0]) for k in np.unique(run_of)]
    return out
