"""Sample-based figures of the DiffCLF paper for Gaussian-mixture targets (docs/method.md#paper-metrics): the MMD
between the model's samples and exact samples of the target, with the noise floor of two exact sample sets.

MMD² is the unbiased estimator (Gretton et al. 2012, eq. 3) with a kernel that is the mean of Gaussian kernels
``exp(-|a - b|^2 / (2 h^2))`` over the bandwidths ``h = c * h_med`` for ``c`` in :data:`BANDWIDTH_FACTORS`;
``h_med`` is the median pairwise distance within the first exact sample set, fixed before the model's samples
are seen, so that the model's MMD² and the exact floor use the same kernel. The kernel lies in [0, 1], so the MMD²
of a sample set with itself lies in ``[-2/n, 0]``. The model's samples come from the plain reverse SDE
(:func:`boltzdiff.samplers.sde.reverse_sde`, every level of the model's grid, unweighted): the model alone, no
target energy.
"""

from __future__ import annotations

import numpy as np
import torch

from boltzdiff.targets.gmm import GaussianMixture

#: multiples of the median-heuristic bandwidth averaged in the MMD kernel
BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: at most this many points enter the median of pairwise distances
MEDIAN_POINTS = 2000


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(n, m)`` float64."""
    a, b = a.double(), b.double()
    d2 = (a**2).sum(-1)[:, None] + (b**2).sum(-1)[None, :] - 2.0 * a @ b.T
    return d2.clamp_min(0.0)


def median_bandwidth(x: torch.Tensor) -> float:
    """Median pairwise Euclidean distance (distinct pairs) of the first :data:`MEDIAN_POINTS` rows of ``x``."""
    x = x[:MEDIAN_POINTS].double()
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"median_bandwidth: expected at least 2 points, got {n}")
    iu = torch.triu_indices(n, n, offset=1)
    return float(_sq_dists(x, x)[iu[0], iu[1]].median().sqrt())


def _kernel(d2: torch.Tensor, h: float, factors) -> torch.Tensor:
    return torch.stack([torch.exp(-d2 / (2.0 * (c * h) ** 2)) for c in factors]).mean(0)


def mmd2_unbiased(x, y, bandwidth: float, factors=BANDWIDTH_FACTORS) -> float:
    """Unbiased MMD² of sample sets ``x (n, d)`` and ``y (m, d)`` (n, m >= 2) with the mean of Gaussian kernels
    of bandwidths ``c * bandwidth`` (``c`` in ``factors``). Zero in expectation when both come from the same
    distribution; may be slightly negative."""
    x = torch.as_tensor(x).double()
    y = torch.as_tensor(y).double()
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2_unbiased: expected at least 2 samples in each set, got {n} and {m}")
    if not bandwidth > 0:
        raise ValueError(f"mmd2_unbiased: expected a positive bandwidth, got {bandwidth}")
    kxx = _kernel(_sq_dists(x, x), bandwidth, factors)
    kyy = _kernel(_sq_dists(y, y), bandwidth, factors)
    kxy = _kernel(_sq_dists(x, y), bandwidth, factors)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def exact_mmd_floor(gmm: GaussianMixture, n: int, bandwidth: float, generator: torch.Generator, repeats: int = 8):
    """MMD² of ``repeats`` independent pairs of exact sample sets of size ``n``: ``(values,)`` numpy array, the
    spread the model's MMD² would have if its samples were exact."""
    out = []
    for _ in range(int(repeats)):
        a = gmm.sample_with_labels(n, generator)[0]
        out.append(mmd2_unbiased(a, gmm.sample_with_labels(n, generator)[0], bandwidth))
    return np.array(out)


def model_mmd_report(model, gmm: GaussianMixture, n: int, seed: int = 0, floor_repeats: int = 8) -> dict:
    """MMD² between ``n`` reverse-SDE samples of ``model`` and ``n`` exact samples of ``gmm`` (see the module
    docstring).

    Returns ``{mmd, mmd_exact_floor, mmd_exact_floor_sd, mmd_bandwidth, mmd_n, mmd_n_nonfinite, mmd_sampler,
    reverse_sde_mode_weights, reverse_sde_mode_weight_error}``: ``mmd_exact_floor`` is the MMD² of the exact set
    against a second, independent exact set of the same size, ``mmd_exact_floor_sd`` the standard deviation of
    that figure over ``floor_repeats`` independent exact pairs (the first of them is ``mmd_exact_floor``). The
    mode weights are those of the same reverse-SDE samples (split by the target's responsibilities) and their max
    abs error: unlike the importance-weighted ones of :func:`boltzdiff.evaluate.evaluate_mixture` they do not
    degrade when the log-ratio spreads over many nats (high dimension), but they include the sampler's
    discretisation error. Samples with non-finite coordinates are dropped and counted.
    """
    from boltzdiff.samplers.diagnostics import weighted_mode_weights
    from boltzdiff.samplers.sde import reverse_sde

    if int(n) < 2:
        raise ValueError(f"model_mmd_report: expected n >= 2 samples, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    y = gmm.sample_with_labels(int(n), gen)[0]
    h = median_bandwidth(y)
    first = mmd2_unbiased(y, gmm.sample_with_labels(int(n), gen)[0], h)
    floor = np.concatenate([[first], exact_mmd_floor(gmm, int(n), h, gen, repeats=max(1, int(floor_repeats)) - 1)])
    res = reverse_sde(model, int(n), generator=gen)
    x = res.x.detach().double().cpu()
    ok = torch.isfinite(x).all(-1)
    n_bad = int((~ok).sum())
    mmd = mmd2_unbiased(x[ok], y, h) if int(ok.sum()) >= 2 else float("nan")
    mw = weighted_mode_weights(gmm, x[ok])
    return dict(
        mmd=mmd,
        mmd_exact_floor=float(first),
        mmd_exact_floor_sd=float(floor.std(ddof=1)) if len(floor) > 1 else float("nan"),
        mmd_bandwidth=h,
        mmd_n=int(n),
        mmd_n_nonfinite=n_bad,
        mmd_sampler="reverse_sde",
        reverse_sde_mode_weights=mw.tolist(),
        reverse_sde_mode_weight_error=float(np.abs(mw - gmm.weights.numpy()).max()),
    )


__all__ = ["BANDWIDTH_FACTORS", "exact_mmd_floor", "median_bandwidth", "mmd2_unbiased", "model_mmd_report"]
