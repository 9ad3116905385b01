"""Composition of level energies at every level: product, mixture and tempering.

All compositions are :class:`~boltzdiff.models.base.LevelEnergy` objects on the components' common level grid,
so the samplers (notably :func:`~boltzdiff.samplers.smc.smc`) apply unchanged.

- :class:`ProductEnergy`: ``E = sum_j E_j`` at every level, ``f = sum_j f_j``. This is *not* the noised
  product (the noised version of ``p_1 p_2`` is not ``p_{1,t} p_{2,t}``), so only level 0 is the intended
  density and SMC weights/MCMC are needed to sample it; the SMC ``log_Z`` then estimates ``log int q_1 q_2``
  at level 0.
- :class:`MixtureEnergy`: ``E = -logsumexp_j(-E_j - f_j + log pi_j)``, ``f = 0``: exact at every level when
  each component is normalised (``-E_j - f_j`` a normalised log-density), which is what DiffCLF's ``f``
  provides.
- :class:`TemperedEnergy`: ``E = beta E_model``, ``f = beta f_model`` (unnormalised for ``beta != 1``).

Products and tempered energies are not diffusions (level ``l`` is not level ``k`` noised), so they expose
``level_variances()`` (a Gaussian approximation of each composed level) and the SMC then weights with a
backward kernel that follows those variances instead of the grid's noising transition (see
:func:`~boltzdiff.samplers.sde.reverse_kernel`); any backward kernel keeps the SMC weights valid.

Components must share the dimension and the level grid; otherwise a :class:`~boltzdiff.errors.ConfigError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from boltzdiff.errors import ConfigError
from boltzdiff.models.base import LevelEnergy


def _describe(grid) -> str:
    sched = ", ".join(f"{k}={v}" for k, v in grid.schedule.to_dict().items())
    return f"{grid.n} levels, spacing={getattr(grid, 'spacing', '?')}, {sched}"


def check_compatible(models: Sequence[LevelEnergy], what: str = "compose") -> None:
    """Raise :class:`ConfigError` unless all ``models`` have the same ``dim`` and level grid."""
    if len(models) < 1:
        raise ConfigError(f"{what}: need at least one model")
    d0, g0 = models[0].dim, models[0].grid
    for j, m in enumerate(models[1:], start=2):
        if m.dim != d0:
            raise ConfigError(f"{what}: model 1 has dimension {d0} but model {j} has {m.dim}")
        if not g0.same_as(m.grid) or g0.schedule.to_dict() != m.grid.schedule.to_dict():
            raise ConfigError(
                f"{what}: model 1 and model {j} use different level grids "
                f"({_describe(g0)} vs {_describe(m.grid)}); compose models trained on the same grid"
            )


def _gaussian_of(model) -> tuple[torch.Tensor, torch.Tensor]:
    from boltzdiff.samplers.sde import noisiest_gaussian

    return noisiest_gaussian(model)


class _Composed(LevelEnergy):
    def __init__(self, models: Sequence[LevelEnergy], what: str):
        super().__init__()
        models = list(models)
        check_compatible(models, what)
        self.models = torch.nn.ModuleList(models)
        self.grid = models[0].grid
        self.dim = models[0].dim

    @property
    def n_models(self) -> int:
        """Component-model evaluations per composed evaluation (used by the evaluation counters)."""
        return sum(int(getattr(m, "n_models", 1)) for m in self.models)

    def _f(self, m, x):
        return m.log_norm().to(x.dtype).to(x.device)

    def data_variance(self) -> float:
        from boltzdiff.samplers.sde import data_variance

        return min(data_variance(m) for m in self.models)

    def _component_variances(self) -> list[torch.Tensor]:
        from boltzdiff.samplers.sde import level_variances

        return [level_variances(m) for m in self.models]


class ProductEnergy(_Composed):
    """Product of level energies: ``E(x, t) = sum_j E_j(x, t)``, ``f = sum_j f_j``.

    Parameters
    ----------
    models : sequence of LevelEnergy
        Same ``dim`` and level grid.
    """

    def __init__(self, models: Sequence[LevelEnergy]):
        super().__init__(models, "product")

    def energy(self, x, level):
        lv = self._levels(x, level)
        return sum(m.energy(x, lv).to(x.dtype) for m in self.models)

    def log_norm(self):
        return sum(m.log_norm().detach().to(torch.float64) for m in self.models)

    def level_variances(self) -> torch.Tensor:
        """``(N,)``: the product of the components' Gaussian approximations has ``1 / V = sum_j 1 / V_j``."""
        return 1.0 / sum(1.0 / v for v in self._component_variances())

    def initial_gaussian(self):
        """Product of the components' start Gaussians (precisions add)."""
        prec, pm = 0.0, 0.0
        for m in self.models:
            mean, std = _gaussian_of(m)
            prec = prec + 1.0 / std**2
            pm = pm + mean / std**2
        return pm / prec, torch.sqrt(1.0 / prec)


