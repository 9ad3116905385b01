"""The level-energy protocol shared by learned models, exact references and compositions.

A *level energy* is a family ``E(x, t_i)`` over the discrete levels of a :class:`~boltzdiff.noise.LevelGrid`
together with per-level log-normalisers ``f_i`` such that ``log q(x, t_i) = -E(x, t_i) - f_i`` is (an estimate
of) the normalised log-density of the noised distribution at level ``i``. Samplers, losses and evaluation only
use this interface.
"""

from __future__ import annotations

import torch

from boltzdiff.noise import LevelGrid


class LevelEnergy(torch.nn.Module):
    """Base class: subclasses implement :meth:`energy` and :meth:`log_norm`.

    Attributes
    ----------
    grid : LevelGrid
    dim : int
    """

    grid: LevelGrid
    dim: int

    def energy(self, x: torch.Tensor, level: torch.Tensor | int) -> torch.Tensor:  # pragma: no cover
        """Unnormalised energy ``E(x, t_level)``; ``x: (B, d)``, ``level``: int or ``(B,)`` long -> ``(B,)``."""
        raise NotImplementedError

    def log_norm(self) -> torch.Tensor:  # pragma: no cover
        """Per-level log-normalisers ``f: (N,)``."""
        raise NotImplementedError

    # -- derived ----------------------------------------------------------------------------------------
    def _levels(self, x: torch.Tensor, level) -> torch.Tensor:
        if isinstance(level, int) or (isinstance(level, torch.Tensor) and level.dim() == 0):
            return torch.full((x.shape[0],), int(level), dtype=torch.long, device=x.device)
        return level.to(device=x.device, dtype=torch.long)

    def log_q(self, x: torch.Tensor, level) -> torch.Tensor:
        """Normalised log-density estimate ``-E(x, t) - f_level``, ``(B,)``."""
        lv = self._levels(x, level)
        return -self.energy(x, lv) - self.log_norm().to(x)[lv]

    def score(self, x: torch.Tensor, level, create_graph: bool = False) -> torch.Tensor:
        """``-grad_x E(x, t_level)``, shape of ``x``."""
        with torch.enable_grad():
            xr = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            e = self.energy(xr, level)
            (g,) = torch.autograd.grad(e.sum(), xr, create_graph=create_graph)
        return -g

    def energy_and_score(self, x: torch.Tensor, level) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, -grad E)`` in one pass, both detached."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            e = self.energy(xr, level)
            (g,) = torch.autograd.grad(e.sum(), xr)
        return e.detach(), -g
