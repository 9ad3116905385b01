"""Reverse diffusion on a level grid: reverse-SDE kernels, the probability-flow ODE, and shared helpers.

With the forward transition between grid levels ``k < l``, ``x_l = a x_k + s eps`` (``a = alpha_l / alpha_k``,
``s^2 = sigma_l^2 - a^2 sigma_k^2``), the reverse moves from level ``l`` to level ``k`` use the score at
``l``:

- ``"ancestral"`` (exponential-integrator / Tweedie form): ``x_k ~ N((x_l + s^2 score) / a, s^2 / a^2)``;
  ``(x_l + s^2 score) / a`` is exactly ``E[x_k | x_l]`` when the score is exact.
- ``"gaussian"`` (default): the same mean with the exact posterior variance for data of per-coordinate
  variance ``v_data``: ``s^2 v_k / v_l`` with ``v_i = alpha_i^2 v_data + sigma_i^2``. The plain ancestral
  variance ``s^2 / a^2`` overshoots it by ``v_l / (a^2 v_k)``, which costs ESS in high dimension at coarse
  noisy steps. Compositions supply their own level variances (see :func:`reverse_kernel`).
- ``"em"`` (Euler-Maruyama of the reverse SDE, with ``f dt = log a`` and ``g^2 dt = s^2``):
  ``x_k ~ N(x_l (1 - log a) + s^2 score, s^2)``.
- probability-flow ODE (first-order exponential integrator, i.e. DDIM with eta = 0):
  ``x0_hat = (x_l + sigma_l^2 score) / alpha_l``, ``x_k = alpha_k x0_hat - sigma_k sigma_l score``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from boltzdiff.errors import ConfigError
from boltzdiff.samplers.mcmc import EvalCounter
from boltzdiff.samplers.results import SamplerResult

KERNELS = ("gaussian", "ancestral", "em")


def model_dtype(model) -> torch.dtype:
    """Floating dtype the model computes in (its first floating parameter, else buffer; float64 if none)."""
    for tensors in (model.parameters(), model.buffers()):
        for t in tensors:
            if t.is_floating_point():
                return t.dtype
    return torch.float64


def model_device(model) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def resolve_levels(n_grid: int, levels=None) -> list[int]:
    """Grid indices to visit, ascending, always including 0 and ``n_grid - 1``.

    ``levels``: None (every level), an int ``m`` (``m`` levels evenly spaced in index), or a sequence of
    indices.
    """
    if levels is None:
        return list(range(n_grid))
    if isinstance(levels, int):
        m = int(levels)
        if m < 2 or m > n_grid:
            raise ConfigError(f"levels: expected an integer between 2 and the grid size {n_grid}, got {m}")
        idx = torch.linspace(0, n_grid - 1, m, dtype=torch.float64).round().long().unique().tolist()
        return sorted(idx)
    idx = sorted({int(i) for i in levels})
    if not idx or idx[0] != 0 or idx[-1] != n_grid - 1:
        raise ConfigError(f"levels: a sub-grid must include level 0 and level {n_grid - 1}, got {idx}")
    return idx


def noisiest_gaussian(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(d,)`` and isotropic std (scalar) float64 of the start distribution at the noisiest level.

    - a model with ``initial_gaussian()`` (compositions) says it itself;
    - a :class:`~boltzdiff.models.energy.PreconditionedEnergy` (``alpha``, ``a2``, ``mu``): ``N(alpha mu,
      a2)`` at the last level, its exact energy for a zero network;
    - an exact mixture energy (``gmm``): the moment-matched Gaussian of the noised mixture;
    - otherwise ``N(0, alpha^2 + sigma^2)`` (unit-variance data).
    """
    if hasattr(model, "initial_gaussian"):
        m, s = model.initial_gaussian()
        return torch.as_tensor(m, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)
    g = model.grid
    a_n, s_n = g.alpha[-1], g.sigma[-1]
    if all(hasattr(model, k) for k in ("alpha", "a2", "mu")):
        return (model.alpha[-1].double().cpu() * model.mu.double().cpu(), torch.sqrt(model.a2[-1].double()).cpu())
    if hasattr(model, "gmm"):
        mu, sd = model.gmm.data_moments()
        return a_n * mu, torch.sqrt(a_n**2 * sd**2 + s_n**2)
    return torch.zeros(model.dim, dtype=torch.float64), torch.sqrt(a_n**2 + s_n**2)


