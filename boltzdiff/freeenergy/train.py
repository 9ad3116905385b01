"""Training an :class:`~boltzdiff.freeenergy.model.InterpolantEnergy`: DiffCLF over the interpolant's levels plus
the denoising term, then a refit of the log-normalisers with the energies frozen.

Loss per minibatch of ``B`` pairs ``(x0, x1)`` coupled by :func:`~boltzdiff.freeenergy.interpolant.couple`, each
drawn at ``k`` distinct levels ``t_a`` (``x_a = (1 - t_a) x0 + t_a x1 + gamma(t_a) z_a``):

- classification: logits ``l[b, a] = -E(x_a, t_b) - f_b``, loss ``-(1/k) sum_a log softmax_b l[b, a]``;
- denoising (interior levels, ``gamma > 0``): ``|gamma(t) s(x_t, t) + z|^2 / d`` with ``s = -grad_x E``, whose
  minimiser is the score of the interpolant's marginal.

``loss='dsm'`` drops the classification: the normalisers are then not learned (``f`` stays 0), which is what
DSM alone can say about ``F_B - F_A``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from boltzdiff.errors import ConfigError
from boltzdiff.freeenergy.interpolant import couple
from boltzdiff.freeenergy.model import InterpolantEnergy


@dataclass
class InterpolantTrainConfig:
    """Settings of the interpolant's training.

    Attributes
    ----------
    steps, batch_size, k : int
        Optimiser steps, pairs per step, distinct levels per pair (``k >= 2``).
    lr : float
        Adam learning rate of the network; the normalisers use ``lr_f``.
    lambda_clf, dsm_weight : float
    loss : {"diffclf", "dsm"}
    ot : bool
        Couple pairs by minibatch optimal transport (else independently).
    refit_samples : int
        Interpolant draws per level for the final refit of ``f`` with the energies frozen (0: keep the
        trained ``f``).
    init_samples : int
        Draws per level for the same fit before training, which sets the starting ``f`` (0: start at 0).
    seed : int
    """

    steps: int = 2000
    batch_size: int = 128
    k: int = 4
    lr: float = 1e-3
    lr_f: float = 1e-2
    lambda_clf: float = 1.0
    dsm_weight: float = 1.0
    loss: str = "diffclf"
    ot: bool = True
    refit_samples: int = 256
    init_samples: int = 64
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "k", "refit_samples", "init_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name.endswith("_samples") else 1):
                raise ConfigError(f"{name}: expected a positive integer, got {v!r}")
        if self.k < 2:
            raise ConfigError(f"k: expected at least 2 levels per pair, got {self.k}")
        if self.loss not in ("diffclf", "dsm"):
            raise ConfigError(f"loss: expected 'diffclf' or 'dsm', got {self.loss!r}")
        for name in ("lr", "lr_f"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name}: expected a positive number, got {v!r}")


def _levels(B: int, k: int, n_levels: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, k)`` distinct level indices per row, uniform over the grid."""
    k = min(k, n_levels)
    return torch.argsort(torch.rand(B, n_levels, generator=gen), dim=1)[:, :k]


