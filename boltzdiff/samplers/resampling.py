"""Importance-weight utilities: normalisation, Kish ESS and resampling (float64, log-space)."""

from __future__ import annotations

import math

import torch


def normalise_log_weights(log_w: torch.Tensor) -> torch.Tensor:
    """``log W = log w - logsumexp(log w)``: ``(n,)`` float64; ``-inf`` stays ``-inf``."""
    log_w = log_w.to(torch.float64)
    return log_w - torch.logsumexp(log_w, 0)


def kish_ess(log_w: torch.Tensor) -> float:
    """Normalised Kish ESS ``(sum w)^2 / (n sum w^2)`` in ``[0, 1]`` from log-weights ``(n,)``.

    Computed in log-space; returns 0 when every weight is zero.
    """
    log_w = log_w.to(torch.float64)
    n = log_w.numel()
    if n == 0 or not torch.isfinite(log_w).any():
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0) - math.log(n)))


def systematic_resample(
    log_w: torch.Tensor, n: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Systematic resampling: ancestor indices ``(n,)`` long.

    One uniform ``U`` is drawn and the points ``(U + j) / n`` are located in the cumulative normalised
    weights, so particle ``i`` is copied ``floor(n W_i)`` or ``ceil(n W_i)`` times (unbiased: ``E[count_i] = n
    W_i``).
    """
    W = torch.softmax(log_w.to(torch.float64), 0)
    n = int(n if n is not None else W.numel())
    u = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    c = torch.cumsum(W, 0)
    c[-1] = 1.0  # guard against round-off below the last point
    idx = torch.searchsorted(c, u, right=True)
    return idx.clamp_(max=W.numel() - 1)


def multinomial_resample(
    log_w: torch.Tensor, n: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Multinomial resampling: ``n`` i.i.d. ancestor indices ``(n,)`` long drawn with the normalised
    weights."""
    W = torch.softmax(log_w.to(torch.float64), 0)
    n = int(n if n is not None else W.numel())
    return torch.multinomial(W, n, replacement=True, generator=generator)


RESAMPLERS = {"systematic": systematic_resample, "multinomial": multinomial_resample}