def data_variance(model) -> float:
    """A per-coordinate data variance for kernel variances and MCMC step scales: the model's ``sigma_data^2``,
    an exact mixture's smallest component variance, a composition's ``data_variance()``, else 1."""
    if hasattr(model, "data_variance"):
        return float(model.data_variance())
    if hasattr(model, "sigma_data"):
        return float(model.sigma_data) ** 2
    if hasattr(model, "gmm"):
        return float(model.gmm.std.min()) ** 2
    return 1.0


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std) -> torch.Tensor:
    """``log N(x; mean, std^2 I)`` per row, float64 ``(B,)``; ``std`` scalar or ``(B,)``."""
    std = torch.as_tensor(std, dtype=torch.float64)
    d = x.shape[-1]
    r = (x.double() - mean.double()) / (std[:, None] if std.dim() == 1 else std)
    return -0.5 * (r**2).sum(-1) - d * (torch.log(std) + 0.5 * math.log(2 * math.pi))


def level_variances(model) -> torch.Tensor:
    """Per-level isotropic variance ``(N,)`` float64 of a Gaussian approximation of each level's density.

    A model's own ``level_variances()`` if it has one (compositions), else ``alpha_k^2 v_data + sigma_k^2``
    with :func:`data_variance`. It sets the ``"gaussian"`` kernel's variance and the MCMC step scales.
    """
    if hasattr(model, "level_variances"):
        return torch.as_tensor(model.level_variances(), dtype=torch.float64)
    g = model.grid
    return g.alpha**2 * data_variance(model) + g.sigma**2


def fisher_level_variances(grid, level: int, score: torch.Tensor, log_w: torch.Tensor | None = None) -> torch.Tensor:
    """Level variances ``(N,)``, ``alpha^2 v + sigma^2`` with ``v`` fitted to the weighted Fisher information.

    At level ``level``, ``V = d / E_W[|score|^2]`` (exact for an isotropic Gaussian) and ``v = (V - sigma^2) /
    alpha^2`` (clamped positive). Particles with a non-finite score or weight are ignored.

    Parameters
    ----------
    grid : LevelGrid
    score : (B, d) tensor
        Scores of the current particles at ``level``.
    log_w : (B,) float64, optional
        Their log-weights (uniform when omitted).
    """
    if log_w is None:
        log_w = torch.zeros(score.shape[0], dtype=torch.float64, device=score.device)
    ok = torch.isfinite(log_w) & torch.isfinite(score).all(-1)
    W = torch.softmax(torch.where(ok, log_w, torch.full_like(log_w, -math.inf)), 0)
    g2 = (torch.nan_to_num(score.double()) ** 2).sum(-1)
    fisher = float((W * g2).sum()) / score.shape[1]
    v_l = 1.0 / max(fisher, 1e-30)
    a_l, s_l = grid.alpha[level], grid.sigma[level]
    v = torch.clamp((v_l - s_l**2) / a_l**2, min=1e-6 * float(s_l**2 + 1e-12) / float(a_l**2))
    return grid.alpha**2 * v + grid.sigma**2


