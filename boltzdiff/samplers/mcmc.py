"""MCMC kernels (MALA, HMC) with step-size adaptation, on any log-density with a gradient.

A log-density is an object with ``evaluate(x) -> DensityEval`` (log-density ``(B,)`` float64, its gradient
``(B, d)`` and optional auxiliary per-particle values carried along with accepted moves). Adapters are
provided for one level of a :class:`~boltzdiff.models.base.LevelEnergy`, for a
:class:`~boltzdiff.targets.base.Target`,
and for the geometric bridge between a model's cleanest level and a target. Evaluations are counted in a
shared :class:`EvalCounter` (per particle).

Proposals whose log-density or gradient is not finite are rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from boltzdiff.errors import ConfigError


@dataclass
class EvalCounter:
    """Per-particle evaluation counts: ``model`` (level-energy evaluations, each with its gradient; a composed
    energy counts one per component model) and ``target`` (target-energy evaluations)."""

    model: int = 0
    target: int = 0


@dataclass
class DensityEval:
    """``log_prob: (B,)`` float64, ``grad: (B, d)`` (dtype of x), ``aux: (B, m)`` float64 or None."""

    log_prob: torch.Tensor
    grad: torch.Tensor
    aux: torch.Tensor | None = None

    def select(self, mask: torch.Tensor, other: DensityEval) -> DensityEval:
        """Entries of ``other`` where ``mask`` (B,) is True, else of ``self``."""
        aux = None
        if self.aux is not None and other.aux is not None:
            aux = torch.where(mask[:, None], other.aux, self.aux)
        return DensityEval(
            torch.where(mask, other.log_prob, self.log_prob),
            torch.where(mask[:, None], other.grad, self.grad),
            aux,
        )

    def index(self, idx: torch.Tensor) -> DensityEval:
        return DensityEval(self.log_prob[idx], self.grad[idx], None if self.aux is None else self.aux[idx])


def _n_models(model) -> int:
    return int(getattr(model, "n_models", 1))


def model_energy_and_score(
    model, x: torch.Tensor, level: int, counter: EvalCounter | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E(x, t_level) + f_level as (B,) float64, score (B, d))``, both detached; counts ``B``
    evaluations."""
    e, s = model.energy_and_score(x, level)
    if counter is not None:
        counter.model += x.shape[0] * _n_models(model)
    f = model.log_norm().detach().to(torch.float64)[level]
    return e.to(torch.float64) + f, s


def target_energy_and_grad(
    target, x: torch.Tensor, counter: EvalCounter | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u(x) (B,) float64, grad u (B, d))``, detached; counts ``B`` target evaluations."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        u = target.energy(xr)
        (g,) = torch.autograd.grad(u.sum(), xr)
    if counter is not None:
        counter.target += x.shape[0]
    return u.detach().to(torch.float64), g.detach().to(x.dtype)


class LevelDensity:
    """``log q(x) = -E(x, t_level) - f_level`` of a level energy."""

    def __init__(self, model, level: int, counter: EvalCounter | None = None):
        self.model, self.level, self.counter = model, int(level), counter

    def evaluate(self, x: torch.Tensor) -> DensityEval:
        ef, s = model_energy_and_score(self.model, x, self.level, self.counter)
        return DensityEval(-ef, s)


class TargetDensity:
    """``log pi(x) = -u(x)`` of a target's reduced energy."""

    def __init__(self, target, counter: EvalCounter | None = None):
        self.target, self.counter = target, counter

    def evaluate(self, x: torch.Tensor) -> DensityEval:
        u, g = target_energy_and_grad(self.target, x, self.counter)
        return DensityEval(-u, -g)


