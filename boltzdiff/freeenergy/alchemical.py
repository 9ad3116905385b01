"""Free-energy difference between two thermodynamic states of the same molecule by MBAR over an alchemical path.

The two states are two potentials on the same particles, e.g. alanine dipeptide in vacuum and in OBC implicit
solvent (two variants of one system spec). The path mixes them linearly,

    U_lam(x) = (1 - lam) U_A(x) + lam U_B(x),    lam in [0, 1],

so that lam = 0 is state A and lam = 1 is state B. Langevin MD samples each window lam_l; the reduced
energies ``u_A = U_A / kT`` and ``u_B = U_B / kT`` of every saved frame give its reduced potential in every
window, ``u_l(x) = u_A(x) + lam_l (u_B(x) - u_A(x))``, and MBAR (pymbar 4) solves for the window free energies.

Units: positions in nm, energies reduced (kT, dimensionless), free energies ``F = -ln Z`` in kT; the result
``delta_f_kT`` is ``F_B - F_A``. A positive value means state B is less favourable (smaller Z) than state A.

This is the free-energy field's own kind of baseline: a solvation-like free energy between force fields, with no
learned model, against which a generator's importance-weighted estimate of the same difference can be checked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from boltzdiff.errors import ConfigError

#: global parameter of :func:`lambda_system` (0: state A, 1: state B)
LAMBDA_PARAMETER = "lam"


# ------------------------------------------------------------------------------------------------------------
# the lambda system
# ------------------------------------------------------------------------------------------------------------
def _check_same_particles(system_a: Any, system_b: Any) -> None:
    """Refuse two systems that do not share particles (count, masses, virtual sites, constraints)."""
    import openmm.unit as unit

    na, nb = system_a.getNumParticles(), system_b.getNumParticles()
    if na != nb:
        raise ConfigError(f"lambda_system: system_a has {na} particles but system_b has {nb}; expected the same")
    for i in range(na):
        ma = system_a.getParticleMass(i).value_in_unit(unit.dalton)
        mb = system_b.getParticleMass(i).value_in_unit(unit.dalton)
        if not math.isclose(ma, mb, rel_tol=1e-9, abs_tol=1e-12):
            raise ConfigError(
                f"lambda_system: particle {i} has mass {ma} Da in system_a but {mb} Da in system_b; expected the same"
            )
        if system_a.isVirtualSite(i) != system_b.isVirtualSite(i):
            raise ConfigError(f"lambda_system: particle {i} is a virtual site in only one of the two systems")
    ca, cb = system_a.getNumConstraints(), system_b.getNumConstraints()
    cons_a = sorted(_constraint(system_a, k) for k in range(ca))
    cons_b = sorted(_constraint(system_b, k) for k in range(cb))
    if cons_a != cons_b:
        raise ConfigError(
            f"lambda_system: the constraints differ (system_a has {ca}, system_b has {cb}); expected the same set"
        )


def _constraint(system: Any, k: int) -> tuple[int, int, float]:
    import openmm.unit as unit

    i, j, d = system.getConstraintParameters(k)
    i, j = sorted((int(i), int(j)))
    return i, j, round(d.value_in_unit(unit.nanometer), 9)


def lambda_system(system_a: Any, system_b: Any) -> Any:
    """One ``openmm.System`` whose potential energy is ``(1 - lam) U_A + lam U_B`` (kJ/mol).

    ``lam`` is a global parameter (default 0; set it with ``Context.setParameter("lam", value)``). Every force
    of ``system_a`` and of ``system_b`` (deep copies; ``CMMotionRemover`` skipped) becomes a collective variable
    ``a0, a1, ...`` / ``b0, b1, ...`` of one ``CustomCVForce`` with the expression
    ``(1-lam)*(a0+a1+...)+lam*(b0+b1+...)``. Particles, masses, constraints, virtual sites and box vectors come
    from ``system_a``; a ``CMMotionRemover`` of ``system_a`` is kept (as the project's MD keeps it).

    Raises
    ------
    ConfigError
        When the two systems differ in particle count, masses, virtual sites or constraints.
    """
    import openmm

    for name, s in (("system_a", system_a), ("system_b", system_b)):
        if not isinstance(s, openmm.System):
            raise ConfigError(f"lambda_system: {name} expected an openmm.System, got {type(s).__name__}")
    _check_same_particles(system_a, system_b)
    out = openmm.XmlSerializer.clone(system_a)
    while out.getNumForces():
        out.removeForce(out.getNumForces() - 1)
    cv = openmm.CustomCVForce("")
    terms: dict[str, list[str]] = {"a": [], "b": []}
    cmm = None
    for tag, s in (("a", system_a), ("b", system_b)):
        for k in range(s.getNumForces()):
            f = s.getForce(k)
            if isinstance(f, openmm.CMMotionRemover):
                if tag == "a" and cmm is None:
                    cmm = openmm.XmlSerializer.clone(f)
                continue
            name = f"{tag}{len(terms[tag])}"
            cv.addCollectiveVariable(name, openmm.XmlSerializer.clone(f))
            terms[tag].append(name)
    sum_a = "+".join(terms["a"]) or "0"
    sum_b = "+".join(terms["b"]) or "0"
    lam = LAMBDA_PARAMETER
    cv.setEnergyFunction(f"(1-{lam})*({sum_a})+{lam}*({sum_b})")
    cv.addGlobalParameter(lam, 0.0)
    out.addForce(cv)
    if cmm is not None:
        out.addForce(cmm)
    return out


# ------------------------------------------------------------------------------------------------------------
# MBAR from the two reduced energies of every frame
# ------------------------------------------------------------------------------------------------------------
def check_lambdas(lambdas: Sequence[float], where: str = "alchemical") -> np.ndarray:
    """``lambdas`` as a float array: at least 2, strictly increasing, from exactly 0 to exactly 1."""
    try:
        lam = np.asarray(lambdas, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: field 'lambdas' expected a list of numbers from 0 to 1") from None
    if lam.ndim != 1 or lam.size < 2 or not np.all(np.isfinite(lam)):
        raise ConfigError(f"{where}: field 'lambdas' expected at least 2 finite numbers, got {lambdas!r}")
    if lam[0] != 0.0 or lam[-1] != 1.0 or np.any(np.diff(lam) <= 0):
        raise ConfigError(
            f"{where}: field 'lambdas' expected strictly increasing values from 0 (state A) to 1 (state B), "
            f"got {lam.tolist()}"
        )
    return lam


def mbar_from_energies(
    u_a_per_window: Sequence[np.ndarray], u_b_per_window: Sequence[np.ndarray], lambdas: Sequence[float]
) -> dict:
    """MBAR (and neighbour-summed BAR) free energy ``F_B - F_A`` (kT) from the reduced energies of the frames
    sampled at each window of the path ``u_lam = (1 - lam) u_A + lam u_B``.

    Parameters
    ----------
    u_a_per_window, u_b_per_window : sequences of K arrays (n_l,)
        ``u_A`` and ``u_B`` (kT) of the frames sampled in window l (drawn from ``exp(-u_lam_l)``).
    lambdas : sequence of K floats
        Strictly increasing, from 0 to 1.

    Returns
    -------
    dict
        ``delta_f_kT`` (MBAR, ``f_B - f_A``), ``delta_f_se_kT`` (pymbar's analytical standard error between
        the first and last state), ``f_k_kT`` (every window, ``f_0 = 0``), ``delta_f_bar_kT`` and
        ``delta_f_bar_se_kT`` (BAR between neighbouring windows, summed; the errors added in quadrature),
        ``overlap`` (smallest element ``O[l, l+1]`` of pymbar's overlap matrix), ``overlap_neighbours``
        (all K-1 of them), ``overlap_scalar`` (pymbar's spectral gap), ``statistical_inefficiency`` (pymbar's
        ``g`` of ``u_B - u_A`` in each window, in frame order), ``lambdas``, ``n_frames_per_window``, ``method``
        (``"mbar_alchemical"``).

    The standard errors treat the frames as independent: where ``g`` is well above 1 (frames saved more often
    than the energy gap decorrelates) they are too small by about ``sqrt(g)``; save less often or run longer.
    """
    from boltzdiff.reference.umbrella import _import_pymbar

    lam = check_lambdas(lambdas)
    K = lam.size
    if len(u_a_per_window) != K or len(u_b_per_window) != K:
        raise ConfigError(
            f"alchemical: expected {K} windows of u_A and u_B (one per lambda), got "
            f"{len(u_a_per_window)} and {len(u_b_per_window)}"
        )
    ua, ub = [], []
    for l_, (a, b) in enumerate(zip(u_a_per_window, u_b_per_window)):
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        b = np.asarray(b, dtype=np.float64).reshape(-1)
        if a.size != b.size or a.size == 0:
            raise ConfigError(
                f"alchemical: window {l_}: u_A has {a.size} frames and u_B {b.size}; expected the same number >= 1"
            )
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise ConfigError(f"alchemical: window {l_}: u_A or u_B holds non-finite energies; expected finite kT")
        ua.append(a)
        ub.append(b)
    n_k = np.array([a.size for a in ua], dtype=np.int64)
    ua_n, ub_n = np.concatenate(ua), np.concatenate(ub)
    u_kn = ua_n[None, :] + lam[:, None] * (ub_n - ua_n)[None, :]

    pymbar = _import_pymbar()
    solver = pymbar.MBAR(u_kn, n_k, relative_tolerance=1e-10, maximum_iterations=10000, verbose=False)
    res = solver.compute_free_energy_differences(compute_uncertainty=True)
    df, ddf = np.asarray(res["Delta_f"]), np.asarray(res["dDelta_f"])
    ov = solver.compute_overlap()
    o = np.asarray(ov["matrix"])
    neigh = [float(min(o[k, k + 1], o[k + 1, k])) for k in range(K - 1)]

    # BAR between neighbouring windows: w_F = u_{l+1} - u_l on frames of l, w_R = u_l - u_{l+1} on frames of l+1
    bar_sum, bar_var = 0.0, 0.0
    for k in range(K - 1):
        dlam = lam[k + 1] - lam[k]
        w_f = dlam * (ub[k] - ua[k])
        w_r = -dlam * (ub[k + 1] - ua[k + 1])
        r = pymbar.other_estimators.bar(w_f, w_r, compute_uncertainty=True)
        bar_sum += float(r["Delta_f"])
        bar_var += float(r["dDelta_f"]) ** 2
    g = [_statistical_inefficiency(pymbar, b - a) for a, b in zip(ua, ub)]
    return {
        "delta_f_kT": float(df[0, -1]),
        "delta_f_se_kT": float(ddf[0, -1]),
        "f_k_kT": [float(v) for v in df[0]],
        "delta_f_bar_kT": bar_sum,
        "delta_f_bar_se_kT": math.sqrt(bar_var),
        "overlap": min(neigh),
        "overlap_neighbours": neigh,
        "overlap_scalar": float(ov["scalar"]),
        "statistical_inefficiency": g,
        "lambdas": lam.tolist(),
        "n_frames_per_window": [int(n) for n in n_k],
        "method": "mbar_alchemical",
    }


def _statistical_inefficiency(pymbar: Any, a_n: np.ndarray) -> float:
    """pymbar's statistical inefficiency ``g >= 1`` of a time series (NaN where it cannot be estimated)."""
    if a_n.size < 3 or float(np.std(a_n)) == 0.0:
        return float("nan")
    try:
        return float(pymbar.timeseries.statistical_inefficiency(a_n))
    except Exception:  # noqa: BLE001 - a diagnostic only
        return float("nan")


# ------------------------------------------------------------------------------------------------------------
# MD at every window, then MBAR
# ------------------------------------------------------------------------------------------------------------
def _positive(v: Any, field: str, allow_zero: bool = False) -> float:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v >= 0 if allow_zero else v > 0)
    if not ok:
        expected = "a number >= 0" if allow_zero else "a positive number"
        raise ConfigError(f"alchemical: field {field!r} expected {expected}, got {v!r}")
    return float(v)


def alchemical_mbar(
    system_name: str,
    variant_a: str,
    variant_b: str,
    lambdas: Sequence[float],
    ps_per_window: float,
    save_every_ps: float,
    seed: int,
    starts: np.ndarray | None = None,
    equilibrate_ps: float = 10.0,
    progress: bool = False,
    platform: str = "Reference",
) -> dict:
    """``F_B - F_A`` (kT) between two variants of one OpenMM system by Langevin MD along ``lambdas`` and MBAR.

    Parameters
    ----------
    system_name : str
        A shipped system, a folder or a ``system.yaml`` (as :func:`boltzdiff.systems.load_system` takes).
    variant_a, variant_b : str
        The two variants: state A (lam = 0) and state B (lam = 1). Same particles and temperature.
    lambdas : sequence of floats
        Window values, strictly increasing from 0 to 1.
    ps_per_window : float
        Production length of each window (ps), after ``equilibrate_ps`` (discarded).
    save_every_ps : float
        Interval between saved frames (ps); each window saves ``round(ps_per_window / save_every_ps)`` frames.
    seed : int
        Seeds the integrator and the initial velocities of each window (window l uses a seed derived from both).
    starts : (n, n_atoms, 3) array in nm, optional
        Window l starts from ``starts[l % n]``; default: the system's structure (no minimisation, so that every
        target evaluation is an MD step; the shipped structures are minimised).
    equilibrate_ps : float
        MD at each window before saving frames (ps).
    progress : bool
        Report progress over the windows.
    platform : str
        OpenMM platform of the MD (Reference: the fastest for 22 atoms on a CPU, as the system specs use).

    The integrator is the project's MD one (:mod:`boltzdiff.reference.md`): LangevinMiddle at the system's
    temperature with :class:`~boltzdiff.reference.md.MDConfig`'s friction and time step (1/ps, 1 fs).

    Returns
    -------
    dict
        :func:`mbar_from_energies`'s keys, and ``n_target_evals`` (2 per MD step of every window, the lambda
        system evaluating both force fields, plus 2 per saved frame for u_A and u_B), ``md_steps``,
        ``md_seconds`` and ``steps_per_s`` (MD only), ``temperature`` (K), ``kT_kjmol``, ``system``,
        ``variant_a``, ``variant_b``, ``platform``, ``seed``.
    """
    import openmm
    import openmm.unit as unit

    from boltzdiff.reference.frames import SimulationBlowUpError
    from boltzdiff.reference.md import MDConfig
    from boltzdiff.systems import load_system
    from boltzdiff.targets.openmm import check_positions, kT_kjmol

    lam = check_lambdas(lambdas)
    ps_per_window = _positive(ps_per_window, "ps_per_window")
    save_every_ps = _positive(save_every_ps, "save_every_ps")
    equilibrate_ps = _positive(equilibrate_ps, "equilibrate_ps", allow_zero=True)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(f"alchemical: field 'seed' expected an integer, got {seed!r}")
    md = MDConfig()
    steps_per_save = round(save_every_ps * 1000.0 / md.timestep_fs)
    n_save = round(ps_per_window / save_every_ps)
    n_equil = round(equilibrate_ps * 1000.0 / md.timestep_fs)
    if steps_per_save < 1 or n_save < 1:
        raise ConfigError(
            f"alchemical: fields 'ps_per_window' ({ps_per_window}) and 'save_every_ps' ({save_every_ps}) give "
            f"{n_save} frames of {steps_per_save} steps; expected save_every_ps >= {md.timestep_fs / 1000} ps "
            "and ps_per_window >= save_every_ps"
        )

    sys_a = load_system(system_name, variant_a)
    sys_b = load_system(system_name, variant_b)
    try:
        for s, v in ((sys_a, variant_a), (sys_b, variant_b)):
            if "openmm_system" not in s.extras:
                raise ConfigError(f"alchemical: system {s.name!r} variant {v!r} has no OpenMM System (kind: openmm)")
        temperature = float(sys_a.temperature)
        if not math.isclose(temperature, float(sys_b.temperature), rel_tol=1e-12):
            raise ConfigError(
                f"alchemical: variants {variant_a!r} and {variant_b!r} have temperatures {temperature} K and "
                f"{sys_b.temperature} K; expected the same"
            )
        kT = kT_kjmol(temperature)
        omm = lambda_system(sys_a.extras["openmm_system"], sys_b.extras["openmm_system"])
        n_atoms = omm.getNumParticles()
        bonds = sys_a.extras.get("bonds")
        if starts is None:
            x0 = check_positions(sys_a.positions, n_atoms, f"{sys_a.name} positions", bonds)
        else:
            x0 = check_positions(starts, n_atoms, "alchemical: field 'starts'", bonds)
            if not np.all(np.isfinite(x0)):
                raise ConfigError("alchemical: field 'starts' expected finite positions in nm")
        try:
            plat = openmm.Platform.getPlatformByName(platform)
        except Exception:  # noqa: BLE001
            names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
            raise ConfigError(f"alchemical: field 'platform' is {platform!r}; expected one of {names}") from None

        from boltzdiff.progress import progress as progress_of

        u_a, u_b = [], []
        md_seconds = 0.0
        bar = progress_of(total=lam.size, desc=f"alchemical {sys_a.name}", enabled=progress)
        try:
            for w, lam_w in enumerate(lam):
                win_seed = (int(seed) * 1_000_003 + 7919 * w) % (2**31 - 1) or 1
                integ = openmm.LangevinMiddleIntegrator(
                    temperature * unit.kelvin, md.friction_per_ps / unit.picosecond, md.timestep_fs * unit.femtosecond
                )
                integ.setRandomNumberSeed(win_seed)
                ctx = openmm.Context(omm, integ, plat)
                try:
                    ctx.setParameter(LAMBDA_PARAMETER, float(lam_w))
                    ctx.setPositions(x0[w % x0.shape[0]])
                    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, win_seed)
                    t0 = time.perf_counter()
                    if n_equil:
                        integ.step(n_equil)
                    frames = []
                    for _ in range(n_save):
                        integ.step(steps_per_save)
                        x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                        x = np.asarray(x, dtype=np.float64)
                        if not (np.all(np.isfinite(x)) and np.abs(x).max() < 1e5):
                            raise SimulationBlowUpError(
                                f"alchemical: window {w} (lam={lam_w:g}) blew up (non-finite coordinates)"
                            )
                        frames.append(x)
                    md_seconds += time.perf_counter() - t0
                finally:
                    del ctx, integ
                xs = np.stack(frames)
                u_a.append(sys_a.target.bridge.evaluate(xs, forces=False).energy)
                u_b.append(sys_b.target.bridge.evaluate(xs, forces=False).energy)
                bar.update(1)
        finally:
            bar.close()
    finally:
        sys_a.target.close()
        sys_b.target.close()

    out = mbar_from_energies(u_a, u_b, lam)
    md_steps = lam.size * (n_equil + n_save * steps_per_save)
    out.update(
        n_target_evals=2 * md_steps + 2 * lam.size * n_save,
        md_steps=md_steps,
        md_seconds=md_seconds,
        steps_per_s=md_steps / max(md_seconds, 1e-9),
        temperature=temperature,
        kT_kjmol=kT,
        system=sys_a.name,
        variant_a=variant_a,
        variant_b=variant_b,
        platform=platform,
        seed=int(seed),
    )
    return out


__all__ = ["LAMBDA_PARAMETER", "alchemical_mbar", "check_lambdas", "lambda_system", "mbar_from_energies"]