@dataclass
class ReverseMove:
    """A Gaussian reverse move from level ``l`` and the backward (noising) kernel ``L(x_l | x_k) = N(a x_k,
    s_back^2 I)`` its importance weight uses. ``mean: (B, d)``; ``a``, ``s_back`` scalars float64.

    Isotropic (``basis`` None): ``x_k ~ N(mean, std^2 I)`` with ``std`` a float64 scalar. Anisotropic
    (:func:`matrix_move`): ``x_k = mean + F(U diag(std) eps)`` with ``basis = U`` ``(d, d)`` orthonormal,
    ``std: (d,)`` and ``F`` the map from the kernel's frame to each particle's own: the identity, or with
    ``rot: (B, m, m)`` (particles of ``m`` coordinates) ``y -> y @ rot`` per particle (rotations leave the
    density's normaliser unchanged).
    """

    mean: torch.Tensor
    std: torch.Tensor
    a: torch.Tensor
    s_back: torch.Tensor
    basis: torch.Tensor | None = None
    rot: torch.Tensor | None = None

    def sample(self, eps: torch.Tensor) -> torch.Tensor:
        """The move for standard-normal ``eps: (B, d)`` (float64), in the dtype of ``mean``."""
        if self.basis is None:
            return self.mean + self.std.to(self.mean) * eps.to(self.mean)
        y = (eps.to(self.basis) * self.std) @ self.basis.T
        return self.mean + self._from_frame(y).to(self.mean)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """``log M(x | x_l)`` per row, float64 ``(B,)``."""
        if self.basis is None:
            return gaussian_log_density(x, self.mean, self.std)
        r = self._to_frame(x.double() - self.mean.double())
        z = (r @ self.basis) / self.std
        return -0.5 * (z**2).sum(-1) - torch.log(self.std).sum() - 0.5 * x.shape[-1] * math.log(2 * math.pi)

    def _from_frame(self, y: torch.Tensor) -> torch.Tensor:
        if self.rot is None:
            return y
        m = self.rot.shape[-1]
        return (y.reshape(y.shape[0], -1, m) @ self.rot).reshape(y.shape)

    def _to_frame(self, y: torch.Tensor) -> torch.Tensor:
        if self.rot is None:
            return y
        m = self.rot.shape[-1]
        return (y.reshape(y.shape[0], -1, m) @ self.rot.transpose(-1, -2)).reshape(y.shape)


def particle_frames(x: torch.Tensor, log_w: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Per-particle rotations ``(B, m, m)`` float64 into a common frame: each configuration of ``x: (B, n * m)``
    is Kabsch-aligned (proper rotation about its centroid) to a reference, the weighted mean of all of them
    aligned to the heaviest one. Configuration ``i`` in that frame is ``(x_i - c_i) @ rot_i.T``."""
    from boltzdiff.geometry import kabsch

    n_at, m = shape
    xs = x.double().reshape(x.shape[0], n_at, m)
    xs = xs - xs.mean(1, keepdim=True)
    ok = torch.isfinite(log_w) & torch.isfinite(xs).flatten(1).all(-1)
    xs = torch.where(ok[:, None, None], xs, torch.zeros_like(xs))
    W = torch.softmax(torch.where(ok, log_w.double(), torch.full_like(log_w.double(), -math.inf)), 0)
    ref = xs[int(torch.argmax(W))]
    for _ in range(2):  # align to the reference, then to the weighted mean of the aligned configurations
        rot, _ = kabsch(xs, ref)
        ref = (W[:, None, None] * (xs @ rot.transpose(-1, -2))).sum(0)
    rot, _ = kabsch(xs, ref)
    return rot


def shrunk_second_moment(v: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Weighted second moment ``S = sum_i W_i v_i v_i^T`` of ``v: (B, d)`` (weights ``W`` sum to 1), shrunk
    towards ``mu I`` (``mu = tr S / d``) by the Ledoit-Wolf coefficient ``min(1, b^2 / c^2)``: ``c^2 =
    |S - mu I|_F^2`` is how anisotropic ``S`` looks and ``b^2 = sum_i W_i^2 |v_i v_i^T - S|_F^2`` the sampling
    noise of ``S`` (for equal weights, Ledoit & Wolf 2004). An isotropic truth is kept isotropic; a strongly
    anisotropic one, estimated from enough particles, is barely shrunk. ``(d, d)`` float64."""
    v = v.double()
    W = W.double()
    d = v.shape[1]
    S = (W[:, None] * v).T @ v
    mu = torch.trace(S) / d
    eye = torch.eye(d, dtype=S.dtype, device=S.device)
    c2 = ((S - mu * eye) ** 2).sum()
    n2 = (v * v).sum(-1)
    b2 = (W**2 * (n2**2 - 2 * ((v @ S) * v).sum(-1) + (S * S).sum())).sum()
    gam = 1.0 if float(c2) <= 0 else min(1.0, float(b2 / c2))
    return (1 - gam) * S + gam * mu * eye


def fisher_curvature(score: torch.Tensor, log_w: torch.Tensor | None = None) -> torch.Tensor:
    """The level's mean curvature ``E[-Hess log q] = E[score score^T]`` (Fisher identity), estimated from the
    weighted particles' scores ``(B, d)`` and Ledoit-Wolf shrunk (:func:`shrunk_second_moment`); ``(d, d)``
    float64. Particles with a non-finite score or weight are ignored."""
    if log_w is None:
        log_w = torch.zeros(score.shape[0], dtype=torch.float64, device=score.device)
    ok = torch.isfinite(log_w) & torch.isfinite(score).all(-1)
    W = torch.softmax(torch.where(ok, log_w.double(), torch.full_like(log_w.double(), -math.inf)), 0)
    return shrunk_second_moment(torch.nan_to_num(score.double()), W)


def level_hessians(model, level: int, x: torch.Tensor) -> torch.Tensor:
    """Hessians ``(B, d, d)`` float64 of the level energy ``E(x, t_level)`` at ``x: (B, d)`` (``d`` backward
    passes through the score, batched where autograd allows it)."""
    d = x.shape[1]
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.energy(xr, level).sum(), xr, create_graph=True)
        try:
            eye = torch.eye(d, dtype=g.dtype, device=g.device)[:, None, :].expand(d, *g.shape)
            (rows,) = torch.autograd.grad(g, xr, grad_outputs=eye, is_grads_batched=True)
            rows = rows.transpose(0, 1)
        except RuntimeError:  # an operation without a batching rule: one pass per coordinate
            rows = torch.stack([torch.autograd.grad(g[:, j].sum(), xr, retain_graph=True)[0] for j in range(d)], 1)
    return rows.detach().double()