class BridgeDensity:
    """``log pi_lam(x) = -(1 - lam) (E(x, t_level) + f_level) - lam u(x)``.

    Its evaluations carry ``aux = [E + f, u, score (d), grad u (d)]`` (float64, ``(B, 2 + 2d)``), so a state
    can be re-expressed at another ``lam`` without new evaluations (:meth:`rebase`).
    """

    def __init__(self, model, target, lam: float, level: int = 0, counter: EvalCounter | None = None):
        self.model, self.target, self.lam, self.level, self.counter = (
            model,
            target,
            float(lam),
            int(level),
            counter,
        )

    def combine(self, ef: torch.Tensor, s: torch.Tensor, u: torch.Tensor, gu: torch.Tensor) -> DensityEval:
        lam = self.lam
        aux = torch.cat([ef[:, None], u[:, None], s.double(), gu.double()], -1)
        return DensityEval(-(1 - lam) * ef - lam * u, (1 - lam) * s - lam * gu, aux)

    def rebase(self, state: DensityEval) -> DensityEval:
        """The same points' density under this bridge's ``lam``, from a state's ``aux``."""
        a = state.aux
        d = (a.shape[1] - 2) // 2
        dt = state.grad.dtype
        return self.combine(a[:, 0], a[:, 2 : 2 + d].to(dt), a[:, 1], a[:, 2 + d :].to(dt))

    def evaluate(self, x: torch.Tensor) -> DensityEval:
        ef, s = model_energy_and_score(self.model, x, self.level, self.counter)
        u, gu = target_energy_and_grad(self.target, x, self.counter)
        return self.combine(ef, s, u, gu)


@dataclass
class MCMCConfig:
    """Settings of an MCMC kernel.

    Attributes
    ----------
    kind : {"mala", "hmc"}
    n_steps : int
        MCMC steps per call (per level in SMC).
    step_size : float or None
        Initial step size (MALA: ``h`` in ``x + h grad + sqrt(2h) xi``; HMC: leapfrog ``eps``), relative to
        the level's variance (MALA) or standard deviation (HMC) when used inside SMC; None picks a default.
    target_accept : float or None
        Acceptance rate the adaptation aims at (defaults: 0.574 for MALA, 0.65 for HMC).
    adapt : bool
        Adapt ``log step_size += rate * (acceptance - target_accept)`` after every step.
    adapt_rate : float
    n_leapfrog : int
        HMC leapfrog steps per proposal.
    """

    kind: str = "mala"
    n_steps: int = 0
    step_size: float | None = None
    target_accept: float | None = None
    adapt: bool = True
    adapt_rate: float = 1.0
    n_leapfrog: int = 5

    def __post_init__(self):
        if self.kind not in ("mala", "hmc"):
            raise ConfigError(f"mcmc.kind: expected 'mala' or 'hmc', got {self.kind!r}")
        if int(self.n_steps) < 0:
            raise ConfigError(f"mcmc.n_steps: expected an integer >= 0, got {self.n_steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"mcmc.step_size: expected a positive number, got {self.step_size}")
        if int(self.n_leapfrog) < 1:
            raise ConfigError(f"mcmc.n_leapfrog: expected an integer >= 1, got {self.n_leapfrog}")
        if self.target_accept is None:
            self.target_accept = 0.574 if self.kind == "mala" else 0.65
        if self.step_size is None:
            self.step_size = 0.05 if self.kind == "mala" else 0.2


@dataclass
class MCMCResult:
    """State after MCMC: ``x: (B, d)``, its :class:`DensityEval` ``state``, mean ``acceptance`` over steps,
    the final (adapted) ``step_size``, ``acceptance_trace`` per step, and ``n_evals`` density evaluations per
    particle."""

    x: torch.Tensor
    state: DensityEval
    acceptance: float
    step_size: float
    acceptance_trace: list[float] = field(default_factory=list)
    n_evals: int = 0


def _valid(ev: DensityEval) -> torch.Tensor:
    return torch.isfinite(ev.log_prob) & torch.isfinite(ev.grad).all(-1)


def _accept(log_alpha: torch.Tensor, ok: torch.Tensor, generator) -> torch.Tensor:
    log_u = torch.log(torch.rand(log_alpha.shape, generator=generator, dtype=torch.float64)).to(log_alpha.device)
    log_alpha = torch.where(ok, log_alpha, torch.full_like(log_alpha, -math.inf))
    log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)
    return log_u < log_alpha


def mala_step(
    density, x: torch.Tensor, state: DensityEval, h: float, generator=None
) -> tuple[torch.Tensor, DensityEval, torch.Tensor]:
    """One Metropolis-adjusted Langevin step with step size ``h``; returns ``(x, state, accepted (B,)
    bool)``."""
    xi = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    y = x + h * state.grad + math.sqrt(2 * h) * xi
    new = density.evaluate(y)
    fwd = -((y - x - h * state.grad).double() ** 2).sum(-1) / (4 * h)
    bwd = -((x - y - h * new.grad).double() ** 2).sum(-1) / (4 * h)
    acc = _accept(new.log_prob - state.log_prob + bwd - fwd, _valid(new), generator)
    return torch.where(acc[:, None], y, x), state.select(acc, new), acc


