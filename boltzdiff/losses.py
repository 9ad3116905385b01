"""Training losses: denoising score matching (DSM) and the Diffusive Classification loss (DiffCLF).

All losses are pure functions of ``(model, x0, levels, noise)``; randomness is drawn from an explicit
``generator``. ``x0: (B, d)``. See docs/method.md#dsm and docs/method.md#diffclf.

- DSM in denoiser form with the EDM weighting: Tweedie ``x0_hat = (x_t + sigma_t^2 s_theta(x_t, t)) / alpha_t``,
  ``L = lambda(t) |x0_hat - x0|^2 / d`` with ``lambda = (sbar^2 + sigma_d^2) / (sbar^2 sigma_d^2)``,
  ``sbar = sigma_t / alpha_t``.
- DiffCLF (multi-level, k distinct levels per data point): logits ``l[b, a] = -E(x^(a), t_b) - f_b``;
  ``L = -(1/k) sum_a [l[a, a] - logsumexp_b l[b, a]]``. The k diagonal energies also serve DSM.
- DiffCLF binary (k = 2): logistic regression between two levels, ``softplus(l_t(x_s) - l_s(x_s))`` averaged
  over both directions (identical to the multi-level loss at k = 2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from boltzdiff.errors import ConfigError
from boltzdiff.models.base import LevelEnergy

LEVEL_SAMPLING = ("uniform", "local", "mixed")


@dataclass
class LossOutput:
    """Scalar losses of one batch (``total`` carries the graph)."""

    total: torch.Tensor
    dsm: torch.Tensor
    clf: torch.Tensor | None
    n_dsm_terms: int
    n_energy_evals: int


def draw_levels(
    batch: int,
    n_levels: int,
    k: int,
    generator: torch.Generator | None = None,
    sampling: str = "uniform",
    window: int = 4,
    device=None,
) -> torch.Tensor:
    """Draw ``k`` distinct level indices per data point, ``(B, k)`` long.

    ``sampling``: ``"uniform"`` (k distinct levels uniformly from the grid), ``"local"`` (a uniform centre and
    k-1 distinct others within ``window`` levels of it, so that neighbouring levels are compared often),
    ``"mixed"`` (half the rows uniform, half local).
    """
    if not 1 <= k <= n_levels:
        raise ConfigError(f"k: expected 1 <= k <= n_levels ({n_levels}), got {k}")
    if sampling not in LEVEL_SAMPLING:
        raise ConfigError(f"level_sampling: expected one of {LEVEL_SAMPLING}, got {sampling!r}")
    u = torch.rand(batch, n_levels, generator=generator)
    uniform = u.argsort(dim=-1)[:, :k]
    if sampling == "uniform" or k == 1:
        return uniform.to(device)
    w = max(int(window), k - 1)
    # local: a uniform centre c plus k-1 distinct other levels from [c - w, c + w] (clipped to the grid)
    c = torch.randint(0, n_levels, (batch, 1), generator=generator)
    offs = torch.arange(-w, w + 1)[None, :]
    pos = c + offs  # (B, 2w+1)
    valid = (pos >= 0) & (pos < n_levels) & (offs != 0)
    score = torch.rand(pos.shape, generator=generator).masked_fill(~valid, -1.0)
    pick = score.argsort(dim=-1, descending=True)[:, : k - 1]
    local = torch.cat([c, pos.gather(1, pick)], dim=-1)
    if sampling == "local":
        return local.to(device)
    half = torch.rand(batch, generator=generator) < 0.5
    return torch.where(half[:, None], local, uniform).to(device)


def edm_weight(model: LevelEnergy, level: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``lambda(t) = (sbar^2 + sigma_d^2) / (sbar^2 sigma_d^2)`` at integer levels, ``(B,)``."""
    sbar2 = (model.grid.sigma / model.grid.alpha) ** 2
    lam = (sbar2 + sigma_data**2) / (sbar2 * sigma_data**2)
    return lam.to(device=level.device)[level]


