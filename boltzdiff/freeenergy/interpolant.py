"""A stochastic interpolant between two thermodynamic states A and B on the same configuration space.

``x_t = (1 - t) x0 + t x1 + gamma(t) z`` with ``x0 ~ A``, ``x1 ~ B``, ``z ~ N(0, I)`` and
``gamma(t) = gamma_f sqrt(t (1 - t))``, so level ``t = 0`` holds exact samples of A and ``t = 1`` of B. Pairs
``(x0, x1)`` are coupled within each minibatch by optimal transport (an exact assignment minimising the summed
squared distance), after rigid alignment (Kabsch) when the configurations are molecules or particles.

Units: whatever the configurations are in (nm for molecules); ``gamma_f`` in the same unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from boltzdiff.errors import ConfigError


@dataclass
class InterpolantPath:
    """The level grid ``t_0 = 0 < t_1 < ... < t_K = 1`` and the noise scale ``gamma_f``.

    Attributes
    ----------
    t : (K + 1,) float64 tensor
    gamma_f : float
    """

    t: torch.Tensor
    gamma_f: float

    @classmethod
    def uniform(cls, n_levels: int, gamma_f: float) -> InterpolantPath:
        """``n_levels`` levels spaced evenly in ``t`` from 0 to 1 (both ends included)."""
        if int(n_levels) < 2:
            raise ConfigError(f"n_levels: expected at least 2 levels (the two end states), got {n_levels}")
        if not (math.isfinite(gamma_f) and gamma_f >= 0):
            raise ConfigError(f"gamma_f: expected a finite number >= 0, got {gamma_f}")
        return cls(torch.linspace(0.0, 1.0, int(n_levels), dtype=torch.float64), float(gamma_f))

    @property
    def n_levels(self) -> int:
        return int(self.t.shape[0])

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        """``gamma_f sqrt(t (1 - t))``."""
        return self.gamma_f * torch.sqrt((t * (1 - t)).clamp_min(0.0))

    def draw(self, x0: torch.Tensor, x1: torch.Tensor, level: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x_t`` for coupled pairs ``x0, x1: (B, d)`` at per-row levels ``level: (B,)`` with noise ``z: (B, d)``."""
        t = self.t.to(x0)[level][:, None]
        return (1 - t) * x0 + t * x1 + self.gamma(t) * z


def align_to(x: torch.Tensor, ref: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor:
    """Flat configurations ``x: (B, d)`` rigidly aligned onto ``ref: (d,)`` when ``event_shape`` is ``(n, 3)``
    (particles, molecules); returned unchanged for plain vectors."""
    if len(event_shape) != 2:
        return x
    from boltzdiff.geometry import kabsch_align

    n, k = event_shape
    return kabsch_align(x.reshape(-1, n, k), ref.reshape(n, k)).reshape(x.shape[0], -1)


def ot_pairs(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The permutation ``perm`` of ``x1`` that minimises ``sum_i |x0[i] - x1[perm[i]]|^2`` (exact assignment,
    ``scipy.optimize.linear_sum_assignment``); ``x0, x1: (B, d)`` -> ``(B,)`` long."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.double(), x1.double()).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.as_tensor(perm, dtype=torch.long, device=x0.device)


def couple(
    x0: torch.Tensor, x1: torch.Tensor, event_shape: tuple[int, ...], ref: torch.Tensor | None, ot: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch coupling: both batches aligned onto ``ref`` (molecules, particles), then ``x1`` reordered by
    :func:`ot_pairs` (``ot``) or kept in its random order (independent coupling)."""
    if ref is not None:
        x0, x1 = align_to(x0, ref, event_shape), align_to(x1, ref, event_shape)
    if ot:
        x1 = x1[ot_pairs(x0, x1)]
    return x0, x1
