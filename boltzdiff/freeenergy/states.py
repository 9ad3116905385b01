"""End states with closed-form free energies: a Gaussian mixture's energy plus a constant.

``u(x) = -log sum_j w_j N(x; m_j, s_j^2 I) + c`` integrates to ``Z = exp(-c)``, so its free energy is
``F = -log Z = c`` (kT) whatever the weights, means and widths; ``F_B - F_A = c_B - c_A``.
"""

from __future__ import annotations

import math

import torch

from boltzdiff.targets.base import Target
from boltzdiff.targets.gmm import GaussianMixture


class OffsetMixture(Target):
    """A :class:`~boltzdiff.targets.gmm.GaussianMixture` whose energy is shifted by ``offset`` (kT)."""

    def __init__(self, weights, means, std, offset: float = 0.0):
        self.mixture = GaussianMixture(weights, means, std)
        super().__init__(self.mixture.dim)
        self.offset = float(offset)

    @classmethod
    def unnormalised_gaussian(cls, mean, std: float) -> OffsetMixture:
        """``u(x) = |x - mean|^2 / (2 std^2)``: free energy ``-(d/2) log(2 pi std^2)``."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        d = mean.shape[1]
        return cls([1.0], mean, std, offset=-0.5 * d * math.log(2 * math.pi * std**2))

    @property
    def free_energy(self) -> float:
        """``F = -log Z`` in kT."""
        return self.offset

    def _energy(self, x):
        return self.mixture.energy(x) + self.offset

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mixture.sample_with_labels(n, generator)[0]
