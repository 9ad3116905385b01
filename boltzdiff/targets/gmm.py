"""Gaussian mixtures with isotropic components: exact density, exact noised marginals, exact samples.

For ``p_0 = sum_k w_k N(m_k, s_k^2 I)`` and the forward process ``x_t = alpha_t x_0 + sigma_t eps``, the noised
marginal is exact: ``p_t = sum_k w_k N(alpha_t m_k, (alpha_t^2 s_k^2 + sigma_t^2) I)``.
"""

from __future__ import annotations

import math
import warnings

import torch

from boltzdiff.errors import ConfigError
from boltzdiff.targets.base import Target


class GaussianMixture(Target):
    """Isotropic Gaussian mixture target, ``u(x) = -log p(x)`` (normalised).

    Parameters
    ----------
    weights : (K,) array-like, positive; normalised to sum to one (with a warning if they did not).
    means : (K, d) array-like.
    std : scalar or (K,) array-like, positive: each component's isotropic standard deviation.
    """

    normalized = True

    def __init__(self, weights, means, std, *, name: str = "gaussian_mixture"):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ConfigError(
                f"{name}: 'means' must be a list of K lists of length dim, got shape {tuple(means.shape)}"
            )
        K, d = means.shape
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if weights.shape[0] != K:
            raise ConfigError(
                f"{name}: 'weights' has {weights.shape[0]} entries but 'means' has {K} components"
            )
        if not torch.all(torch.isfinite(weights)) or torch.any(weights <= 0):
            raise ConfigError(f"{name}: 'weights' must be positive and finite, got {weights.tolist()}")
        if abs(float(weights.sum()) - 1.0) > 1e-6:
            warnings.warn(
                f"{name}: 'weights' sum to {float(weights.sum()):.6g}, not 1; normalising them", stacklevel=2
            )
        std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if std.numel() == 1:
            std = std.expand(K).clone()
        if std.shape[0] != K:
            raise ConfigError(
                f"{name}: 'std' must be a scalar or have one entry per component ({K}), got {std.numel()}"
            )
        if not torch.all(torch.isfinite(std)) or torch.any(std <= 0):
            raise ConfigError(f"{name}: 'std' must be positive, got {std.tolist()}")
        if not torch.all(torch.isfinite(means)):
            raise ConfigError(f"{name}: 'means' must be finite")
        super().__init__(d)
        self.name = name
        self.weights = weights / weights.sum()
        self.means = means
        self.std = std

    @property
    def n_components(self) -> int:
        return len(self.weights)

    # -- noised marginals -------------------------------------------------------------------------------
    def _component_log_probs(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """``log w_k + log N(x; alpha m_k, v_k I)`` for each component: ``(B, K)`` float64.

        ``alpha``, ``sigma``: scalars or ``(B,)`` tensors (per-sample level).
        """
        x = x.to(torch.float64)
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x.device)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if alpha.dim() == 1:
            alpha, sigma = alpha[:, None], sigma[:, None]
        m, w, s = self.means.to(x.device), self.weights.to(x.device), self.std.to(x.device)
        var = alpha**2 * s**2 + sigma**2  # (1|B, K)
        # squared distances without forming (B, K, d): |x|^2 - 2 a x.m + a^2 |m|^2
        x2 = (x**2).sum(-1, keepdim=True)
        xm = x @ m.T
        m2 = (m**2).sum(-1)
        d2 = (x2 - 2 * alpha * xm + alpha**2 * m2).clamp_min(0.0)
        return torch.log(w) - 0.5 * d2 / var - 0.5 * self.dim * torch.log(2 * math.pi * var)

    def log_prob_t(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """Exact ``log p_t(x)`` of the noised mixture, ``(B,)`` float64."""
        return torch.logsumexp(self._component_log_probs(self.flatten(x), alpha, sigma), dim=-1)

    def responsibilities(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """Posterior component probabilities ``(B, K)`` under ``p_t``."""
        lp = self._component_log_probs(self.flatten(x), alpha, sigma)
        return torch.softmax(lp, dim=-1)

    def _energy(self, x):
        return -self.log_prob_t(x, 1.0, 0.0).to(x.dtype)

    # -- sampling ---------------------------------------------------------------------------------------
    def sample_with_labels(self, n: int, generator: torch.Generator | None = None, alpha=1.0, sigma=0.0):
        """Exact samples of ``p_t`` and their component labels: ``((n, d) float64, (n,) long)``."""
        k = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        eps = torch.randn(int(n), self.dim, generator=generator, dtype=torch.float64)
        alpha = torch.as_tensor(alpha, dtype=torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        sd = torch.sqrt(alpha**2 * self.std[k] ** 2 + sigma**2)
        return alpha * self.means[k] + sd[:, None] * eps, k

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample_with_labels(n, generator)[0].to(torch.get_default_dtype())

    # -- summaries --------------------------------------------------------------------------------------
    def data_moments(self) -> tuple[torch.Tensor, float]:
        """Exact mean ``(d,)`` and isotropic std of the mixture (used for preconditioning)."""
        mu = self.weights @ self.means
        second = (self.weights * ((self.means**2).sum(-1) + self.dim * self.std**2)).sum()
        var = (second - (mu**2).sum()) / self.dim
        return mu, float(torch.sqrt(var))

    def product(self, other: GaussianMixture) -> GaussianMixture:
        """The normalised product ``p q / Z`` of two isotropic mixtures: again an isotropic mixture."""
        if other.dim != self.dim:
            raise ConfigError(f"product: dimensions differ ({self.dim} vs {other.dim})")
        v1, v2 = self.std[:, None] ** 2, other.std[None, :] ** 2  # (K1, 1), (1, K2)
        v = v1 * v2 / (v1 + v2)
        m = v[..., None] * (self.means[:, None, :] / v1[..., None] + other.means[None, :, :] / v2[..., None])
        d2 = ((self.means[:, None, :] - other.means[None, :, :]) ** 2).sum(-1)
        logw = (
            torch.log(self.weights)[:, None]
            + torch.log(other.weights)[None, :]
            - 0.5 * d2 / (v1 + v2)
            - 0.5 * self.dim * torch.log(2 * math.pi * (v1 + v2))
        )
        w = torch.softmax(logw.reshape(-1), 0)
        return GaussianMixture(
            w, m.reshape(-1, self.dim), torch.sqrt(v).reshape(-1), name=f"{self.name}*{other.name}"
        )

