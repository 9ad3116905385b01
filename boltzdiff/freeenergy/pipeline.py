"""``boltzdiff freeenergy STATE_A STATE_B --out DIR``: samples of both states, the interpolant's training, both
estimates of ``F_B - F_A`` and a report; every stage resumes.

Layout of ``DIR``::

    freeenergy.json     the two states and the resolved settings (checked on resume)
    run_info.json       seed, git commit, package versions
    states/A, states/B  the reference sampling of each state (molecules: ``reference/positions.npy``, the
                        metadynamics frames resampled by their weights; analytic targets: ``samples.npy``)
    train/              checkpoint.pt (resumable), summary.json
    estimates.json      the classifier's and the annealing's estimates, their costs, the profile over t
    profile.png, report.md
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.freeenergy.train import InterpolantTrainConfig

log = logging.getLogger(__name__)


@dataclass
class FreeEnergySettings:
    """Settings of ``boltzdiff freeenergy`` (defaults by kind of system: see :func:`default_settings`).

    Attributes
    ----------
    preset : str
        The preset whose ``reference`` settings (the system's run.yaml) sample the molecular states.
    n_levels : int
        Levels of the interpolant, both ends included.
    gamma_f : float
        Noise scale of the interpolant (units of the configurations).
    width, depth : int
        The correction network.
    n_state_samples : int
        Exact samples per state (analytic targets only).
    n_particles, mcmc_steps : int
        Particles per direction and MALA steps per level of the annealing.
    state_ns : float or None
        Molecules: nanoseconds of each state's sampling after the bias is built (the preset's reference ``ns``;
        None keeps the preset's). Where the end states overlap well, their sampling limits every estimate.
    state_method : str or None
        Molecules: ``md`` (plain Langevin MD from the system's structure) or ``metad`` (metadynamics, then
        frames reweighted to the state) for each state's sampling; None keeps the preset's. Plain MD gives
        unweighted frames but no basin it cannot cross into within ``state_ns``.
    train : InterpolantTrainConfig
    """

    preset: str = "quick"
    n_levels: int = 16
    gamma_f: float = 0.5
    width: int = 128
    depth: int = 2
    n_state_samples: int = 4000
    n_particles: int = 2000
    mcmc_steps: int = 3
    state_ns: float | None = None
    state_method: str | None = None
    train: InterpolantTrainConfig = field(default_factory=InterpolantTrainConfig)


def default_settings(kind: str, preset: str, seed: int, loss: str = "diffclf") -> FreeEnergySettings:
    """Analytic targets: ``gamma_f`` 0.5, 3000 steps. Molecules: ``gamma_f`` 0.005 nm, 24 levels, 1500 steps of
    64 pairs (``full``: 6000 of 128), classification only: the interpolated configurations of two different
    conformations are strained, their forces reach 1e6 kT/nm and the denoising term's targets with them,
    while the classification sees only the energies' differences between levels, in which the strain cancels
    (docs/method.md#free-energies-between-thermodynamic-states)."""
    if kind == "analytic":
        tr = InterpolantTrainConfig(steps=3000, seed=seed, loss=loss)
        return FreeEnergySettings(preset=preset, train=tr)
    full = preset == "full"
    tr = InterpolantTrainConfig(
        steps=6000 if full else 1500,
        batch_size=128 if full else 64,
        k=4,
        seed=seed,
        loss=loss,
        refit_samples=512 if full else 256,
        dsm_weight=0.0 if loss == "diffclf" else 1.0,
    )
    return FreeEnergySettings(
        preset=preset,
        n_levels=24,
        gamma_f=0.005,
        width=256,
        depth=3,
        n_particles=2000 if full else 1000,
        mcmc_steps=5 if full else 3,
        train=tr,
    )


def parse_state(text: str):
    """``system:variant`` (or ``system`` for its default variant) -> System; one-line error otherwise."""
    from boltzdiff.systems import load_system

    name, _, variant = str(text).partition(":")
    if not name:
        raise ConfigError(f"state {text!r}: expected SYSTEM or SYSTEM:VARIANT")
    return load_system(name, variant or None)


def check_same_space(a, b) -> None:
    """Both states must describe the same configuration space: equal dimension and, for molecules, the same
    atoms in the same order."""
    la, lb = _label(a), _label(b)
    if a.target.dim != b.target.dim:
        raise ConfigError(
            f"states {la} and {lb} differ in dimension ({a.target.dim} vs {b.target.dim}); a free "
            f"energy between them needs one configuration space"
        )
    ta, tb = _topology(a), _topology(b)
    if ta != tb:
        raise ConfigError(f"states {la} and {lb} have different topologies (atoms or their order differ)")


def _label(s) -> str:
    return f"{s.name}:{s.variant}" if s.variant else s.name


def _topology(system):
    pdb = (system.spec or {}).get("pdb") if hasattr(system, "spec") else None
    if system.kind != "openmm" or pdb is None:
        return None
    import mdtraj as md

    top = md.load(str(system.path.parent / pdb)).topology
    return [(a.name, a.residue.name, a.element.symbol if a.element else "") for a in top.atoms]


def state_samples(system, where: Path, s: FreeEnergySettings, seed: int, progress: bool) -> tuple[np.ndarray, int]:
    """Equal-weight samples ``(N, d)`` of one state and the target evaluations that made them."""
    from boltzdiff.pipeline import kind_of, resolve_settings, stage_reference

    where.mkdir(parents=True, exist_ok=True)
    if kind_of(system) == "analytic":
        f = where / "samples.npy"
        if not f.exists():
            from boltzdiff.io import save_npy

            g = torch.Generator().manual_seed(int(seed))
            save_npy(f, system.target.sample(s.n_state_samples, g).double().numpy())
        return np.load(f), 0
    if kind_of(system) != "molecule":
        raise ConfigError(
            f"freeenergy: {_label(system)} is a particle system; only molecules and analytic targets are supported"
        )
    settings = resolve_settings(system, s.preset, seed)
    if s.state_ns is not None:
        if not float(s.state_ns) > 0:
            raise ConfigError(f"--set state_ns: expected a positive number of nanoseconds, got {s.state_ns!r}")
        settings["reference"]["ns"] = float(s.state_ns)
    if s.state_method is not None:
        if s.state_method not in ("md", "metad"):
            raise ConfigError(f"--set state_method: expected 'md' or 'metad', got {s.state_method!r}")
        if s.state_method == "md":  # keep what plain MD understands: its length, frame interval and seed
            ref = settings["reference"]
            settings["reference"] = {"method": "md", **{k: ref[k] for k in ("ns", "save_every_ps", "seed") if k in ref}}
    stage_reference(system, where, settings, progress)
    x = np.load(where / "reference" / "positions.npy")
    return x.reshape(x.shape[0], -1).astype(np.float64), _reference_evals(settings["reference"], x.shape[0])


def _reference_evals(ref: dict, n_frames: int) -> int:
    step_fs = float(ref.get("timestep_fs", 1.0))
    build = float(ref.get("build_ns", 0.0)) if ref.get("method", "md") == "metad" else 0.0
    ps = 1000.0 * (build + float(ref.get("ns", 1.0)))
    return int(round(ps * 1000.0 / step_fs)) + n_frames


def run_free_energy(
    state_a: str,
    state_b: str,
    out: str | Path,
    preset: str = "quick",
    seed: int = 0,
    loss: str = "diffclf",
    progress: bool = True,
    overrides: dict | None = None,
) -> dict:
    """Every stage of ``boltzdiff freeenergy``; returns estimates.json's contents."""
    from boltzdiff.freeenergy.estimate import ais_estimates, endpoint_bar
    from boltzdiff.freeenergy.interpolant import InterpolantPath
    from boltzdiff.freeenergy.model import InterpolantEnergy
    from boltzdiff.freeenergy.train import refit_log_norm, train_interpolant
    from boltzdiff.io import atomic_write_json
    from boltzdiff.pipeline import kind_of
    from boltzdiff.runinfo import write_run_info

    a, b = parse_state(state_a), parse_state(state_b)
    check_same_space(a, b)
    kinds = {kind_of(a), kind_of(b)}
    if len(kinds) != 1:
        raise ConfigError(f"states {state_a} and {state_b} are of different kinds ({sorted(kinds)})")
    s = default_settings(kinds.pop(), preset, seed, loss)
    for k, v in (overrides or {}).items():
        if k in InterpolantTrainConfig.__dataclass_fields__:
            setattr(s.train, k, v)
        elif k in FreeEnergySettings.__dataclass_fields__:
            setattr(s, k, v)
        else:
            raise ConfigError(f"--set {k}: unknown setting (expected one of {sorted(_keys())})")
    s.train.__post_init__()
    out = Path(out)
    meta = dict(state_a=state_a, state_b=state_b, seed=seed, settings=asdict(s))
    mf = out / "freeenergy.json"
    if mf.exists():
        old = json.loads(mf.read_text())
        if isinstance(old.get("settings"), dict):  # settings added since the run was made, at their null default
            old["settings"] = {**{k: None for k, v in meta["settings"].items() if v is None}, **old["settings"]}
        if {k: old.get(k) for k in meta} != meta:
            raise ConfigError(f"{out} holds a freeenergy run with other states or settings; choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} is not empty and holds no freeenergy.json; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(mf, meta)
    write_run_info(out, dict(command="freeenergy", **meta), seed)

    xa, ev_a = state_samples(a, out / "states" / "A", s, seed, progress)
    xb, ev_b = state_samples(b, out / "states" / "B", s, seed + 100, progress)
    xa_t, xb_t = torch.as_tensor(xa), torch.as_tensor(xb)
    path = InterpolantPath.uniform(s.n_levels, s.gamma_f)
    model = InterpolantEnergy(a.target, b.target, path, torch.cat([xa_t, xb_t]), width=s.width, depth=s.depth)
    summary_f = out / "train" / "summary.json"
    summary = train_interpolant(
        model, xa_t, xb_t, s.train, checkpoint=str(out / "train" / "checkpoint.pt"), progress=progress
    )
    n_train = model.n_target_evals
    est = json.loads((out / "estimates.json").read_text()) if (out / "estimates.json").exists() else None
    if est is None:
        df_trained = model.delta_f()
        f_trained = model.f.detach().clone()
        if s.train.loss == "diffclf" and s.train.refit_samples > 0:
            refit_log_norm(model, xa_t, xb_t, s.train)
        n_refit = model.n_target_evals - n_train
        ais = ais_estimates(model, xa_t, xb_t, s.n_particles, s.mcmc_steps, seed=seed)
        est = dict(
            state_a=state_a,
            state_b=state_b,
            loss=s.train.loss,
            seed=seed,
            t=path.t.tolist(),
            classifier=dict(
                delta_f_kT=model.delta_f() if s.train.loss == "diffclf" else None,
                delta_f_trained_kT=df_trained if s.train.loss == "diffclf" else None,
                profile_kT=(model.f[0] - model.f).tolist(),
                profile_trained_kT=(f_trained[0] - f_trained).tolist(),
                n_target_evals=n_train + n_refit,
            ),
            ais=ais,
            n_target_evals=dict(state_a=ev_a, state_b=ev_b, train=n_train, refit=n_refit, ais=ais["n_target_evals"]),
        )
        est["n_target_evals"]["total"] = sum(est["n_target_evals"].values())
        atomic_write_json(summary_f, {k: v for k, v in summary.items() if k != "trace"} | {"trace": summary["trace"]})
        atomic_write_json(out / "estimates.json", est)
    if "endpoint_bar" not in est:  # runs finished before this estimate existed get it on the next call
        est["endpoint_bar"] = endpoint_bar(a.target, b.target, xa_t, xb_t)
        atomic_write_json(out / "estimates.json", est)
    write_report(out, est, a, b)
    return est


def _overlap_lines(ep: dict | None) -> list[str]:
    if not ep:
        return []
    return [
        f"Overlap of the end states: u_B − u_A = {ep['du_a_mean_kT']:.2f} ± {ep['du_a_sd_kT']:.2f} kT (mean ± SD) on "
        f"A's samples, {ep['du_b_mean_kT']:.2f} ± {ep['du_b_sd_kT']:.2f} on B's. Where this spread is a few kT, "
        "BAR between the end states is already accurate, and the end states' sampling limits every estimate "
        f"here (that BAR cost {ep['n_target_evals']:,} further evaluations).",
        "",
    ]


def _keys():
    return set(FreeEnergySettings.__dataclass_fields__) - {"train"} | set(InterpolantTrainConfig.__dataclass_fields__)


def write_report(out: Path, est: dict, a, b) -> None:
    from boltzdiff.io import atomic_write_text

    t = np.asarray(est["t"])
    c, ais = est["classifier"], est["ais"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        ax[0].plot(t, c["profile_kT"], "o-", ms=3, label="refit normalisers")
        ax[0].plot(t, c["profile_trained_kT"], "s--", ms=3, label="trained normalisers")
        if "bar" in ais:
            ax[0].axhline(ais["bar"]["delta_f_kT"], color="k", lw=0.8, label="AIS both ways (BAR)")
        ax[0].set(xlabel="t", ylabel="F(t) − F(0) (kT)", title="free energy along the interpolant")
        ax[0].legend(fontsize=7)
        for k in ("forward", "reverse"):
            if "ess_trace" in ais.get(k, {}):
                ax[1].plot(ais[k]["ess_trace"], label=k)
        ax[1].set(xlabel="annealing step", ylabel="normalised ESS", ylim=(0, 1.05))
        ax[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "profile.png", dpi=110)
        plt.close(fig)
    except Exception as e:  # pragma: no cover - plotting is optional
        log.warning("profile.png not written: %s", e)

    def fmt(d):
        if not d or d.get("delta_f_kT") is None:
            return "—"
        se = d.get("delta_f_se_kT")
        return f"{d['delta_f_kT']:.3f}" + ("" if se is None or not math.isfinite(se) else f" ± {se:.3f}")

    n = est["n_target_evals"]
    lines = [
        f"# F_B − F_A: {_label(a)} → {_label(b)}",
        "",
        f"Loss `{est['loss']}`, seed {est['seed']}. Free energies in kT (F = −ln Z).",
        "",
        "| estimate | F_B − F_A (kT) | ESS |",
        "|---|---|---|",
        f"| classifier (refit normalisers) | {fmt(c)} | — |",
        f"| classifier (trained normalisers) | {fmt(dict(delta_f_kT=c.get('delta_f_trained_kT')))} | — |",
        f"| AIS forward A → B | {fmt(ais['forward'])} | {ais['forward']['ess']:.3f} |",
        f"| AIS reverse B → A | {fmt(ais['reverse'])} | {ais['reverse']['ess']:.3f} |",
        f"| BAR of both directions | {fmt(ais.get('bar'))} | — |",
        f"| BAR between the end states' own samples (no interpolant) | {fmt(est.get('endpoint_bar'))} | — |",
        "",
        f"Target-energy evaluations: state A {n['state_a']:,}, state B {n['state_b']:,}, training {n['train']:,}, "
        f"refit {n['refit']:,}, annealing {n['ais']:,}; total {n['total']:,}.",
        "",
        *_overlap_lines(est.get("endpoint_bar")),
        "![profile](profile.png)",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
