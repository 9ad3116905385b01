"""Noise schedules, level grids and closed-form transitions.

The forward process is ``x_t = alpha_t x_0 + sigma_t eps`` with ``eps ~ N(0, I)``.

- :class:`VPSchedule` (default): beta(t) = beta_min + t (beta_max - beta_min);
  alpha_t = exp(-1/2 int_0^t beta), sigma_t^2 = 1 - alpha_t^2.
- :class:`VESchedule`: alpha_t = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t (geometric, EDM-style range).

A :class:`LevelGrid` holds the N discrete levels ``t_0 < ... < t_{N-1}`` (index 0 is the *cleanest* level,
index N-1 the noisiest) used both for training and for sampling, with their alpha, sigma and log-SNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from boltzdiff.errors import ConfigError


class Schedule:
    """A noise schedule: ``alpha(t)``, ``sigma(t)`` on ``t in [t_min, t_max]``."""

    kind: str = "base"
    t_min: float = 1e-4
    t_max: float = 1.0 - 1e-4

    def alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``log(alpha_t^2 / sigma_t^2)``."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Inverse of :meth:`log_snr` (log-SNR decreases with t)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError


class VPSchedule(Schedule):
    """Variance-preserving schedule with a linear beta(t)."""

    kind = "vp"

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-4, t_max: float = 1 - 1e-4
    ):
        if not (beta_max > beta_min >= 0):
            raise ConfigError(f"schedule: expected 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        if not (0 < t_min < t_max <= 1):
            raise ConfigError(f"schedule: expected 0 < t_min < t_max <= 1, got {t_min}, {t_max}")
        self.beta_min, self.beta_max, self.t_min, self.t_max = (
            float(beta_min),
            float(beta_max),
            float(t_min),
            float(t_max),
        )

    def _int_beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t):
        return torch.exp(-0.5 * self._int_beta(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._int_beta(t)))

    def log_snr(self, t):
        b = self._int_beta(t)
        return -b - torch.log(-torch.expm1(-b))

    def t_of_log_snr(self, lam):
        # int beta = log(1 + exp(-lam)) = softplus(-lam); solve the quadratic in t.
        B = torch.nn.functional.softplus(-lam)
        a, b = 0.5 * (self.beta_max - self.beta_min), self.beta_min
        return (-b + torch.sqrt(b * b + 4 * a * B)) / (2 * a)

    def to_dict(self):
        return dict(
            kind="vp", beta_min=self.beta_min, beta_max=self.beta_max, t_min=self.t_min, t_max=self.t_max
        )


class VESchedule(Schedule):
    """Variance-exploding schedule, alpha = 1, sigma geometric between sigma_min and sigma_max."""

    kind = "ve"

    def __init__(
        self, sigma_min: float = 1e-3, sigma_max: float = 10.0, t_min: float = 0.0, t_max: float = 1.0
    ):
        if not (0 < sigma_min < sigma_max):
            raise ConfigError(f"schedule: expected 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.t_min, self.t_max = (
            float(sigma_min),
            float(sigma_max),
            float(t_min),
            float(t_max),
        )

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_of_log_snr(self, lam):
        # lam = -2 log sigma
        return (torch.log(torch.exp(-0.5 * lam) / self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def to_dict(self):
        return dict(
            kind="ve", sigma_min=self.sigma_min, sigma_max=self.sigma_max, t_min=self.t_min, t_max=self.t_max
        )


def make_schedule(spec: dict | None) -> Schedule:
    """Build a schedule from a dict such as ``{"kind": "vp", "beta_min": 0.1, "beta_max": 20}``."""
    spec = dict(spec or {})
    kind = spec.pop("kind", "vp")
    try:
        if kind == "vp":
            return VPSchedule(**spec)
        if kind in ("ve", "edm"):
            return VESchedule(**spec)
    except TypeError as e:
        raise ConfigError(f"schedule: unexpected field ({e})") from None
    raise ConfigError(f"schedule.kind: expected 'vp' or 've', got {kind!r}")


@dataclass
class LevelGrid:
    """N discrete noise levels; index 0 is the cleanest, N-1 the noisiest.

    Attributes (all ``(N,)`` float64 tensors): ``t``, ``alpha``, ``sigma``, ``log_snr``.
    """

    schedule: Schedule
    t: torch.Tensor
    spacing: str = "linear"

    def __post_init__(self):
        self.t = self.t.to(torch.float64)
        if self.t.dim() != 1 or len(self.t) < 2:
            raise ConfigError("levels: need at least 2 levels")
        if not torch.all(self.t[1:] > self.t[:-1]):
            raise ConfigError("levels: times must increase strictly")
        self.alpha = self.schedule.alpha(self.t)
        self.sigma = self.schedule.sigma(self.t)
        self.log_snr = self.schedule.log_snr(self.t)

    @property
    def n(self) -> int:
        return len(self.t)

    def __len__(self) -> int:
        return len(self.t)

    def to_dict(self) -> dict:
        return dict(schedule=self.schedule.to_dict(), n_levels=self.n, spacing=self.spacing)

    def same_as(self, other: LevelGrid, atol: float = 1e-10) -> bool:
        return self.n == other.n and bool(torch.allclose(self.t, other.t, atol=atol, rtol=0))

    # -- closed-form transitions ------------------------------------------------------------------------
    def transition_coeffs(self, i_from, i_to) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients ``(a, s)`` of ``x_to = a x_from + s eps`` for levels ``i_from < i_to`` (float64)."""
        a = self.alpha[i_to] / self.alpha[i_from]
        var = self.sigma[i_to] ** 2 - a**2 * self.sigma[i_from] ** 2
        return a, torch.sqrt(torch.clamp(var, min=0.0))

    def noise(self, x0: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None):
        """Sample ``x_t = alpha x0 + sigma eps`` at integer ``level`` (broadcast over the batch).

        ``x0: (B, d)``, ``level: (B,)`` long; returns ``(x_t, eps)``.
        """
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a = self.alpha.to(x0)[level].unsqueeze(-1)
        s = self.sigma.to(x0)[level].unsqueeze(-1)
        return a * x0 + s * eps, eps

    def forward_step(self, x: torch.Tensor, i_from: int, i_to: int, generator: torch.Generator | None = None):
        """Sample level ``i_to`` given ``x`` at level ``i_from`` (``i_from < i_to``)."""
        a, s = self.transition_coeffs(i_from, i_to)
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return a.to(x) * x + s.to(x) * eps

    def forward_log_density(
        self, x_to: torch.Tensor, x_from: torch.Tensor, i_from: int, i_to: int
    ) -> torch.Tensor:
        """``log K(x_to | x_from)`` of the forward transition, ``(B,)`` float64."""
        a, s = self.transition_coeffs(i_from, i_to)
        d = x_to.shape[-1]
        r = (x_to.double() - a * x_from.double()) / s
        return -0.5 * (r**2).sum(-1) - d * (torch.log(s) + 0.5 * math.log(2 * math.pi))


