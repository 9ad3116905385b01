"""Diagnostics of weighted samples against analytic targets (Gaussian mixtures)."""

from __future__ import annotations

import numpy as np
import torch

from boltzdiff.targets.gmm import GaussianMixture


def _as_log_w(log_w, n: int) -> torch.Tensor:
    if log_w is None:
        return torch.zeros(n, dtype=torch.float64)
    return torch.as_tensor(np.asarray(log_w) if not isinstance(log_w, torch.Tensor) else log_w).to(torch.float64)


def weighted_mode_weights(gmm: GaussianMixture, x, log_w=None, hard: bool = False) -> np.ndarray:
    """Mode weights ``(K,)`` of weighted samples, each sample assigned to the mixture's components.

    Parameters
    ----------
    gmm : GaussianMixture
        The analytic target; components are its modes.
    x : (n, d) tensor or array
        Samples (at level 0, i.e. in data space).
    log_w : (n,) tensor or array, optional
        Log-importance weights (zeros when omitted). Samples with ``-inf`` weight or non-finite coordinates
        are ignored.
    hard : bool
        Assign each sample to its most responsible component instead of splitting it by posterior
        responsibility (the soft version is unbiased: ``E_p[r_k(x)] = w_k``).

    Returns
    -------
    (K,) float64 numpy array summing to one.
    """
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)
    lw = _as_log_w(log_w, x.shape[0])
    ok = torch.isfinite(lw) & torch.isfinite(x).all(-1)
    if not ok.any():
        return np.full(gmm.n_components, np.nan)
    x, lw = x[ok], lw[ok]
    r = gmm.responsibilities(x)
    if hard:
        r = torch.nn.functional.one_hot(r.argmax(-1), gmm.n_components).to(torch.float64)
    W = torch.softmax(lw, 0)
    return (W[:, None] * r).sum(0).numpy()


def mode_weight_stderr(gmm: GaussianMixture, x, log_w=None) -> np.ndarray:
    """Delta-method standard errors ``(K,)`` of :func:`weighted_mode_weights` (independent-sample formula).

    ``se_k^2 = sum_i W_i^2 (r_ik - p_k)^2``; it ignores the correlation that resampling introduces, so use
    independent repeats where an exact test is needed.
    """
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)
    lw = _as_log_w(log_w, x.shape[0])
    ok = torch.isfinite(lw) & torch.isfinite(x).all(-1)
    x, lw = x[ok], lw[ok]
    r = gmm.responsibilities(x)
    W = torch.softmax(lw, 0)
    p = (W[:, None] * r).sum(0)
    return torch.sqrt((W[:, None] ** 2 * (r - p) ** 2).sum(0)).numpy()


def total_variation(p, q) -> float:
    """``0.5 * sum |p - q|`` of two probability vectors."""
    return 0.5 * float(np.abs(np.asarray(p, dtype=float) - np.asarray(q, dtype=float)).sum())


def mixture_of(gmms: list[GaussianMixture], weights) -> GaussianMixture:
    """The analytic mixture ``sum_j pi_j p_j`` of isotropic Gaussian mixtures (components concatenated)."""
    weights = torch.as_tensor(weights, dtype=torch.float64)
    weights = weights / weights.sum()
    w = torch.cat([pi * g.weights for pi, g in zip(weights, gmms)])
    m = torch.cat([g.means for g in gmms])
    s = torch.cat([g.std for g in gmms])
    return GaussianMixture(w, m, s, name="+".join(g.name for g in gmms))


def mode_report(gmm: GaussianMixture, x, log_w=None) -> dict:
    """Mode weights of weighted samples vs the exact ones: ``{estimated, exact, max_abs_error, tv,
    stderr}``."""
    est = weighted_mode_weights(gmm, x, log_w)
    exact = gmm.weights.numpy()
    return dict(
        estimated=est.tolist(),
        exact=exact.tolist(),
        max_abs_error=float(np.max(np.abs(est - exact))),
        tv=total_variation(est, exact),
        stderr=mode_weight_stderr(gmm, x, log_w).tolist(),
    )


def smc_mode_report(
    model,
    gmm: GaussianMixture,
    n: int = 2000,
    generator: torch.Generator | None = None,
    levels=None,
    to_target: bool = False,
    **smc_kwargs,
) -> dict:
    """Run diffusion SMC on ``model`` and compare the weighted mode weights with the exact ``gmm`` ones.

    For ``boltzdiff evaluate`` on analytic targets. ``to_target`` ends at ``gmm``'s exact energy. Returns
    :func:`mode_report`'s dict plus ``ess``, ``log_Z``, ``n_model_evals``, ``n_target_evals`` and
    ``n_nonfinite``.
    """
    from boltzdiff.samplers.smc import SMCConfig, smc

    res = smc(model, n, SMCConfig(levels=levels, **smc_kwargs), generator=generator, target=gmm if to_target else None)
    rep = mode_report(gmm, res.x, res.log_w)
    s = res.summary()
    rep.update({k: s[k] for k in ("ess", "log_Z", "n_model_evals", "n_target_evals", "n_nonfinite")})
    return rep