def _dsm_terms(
    model: LevelEnergy,
    x0: torch.Tensor,
    xt: torch.Tensor,
    level: torch.Tensor,
    energy: torch.Tensor,
    sigma_data: float,
    score0: torch.Tensor | None = None,
    tsm_scale: float | None = None,
    tsm_weight: float = 0.0,
) -> torch.Tensor:
    """Per-sample DSM terms given energies ``E(x_t, t)`` computed from ``xt`` (which requires grad).

    With ``score0 = grad log p_0(x0)`` (data whose energy is known) and ``tsm_scale`` (a length), the
    regression target of the denoiser mixes DSM's ``x0`` with the target-score-matching one (De Bortoli et al.
    2024), ``x0_tsm = (x_t + sigma_t^2 score0 / alpha_t) / alpha_t``: both have the posterior mean
    ``E[x0 | x_t]`` as their expectation, so the minimiser is unchanged, but TSM's variance vanishes as the
    noise does while DSM's does not. Weight of DSM: ``c = sbar^2 / (sbar^2 + tsm_scale^2)``, ``sbar =
    sigma/alpha``: TSM below the length scale of the stiffest degrees of freedom, DSM above it.

    With the EDM weight, a term is ``~ sbar^2 |score error|^2`` at low noise: the lowest levels' scores (which
    the SMC's last levels and its bridge to the target rely on) are barely trained. ``tsm_weight = w``
    multiplies each term by ``1 + w tsm^4 / (sbar^2 (sbar^2 + tsm^2))``, ``~ w tsm^2 / sbar^2`` below the TSM
    scale (a score-error weight that stays at ``w tsm^2``) and ~1 above it. Any positive per-level weight
    leaves the minimiser unchanged.
    """
    (grad,) = torch.autograd.grad(energy.sum(), xt, create_graph=True)
    a = model.grid.alpha.to(x0)[level][:, None]
    s2 = (model.grid.sigma.to(x0)[level] ** 2)[:, None]
    x0_hat = (xt - s2 * grad) / a  # score = -grad
    lam = edm_weight(model, level, sigma_data).to(x0)
    target = x0
    if score0 is not None and tsm_scale is not None:
        sbar2 = s2 / a**2
        c = sbar2 / (sbar2 + float(tsm_scale) ** 2)
        x0_tsm = (xt.detach() + s2 * score0 / a) / a
        target = c * x0 + (1 - c) * x0_tsm
        if tsm_weight:
            t2 = float(tsm_scale) ** 2
            lam = lam * (1 + float(tsm_weight) * t2**2 / (sbar2 * (sbar2 + t2)))[:, 0]
    return lam * ((x0_hat - target) ** 2).sum(-1) / x0.shape[-1]


