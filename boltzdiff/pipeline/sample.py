"""The sample stage of ``boltzdiff run``: independent SMC runs from the trained model(s) to the exact target,
pooled by their normalising constants; also the public :func:`build_sampler` / :func:`run_smc` pair."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from boltzdiff.config import SampleConfig
from boltzdiff.errors import ConfigError
from boltzdiff.io import atomic_save, atomic_write_json, save_npz, torch_load
from boltzdiff.pipeline.rundir import model_dir, model_of_run
from boltzdiff.pipeline.settings import kind_of, n_models
from boltzdiff.pipeline.workers import exit_with_parent, in_processes, job_of, system_of, usable_cores
from boltzdiff.samplers.config import SMCConfig
from boltzdiff.systems import System

log = logging.getLogger(__name__)


def torsion_spec(system: System, spec, final_steps):
    """``sample.torsion: {bonds: cvs | auto | [[j, k], ...], width: radians, bridge_steps: N}`` -> the
    :class:`~boltzdiff.samplers.torsion.TorsionMoves` and ``bridge_steps``, or ``(None, 0)`` for null. ``cvs``:
    the central bonds of the system's dihedral cvs (alanine dipeptide: phi and psi); ``auto``: every rotatable
    bond of the topology (methyl rotations and peptide bonds too). ``sample.final_mcmc_steps`` sweeps at the
    target use them (one move per sweep)."""
    if isinstance(final_steps, bool) or not isinstance(final_steps, int) or final_steps < 0:
        raise ConfigError(f"sample.final_mcmc_steps: expected an integer >= 0, got {final_steps!r}")
    if spec is None:
        return None, 0
    keys = {"bonds", "width", "bridge_steps"}
    if not isinstance(spec, dict) or not set(spec) <= keys:
        raise ConfigError(
            f"sample.torsion: expected {{bonds: cvs | auto | [[j, k], ...], width: radians (optional), "
            f"bridge_steps: integer (optional)}} or null, got {spec!r}"
        )
    from boltzdiff.samplers.torsion import torsion_moves

    if system.topology is None or len(system.target.event_shape) != 2 or system.target.event_shape[1] != 3:
        raise ConfigError(f"sample.torsion: system {system.name!r} is not a molecule with a topology (bonds)")
    bonds = [(b[0].index, b[1].index) for b in system.topology.bonds]
    n_atoms = system.target.event_shape[0]
    which = spec.get("bonds", "cvs")
    if which == "cvs":
        from boltzdiff.systems import dihedral_cvs

        cvs = dihedral_cvs(system)
        if not cvs:
            raise ConfigError(f"sample.torsion: bonds 'cvs', but system {system.name!r} declares no dihedral cvs")
        about = [(int(v[1]), int(v[2])) for v in cvs.values()]
    elif which == "auto":
        about = None
    elif isinstance(which, list) and all(isinstance(b, list) and len(b) == 2 for b in which):
        about = [(int(a), int(b)) for a, b in which]
    else:
        raise ConfigError(f"sample.torsion.bonds: expected 'cvs', 'auto' or a list of [j, k] atom pairs, got {which!r}")
    width = spec.get("width", math.pi)
    if isinstance(width, bool) or not isinstance(width, int | float):
        raise ConfigError(f"sample.torsion.width: expected an angle in (0, pi] radians, got {width!r}")
    steps = spec.get("bridge_steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"sample.torsion.bridge_steps: expected an integer >= 0, got {steps!r}")
    return torsion_moves(bonds, n_atoms, about, float(width)), steps


def cv_strata(system: System, spec):
    """``sample.bridge_strata: {cv: NAME, edges: [...]}`` -> ``x (n, d) -> (n,)`` labels: which interval of the
    edges the dihedral ``cvs.NAME`` of the system's spec falls in (radians, wrapped to [-pi, pi); mirrored
    molecules are mapped back first, as in the analysis). With ``wrap: true`` the interval below the first edge
    and the one above the last are one stratum (the arc across ±pi), so ``{cv: phi, edges: [0, 2], wrap:
    true}`` gives two strata, the phi > 0 basin and the rest. A list of such specs labels the cells of their
    product (e.g. phi intervals x psi intervals). ``mirror: false`` (in any of them) labels the configurations
    as they are, without mapping mirror images back: right for a model that prefers one hand (``pairmlp:
    {chiral_norm: true}``), whose noisy configurations' apparent handedness is noise that the reverse process
    removes, while their phi already says where they end. ``None`` -> None."""
    if spec is None:
        return None
    cvs = system.spec.get("cvs") or {}
    specs = spec if isinstance(spec, list) and spec else [spec]
    names, edge_sets, wraps = [], [], []
    mirror = True
    for one in specs:
        if (
            not isinstance(one, dict)
            or not {"cv", "edges"} <= set(one) <= {"cv", "edges", "wrap", "mirror"}
            or not isinstance(one["edges"], list)
            or not isinstance(one.get("wrap", False), bool)
            or not isinstance(one.get("mirror", True), bool)
        ):
            raise ConfigError(
                f"sample.bridge_strata: expected {{cv: NAME, edges: [radians, ...], wrap: true|false (optional), "
                f"mirror: true|false (optional)}}, a list of them, or null, got {spec!r}"
            )
        mirror = mirror and bool(one.get("mirror", True))
        wraps.append(bool(one.get("wrap", False)) and len(one["edges"]) >= 2)
        if one["cv"] not in cvs:
            raise ConfigError(
                f"sample.bridge_strata: cv {one['cv']!r} is not among the system's cvs ({sorted(cvs) or 'none'})"
            )
        try:
            edge_sets.append(np.sort(np.asarray([float(e) for e in one["edges"]])))
        except (TypeError, ValueError):
            raise ConfigError(f"sample.bridge_strata: edges must be numbers (radians), got {one['edges']!r}") from None
        names.append(one["cv"])
    from boltzdiff.systems import system_cv_values

    def labels(x: torch.Tensor) -> torch.Tensor:
        vals = system_cv_values(system, x.detach().double().cpu(), sorted(set(names)), mirror=mirror).values
        angles = np.stack([vals[name] for name in names], axis=1)
        angles = (angles + np.pi) % (2 * np.pi) - np.pi
        cell = np.zeros(len(angles), dtype=np.int64)
        for k, (edges, wrap) in enumerate(zip(edge_sets, wraps, strict=True)):  # mixed-radix product-cell index
            n_cells = len(edges) if wrap else len(edges) + 1
            cell = cell * n_cells + np.searchsorted(edges, angles[:, k]) % n_cells
        return torch.as_tensor(cell)

    return labels


def sampling_target(system: System, model, restrict_chirality: bool = False):
    """The exact target for SMC; particle targets get the model's centre-of-mass Gaussian as a gauge.
    ``restrict_chirality`` (``sample.restrict_chirality``): the target restricted to the hand of the system's
    structure at its declared ``chiral_quads`` (:class:`~boltzdiff.targets.base.HandRestricted`)."""
    from boltzdiff.targets.base import ComRestrained, HandRestricted

    t = system.target
    if kind_of(system) != "analytic" and len(t.event_shape) == 2:
        a2_0 = float(model.a2[0])
        t = ComRestrained(t, a2_0)
    if restrict_chirality:
        from boltzdiff.geometry import reference_chirality
        from boltzdiff.systems import chiral_quads_of

        quads = chiral_quads_of(system)
        if not quads:
            raise ConfigError(
                f"sample.restrict_chirality: system {system.name!r} declares no chiral_quads in its system.yaml"
            )
        n = t.event_shape[0]
        t = HandRestricted(
            t, quads, reference_chirality(torch.as_tensor(np.asarray(system.positions)).reshape(1, n, 3), quads)
        )
    return t


@dataclasses.dataclass
class FinishedRun:
    """What the sample stage keeps of one SMC run (and checkpoints in ``sample_runs/``)."""

    x: torch.Tensor
    log_w: torch.Tensor
    summary: dict
    ess_trace: torch.Tensor
    lineage: torch.Tensor | None = None  # None in runs checkpointed before lineages were recorded
    u_average: torch.Tensor | None = None  # energies averaged over the last HMC states (sample.final_hmc_average)


@dataclasses.dataclass
class SamplerInputs:
    """What every SMC run of one trained model shares (:func:`build_sampler`)."""

    #: the (refined) trained model
    model: object
    #: the exact target the bridge ends at, or None (``sample.to_target: false``)
    target: object
    #: the sampler's settings
    config: SMCConfig
    #: particles in all (``sample.n``)
    n: int
    #: independent SMC runs the particles are split over (``sample.n_runs``)
    n_runs: int


def build_sampler(system: System, run_dir: Path, settings: dict, model: int = 0) -> SamplerInputs:
    """Check ``settings['sample']`` (:class:`~boltzdiff.config.SampleConfig`) and build what every SMC run of
    model ``model`` of the run directory ``run_dir`` shares: the (refined) model, the target and the
    :class:`~boltzdiff.samplers.config.SMCConfig`."""
    from boltzdiff.samplers import MCMCConfig
    from boltzdiff.train import load_run

    s = SampleConfig.from_dict(settings["sample"]).validate(n_models(settings))
    strata = cv_strata(system, s.bridge_strata)
    kv = s.kernel_variance or "fisher"
    # particles whose energy is rotation-invariant: the matrix kernel follows each one's orientation
    shape = system.target.event_shape
    particles = tuple(int(v) for v in shape) if kv == "matrix" and len(shape) == 2 else None
    final_steps = s.final_mcmc_steps
    torsion, torsion_steps = torsion_spec(system, s.torsion, final_steps)
    refine = s.refine or 1
    run = load_run(model_dir(run_dir, model), device=settings["train"].get("device", "cpu"))
    if refine > 1:  # SMC through refine - 1 untrained levels between every two trained ones
        from boltzdiff.models.energy import refine_levels

        run.model = refine_levels(run.model, refine)
    mcmc = MCMCConfig("mala", n_steps=int(s.mcmc_steps)) if int(s.mcmc_steps or 0) > 0 else None
    target = sampling_target(system, run.model, restrict_chirality=s.restrict_chirality) if s.to_target else None
    cfg = SMCConfig(
        levels=s.levels,
        kernel_variance=kv,
        particles=particles,
        mcmc=mcmc,
        n_bridge=int(s.n_bridge),
        bridge_cess=None if s.bridge_cess is None else float(s.bridge_cess),
        bridge_mcmc=MCMCConfig("mala", n_steps=int(s.bridge_mcmc_steps)),
        max_bridge=int(s.max_bridge),
        bridge_strata=strata,
        strata_max_sigma=None if s.strata_max_sigma is None else float(s.strata_max_sigma),
        strata_min_share=float(s.strata_min_share or 0.0),
        strata_denoised=bool(s.strata_denoised),
        torsion=torsion,
        bridge_torsion_steps=torsion_steps,
        final_mcmc_steps=final_steps if target is not None else 0,
        final_resample=s.final_resample and target is not None,
        final_hmc_steps=s.final_hmc_steps if target is not None else 0,
        final_hmc_leapfrog=s.final_hmc_leapfrog,
        final_hmc_average=s.final_hmc_average if target is not None else 0,
    )
    return SamplerInputs(model=run.model, target=target, config=cfg, n=int(s.n), n_runs=int(s.n_runs))


def run_smc(inputs: SamplerInputs, r: int, seed: int, progress: bool) -> FinishedRun:
    """SMC run ``r`` of the sample stage (its own generator, ``seed + 1 + 7919 r``)."""
    from boltzdiff.samplers import smc

    cfg = dataclasses.replace(
        inputs.config, mcmc=copy.deepcopy(inputs.config.mcmc), bridge_mcmc=copy.deepcopy(inputs.config.bridge_mcmc)
    )
    res = smc(
        inputs.model,
        inputs.n // inputs.n_runs,
        cfg,
        target=inputs.target,
        generator=torch.Generator().manual_seed(seed + 1 + 7919 * r),
        progress=progress,
    )
    return FinishedRun(
        x=res.x.detach().double().cpu(),
        log_w=res.log_w.detach().double().cpu(),
        summary=res.summary(),
        ess_trace=res.ess_trace.detach().cpu(),
        lineage=None if res.lineage is None else res.lineage.cpu(),
        u_average=None if res.u_average is None else res.u_average.cpu(),
    )


def _save_part(part: Path, tag: dict, done: FinishedRun) -> None:
    atomic_save(part, lambda p: torch.save(dict(tag=tag, result=vars(done)), p))


def _smc_worker(job: dict) -> int:
    """One SMC run in a worker process (``sample`` with ``workers > 1``): rebuilds the system and the model
    from the run directory, runs SMC run ``job['r']`` and writes it to its part file; returns ``r``."""
    torch.set_num_threads(int(job["threads"]))
    if job.get("parent_pid"):
        exit_with_parent(int(job["parent_pid"]))
    system = system_of(job)
    out = Path(job["out"])
    inputs = build_sampler(system, out, job["settings"], model=int(job.get("model", 0)))
    done = run_smc(inputs, job["r"], job["seed"], progress=False)
    _save_part(Path(job["part"]), job["tag"], done)
    return int(job["r"])


def _run_parallel(
    system: System,
    out: Path,
    settings: dict,
    seed: int,
    todo: list,
    parts: dict,
    tag: dict,
    workers: int,
    progress: bool,
) -> None:
    """Run the SMC runs ``todo`` in ``workers`` processes (spawned: no state shared with this one, each
    single-threaded unless the cores allow more); each writes its part file, which the caller then reads."""
    threads = max(1, usable_cores() // workers)
    jobs = [
        job_of(
            system,
            out,
            settings,
            threads,
            seed=seed,
            r=r,
            model=model_of_run(r, len(parts), n_models(settings)),
            part=str(parts[r]),
            tag=tag,
        )
        for r in todo
    ]
    log.info("sample: %d SMC runs in %d worker processes (%d thread(s) each)", len(todo), workers, threads)
    in_processes(_smc_worker, jobs, workers, "SMC runs", "sample: SMC run %d finished", progress)


def stage_sample(system: System, out: Path, settings: dict, progress: bool, seed: int, workers: int | None = None):
    """SMC from the trained model to the exact target: ``sample.n_runs`` independent runs of ``n / n_runs``
    particles, pooled by their normalising constants. ``workers`` processes run them side by side (default:
    one per usable CPU core, at most ``n_runs``; 1 on a GPU); the runs and their results do not depend on it."""
    f = out / "samples.npz"
    if f.exists() and (out / "samples.json").exists():
        log.info("sample: %s exists, skipped", f)
        return
    s = settings["sample"]
    n_m = n_models(settings)
    inputs = build_sampler(system, out, settings)
    n, n_runs, target = inputs.n, inputs.n_runs, inputs.target
    models_of = [model_of_run(r, n_runs, n_m) for r in range(n_runs)]
    device = str(settings["train"].get("device", "cpu"))
    if workers is None:
        workers = min(n_runs, usable_cores()) if device == "cpu" else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers: expected a positive number of processes, got {workers!r}")
    t0 = time.time()
    # each finished SMC run is kept in sample_runs/ (tagged with what it was run with), so an interrupted stage
    # resumes at the next run instead of starting over; the folder goes once samples.npz is written
    part_dir = out / "sample_runs"
    tag = dict(sample=dict(s), seed=seed, n_runs=n_runs)
    if n_m > 1:  # parts of a run directory with another number of models are redone
        tag["n_models"] = n_m
    parts = {r: part_dir / f"run{r}.pt" for r in range(n_runs)}

    def restore(r: int) -> FinishedRun | None:
        part = parts[r]
        if not part.exists():
            return None
        try:
            blob = torch_load(part, "a finished SMC run of the sample stage", "cpu")
        except Exception as exc:  # a damaged file is redone, not trusted
            log.warning("sample: could not read %s (%s); rerunning SMC run %d", part, exc, r + 1)
            return None
        if blob.get("tag") != tag:
            log.warning("sample: %s was made with other settings; rerunning SMC run %d", part, r + 1)
            return None
        return FinishedRun(**blob["result"])

    results: dict[int, FinishedRun] = {}
    for r in range(n_runs):
        got = restore(r)
        if got is not None:
            log.info("sample: SMC run %d of %d restored from %s", r + 1, n_runs, parts[r])
            results[r] = got
    todo = [r for r in range(n_runs) if r not in results]
    if min(workers, len(todo)) > 1:  # independent runs side by side in worker processes
        part_dir.mkdir(parents=True, exist_ok=True)
        _run_parallel(system, out, settings, seed, todo, parts, tag, min(workers, len(todo)), progress)
        for r in todo:
            got = restore(r)
            if got is None:
                raise RuntimeError(f"sample: SMC run {r + 1} finished in a worker but {parts[r]} cannot be read")
            results[r] = got
    else:
        by_model = {0: inputs}
        for r in todo:  # independent SMC runs (their spread is the honest error bar), pooled by Z_r
            m = models_of[r]
            if m not in by_model:
                by_model = {m: build_sampler(system, out, settings, model=m)}  # one model in memory at a time
            if n_runs > 1:
                log.info(
                    "sample: SMC run %d of %d (%d particles%s)",
                    r + 1,
                    n_runs,
                    n // n_runs,
                    f", model {m + 1} of {n_m}" if n_m > 1 else "",
                )
            done = run_smc(by_model[m], r, seed, progress)
            if n_runs > 1:
                _save_part(parts[r], tag, done)
            results[r] = done
    results = [results[r] for r in range(n_runs)]
    x = torch.cat([res.x for res in results])
    log_w = torch.cat([res.log_w for res in results])
    run_of = np.repeat(np.arange(n_runs), n // n_runs)
    if kind_of(system) != "analytic" and len(system.target.event_shape) == 2:
        n_, sd = system.target.event_shape
        xr = x.reshape(-1, n_, sd)
        x = (xr - xr.mean(1, keepdim=True)).reshape(x.shape[0], -1)
    summaries = [res.summary for res in results]
    summary = dict(
        summaries[0],
        wall_s=time.time() - t0,
        to_target=bool(target is not None),
        seed=seed + 1,
        ess_trace=results[0].ess_trace.tolist(),
    )
    if n_runs > 1:
        summary.update(
            n=n,
            n_runs=n_runs,
            ess=min(d["ess"] for d in summaries),
            ess_min=min(d["ess_min"] for d in summaries),
            n_resample=sum(d["n_resample"] for d in summaries),
            n_model_evals=sum(d["n_model_evals"] for d in summaries),
            n_target_evals=sum(d["n_target_evals"] for d in summaries),
            n_nonfinite=sum(d["n_nonfinite"] for d in summaries),
            n_bridge=max(d["n_bridge"] for d in summaries),
            n_lineages=min(int(d.get("n_lineages", d["n"])) for d in summaries),
            runs=[
                dict(d, ess_final_step=float(res.ess_trace[-1]), **({"model": m} if n_m > 1 else {}))
                for d, res, m in zip(summaries, results, models_of)
            ],
        )
        if n_m > 1:
            summary["n_models"] = n_m

    extra = dict(run=run_of) if n_runs > 1 else {}
    if n_m > 1:
        extra["model"] = np.asarray(models_of)[run_of]
    if all(res.lineage is not None for res in results):  # distinct labels across runs
        m = n // n_runs
        extra["lineage"] = np.concatenate([res.lineage.numpy() + k * m for k, res in enumerate(results)])
    if all(res.u_average is not None for res in results):
        extra["u_average"] = torch.cat([res.u_average for res in results]).numpy()
    save_npz(f, dict(x=x.numpy(), log_w=log_w.numpy(), **extra))
    atomic_write_json(out / "samples.json", summary)
    if part_dir.is_dir():
        import shutil

        shutil.rmtree(part_dir, ignore_errors=True)