def interpolant_loss(model: InterpolantEnergy, x0, x1, levels, cfg: InterpolantTrainConfig, gen) -> dict:
    """The loss of one minibatch (see the module docstring); returns ``{total, clf, dsm}`` (tensors)."""
    B, k = levels.shape
    d = x0.shape[1]
    path = model.path
    z = torch.randn(B, k, d, generator=gen, dtype=torch.float64).to(x0)
    lv = levels.reshape(-1)
    x = path.draw(x0.repeat_interleave(k, 0), x1.repeat_interleave(k, 0), lv, z.reshape(-1, d))
    ua, ga, ub, gb = model.end_energies(x, grad=True)
    # a pair whose interpolated configuration has no finite end energy (atoms on top of each other: OpenMM
    # returns +inf) is left out of both terms; ``n_dropped`` counts them
    ok = torch.isfinite(ua) & torch.isfinite(ub) & torch.isfinite(ga).all(-1) & torch.isfinite(gb).all(-1)
    ok_pair = ok.reshape(B, k).all(1)
    ua, ub = torch.where(ok, ua, 0.0), torch.where(ok, ub, 0.0)
    ga, gb = torch.where(ok[:, None], ga, 0.0), torch.where(ok[:, None], gb, 0.0)
    t = model.t[lv]
    inner = (t > 0) & (t < 1) & ok_pair.repeat_interleave(k)
    xr = x.detach().requires_grad_(True)
    g = model.correction(xr, lv)
    out = {"dsm": torch.zeros((), dtype=torch.float64), "clf": torch.zeros((), dtype=torch.float64)}
    if cfg.dsm_weight > 0 and bool(inner.any()):
        (gg,) = torch.autograd.grad(g.sum(), xr, create_graph=True)
        tt = t[:, None]
        score = -((1 - tt) * ga + tt * gb + tt * (1 - tt) * gg.double())
        res = path.gamma(tt) * score + z.reshape(-1, d)
        out["dsm"] = (res[inner] ** 2).sum(-1).mean() / d if bool(inner.any()) else res.sum() * 0.0
    if cfg.loss == "diffclf":
        # E[n, b, a]: sample a (its own level) under candidate level b; the end energies are linear in t, so one
        # evaluation per sample serves every candidate level
        ia, ib = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        a_idx, b_idx = ia.reshape(-1), ib.reshape(-1)
        rows = (torch.arange(B)[:, None] * k + a_idx[None, :]).reshape(-1)
        cand = levels[:, b_idx].reshape(-1)
        same = (a_idx == b_idx).repeat(B)
        g_all = torch.where(same, g.double()[rows], 0.0)
        if bool((~same).any()):
            g_off = model.correction(x.detach()[rows[~same]], cand[~same]).double()
            g_all = g_all.masked_scatter(~same, g_off)
        e = model.combine(ua[rows], ub[rows], g_all, cand).reshape(B, k, k)  # [n, a, b]
        logits = -e - model.f[cand].reshape(B, k, k)
        per_pair = -(torch.diagonal(logits, dim1=1, dim2=2) - torch.logsumexp(logits, dim=2)).mean(1)
        out["clf"] = per_pair[ok_pair].mean() if bool(ok_pair.any()) else per_pair.sum() * 0.0
    out["n_dropped"] = int((~ok_pair).sum())
    out["total"] = cfg.dsm_weight * out["dsm"] + (cfg.lambda_clf * out["clf"] if cfg.loss == "diffclf" else 0.0)
    return out


def draw_pairs(model, xa: torch.Tensor, xb: torch.Tensor, B: int, cfg: InterpolantTrainConfig, gen, ref):
    ia = torch.randint(0, xa.shape[0], (B,), generator=gen)
    ib = torch.randint(0, xb.shape[0], (B,), generator=gen)
    return couple(xa[ia], xb[ib], model.event_shape, ref, ot=cfg.ot)