def hmc_step(
    density, x: torch.Tensor, state: DensityEval, eps: float, n_leapfrog: int, generator=None
) -> tuple[torch.Tensor, DensityEval, torch.Tensor]:
    """One Hamiltonian Monte Carlo step (identity mass, ``n_leapfrog`` leapfrog steps of size ``eps``)."""
    p0 = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    y, p, ev = x, p0 + 0.5 * eps * state.grad, state
    for i in range(n_leapfrog):
        y = y + eps * p
        ev = density.evaluate(y)
        p = p + (eps if i < n_leapfrog - 1 else 0.5 * eps) * ev.grad
    h0 = -state.log_prob + 0.5 * (p0.double() ** 2).sum(-1)
    h1 = -ev.log_prob + 0.5 * (p.double() ** 2).sum(-1)
    acc = _accept(h0 - h1, _valid(ev), generator)
    return torch.where(acc[:, None], y, x), state.select(acc, ev), acc


def run_mcmc(
    density,
    x: torch.Tensor,
    config: MCMCConfig,
    generator: torch.Generator | None = None,
    state: DensityEval | None = None,
    scale: float = 1.0,
    alive: torch.Tensor | None = None,
) -> MCMCResult:
    """Run ``config.n_steps`` MALA or HMC steps from ``x: (B, d)``.

    Parameters
    ----------
    density : object with ``evaluate(x) -> DensityEval``
    x : (B, d) tensor
    config : MCMCConfig
        ``config.step_size`` is updated in place when ``config.adapt`` (so it carries over between calls).
    state : DensityEval, optional
        The density at ``x`` if already known (saves one evaluation).
    scale : float
        Multiplies the step size (MALA: a variance scale; HMC: its square root is used).
    alive : (B,) bool, optional
        Particles whose acceptance counts towards adaptation (default: those with a finite log-density).

    Returns
    -------
    MCMCResult
    """
    n_evals = 0
    if state is None:
        state = density.evaluate(x)
        n_evals += 1
    trace = []
    for _ in range(int(config.n_steps)):
        live = _valid(state) if alive is None else alive
        if config.kind == "mala":
            x, state, acc = mala_step(density, x, state, config.step_size * scale, generator)
            n_evals += 1
        else:
            x, state, acc = hmc_step(
                density, x, state, config.step_size * math.sqrt(scale), config.n_leapfrog, generator
            )
            n_evals += config.n_leapfrog
        rate = float(acc[live].double().mean()) if live.any() else 0.0
        trace.append(rate)
        if config.adapt:
            config.step_size = float(config.step_size * math.exp(config.adapt_rate * (rate - config.target_accept)))
    mean_acc = float(sum(trace) / len(trace)) if trace else float("nan")
    return MCMCResult(x, state, mean_acc, float(config.step_size), trace, n_evals)


def mala(
    density,
    x: torch.Tensor,
    n_steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    adapt: bool = False,
    target_accept: float = 0.574,
) -> MCMCResult:
    """MALA on ``density`` from ``x: (B, d)``: ``y = x + h grad log p + sqrt(2h) xi``,
    Metropolis-corrected."""
    cfg = MCMCConfig("mala", n_steps=n_steps, step_size=step_size, target_accept=target_accept, adapt=adapt)
    return run_mcmc(density, x, cfg, generator)


def hmc(
    density,
    x: torch.Tensor,
    n_steps: int,
    step_size: float,
    n_leapfrog: int = 5,
    generator: torch.Generator | None = None,
    adapt: bool = False,
    target_accept: float = 0.65,
) -> MCMCResult:
    """HMC on ``density`` from ``x: (B, d)`` with identity mass and ``n_leapfrog`` leapfrog steps of
    ``step_size``."""
    cfg = MCMCConfig(
        "hmc",
        n_steps=n_steps,
        step_size=step_size,
        target_accept=target_accept,
        adapt=adapt,
        n_leapfrog=n_leapfrog,
    )
    return run_mcmc(density, x, cfg, generator)
