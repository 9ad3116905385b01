"""Where does a single SMC run's phi > 0 basin weight come from? Alanine dipeptide, basin strata on.

The full preset resamples within the phi > 0 basin and the rest (labels from each particle's denoised
configuration) from sigma 0.3 nm down, the basin keeping >= 30 % of the particles. Particles whose label
changes between two resamplings carry their old stratum's per-particle weight into the new one; a particle
of the rest weighs ~10x a basin particle, so a rare rest -> basin crossing can make a large share of the
basin's final weight. This script reruns the run directory's SMC with the resampling instrumented and prints,
per run, the basin-labelled share of the weight at every stratified resampling, and which share of the final
basin weight descends from particles that were labelled "rest" at some resampling ("crossers").

    python experiments/aldp_strata_migrants.py RUN_DIR [--n 4000] [--runs 2] [--start 0] [--threads 1] \\
        [--sample KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # _common
from _common import print_table  # noqa: E402
from aldp_basin_parts import _angles  # noqa: E402


def _wq(v, w, qs):
    """Weighted quantiles of ``v``."""
    if len(v) == 0 or w.sum() <= 0:
        return [float("nan")] * len(qs)
    o = np.argsort(v)
    c = np.cumsum(w[o]) / w.sum()
    return [float(v[o][min(np.searchsorted(c, q), len(v) - 1)]) for q in qs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--n", type=int, default=4000, help="particles per run (default 4000)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--start", type=int, default=0, help="first run index (seeds as the sample stage's runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sample", action="append", default=[], help="KEY=VALUE (YAML) sample-setting override")
    ap.add_argument("--json", help="also write the per-run traces here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from _common import aldp_basin

    import boltzdiff.samplers.smc  # noqa: F401  (so that sys.modules holds it)
    from boltzdiff.analysis.weights import clean_log_weights, normalized_weights
    from boltzdiff.cv import phi_psi
    from boltzdiff.geometry import fix_chirality, reference_chirality, signed_volume
    from boltzdiff.pipeline import build_sampler, run_smc
    from boltzdiff.samplers.resampling import stratified_resample
    from boltzdiff.systems import chiral_quads_of, load_system

    out = Path(a.run_dir)
    meta = json.loads((out / "pipeline.json").read_text())
    system = load_system(meta["system_path"], meta.get("variant"))
    settings = meta["settings"]
    for kv in a.sample:
        k, v = kv.split("=", 1)
        settings["sample"][k] = yaml.safe_load(v)
    settings["sample"].update(n=a.n, n_runs=1)
    inputs = build_sampler(system, out, settings)
    seed = int(meta.get("seed", 0))

    # the label of the phi > 0 basin: the cell index cv_strata gives a configuration in it
    probe = torch.as_tensor(np.asarray(system.positions), dtype=torch.float64).reshape(1, -1)
    n_atoms = system.target.event_shape[0]
    cvs = system.spec["cvs"]
    quads = chiral_quads_of(system)
    sign = reference_chirality(probe.reshape(1, n_atoms, 3), quads) if quads else None
    v_ref = abs(float(signed_volume(probe.reshape(1, n_atoms, 3), *quads[0])[0])) if quads else None

    state: dict = {}

    def traced(log_w, labels, resample_fn, generator, min_share=0.0):
        lab = labels.reshape(-1).long()
        basin = int(state["basin_label"])
        w = normalized_weights(clean_log_weights(log_w.detach().double().cpu().numpy()).log_w_n)
        flag = state.get("flag")
        flag = torch.zeros(lab.numel(), dtype=torch.bool) if flag is None else flag
        flag = flag | (lab != basin)
        in_b = (lab == basin).numpy()
        state["trace"].append(
            dict(
                basin_share=float(w[in_b].sum()),
                crosser_share_of_basin=float(w[in_b & flag.numpy()].sum() / max(w[in_b].sum(), 1e-300)),
                basin_particles=int(in_b.sum()),
            )
        )
        idx, lw = stratified_resample(log_w, labels, resample_fn, generator, min_share=min_share)
        state["flag"] = flag[idx.cpu()]
        if "first" not in state:  # what the labels of the first stratified resampling saw
            state["first"] = dict(state["seen"], label=lab.numpy().copy(), w=w)
            state["anc"] = torch.arange(lab.numel())
        state["anc"] = state["anc"][idx.cpu()]
        return idx, lw

    strata_fn = inputs.config.bridge_strata

    def seen_strata(x):
        """The preset's labels, recording the (denoised) configuration's phi and whether it was mirrored."""
        xs = x.detach().double().cpu().reshape(-1, n_atoms, 3)
        fx = fix_chirality(xs, quads, sign) if quads else None
        phi_fixed = phi_psi((fx.x if fx else xs).numpy(), system.topology, phi=cvs["phi"], psi=cvs["psi"])[0]
        flipped = fx.flipped_b.numpy() if fx is not None else np.zeros(len(xs), bool)
        # how decided the hand is: |signed volume| at the first chiral centre over the structure's
        vol = np.abs(signed_volume(xs, *quads[0]).numpy()) / v_ref if quads else np.full(len(xs), np.nan)
        state["seen"] = dict(
            phi=np.asarray(phi_fixed).reshape(-1), flipped=np.asarray(flipped).reshape(-1), vol=vol.reshape(-1)
        )
        return strata_fn(x)

    inputs.config.bridge_strata = seen_strata
    # the module, not the function of the same name that boltzdiff.samplers exports
    sys.modules["boltzdiff.samplers.smc"].stratified_resample = traced

    # the basin's label: the cell of phi = 1 under the preset's single-CV strata spec
    spec = settings["sample"]["bridge_strata"]
    edges = np.sort(np.asarray(spec["edges"], dtype=float))
    n_cells = len(edges) if spec.get("wrap") else len(edges) + 1
    state["basin_label"] = int(np.searchsorted(edges, 1.0) % n_cells)
    rows, dump = [], []
    for r in range(a.start, a.start + a.runs):
        for k in ("first", "anc", "seen"):
            state.pop(k, None)
        state.update(trace=[], flag=None)
        done = run_smc(inputs, r, seed, progress=False)
        w = normalized_weights(clean_log_weights(done.log_w.numpy()).log_w_n)
        fin_b = aldp_basin().contains(_angles(system, done.x.numpy(), None)[0])
        flag = state["flag"].numpy() if state["flag"] is not None else np.zeros(len(w), dtype=bool)
        pb = float(w[fin_b].sum())
        cross = float(w[fin_b & flag].sum() / max(pb, 1e-300))
        df = -np.log(pb / (1 - pb))
        tr = state["trace"]
        rows.append(
            [
                r,
                f"{df:.2f}",
                f"{100 * pb:.2f}",
                f"{100 * cross:.0f}",
                " ".join(f"{100 * t['basin_share']:.2f}/{100 * t['crosser_share_of_basin']:.0f}" for t in tr),
            ]
        )
        if "first" in state:  # final basin weight by what its ancestor at the first stratified resampling was
            f, anc = state["first"], state["anc"].numpy()
            wb = w * fin_b
            lab_b = f["label"][anc] == state["basin_label"]
            phi_a = f["phi"][anc]
            fl = f["flipped"][anc]
            print(
                f"run {r}: final basin weight from ancestors labelled basin {wb[lab_b].sum() / pb:.2f}, "
                f"rest {wb[~lab_b].sum() / pb:.2f} (of which mirrored {wb[~lab_b & fl].sum() / pb:.2f}); "
                f"the rest-labelled ancestors' denoised phi (weighted quantiles 10/50/90 %): "
                + " ".join(f"{q:.2f}" for q in _wq(phi_a[~lab_b], wb[~lab_b], [0.1, 0.5, 0.9]))
                + f"; distinct such ancestors {np.unique(anc[~lab_b & fin_b]).size}"
            )
            # does an undecided hand (small |signed volume| of the denoised configuration) mark the crossers?
            vol, lab0 = f["vol"], f["label"] == state["basin_label"]
            w0 = f["w"]
            for lo, hi in ((0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, np.inf)):
                sel0 = (vol >= lo) & (vol < hi)
                sel = sel0[anc]
                print(
                    f"  |V|/|V_ref| in [{lo}, {hi}): at the first resampling {sel0.mean():.2f} of the particles "
                    f"({sel0[lab0].sum()} basin-labelled, {sel0[~lab0].sum()} rest), {w0[sel0 & lab0].sum():.4f} / "
                    f"{w0[sel0 & ~lab0].sum():.4f} of the weight; final basin weight from them: basin-labelled "
                    f"{wb[sel & lab_b].sum() / pb:.2f}, rest-labelled {wb[sel & ~lab_b].sum() / pb:.2f}"
                )
        dump.append(dict(run=r, delta_f_kT=float(df), basin=pb, crosser_share=cross, trace=tr))
        print_table(
            [
                "run",
                "ΔF",
                "basin weight %",
                "crossers' share of it %",
                "at each stratified resampling: basin % / crossers %",
            ],
            rows,
        )
    if a.json:
        Path(a.json).write_text(json.dumps(dump, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