def train_interpolant(
    model: InterpolantEnergy,
    xa: torch.Tensor,
    xb: torch.Tensor,
    cfg: InterpolantTrainConfig,
    checkpoint: str | None = None,
    progress: bool = False,
    checkpoint_every: int = 200,
) -> dict:
    """Train ``model`` on samples ``xa`` of state A and ``xb`` of B (float64 ``(N, d)``); resumes from
    ``checkpoint`` (a ``.pt`` path) when it exists and writes it atomically every ``checkpoint_every`` steps.
    Returns a summary with the loss trace, the trained ``f`` and ``delta_f_trained_kT``."""
    from pathlib import Path

    from boltzdiff.io import atomic_save, torch_load
    from boltzdiff.progress import progress as progress_bar

    gen = torch.Generator().manual_seed(int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
    ref = xa[0] if len(model.event_shape) == 2 else None
    opt = torch.optim.Adam([{"params": model.net.parameters(), "lr": cfg.lr}, {"params": [model.f], "lr": cfg.lr_f}])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, cfg.steps) / cfg.steps)) * 0.95 + 0.05
    )
    start, trace, n_skipped = 0, [], 0
    if not (checkpoint and Path(checkpoint).exists()) and cfg.loss == "diffclf" and cfg.init_samples > 0:
        # start f at the normaliser equations' answer for the untrained energies (g = 0: the linear path),
        # so that the classification only has to correct it; an Adam step moves f by ~lr_f, too little to
        # cover a difference of tens of kT in the steps a run has
        with torch.no_grad():
            refit_log_norm(model, xa, xb, cfg, cfg.init_samples, salt=104729)
    if checkpoint and Path(checkpoint).exists():
        ck = torch_load(checkpoint, "the interpolant's training checkpoint")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        start, trace, model.n_target_evals = ck["step"], ck["trace"], ck["n_target_evals"]
    t0 = time.time()
    bar = progress_bar(total=cfg.steps, initial=start, desc="train interpolant", enabled=progress)
    for step in range(start, cfg.steps):
        x0, x1 = draw_pairs(model, xa, xb, cfg.batch_size, cfg, gen, ref)
        levels = _levels(cfg.batch_size, cfg.k, model.path.n_levels, gen)
        out = interpolant_loss(model, x0, x1, levels, cfg, gen)
        opt.zero_grad()
        if torch.isfinite(out["total"]):
            out["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.net.parameters(), 1.0)
            opt.step()
        else:  # a non-finite loss (overflowing denoising targets) leaves the parameters as they were
            n_skipped += 1
        sched.step()
        model.apply_gauge()
        if step % 20 == 0 or step == cfg.steps - 1:
            trace.append(
                dict(
                    step=step,
                    clf=float(out["clf"].detach()),
                    dsm=float(out["dsm"].detach()),
                    delta_f=model.delta_f(),
                    n_dropped=out["n_dropped"],
                )
            )
        bar.update(1)
        if checkpoint and ((step + 1) % checkpoint_every == 0 or step + 1 == cfg.steps):
            state = dict(model=model.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(), gen=gen.get_state())
            state["step"] = step + 1
            state = dict(state, trace=trace, n_target_evals=model.n_target_evals)
            atomic_save(checkpoint, lambda p, s=state: torch.save(s, p))
    bar.close()
    return dict(
        config=asdict(cfg),
        trace=trace,
        f_trained=model.f.detach().tolist(),
        delta_f_trained_kT=model.delta_f(),
        n_skipped_steps=n_skipped,
        wall_s=time.time() - t0,
    )


@torch.no_grad()
def refit_log_norm(
    model: InterpolantEnergy, xa, xb, cfg: InterpolantTrainConfig, n_per_level: int | None = None, salt: int = 7919
):
    """Refit ``f`` with the energies frozen: ``n_per_level`` fresh interpolant draws at every level, each
    scored at every level, and ``f`` maximising the all-level classification likelihood (convex in ``f``;
    reverse logistic regression, the same equations as MBAR when the energies are exact). Sets ``model.f`` and
    returns the energy matrix ``(N, K + 1)`` and the level of each draw."""
    n = int(n_per_level or cfg.refit_samples)
    gen = torch.Generator().manual_seed(int(cfg.seed) + salt)
    ref = xa[0] if len(model.event_shape) == 2 else None
    K1 = model.path.n_levels
    E, own = [], []
    for lvl in range(K1):
        x0, x1 = draw_pairs(model, xa, xb, n, cfg, gen, ref)
        z = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(x0)
        lv = torch.full((n,), lvl, dtype=torch.long)
        x = model.path.draw(x0, x1, lv, z)
        ua, ub = model.end_energies(x)
        cols = [
            model.combine(ua, ub, model.correction(x, torch.full((n,), j)).double(), torch.full((n,), j))
            for j in range(K1)
        ]
        E.append(torch.stack(cols, 1))
        own.append(lv)
    E, own = torch.cat(E), torch.cat(own)
    keep = torch.isfinite(E).all(1)
    E, own = E[keep], own[keep]
    f = solve_log_norm(E, own)
    model.f.copy_(f)
    model.apply_gauge()
    return E, own


def solve_log_norm(E: torch.Tensor, own: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """The ``f`` (gauge ``f_0 = 0``) maximising ``sum_n log softmax_b(-E[n, b] - f_b)[own_n]`` for equal counts
    per level: the self-consistent equations ``f_b = log sum_n exp(-E[n, b]) / sum_j N_j exp(-E[n, j] - f_j)``
    (MBAR's), iterated to convergence."""
    K1 = E.shape[1]
    counts = torch.bincount(own, minlength=K1).double()
    f = torch.zeros(K1, dtype=torch.float64)
    logN = torch.log(counts.clamp_min(1))
    for _ in range(iters):
        denom = torch.logsumexp(-E - f[None, :] + logN[None, :], dim=1)  # (N,)
        f_new = torch.logsumexp(-E - denom[:, None], dim=0)
        f_new = f_new - f_new[0]
        if float((f_new - f).abs().max()) < 1e-10:
            f = f_new
            break
        f = f_new
    return f