def dsm_loss(
    model: LevelEnergy,
    x0: torch.Tensor,
    level: torch.Tensor,
    sigma_data: float,
    generator: torch.Generator | None = None,
    score0: torch.Tensor | None = None,
    tsm_scale: float | None = None,
    tsm_weight: float = 0.0,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean DSM loss at the given levels, one noise draw per row. ``x0: (B, d)``, ``level: (B,)``;
    ``score0``/``tsm_scale``: target score matching at low noise (see :func:`_dsm_terms`); ``eps``: the noise
    ``(B, d)`` (default: drawn from ``generator``)."""
    eps = (torch.randn(x0.shape, generator=generator) if eps is None else eps).to(x0)
    a = model.grid.alpha.to(x0)[level][:, None]
    s = model.grid.sigma.to(x0)[level][:, None]
    xt = (a * x0 + s * eps).requires_grad_(True)
    e = model.energy(xt, level)
    return _dsm_terms(model, x0, xt, level, e, sigma_data, score0, tsm_scale, tsm_weight).mean()


def clf_logits(model: LevelEnergy, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Logits ``l[n, b, a] = -E(x[n, a], t_{levels[n, b]}) - f[levels[n, b]]`` for all pairs.

    ``x: (B, k, d)``, ``levels: (B, k)`` -> ``(B, k, k)`` (axis 1 = candidate level b, axis 2 = sample a).
    """
    B, k, d = x.shape
    xa = x[:, None, :, :].expand(B, k, k, d).reshape(-1, d)
    lb = levels[:, :, None].expand(B, k, k).reshape(-1)
    e = model.energy(xa, lb).reshape(B, k, k)
    f = model.log_norm().to(e)[levels]  # (B, k) indexed by b
    return -e - f[:, :, None]


def clf_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Multi-level classification loss from ``(B, k, k)`` logits (axis 1 candidate, axis 2 sample), mean."""
    diag = torch.diagonal(logits, dim1=1, dim2=2)  # (B, k): l[a, a]
    return -(diag - torch.logsumexp(logits, dim=1)).mean()


def diffclf_loss(
    model: LevelEnergy,
    x0: torch.Tensor,
    levels: torch.Tensor,
    sigma_data: float,
    lambda_clf: float = 1.0,
    dsm_weight: float = 1.0,
    generator: torch.Generator | None = None,
    score0: torch.Tensor | None = None,
    tsm_scale: float | None = None,
    tsm_weight: float = 0.0,
    eps: torch.Tensor | None = None,
) -> LossOutput:
    """DSM + lambda_clf * multi-level DiffCLF; the k diagonal energies are reused for DSM.

    ``x0: (B, d)``, ``levels: (B, k)`` distinct per row; ``eps``: the noise ``(B, k, d)`` (default: drawn from
    ``generator``). Costs ``B k`` DSM terms (energy + gradient with ``create_graph``) and ``B k (k - 1)`` plain
    energy evaluations for the off-diagonal logits.
    """
    B, k = levels.shape
    d = x0.shape[-1]
    eps = (torch.randn((B, k, d), generator=generator) if eps is None else eps).to(x0)
    a = model.grid.alpha.to(x0)[levels][..., None]
    s = model.grid.sigma.to(x0)[levels][..., None]
    x = a * x0[:, None, :] + s * eps  # (B, k, d)
    xd = x.reshape(-1, d).requires_grad_(True)
    lv = levels.reshape(-1)
    e_diag = model.energy(xd, lv)  # (B k,)
    g0 = None if score0 is None else score0.repeat_interleave(k, 0)
    x0k = x0.repeat_interleave(k, 0)
    dsm = _dsm_terms(model, x0k, xd, lv, e_diag, sigma_data, g0, tsm_scale, tsm_weight).mean()
    if k > 1:
        # off-diagonal pairs (a != b) without input gradients
        ia, ib = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        off = ia != ib
        a_idx, b_idx = ia[off], ib[off]  # sample a, candidate b
        xo = x.detach()[:, a_idx, :].reshape(-1, d)
        lo = levels[:, b_idx].reshape(-1)
        e_off = model.energy(xo, lo).reshape(B, -1)
        E = torch.zeros(B, k, k, dtype=e_diag.dtype, device=x0.device)  # E[n, b, a]
        E = E.index_put((torch.arange(B)[:, None], b_idx[None, :].expand(B, -1), a_idx[None, :].expand(B, -1)), e_off)
        E = E + torch.diag_embed(e_diag.reshape(B, k))
        logits = -E - model.log_norm().to(E)[levels][:, :, None]
        clf = clf_from_logits(logits)
    else:
        clf = torch.zeros((), device=x0.device)
    total = dsm_weight * dsm + lambda_clf * clf
    return LossOutput(total=total, dsm=dsm.detach(), clf=clf.detach(), n_dsm_terms=B * k, n_energy_evals=B * k * k)


def diffclf_binary_loss(
    model: LevelEnergy, xs: torch.Tensor, xt: torch.Tensor, ls: torch.Tensor, lt: torch.Tensor
) -> torch.Tensor:
    """Binary DiffCLF between levels ``ls`` and ``lt`` (``(B,)`` each) on noised samples ``xs``, ``xt``.

    ``l_b(x) = -E(x, t_b) - f_b``; ``L = 1/2 softplus(l_t(x_s) - l_s(x_s)) + 1/2 softplus(l_s(x_t) - l_t(x_t))``.
    """
    f = model.log_norm()

    def logit(x, lv):
        return -model.energy(x, lv) - f.to(x)[lv]

    sp = torch.nn.functional.softplus
    return (0.5 * sp(logit(xs, lt) - logit(xs, ls)) + 0.5 * sp(logit(xt, ls) - logit(xt, lt))).mean()


def dsm_only_loss(
    model: LevelEnergy,
    x0: torch.Tensor,
    levels: torch.Tensor,
    sigma_data: float,
    generator: torch.Generator | None = None,
    score0: torch.Tensor | None = None,
    tsm_scale: float | None = None,
    tsm_weight: float = 0.0,
    eps: torch.Tensor | None = None,
) -> LossOutput:
    """The DSM-only baseline at an equal number of DSM terms: ``x0`` repeated k times, levels ``(B, k)``;
    ``eps``: the noise ``(B, k, d)`` (default: drawn from ``generator``, the same draws as DiffCLF's)."""
    B, k = levels.shape
    g0 = None if score0 is None else score0.repeat_interleave(k, 0)
    dsm = dsm_loss(
        model,
        x0.repeat_interleave(k, 0),
        levels.reshape(-1),
        sigma_data,
        generator,
        score0=g0,
        tsm_scale=tsm_scale,
        tsm_weight=tsm_weight,
        eps=None if eps is None else eps.reshape(B * k, -1),
    )
    return LossOutput(total=dsm, dsm=dsm.detach(), clf=None, n_dsm_terms=B * k, n_energy_evals=B * k)


def with_energy_matching(loss_fn, weight: float):
    """``loss_fn`` plus ``weight`` times the energy-matching term: the variance over the batch of
    ``E(x0, t_0) - u0`` at the clean configurations ``x0`` with their exact reduced energies ``u0`` (keyword
    ``u0``, ``(B,)``). Zero exactly when the lowest level's energy is the target's up to a constant, so it leaves
    the optimum of DSM and DiffCLF where it is; DSM's scores pin energy differences only within the basins the
    data connect, this pins them between basins too."""

    def fn(model, x0, levels, sigma_data, *args, u0=None, **kwargs):
        out = loss_fn(model, x0, levels, sigma_data, *args, **kwargs)
        if u0 is None or not weight:
            return out
        r = model.energy(x0, torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)) - u0.to(x0)
        term = ((r - r.mean()) ** 2).mean()
        return dataclasses.replace(out, total=out.total + weight * term, n_energy_evals=out.n_energy_evals + len(x0))

    return fn