class MixtureEnergy(_Composed):
    """Mixture ``q(x, t) = sum_j pi_j exp(-E_j(x, t) - f_j)``: ``E = -logsumexp_j(-E_j - f_j + log pi_j)``,
    ``f = 0``.

    Parameters
    ----------
    models : sequence of LevelEnergy
    weights : sequence of float, optional
        Positive mixture weights (normalised here); equal by default.
    """

    def __init__(self, models: Sequence[LevelEnergy], weights: Sequence[float] | None = None):
        super().__init__(models, "mixture")
        k = len(self.models)
        w = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor([float(v) for v in weights], dtype=torch.float64)
        )
        if w.numel() != k:
            raise ConfigError(f"mixture: {w.numel()} weights given for {k} models")
        if not torch.all(torch.isfinite(w)) or torch.any(w <= 0):
            raise ConfigError(f"mixture: weights must be positive and finite, got {w.tolist()}")
        self.register_buffer("log_pi", torch.log(w / w.sum()))
        self.register_buffer("_zero", torch.zeros(self.grid.n, dtype=torch.float64))

    @property
    def weights(self) -> torch.Tensor:
        return torch.exp(self.log_pi)

    def energy(self, x, level):
        lv = self._levels(x, level)
        terms = [
            -m.energy(x, lv).to(x.dtype) - self._f(m, x)[lv] + self.log_pi[j].to(x.dtype)
            for j, m in enumerate(self.models)
        ]
        return -torch.logsumexp(torch.stack(terms, -1), -1)

    def log_norm(self):
        return self._zero

    def initial_gaussian(self):
        """Moment-matched Gaussian of the mixture of the components' start Gaussians."""
        w = self.weights
        gs = [_gaussian_of(m) for m in self.models]
        mean = sum(wj * g[0] for wj, g in zip(w, gs))
        second = sum(wj * ((g[0] ** 2).sum() + self.dim * g[1] ** 2) for wj, g in zip(w, gs))
        var = (second - (mean**2).sum()) / self.dim
        return mean, torch.sqrt(var)


class TemperedEnergy(_Composed):
    """Tempered level energy ``E(x, t) = beta E_model(x, t)``, ``f = beta f_model`` (unnormalised).

    Parameters
    ----------
    model : LevelEnergy
    beta : float
        Inverse temperature factor (> 0).
    """

    def __init__(self, model: LevelEnergy, beta: float):
        super().__init__([model], "temper")
        if not (math.isfinite(float(beta)) and float(beta) > 0):
            raise ConfigError(f"temper: beta must be positive and finite, got {beta}")
        self.beta = float(beta)

    def energy(self, x, level):
        return self.beta * self.models[0].energy(x, level)

    def log_norm(self):
        return self.beta * self.models[0].log_norm().detach().to(torch.float64)

    def level_variances(self) -> torch.Tensor:
        """``(N,)``: ``V / beta`` of the model's level variances."""
        return self._component_variances()[0] / self.beta

    def initial_gaussian(self):
        mean, std = _gaussian_of(self.models[0])
        return mean, std / math.sqrt(self.beta)


def compose(
    models: Sequence[LevelEnergy], op: str, weights: Sequence[float] | None = None, beta: float | None = None
) -> LevelEnergy:
    """Build a composition by name: ``op`` in ``{"product", "mixture", "temper"}``."""
    if op == "product":
        if weights is not None:
            raise ConfigError("compose: --weights only applies to --op mixture")
        return ProductEnergy(models)
    if op == "mixture":
        return MixtureEnergy(models, weights)
    if op == "temper":
        if len(models) != 1 or beta is None:
            raise ConfigError("compose: temper takes one model and beta")
        return TemperedEnergy(models[0], beta)
    raise ConfigError(f"compose: op expected 'product', 'mixture' or 'temper', got {op!r}")
