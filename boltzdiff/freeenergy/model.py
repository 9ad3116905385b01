"""A time-dependent energy along a stochastic interpolant whose end levels are the exact end states' energies.

``E(x, t) = (1 - t) u_A(x) + t u_B(x) + t (1 - t) g(x, t)`` with a learned correction ``g`` (a network on
invariant features), so ``E(., 0) = u_A`` and ``E(., 1) = u_B`` exactly, and per-level log-normalisers ``f_k``
(gauge ``f_0 = 0``). Trained by classifying which level a sample came from, ``f_0 - f_K`` estimates
``F_B - F_A`` in kT (docs/method.md#free-energies-between-thermodynamic-states).

Every evaluation of ``E`` at an interior level costs one evaluation of each end state's energy; the model counts
them in :attr:`InterpolantEnergy.n_target_evals` (configurations times end energies evaluated).
"""

from __future__ import annotations

import torch
from torch import nn

from boltzdiff.freeenergy.interpolant import InterpolantPath
from boltzdiff.models.base import LevelEnergy
from boltzdiff.models.mlp import ResMLP


class Features(nn.Module):
    """Inputs of the correction network: standardised coordinates (vectors) or standardised pair distances
    (``event_shape == (n, 3)``: invariant to rotation and translation). Statistics from the data, frozen."""

    def __init__(self, event_shape: tuple[int, ...], data: torch.Tensor):
        super().__init__()
        self.event_shape = tuple(event_shape)
        with torch.no_grad():
            raw = self.raw(data.double())
            self.register_buffer("mean", raw.mean(0))
            self.register_buffer("std", raw.std(0).clamp_min(1e-6))

    @property
    def pairs(self) -> bool:
        return len(self.event_shape) == 2

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pairs:
            return x
        n, k = self.event_shape
        p = x.reshape(-1, n, k)
        i, j = torch.triu_indices(n, n, 1)
        return ((p[:, i] - p[:, j]) ** 2).sum(-1).clamp_min(1e-12).sqrt()

    @property
    def n_out(self) -> int:
        return int(self.mean.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.mean.to(x)) / self.std.to(x)


class InterpolantEnergy(LevelEnergy):
    """``E(x, t_k)`` on the levels of an :class:`InterpolantPath` with exact end energies.

    Parameters
    ----------
    target_a, target_b : objects with ``energy(x) -> (B,)`` in kT (bgflow's interface) and ``event_shape``
    path : InterpolantPath
    data : (N, d) tensor
        Configurations of both states, for the feature statistics.
    width, depth : int
        The correction network's size (a residual MLP with a Fourier embedding of ``t``).
    """

    def __init__(self, target_a, target_b, path: InterpolantPath, data: torch.Tensor, width: int = 128, depth: int = 2):
        super().__init__()
        self.target_a, self.target_b, self.path = target_a, target_b, path
        self.grid = None
        self.dim = int(data.shape[1])
        self.event_shape = tuple(getattr(target_a, "event_shape", (self.dim,)))
        self.features = Features(self.event_shape, data)
        self.net = ResMLP(self.features.n_out, width=width, depth=depth, head="scalar", fourier_scale=1.0)
        self.f = nn.Parameter(torch.zeros(path.n_levels, dtype=torch.float64))
        self.register_buffer("t", path.t.clone())
        self.n_target_evals = 0

    # -- pieces -----------------------------------------------------------------------------------------
    def correction(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``g(x, t_level)``: ``(B,)`` in the dtype of the network (float32)."""
        h = self.features(x).to(next(self.net.parameters()).dtype)
        return self.net(h, self.t[level].to(h))[:, 0]

    def end_energies(self, x: torch.Tensor, grad: bool = False):
        """``(u_A, u_B)`` (float64, detached) and, with ``grad``, their gradients ``(B, d)``."""
        self.n_target_evals += 2 * x.shape[0]
        if not grad:
            with torch.no_grad():
                return self.target_a.energy(x).double(), self.target_b.energy(x).double()
        out = []
        for tgt in (self.target_a, self.target_b):
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                u = tgt.energy(xr)
                (g,) = torch.autograd.grad(u.sum(), xr)
            out += [u.detach().double(), g.detach().double()]
        return tuple(out)

    def combine(self, ua: torch.Tensor, ub: torch.Tensor, g: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``(1 - t) u_A + t u_B + t (1 - t) g`` at per-row levels (float64)."""
        t = self.t[level]
        return (1 - t) * ua + t * ub + t * (1 - t) * g.double()

    # -- LevelEnergy protocol ---------------------------------------------------------------------------
    def energy(self, x: torch.Tensor, level) -> torch.Tensor:
        lv = self._levels(x, level)
        t = self.t[lv]
        e = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        need_a, need_b = t < 1, t > 0
        if bool(need_a.any()):
            self.n_target_evals += x.shape[0]
            e = e + torch.where(need_a, (1 - t) * self.target_a.energy(x).double(), 0.0)
        if bool(need_b.any()):
            self.n_target_evals += x.shape[0]
            e = e + torch.where(need_b, t * self.target_b.energy(x).double(), 0.0)
        inner = (t > 0) & (t < 1)
        if bool(inner.any()):
            e = e + t * (1 - t) * self.correction(x, lv).double()
        return e

    def log_norm(self) -> torch.Tensor:
        return self.f

    def apply_gauge(self) -> None:
        """``f <- f - f_0``: level 0 (state A) carries ``f = 0``, so ``-f_K`` is the estimate of ``F_B - F_A``."""
        with torch.no_grad():
            self.f -= self.f[0].clone()

    def delta_f(self) -> float:
        """``f_0 - f_K``: the learned ``F_B - F_A`` in kT."""
        return float((self.f[0] - self.f[-1]).detach())