def hessian_curvature(
    model, level: int, x: torch.Tensor, log_w: torch.Tensor, rot: torch.Tensor, k: int, generator=None
) -> torch.Tensor:
    """The level's mean curvature in the particles' common frame: the Hessians of ``E(., t_level)`` at ``k``
    particles drawn by weight (systematic), each rotated into the frame by its ``rot`` (``(B, m, m)``, see
    :func:`particle_frames`), averaged; ``(d, d)`` float64.

    For particles the Fisher matrix of aligned scores is biased: the alignment picks, for each noisy
    configuration, the rotation that best matches the reference, which correlates the rotated score with the
    reference and fakes a stiff direction along it. A Hessian at a configuration does not depend on how the
    configuration was picked (``H(R x) = R H(x) R^T`` for a rotation-invariant energy)."""
    from boltzdiff.samplers.resampling import systematic_resample

    ok = torch.isfinite(log_w) & torch.isfinite(x).all(-1)
    lw = torch.where(ok, log_w.double(), torch.full_like(log_w.double(), -math.inf))
    idx = systematic_resample(lw, int(k), generator=generator).to(x.device)
    H = level_hessians(model, level, x[idx])
    m = rot.shape[-1]
    P = torch.stack([torch.block_diag(*[r] * (x.shape[1] // m)) for r in rot[idx].double()])
    Hf = P @ H @ P.transpose(-1, -2)
    Hf = torch.nan_to_num(Hf.mean(0))
    return 0.5 * (Hf + Hf.T)


def matrix_move(
    grid,
    i_to: int,
    i_from: int,
    x: torch.Tensor,
    score: torch.Tensor,
    curvature: torch.Tensor,
    rot: torch.Tensor | None = None,
) -> ReverseMove:
    """Reverse move from level ``i_from`` (l) to ``i_to`` (k) with a full covariance from the level's curvature.

    For Gaussian levels, ``x_l = a x_k + s eps`` and ``Cov(x_l) = Sigma_l``, the exact posterior is
    ``x_k | x_l ~ N((x_l + s^2 score) / a, (s^2 / a^2)(I - s^2 Sigma_l^-1))``. ``curvature`` ``(d, d)`` stands
    in for ``Sigma_l^-1`` (:func:`fisher_curvature`, :func:`hessian_curvature`; negative eigenvalues count as
    0), so every principal direction gets its own variance: stiff ones (bonds, whose noised width is ~sigma_l)
    shrink by ``~sigma_k^2 / sigma_l^2`` while soft ones (torsions, rotations) keep ``s^2 / a^2``. The
    isotropic ``"gaussian"`` kernel must compromise between them, which costs log-weight variance in every
    step where the two differ.

    ``rot`` ``(B, m, m)``: the curvature is in a common frame of particles of ``m`` coordinates and each
    particle's covariance is rotated into its own orientation (:func:`particle_frames`). The backward kernel
    is the grid's noising transition; any curvature keeps the weights exact.
    """
    a, s = grid.transition_coeffs(i_to, i_from)
    a, s = a.double(), s.double()
    lam, basis = torch.linalg.eigh(curvature.double())
    shrink = torch.clamp(1.0 - s**2 * torch.clamp(lam, min=0.0), min=1e-6, max=1.0)
    std = (s / a) * torch.sqrt(shrink)
    mean = (x + (s**2).to(x) * score) / a.to(x)
    return ReverseMove(mean, std, a, s, basis=basis.to(x.device), rot=rot)


def reverse_kernel(
    grid,
    i_to: int,
    i_from: int,
    x: torch.Tensor,
    score: torch.Tensor,
    kind: str = "gaussian",
    variances: torch.Tensor | None = None,
) -> ReverseMove:
    """Gaussian reverse move from level ``i_from`` (= l) to the cleaner level ``i_to`` (= k).

    Parameters
    ----------
    grid : LevelGrid
    x : (B, d) tensor at level ``i_from``; score : (B, d), the model's score there.
    kind : {"gaussian", "ancestral", "em"}
    variances : (N,) float64, optional
        Level variances ``V`` of the ``"gaussian"`` kernel (:func:`level_variances`; default unit data
        variance). With ``a = alpha_l / alpha_k`` and ``s_b^2 = V_l - a^2 V_k`` (``= s^2``, the grid's
        transition variance, whenever ``V = alpha^2 v + sigma^2``) the move is ``N((x + s_b^2 score) / a,
        s_b^2 V_k / V_l)``, the exact reverse of ``L = N(a x_k, s_b^2)`` for Gaussian levels of variance
        ``V``. For compositions (whose levels are not a diffusion) ``V`` follows the composed energy, not the
        grid.

    Returns
    -------
    ReverseMove
    """
    a, s = grid.transition_coeffs(i_to, i_from)
    if kind == "gaussian":
        if variances is None:
            variances = grid.alpha**2 + grid.sigma**2
        v_k, v_l = variances[i_to], variances[i_from]
        s_b = torch.sqrt(torch.clamp(v_l - a**2 * v_k, min=1e-12 * float(v_l)))
        mean = (x + (s_b**2).to(x) * score) / a.to(x)
        return ReverseMove(mean, s_b * torch.sqrt(v_k / v_l), a, s_b)
    if kind == "ancestral":
        mean = (x + (s**2).to(x) * score) / a.to(x)
        return ReverseMove(mean, s / a, a, s)
    if kind == "em":
        return ReverseMove(x * (1 - torch.log(a)).to(x) + (s**2).to(x) * score, s, a, s)
    raise ConfigError(f"kernel: expected one of {KERNELS}, got {kind!r}")


def initial_particles(
    model, n: int, generator: torch.Generator | None = None, dtype=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws ``(n, d)`` from :func:`noisiest_gaussian` and their float64 log-density ``(n,)``."""
    if int(n) < 1:
        raise ConfigError(f"n: expected a number of particles >= 1, got {n}")
    dtype = dtype or model_dtype(model)
    mean, std = noisiest_gaussian(model)
    eps = torch.randn(int(n), model.dim, generator=generator, dtype=torch.float64)
    x = mean + std * eps
    device = model_device(model)
    return x.to(dtype=dtype, device=device), gaussian_log_density(x, mean, std).to(device)


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from boltzdiff.progress import progress

    return progress(it, desc=desc, leave=False)


@torch.no_grad()
def reverse_sde(
    model,
    n: int,
    generator: torch.Generator | None = None,
    levels=None,
    kernel: str = "gaussian",
    x_init: torch.Tensor | None = None,
    progress: bool = False,
    kernel_variance: str = "fisher",
) -> SamplerResult:
    """Unweighted samples by the reverse SDE on the model's level grid (or a sub-grid).

    Parameters
    ----------
    model : LevelEnergy
    n : int
        Number of samples.
    generator : torch.Generator, optional
    levels : None, int or sequence of int
        Sub-grid (see :func:`resolve_levels`).
    kernel : {"gaussian", "ancestral", "em"}
    x_init : (n, d) tensor, optional
        Start at the noisiest level (default: :func:`noisiest_gaussian`).
    kernel_variance : {"fisher", "model"}
        Level variances of the ``"gaussian"`` kernel: fitted at each step to the samples' Fisher information
        (:func:`fisher_level_variances`, default) or the model's own (:func:`level_variances`).

    Returns
    -------
    SamplerResult
        ``x: (n, d)`` at level 0.
    """
    t0 = time.perf_counter()
    if kernel_variance not in ("model", "fisher"):
        raise ConfigError(f"kernel_variance: expected 'model' or 'fisher', got {kernel_variance!r}")
    lv = resolve_levels(model.grid.n, levels)
    x = x_init if x_init is not None else initial_particles(model, n, generator)[0]
    counter = EvalCounter()
    variances = level_variances(model)
    for j in _progress(range(len(lv) - 1, 0, -1), progress, "reverse SDE"):
        i_from, i_to = lv[j], lv[j - 1]
        score = model.score(x, i_from)
        counter.model += x.shape[0] * int(getattr(model, "n_models", 1))
        if kernel_variance == "fisher" and not hasattr(model, "level_variances"):
            variances = fisher_level_variances(model.grid, i_from, score)
        mv = reverse_kernel(model.grid, i_to, i_from, x, score, kernel, variances)
        x = mv.mean + mv.std.to(x) * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    bad = int((~torch.isfinite(x).all(-1)).sum())
    return SamplerResult(x, lv[::-1], counter.model, bad, time.perf_counter() - t0)


@torch.no_grad()
def probability_flow_ode(
    model,
    n: int,
    generator: torch.Generator | None = None,
    levels=None,
    x_init: torch.Tensor | None = None,
    progress: bool = False,
) -> SamplerResult:
    """Samples by the probability-flow ODE (first-order exponential integrator / DDIM with eta = 0).

    Only the start is random. Same parameters as :func:`reverse_sde`.
    """
    t0 = time.perf_counter()
    g = model.grid
    lv = resolve_levels(g.n, levels)
    x = x_init if x_init is not None else initial_particles(model, n, generator)[0]
    counter = EvalCounter()
    for j in _progress(range(len(lv) - 1, 0, -1), progress, "probability-flow ODE"):
        i_from, i_to = lv[j], lv[j - 1]
        score = model.score(x, i_from)
        counter.model += x.shape[0] * int(getattr(model, "n_models", 1))
        a_l, s_l, a_k, s_k = (v.to(x) for v in (g.alpha[i_from], g.sigma[i_from], g.alpha[i_to], g.sigma[i_to]))
        x0_hat = (x + s_l**2 * score) / a_l
        x = a_k * x0_hat - s_k * s_l * score
    bad = int((~torch.isfinite(x).all(-1)).sum())
    return SamplerResult(x, lv[::-1], counter.model, bad, time.perf_counter() - t0)
