"""Where inside the phi > 0 basin does each SMC run put (or miss) its weight? Alanine dipeptide only.

Single SMC runs of the full preset read ΔF ~0.5 kT above the reference whatever their size (before the torsion sweeps;
docs/decisions.md#torsion-sweeps), and a few runs read far below. That pattern is what a region of the target's basin
that the sampler rarely reaches would give: most runs miss its mass (ΔF high), the odd run that lands a particle there
gives it a large weight (ΔF low). This script splits the basin (and the rest) into psi bins and prints, per SMC run
and pooled, the weight each bin carries, the particles and distinct lineages in it, against the reference data's
frames (the full preset's metadynamics frames are resampled to the Boltzmann weights).

    python experiments/aldp_basin_parts.py RUN_DIR [RUN_DIR ...] [--bins 8] [--json FILE]

Several run directories of one model (e.g. ``smc_repeats.py`` repeats) are read as further runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # _common
from _common import print_table  # noqa: E402


def _angles(system, x: np.ndarray, ref_x: np.ndarray | None):
    """phi, psi of ``x`` (mirror images mapped back, as the analysis does)."""
    from boltzdiff.cv import phi_psi
    from boltzdiff.geometry import fix_chirality, reference_chirality
    from boltzdiff.systems import chiral_quads_of

    cvs = system.spec["cvs"]
    n = system.target.event_shape[0]
    xs = torch.as_tensor(x.reshape(-1, n, 3))
    quads = chiral_quads_of(system)
    if quads:
        ref = ref_x if ref_x is not None else np.asarray(system.positions)[None]
        sign = reference_chirality(torch.as_tensor(ref.reshape(-1, n, 3)), quads)
        xs = fix_chirality(xs, quads, sign).x
    return phi_psi(xs.numpy(), system.topology, phi=cvs["phi"], psi=cvs["psi"])


def regions(phi: np.ndarray, psi: np.ndarray, bins: int) -> tuple[np.ndarray, list[str]]:
    """Region index per frame: ``bins`` psi bins inside 0 < phi < 2, then alphaR and beta outside it."""
    from _common import aldp_basin

    from boltzdiff.analysis.free_energy import wrap_angle

    basin = aldp_basin().contains(phi)
    p = wrap_angle(psi).reshape(-1)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    k = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    alpha_r = (p > -2.0) & (p < 1.0)
    idx = np.where(basin, k, np.where(alpha_r, bins, bins + 1))
    names = [f"basin psi {edges[i]:+.2f}..{edges[i + 1]:+.2f}" for i in range(bins)] + ["rest: alphaR", "rest: beta"]
    return idx, names


def model_region_log_ratio(run_dir: Path, ref_x: np.ndarray, reg: np.ndarray, n_regions: int, chunk: int = 1024):
    """Per region r: log(q(r) / p(r)), the model's level-0 mass in r over the target's, from target samples
    (the reference frames): q(r) / p(r) = E_p[1_r exp(u - E_0)] / (p(r) E_p[exp(u - E_0)]). Also the Kish ESS
    of exp(u - E_0) inside each region, which says how far each figure can be trusted."""
    from scipy.special import logsumexp

    from boltzdiff.pipeline import sampling_target
    from boltzdiff.samplers.mcmc import model_energy_and_score, target_energy_and_grad
    from boltzdiff.train import load_run

    run = load_run(run_dir / "train")
    target = sampling_target(run.system, run.model)
    n = run.system.target.event_shape[0]
    xr = torch.as_tensor(ref_x, dtype=torch.float64).reshape(-1, n, 3)
    xr = (xr - xr.mean(1, keepdim=True)).reshape(len(ref_x), -1)
    lr = []
    for s in range(0, len(xr), chunk):
        xb = xr[s : s + chunk].to(torch.get_default_dtype())
        e0, _ = model_energy_and_score(run.model, xb, 0)
        u, _ = target_energy_and_grad(target, xr[s : s + chunk])
        lr.append((u - e0).numpy())
    lr = np.concatenate(lr)
    lr[~np.isfinite(lr)] = -np.inf
    tot = logsumexp(lr)
    out = []
    for i in range(n_regions):
        m = reg == i
        if not m.any():
            out.append((float("nan"), 0.0))
            continue
        lq = logsumexp(lr[m]) - tot
        lp = np.log(m.mean())
        w = np.exp(lr[m] - lr[m].max())
        out.append((float(lq - lp), float(w.sum() ** 2 / (w**2).sum())))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished `boltzdiff run` directories of one model")
    ap.add_argument("--bins", type=int, default=8, help="psi bins inside the basin (default 8)")
    ap.add_argument("--json", help="also write the table here")
    ap.add_argument(
        "--model", action="store_true", help="also the first run's model level-0 mass per region over the target's"
    )
    a = ap.parse_args(argv)

    from boltzdiff.analysis.weights import normalized_weights
    from boltzdiff.pipeline import load_samples
    from boltzdiff.systems import load_system

    first = Path(a.runs[0])
    meta = json.loads((first / "pipeline.json").read_text())
    system = load_system(meta["system_path"], meta.get("variant"))
    ref_x = None
    rp = first / "reference" / "positions.npy"
    if rp.exists():
        ref_x = np.load(rp).reshape(-1, system.target.dim)

    runs = []  # (label, x, log_w within the run, log_Z of the run, lineage)
    for d in a.runs:
        d = Path(d)
        x, _, run_of, summ, cw = load_samples(d)
        with np.load(d / "samples.npz") as z:
            lineage = z["lineage"] if "lineage" in z.files else None
        labels = np.zeros(len(x), dtype=int) if run_of is None else np.asarray(run_of)
        log_zs = [r["log_Z"] for r in summ["runs"]] if summ.get("runs") else [summ["log_Z"]]
        for k in np.unique(labels):
            m = labels == k
            runs.append(
                (f"{d.name}#{k}", x[m], cw.log_w_n[m], float(log_zs[k]), None if lineage is None else lineage[m])
            )

    rows, out = [], {"bins": a.bins, "runs": []}
    pooled_w, pooled_r = [], []
    log_z = np.array([r[3] for r in runs])
    zw = np.exp(log_z - log_z.max())
    for (label, x, lw, _, lin), z in zip(runs, zw):
        phi, psi = _angles(system, x, ref_x)
        reg, names = regions(phi, psi, a.bins)
        w = normalized_weights(lw)
        share = np.array([w[reg == i].sum() for i in range(len(names))])
        basin = share[: a.bins].sum()
        df = -np.log(basin / (1 - basin)) if 0 < basin < 1 else float("inf")
        n_in = np.array([(reg == i).sum() for i in range(len(names))])
        lin_in = [int(np.unique(lin[reg == i]).size) if lin is not None else -1 for i in range(len(names))]
        # Kish ESS of the weights inside each region: how many particles its share really rests on
        ess_in = [float(w[reg == i].sum() ** 2 / max((w[reg == i] ** 2).sum(), 1e-300)) for i in range(len(names))]
        out["runs"].append(
            dict(run=label, delta_f_kT=float(df), share=share.tolist(), n=n_in.tolist(), lineages=lin_in, ess=ess_in)
        )
        pooled_w.append(w * z)
        pooled_r.append(reg)
        rows.append(
            [label, f"{df:.2f}"]
            + [f"{100 * s:.2f} ({n}/{lz}/{e:.0f})" for s, n, lz, e in zip(share, n_in, lin_in, ess_in)]
        )
    w = np.concatenate(pooled_w)
    reg = np.concatenate(pooled_r)
    share = np.array([w[reg == i].sum() for i in range(len(names))]) / w.sum()
    basin = share[: a.bins].sum()
    rows.append(["pooled by Z", f"{-np.log(basin / (1 - basin)):.2f}"] + [f"{100 * s:.2f}" for s in share])
    out["pooled"] = share.tolist()
    if ref_x is not None:
        phi, psi = _angles(system, ref_x, ref_x)
        reg, _ = regions(phi, psi, a.bins)
        share = np.array([(reg == i).mean() for i in range(len(names))])
        basin = share[: a.bins].sum()
        rows.append(
            ["reference data frames", f"{-np.log(basin / (1 - basin)):.2f}"] + [f"{100 * s:.2f}" for s in share]
        )
        out["reference_data"] = share.tolist()
        if a.model:
            lr = model_region_log_ratio(first, ref_x, reg, len(names))
            rows.append(["model level 0: log q(r)/p(r) (ESS in r)", ""] + [f"{v:+.2f} ({e:.0f})" for v, e in lr])
            out["model_log_ratio"] = [v for v, _ in lr]
    out["regions"] = names
    print_table(["run", "ΔF (kT)"] + [f"{nm} % (particles/lineages/ESS)" for nm in names], rows)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
