"""Exact level energies of analytic targets, usable wherever a model is (losses, samplers, evaluation)."""

from __future__ import annotations

import torch

from boltzdiff.models.base import LevelEnergy
from boltzdiff.noise import LevelGrid
from boltzdiff.targets.gmm import GaussianMixture


class ExactMixtureEnergy(LevelEnergy):
    """``E(x, t_i) = -log p_{t_i}(x)`` of a Gaussian mixture, with ``f = 0`` (exactly normalised).

    ``weights`` (optional, ``(K,)``) replaces the mixture weights, to build deliberately wrong models in tests.
    """

    def __init__(self, gmm: GaussianMixture, grid: LevelGrid, weights: torch.Tensor | None = None):
        super().__init__()
        self.gmm = gmm if weights is None else GaussianMixture(weights, gmm.means, gmm.std, name=gmm.name)
        self.grid = grid
        self.dim = gmm.dim
        self.register_buffer("_f", torch.zeros(grid.n, dtype=torch.float64))

    def energy(self, x, level):
        lv = self._levels(x, level)
        lp = self.gmm.log_prob_t(x, self.grid.alpha.to(x.device)[lv], self.grid.sigma.to(x.device)[lv])
        return -lp.to(x.dtype)

    def log_norm(self):
        return self._f
