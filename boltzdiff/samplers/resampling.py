"""Importance-weight utilities: Kish ESS and resampling (float64, log-space).

The resamplers work on the CPU, where the (CPU) generator draws, whatever the device of the weights: they
return CPU indices (and weights), which the caller moves to its particles' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def kish_ess(log_w: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """Normalised Kish effective sample size ``(sum w)^2 / (n sum w^2)``: a fraction of ``n``, not a count.

    The project's one ESS convention. Equal weights give 1, a single non-zero weight ``1/n``; zero weights
    (log-weight ``-inf``) count in ``n``; all weights zero (or no weights) give 0. Multiply by ``n`` for the
    ESS as a number of samples.

    Parameters
    ----------
    log_w : (n,) torch tensor (any device) or array-like
        Unnormalised log-weights; computed in float64 as ``exp(2 lse(log w) - lse(2 log w) - ln n)``, so a
        large common offset cannot overflow.

    Returns
    -------
    float in ``[0, 1]``

    Raises
    ------
    ValueError
        On NaN or ``+inf`` log-weights (map them to zero weight with
        :func:`boltzdiff.analysis.weights.clean_log_weights` first), or input that is not 1-D.
    """
    if not isinstance(log_w, torch.Tensor):
        log_w = torch.as_tensor(np.asarray(log_w, dtype=np.float64))
    log_w = log_w.detach().to(torch.float64)
    if log_w.ndim != 1:
        raise ValueError(f"log-weights must be 1-D (n,), got shape {tuple(log_w.shape)}")
    if bool((torch.isnan(log_w) | torch.isposinf(log_w)).any()):
        raise ValueError("log-weights contain NaN or +inf; map them with clean_log_weights() first")
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
    W = torch.softmax(log_w.detach().to(torch.float64).cpu(), 0)
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
    W = torch.softmax(log_w.detach().to(torch.float64).cpu(), 0)
    n = int(n if n is not None else W.numel())
    return torch.multinomial(W, n, replacement=True, generator=generator)


RESAMPLERS = {"systematic": systematic_resample, "multinomial": multinomial_resample}


def stratified_resample(
    log_w: torch.Tensor,
    labels: torch.Tensor,
    resample_fn=systematic_resample,
    generator: torch.Generator | None = None,
    min_share: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample within strata (e.g. the basins of a collective variable), keeping each stratum's total weight.

    Each stratum ``s`` holding particles of non-zero weight keeps its particle count ``N_s`` (the slots of
    strata whose particles all have zero weight are shared out over the others in proportion to ``N_s``);
    within it ``N_s`` ancestors are drawn with ``resample_fn`` and each gets the log-weight
    ``log(W_s / N_s)`` with ``W_s`` the stratum's weight, normalised so that the weights average to 1. The
    expected total weight of every particle's copies equals its weight, as for plain resampling, so
    self-normalised estimates stay consistent; but mass cannot move between strata, so a stratum that holds a
    few percent of the weight keeps its particles instead of losing them to the noise of repeated resampling.

    ``min_share`` in ``[0, 1]``: every living stratum gets at least ``min_share * n`` slots (with S living
    strata, at most an equal share ``n / S``), taken from the others in proportion to their counts. A minor
    stratum then holds more particles, each of a smaller weight ``W_s / N_s``: its share of the *weight* is
    unchanged, only the variance of its estimates drops (optimal allocation in stratified sampling), at the
    price of unequal weights.

    Returns ``(idx, log_w_new)``: ``(n,)`` ancestor indices and ``(n,)`` float64 log-weights (mean weight 1).
    """
    log_w = log_w.detach().to(torch.float64).cpu()
    n = log_w.numel()
    labels = labels.reshape(-1).to(torch.long).cpu()
    if labels.numel() != n:
        raise ValueError(f"stratified_resample: {labels.numel()} labels for {n} particles")
    alive = torch.isfinite(log_w)
    strata = [s for s in torch.unique(labels).tolist() if bool((alive & (labels == s)).any())]
    if not strata:
        raise ValueError("stratified_resample: every particle has zero weight")
    counts = torch.tensor([int((labels == s).sum()) for s in strata], dtype=torch.float64)
    # slots of dead strata go to the living ones in proportion to their counts (largest remainder)
    share = counts / counts.sum() * n
    if min_share > 0:
        # every living stratum gets at least min_share * n slots (an equal share if there are too many strata);
        # the others are scaled down in proportion to their counts, repeated while that pushes one below the floor
        floor_n = min(float(min_share), 1.0 / len(strata)) * n
        low = share < floor_n
        while bool(low.any()) and not bool(low.all()):
            free = n - floor_n * int(low.sum())
            share = torch.where(low, torch.full_like(share, floor_n), counts / counts[~low].sum() * free)
            new_low = low | (share < floor_n)
            if bool((new_low == low).all()):
                break
            low = new_low
        if bool(low.all()):
            share = torch.full_like(share, n / len(strata))
    alloc = torch.floor(share).to(torch.long)
    rest = n - int(alloc.sum())
    if rest > 0:
        alloc[torch.argsort(share - alloc, descending=True)[:rest]] += 1
    log_total = torch.logsumexp(log_w, 0)
    idx_parts, lw_parts = [], []
    for s, n_s in zip(strata, alloc.tolist()):
        if n_s == 0:
            continue
        members = torch.nonzero(labels == s).reshape(-1)
        lw_s = log_w[members]
        pick = resample_fn(lw_s, n_s, generator=generator)
        idx_parts.append(members[pick])
        lw_parts.append(torch.full((n_s,), float(torch.logsumexp(lw_s, 0) - math.log(n_s)), dtype=torch.float64))
    idx = torch.cat(idx_parts)
    lw_new = torch.cat(lw_parts)
    lw_new = lw_new - (log_total - math.log(n))  # mean weight 1: the normaliser bookkeeping stays log(W / n)
    return idx, lw_new