def make_grid(schedule: Schedule, n_levels: int, spacing: str = "linear") -> LevelGrid:
    """Make ``n_levels`` levels between ``schedule.t_min`` and ``schedule.t_max``.

    ``spacing``: ``"linear"`` (even in t) or ``"logsnr"`` (even in log-SNR).
    """
    if int(n_levels) < 2:
        raise ConfigError(f"n_levels: expected an integer >= 2, got {n_levels}")
    t0 = torch.tensor(schedule.t_min, dtype=torch.float64)
    t1 = torch.tensor(schedule.t_max, dtype=torch.float64)
    if spacing == "linear":
        t = torch.linspace(schedule.t_min, schedule.t_max, int(n_levels), dtype=torch.float64)
    elif spacing == "logsnr":
        lam = torch.linspace(
            float(schedule.log_snr(t0)), float(schedule.log_snr(t1)), int(n_levels), dtype=torch.float64
        )
        t = schedule.t_of_log_snr(lam)
        t[0], t[-1] = t0, t1
    else:
        raise ConfigError(f"spacing: expected 'linear' or 'logsnr', got {spacing!r}")
    return LevelGrid(schedule, t, spacing)


def grid_from_dict(d: dict) -> LevelGrid:
    return make_grid(make_schedule(d.get("schedule")), d.get("n_levels", 128), d.get("spacing", "linear"))
