"""``boltzdiff evaluate RUN_DIR``: energy quality against exact answers (analytic targets), or the model-only
F(CV) against reference frames for systems with a dihedral CV (molecules; docs/method.md#model-only)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a trained model: exact answers (mixtures) or model-only F(CV) (molecules)",
        description="Mixtures: writes RUN_DIR/eval.json and RUN_DIR/eval.png. Systems with a dihedral CV: "
        "writes RUN_DIR/eval.json (its model_only block) and RUN_DIR/eval_model_only.png, from the reference "
        "frames of a `boltzdiff run` directory or --reference FRAMES.npy for a `boltzdiff train` directory.",
    )
    p.add_argument("run_dir")
    p.add_argument("--n-chains", type=int, default=32, help="noising chains for the classification loss")
    p.add_argument(
        "--fit-chains",
        type=int,
        default=None,
        help="noising chains the post-hoc f (clf_excess_fitted_f) is fitted on (default: 16x --n-chains)",
    )
    p.add_argument("--n-samples", type=int, default=2000, help="exact samples per level")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument(
        "--smc-particles",
        type=int,
        default=2000,
        help="particles of the model's own SMC: mixtures also report its mode weights (0 to skip); molecules with "
        "--estimator smc: per run",
    )
    p.add_argument(
        "--mmd-samples",
        type=int,
        default=0,
        dest="mmd_samples",
        help="mixtures: MMD² between this many reverse-SDE samples of the model and as many exact samples, with "
        "the floor of two exact sets (0, the default: skip)",
    )
    g = p.add_argument_group("model-only F(CV) (systems with a dihedral CV)")
    g.add_argument("--reference", default=None, help="reference frames .npy (F, n, 3) for a `boltzdiff train` dir")
    g.add_argument(
        "--reference-energies",
        default=None,
        dest="reference_energies",
        help="their reduced energies .npy (F,) (default: computed with the system's target)",
    )
    g.add_argument("--cv", default=None, help="the dihedral CV to profile (default: phi, else the first declared)")
    g.add_argument(
        "--state",
        default=None,
        help="CV:LO:HI, the state for ΔF (radians) when the system.yaml declares no states",
    )
    g.add_argument(
        "--estimator",
        choices=["reweight", "chains", "smc"],
        default="reweight",
        help="reweight (default): reference frames reweighted to the model; chains: MALA on the model alone; "
        "smc: the model's own SMC from noise to its cleanest level (no frames, no target energy)",
    )
    g.add_argument("--smc-runs", type=int, default=2, dest="smc_runs", help="(smc) independent runs")
    g.add_argument("--smc-mcmc-steps", type=int, default=1, dest="smc_mcmc_steps", help="(smc) MALA steps per level")
    g.add_argument(
        "--model-only-out",
        default=None,
        dest="model_only_out",
        help="write the model-only eval.json here instead (its PNG beside it), leaving RUN_DIR/eval.json as it is",
    )
    g.add_argument("--chains", type=int, default=256, help="(chains) independent chains")
    g.add_argument("--chain-steps", type=int, default=200, dest="chain_steps", help="(chains) steps per chain")
    p.set_defaults(func=run)


def run(args) -> int:
    from boltzdiff.errors import ConfigError

    rd = Path(args.run_dir)
    if not rd.is_dir():
        raise ConfigError(f"run dir {rd} does not exist")
    system = _system_of(rd)
    if system is not None and type(system.target).__name__ != "GaussianMixture":
        return run_model_only(args, rd, system)
    return run_mixture(args)


def _system_of(rd: Path):
    """The system of a ``boltzdiff run`` directory (pipeline.json) or ``boltzdiff train`` one (config.yaml), or
    None when neither says (the mixture path then reports what is missing)."""
    from boltzdiff.io import load_yaml_mapping
    from boltzdiff.pipeline.rundir import read_pipeline_json
    from boltzdiff.systems import load_system

    meta = read_pipeline_json(rd)
    if meta is not None:
        return load_system(meta["system_path"], meta.get("variant"))
    cfg = rd / "config.yaml"
    if cfg.is_file():
        raw = load_yaml_mapping(cfg, "the config.yaml that `boltzdiff train` wrote (a mapping of settings)")
        if raw.get("system"):
            return load_system(raw["system"], raw.get("variant"))
    return None


def run_model_only(args, rd: Path, system) -> int:
    """The model-only F(CV) of a run on a system with a dihedral CV: ``eval.json`` ``model_only``."""
    import numpy as np

    from boltzdiff.errors import ConfigError
    from boltzdiff.evaluate_molecule import (
        model_only_block,
        plot_model_only,
        reference_from_run_dir,
        require_dihedral_cv,
    )
    from boltzdiff.io import atomic_write_json

    require_dihedral_cv(system, args.cv)
    if args.chains < 1 or args.chain_steps < 2:
        raise ConfigError("--chains must be >= 1 and --chain-steps >= 2")
    if args.estimator == "smc" and (args.smc_particles < 2 or args.smc_runs < 1 or args.smc_mcmc_steps < 1):
        raise ConfigError("--smc-particles must be >= 2, --smc-runs >= 1 and --smc-mcmc-steps >= 1")
    u_target = None
    if args.reference is not None:
        f = Path(args.reference)
        if not f.is_file():
            raise ConfigError(f"--reference: {f} does not exist")
        ref_x = np.load(f).reshape(-1, system.target.dim)
        ref_u = None
        if args.reference_energies is not None:
            fe = Path(args.reference_energies)
            if not fe.is_file():
                raise ConfigError(f"--reference-energies: {fe} does not exist")
            ref_u = np.load(fe).reshape(-1)
    elif (rd / "pipeline.json").is_file():
        ref_x, ref_u, u_target = reference_from_run_dir(rd, system)
    else:
        raise ConfigError(
            f"{rd}: a `boltzdiff train` directory needs --reference FRAMES.npy (Boltzmann frames of {system.name})"
        )
    block = model_only_block(
        system,
        rd,
        ref_x,
        ref_u,
        u_target=u_target,
        cv=args.cv,
        state=args.state,
        estimator=args.estimator,
        n_chains=args.smc_particles if args.estimator == "smc" else args.chains,
        n_steps=args.smc_runs if args.estimator == "smc" else args.chain_steps,
        seed=args.seed,
        smc_mcmc_steps=args.smc_mcmc_steps,
    )
    ev = dict(system=system.name, model_only=block)
    dest = Path(args.model_only_out) if args.model_only_out else rd / "eval.json"
    atomic_write_json(dest, ev)
    png = plot_model_only(
        block, dest.with_name(dest.stem + "_model_only.png"), title=f"{system.name}: model-only F({block['cv']})"
    )
    log.info(
        "model-only F(%s) (%s, %d frames): RMSE %.3f kT over %d bins, half-split RMS %.3f kT%s",
        block["cv"],
        block["estimator"],
        block["n_frames"],
        block["rmse_kT"],
        block["rmse_n_bins"],
        float("nan") if block["half_split_rms_kT"] is None else block["half_split_rms_kT"],
        ""
        if block["region_offset_kT"] is None
        else f"; ΔF({block['state']['name']}) model {block['delta_f_model_kT']:.3f} kT, reference "
        f"{block['delta_f_reference_kT']:.3f} kT, offset {block['region_offset_kT']:+.3f} kT",
    )
    if block.get("ess_fraction") is not None:
        log.info(
            "the frames' weights toward the model keep a Kish ESS of %.3g of %d frames (per bin: bin_ess)",
            block["ess_fraction"],
            block["n_frames"],
        )
    log.info("wrote %s and %s", dest, png)
    return 0


def run_mixture(args) -> int:
    from boltzdiff.errors import ConfigError
    from boltzdiff.evaluate import evaluate_mixture, plot_mixture_eval
    from boltzdiff.io import atomic_write_json
    from boltzdiff.targets.gmm import GaussianMixture
    from boltzdiff.train import load_run

    if args.n_chains < 2 or args.n_samples < 10:
        raise ConfigError("--n-chains must be >= 2 and --n-samples >= 10")
    if args.fit_chains is not None and args.fit_chains < 2:
        raise ConfigError(f"--fit-chains: expected at least 2 chains, got {args.fit_chains}")
    mmd_n = getattr(args, "mmd_samples", 0)
    if mmd_n != 0 and mmd_n < 2:
        raise ConfigError(f"--mmd-samples: expected 0 (skip) or at least 2 samples, got {mmd_n}")
    run_ = load_run(args.run_dir)
    target = run_.system.target
    if not isinstance(target, GaussianMixture):
        raise ConfigError(
            f"evaluate: system {run_.system.name} has no exact noised marginals (only Gaussian "
            "mixtures do); use `boltzdiff analyze` for molecular systems"
        )
    ev = evaluate_mixture(
        run_.model,
        target,
        n_chains=args.n_chains,
        n_samples=args.n_samples,
        seed=args.seed,
        n_chains_fit=args.fit_chains,
    ).to_dict()
    if args.smc_particles > 0:
        import torch

        from boltzdiff.samplers.diagnostics import smc_mode_report

        for key, to_target in (("smc", False), ("smc_to_target", True)):
            rep = smc_mode_report(
                run_.model,
                target,
                n=args.smc_particles,
                to_target=to_target,
                generator=torch.Generator().manual_seed(args.seed + 1),
            )
            ev[key] = rep
            log.info(
                "SMC%s: mode weights %s (exact %s), max abs error %.4f, ESS %.3f",
                " ending at the target" if to_target else "",
                [round(w, 4) for w in rep["estimated"]],
                [round(w, 4) for w in rep["exact"]],
                rep["max_abs_error"],
                rep["ess"],
            )
    if mmd_n:
        from boltzdiff.evaluate_paper import model_mmd_report

        ev.update(model_mmd_report(run_.model, target, mmd_n, seed=args.seed + 2))
    ev["system"] = run_.system.name
    ev["loss"] = run_.config.get("loss")
    out = Path(args.run_dir)
    atomic_write_json(out / "eval.json", ev)
    plot_mixture_eval(ev, out / "eval.png", title=f"{run_.system.name} — {ev['loss']}")
    log.info(
        "clf_excess %.4g (fitted f: %.4g; raw %.4g, exact floor %.4g); paper units (x %d levels): %.4g +- %.2g "
        "(fitted f: %.4g); mode-weight error %.4f (max over levels %.4f); median log-ratio std %.3g",
        ev["clf_excess"],
        ev["clf_excess_fitted_f"],
        ev["clf_raw"],
        ev["clf_exact"],
        ev["n_levels"],
        ev["clf_excess_paper"],
        ev["clf_excess_paper_se"],
        ev["clf_excess_paper_fitted_f"],
        ev["mode_weight_error"],
        max(ev["mode_weight_error_per_level"]),
        float(sorted(ev["log_ratio_std"])[len(ev["log_ratio_std"]) // 2]),
    )
    if mmd_n:
        log.info(
            "MMD² %.3g (model %d reverse-SDE samples vs exact; %d non-finite); exact floor %.3g, sd %.2g; "
            "bandwidth %.3g; the samples' mode-weight error %.4f",
            ev["mmd"],
            ev["mmd_n"],
            ev["mmd_n_nonfinite"],
            ev["mmd_exact_floor"],
            ev["mmd_exact_floor_sd"],
            ev["mmd_bandwidth"],
            ev["reverse_sde_mode_weight_error"],
        )
    log.info("wrote %s and %s", out / "eval.json", out / "eval.png")
    return 0
