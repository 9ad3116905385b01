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


class DiagonalGaussianEnergy(LevelEnergy):
    """Exact, normalised levels (``f = 0``) of data ``N(0, diag(v))``: ``E(x, t) = sum_j x_j^2 / (2 V_j) +
    log(2 pi V_j) / 2`` with ``V = alpha_t^2 v + sigma_t^2``. Per-coordinate variances spanning orders of
    magnitude make it a molecule-like stiff/soft test case for samplers (``experiments/smc_kernels.py``)."""

    def __init__(self, grid: LevelGrid, v):
        super().__init__()
        self.grid = grid
        self.v = torch.as_tensor(v, dtype=torch.float64)
        self.dim = len(self.v)
        self.sigma_data = float(self.v.mean().sqrt())

    def level_var(self, level: int) -> torch.Tensor:
        """``V = alpha^2 v + sigma^2`` at one level, ``(d,)`` float64."""
        return self.grid.alpha[level] ** 2 * self.v + self.grid.sigma[level] ** 2

    def energy(self, x, level):
        lv = self._levels(x, level)
        V = self.grid.alpha[lv][:, None] ** 2 * self.v + self.grid.sigma[lv][:, None] ** 2
        return (0.5 * x.double() ** 2 / V + 0.5 * torch.log(2 * torch.pi * V)).sum(-1).to(x.dtype)

    def log_norm(self):
        return torch.zeros(self.grid.n, dtype=torch.float64)
