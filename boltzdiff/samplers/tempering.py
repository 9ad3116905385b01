"""The exact target at another temperature, for SMC that uses a model trained at the system's temperature as
its proposal (``boltzdiff sample --temperature T``).

A target's reduced energy is ``u = U / (k T_sys)``; at temperature ``T`` it is ``u_T = U / (k T) = beta u`` with
``beta = T_sys / T``. ``T_sys`` is the system's temperature (kelvin for OpenMM systems, the reduced temperature
``T*`` of particle targets) and 1 for targets without one (Gaussian mixtures: temperature 1 means ``u`` itself).

For an isotropic Gaussian mixture ``p = sum_k w_k N(m_k, s_k^2 I)`` in ``d`` dimensions whose components do not
overlap, ``p^beta`` is again such a mixture: ``N(x; m, s^2 I)^beta = (2 pi s^2)^{d (1 - beta) / 2} beta^{-d/2}
N(x; m, s^2 / beta I)``, so the component keeps its mean, its std becomes ``s / sqrt(beta)`` and its weight
becomes, after normalising,

    w_k(beta) = w_k^beta s_k^{d (1 - beta)} / sum_j w_j^beta s_j^{d (1 - beta)}

(the factor ``beta^{-d/2}`` and ``(2 pi)^{d(1-beta)/2}`` are common to all components). The cross terms between
components that this drops are of the order of the overlap of the tempered components.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.targets.base import Target


def check_temperature(temperature: float, what: str = "--temperature") -> float:
    """``temperature`` as a float; one-line :class:`ConfigError` unless it is finite and positive."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected a positive number, got {temperature!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ConfigError(f"{what}: expected a positive finite temperature, got {temperature!r}")
    return t


def system_temperature(system) -> float:
    """The temperature a system's reduced energies refer to: ``system.temperature`` (K), else the target's
    ``temperature`` (reduced units), else 1 (the energy is ``u`` itself)."""
    t = system.temperature if system.temperature is not None else getattr(system.target, "temperature", None)
    return 1.0 if t is None else float(t)


class TemperedTarget(Target):
    """``u_T(x) = beta u(x)``: the reduced energy of ``target`` at ``T = T_sys / beta``.

    Parameters
    ----------
    target : Target
    beta : float
        ``T_sys / T`` (positive).
    """

    normalized = False

    def __init__(self, target: Target, beta: float):
        super().__init__(target.dim, target.event_shape)
        if not (math.isfinite(beta) and beta > 0):
            raise ConfigError(f"TemperedTarget: beta must be positive and finite, got {beta}")
        self.inner, self.beta = target, float(beta)
        self.name = f"{getattr(target, 'name', type(target).__name__)}@beta={self.beta:g}"

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * self.inner.energy(x)


def tempered_system(system, temperature: float):
    """A copy of ``system`` whose target is the exact target at ``temperature`` (same units as the system's),
    and ``beta = T_sys / T``. At ``beta = 1`` the system itself."""
    t = check_temperature(temperature)
    beta = system_temperature(system) / t
    if beta == 1.0:
        return system, 1.0
    return dataclasses.replace(system, target=TemperedTarget(system.target, beta), temperature=t), beta


def tempered_mixture_weights(weights, std, dim: int, beta: float) -> np.ndarray:
    """The mode weights ``(K,)`` of ``p^beta`` for an isotropic mixture with separated components (module
    docstring): ``w^beta s^{d (1 - beta)}``, normalised in log space."""
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64) * np.ones_like(w)
    lw = beta * np.log(w) + dim * (1.0 - beta) * np.log(s)
    lw -= lw.max()
    return np.exp(lw) / np.exp(lw).sum()


def tempered_mixture(gmm, beta: float):
    """The isotropic mixture approximating ``p^beta`` (same means, std ``s / sqrt(beta)``, weights
    :func:`tempered_mixture_weights`), e.g. to read off a tempered sample's mode weights."""
    from boltzdiff.targets.gmm import GaussianMixture

    w = tempered_mixture_weights(gmm.weights.numpy(), gmm.std.numpy(), gmm.dim, beta)
    return GaussianMixture(w, gmm.means, gmm.std / math.sqrt(beta), name=f"{gmm.name}@beta={beta:g}")
