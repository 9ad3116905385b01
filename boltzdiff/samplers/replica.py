"""Replica exchange (parallel tempering) over the diffusion levels of a level energy (docs/method.md#replica-exchange).

The ladder has one rung per chosen level ``E(., t_i) + f_i`` and, with ``target``, one more, colder rung at the
exact reduced energy ``u``. Rungs are numbered coldest first: rung 0 is the target (or level 0), the last rung
the noisiest level. Every rung holds ``n_chains`` walkers; walker ``c`` of every rung belongs to chain ``c``,
and swaps only exchange configurations between rungs of the same chain, so the chains are independent copies
of the whole ladder (their spread gives honest standard errors).

Each round makes ``mcmc.n_steps`` MALA steps at every rung (all rungs and chains in one batch), then, every
``swap_every`` rounds, proposes to exchange the configurations of neighbouring rungs, the pairs (0, 1), (2, 3),
... and (1, 2), (3, 4), ... in turn. A swap of ``x_i`` (rung i) and ``x_j`` (rung j) is accepted with

    min(1, exp(E_i(x_i) + E_j(x_j) - E_i(x_j) - E_j(x_i))),

which leaves the product of the rungs' densities invariant. The cross energies it needs also give, for free,
the work values of Bennett's acceptance ratio (BAR) between neighbouring rungs: ``log Z_{k+1} - log Z_k`` with
``Z_k = int exp(-E_k)`` (the model's raw energies, without ``f``).

Walkers start from the noisiest level's Gaussian (:func:`~boltzdiff.samplers.sde.initial_particles`) and are
run down the ladder once (``descent_steps`` MALA steps per rung, each rung starting from the rung above). MALA
step sizes, relative to each level's variance, are adapted per rung toward ``mcmc.target_accept`` during the
descent and the ``burn_in`` rounds, then frozen; samples and statistics are taken after the burn-in only.

To compare with SMC at equal cost, :func:`replica_cost` gives the evaluation counts of a run before it is made
and :func:`rounds_for_budget` the number of rounds that fits a budget of model evaluations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from boltzdiff.errors import ConfigError
from boltzdiff.samplers.bennett import bar_groups
from boltzdiff.samplers.mcmc import DensityEval, EvalCounter, MCMCConfig, _accept, _valid, target_energy_and_grad
from boltzdiff.samplers.sde import _progress, initial_particles, level_variances, model_device, model_dtype


# -- the ladder ----------------------------------------------------------------------------------------------
class _Ladder:
    """Rung bookkeeping and the batched evaluation of ``E_rung(x) + f_rung`` with its score."""

    def __init__(self, model, levels: list[int], target, counter: EvalCounter):
        self.model, self.target, self.counter = model, target, counter
        t = int(target is not None)
        self.n_rungs = len(levels) + t
        self.level = torch.tensor(([0] if t else []) + list(levels), dtype=torch.long)  # level of each rung
        self.is_target = torch.zeros(self.n_rungs, dtype=torch.bool)
        self.is_target[0] = bool(t)
        f = model.log_norm().detach().to(torch.float64).cpu()
        self.f = f[self.level].masked_fill(self.is_target, 0.0)  # f of each rung (0 at the target)
        var = level_variances(model).cpu()
        self.scale = var[self.level]  # MALA step scale of each rung (the target uses level 0's)
        self.n_models = int(getattr(model, "n_models", 1))

    def evaluate(self, x: torch.Tensor, rung: torch.Tensor) -> DensityEval:
        """``log_prob = -(E + f)`` float64 ``(B,)`` and score ``(B, d)`` of rows ``x`` at rungs ``rung (B,)``."""
        ef = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        score = torch.empty_like(x)
        tgt = self.is_target[rung].to(x.device)
        mod = ~tgt
        if mod.any():
            lv = self.level[rung].to(x.device)[mod]
            e, s = self.model.energy_and_score(x[mod], lv)
            ef[mod] = e.to(torch.float64) + self.f.to(x.device)[rung.to(x.device)][mod]
            score[mod] = s.to(x.dtype)
            self.counter.model += int(mod.sum()) * self.n_models
        if tgt.any():
            u, gu = target_energy_and_grad(self.target, x[tgt], self.counter)
            ef[tgt], score[tgt] = u, -gu
        return DensityEval(-ef, score)


def _mala_rows(ladder: _Ladder, x, rung, state: DensityEval, h: torch.Tensor, generator):
    """One MALA step with a step size per row ``h (B,)`` float64; returns ``(x, state, accepted (B,))``."""
    hx = h.to(device=x.device, dtype=x.dtype)[:, None]
    xi = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    y = x + hx * state.grad + torch.sqrt(2 * hx) * xi
    new = ladder.evaluate(y, rung)
    h64 = h.to(x.device)
    fwd = -((y - x - hx * state.grad).double() ** 2).sum(-1) / (4 * h64)
    bwd = -((x - y - hx * new.grad).double() ** 2).sum(-1) / (4 * h64)
    acc = _accept(new.log_prob - state.log_prob + bwd - fwd, _valid(new), generator)
    return torch.where(acc[:, None], y, x), state.select(acc, new), acc


def swap_log_ratio(e_ii, e_jj, e_ij, e_ji) -> torch.Tensor:
    """Log acceptance ratio of exchanging ``x_i`` and ``x_j`` between rungs ``i`` and ``j``:
    ``E_i(x_i) + E_j(x_j) - E_i(x_j) - E_j(x_i)`` (``e_ij = E_i(x_j)``)."""
    return e_ii + e_jj - e_ij - e_ji


def swap_phase(lad: _Ladder, x: torch.Tensor, state: DensityEval, lo: torch.Tensor, n_chains: int, generator):
    """Propose to exchange the walkers of rungs ``lo`` and ``lo + 1`` (chain by chain), in place on ``x (R * C,
    d)`` and ``state`` (rung-major). Returns the accepted flags ``(P, C)`` and the energies ``(E_lo(x_lo),
    E_hi(x_hi), E_lo(x_hi), E_hi(x_lo))``, each ``(P, C)`` float64 with ``f``, of the proposal."""
    C, d = int(n_chains), x.shape[1]
    R = x.shape[0] // C
    X, S, G = x.view(R, C, d), state.log_prob.view(R, C), state.grad.view(R, C, d)
    hi, P = lo + 1, lo.numel()
    ce = lad.evaluate(torch.cat([X[hi], X[lo]]).reshape(-1, d), torch.cat([lo, hi]).repeat_interleave(C))
    e_lo_xhi, e_hi_xlo = (-ce.log_prob).view(2, P, C)
    g_lo_xhi, g_hi_xlo = ce.grad.view(2, P, C, d)
    e_lo, e_hi = -S[lo], -S[hi]
    ok = torch.isfinite(e_lo_xhi) & torch.isfinite(e_hi_xlo)
    ok &= torch.isfinite(g_lo_xhi).all(-1) & torch.isfinite(g_hi_xlo).all(-1)
    a = _accept(swap_log_ratio(e_lo, e_hi, e_lo_xhi, e_hi_xlo).reshape(-1), ok.reshape(-1), generator).view(P, C)
    am = a[..., None]
    X[lo], X[hi] = torch.where(am, X[hi], X[lo]), torch.where(am, X[lo], X[hi])
    S[lo], S[hi] = torch.where(a, -e_lo_xhi, S[lo]), torch.where(a, -e_hi_xlo, S[hi])
    G[lo], G[hi] = torch.where(am, g_lo_xhi, G[lo]), torch.where(am, g_hi_xlo, G[hi])
    return a, (e_lo, e_hi, e_lo_xhi, e_hi_xlo)


def replica_cost(
    n_level_rungs: int, n_chains: int, n_rounds: int, *, target: bool = False, n_steps: int = 1,
    descent_steps: int = 1, swap_every: int = 1,
) -> dict:
    """The number of model and target evaluations :func:`replica_exchange` makes, counted from its loop (each
    with its gradient; a composed model counts one per component, multiply ``model`` by its ``n_models``).

    Descent: ``1 + descent_steps`` per walker and rung. Rounds: ``n_steps`` per walker and rung. Swap phases
    (``n_rounds // swap_every``, even pairs first, then odd, in turn): two cross evaluations per walker and pair.
    """
    R, C, t = int(n_level_rungs) + int(bool(target)), int(n_chains), int(bool(target))
    n_phase = int(n_rounds) // int(swap_every)
    n_even, n_odd = (n_phase + 1) // 2, n_phase // 2
    walk = C * ((1 + int(descent_steps)) + int(n_rounds) * int(n_steps))
    model = walk * (R - t) + 2 * C * (n_even * (R // 2) + n_odd * ((R - 1) // 2)) - t * n_even * C
    return dict(model=int(model), target=int(t * (walk + n_even * C)))


def rounds_for_budget(n_level_rungs: int, n_chains: int, model_evals: int, **kw) -> int:
    """The largest ``n_rounds`` whose :func:`replica_cost` stays within ``model_evals`` model evaluations (0 if
    even one round does not fit), to compare with another sampler at equal cost."""
    lo, hi = 0, 1
    while replica_cost(n_level_rungs, n_chains, hi, **kw)["model"] <= model_evals:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if replica_cost(n_level_rungs, n_chains, mid, **kw)["model"] <= model_evals else (lo, mid)
    return lo


# -- result --------------------------------------------------------------------------------------------------
@dataclass
class ReplicaResult:
    """Output of :func:`replica_exchange`. Rungs are numbered coldest first (``rung_labels``).

    Attributes
    ----------
    x : (n_kept, n_chains, d) tensor
        The coldest rung's walkers after each round past the burn-in (the target's with ``target``, else level
        0's); :meth:`samples` flattens them.
    x_rungs : (n_kept, n_rungs, n_chains, d) tensor or None
        Every rung's walkers after each kept round (``keep_rungs=True`` only).
    x_last : (n_rungs, n_chains, d) tensor
        Every rung's walkers at the end.
    rung_labels, levels : list of str, list of int
        ``"target"`` or ``"level i"`` per rung; the grid levels of the level rungs, ascending.
    swap_acceptance : (n_rungs - 1,) float64
        Accepted fraction of the swaps proposed between rungs ``k`` and ``k + 1`` after the burn-in.
    mala_acceptance : (n_rungs,) float64
        MALA acceptance per rung after the burn-in (frozen step sizes).
    step_size : (n_rungs,) float64
        The frozen MALA step size ``h`` per rung (absolute).
    log_Z_diff, log_Z_diff_se : (n_rungs - 1,) float64
        BAR estimate of ``log Z_{k+1} - log Z_k`` (``Z = int exp(-E)`` with the raw model energy, ``exp(-u)`` at
        the target rung) and its standard error from the spread over independent groups of chains.
    log_Z_diff_se_iid : (n_rungs - 1,) float64
        BAR's asymptotic standard error, which treats every work value as independent (too small here).
    f_diff : (n_rungs - 1,) float64
        The model's own ``f_{k+1} - f_k`` (``f = 0`` at the target rung); ``log_Z_diff - f_diff`` is the error
        of the learned normaliser differences.
    log_Z_span, log_Z_span_se : float
        ``sum_k log_Z_diff[k]`` (log Z of the hottest rung minus that of the coldest) and its group-spread error.
    n_model_evals, n_target_evals : int
        Every evaluation of the model energy (with its gradient) and of the target, walker by walker.
    round_trips : int
        Passages coldest -> hottest -> coldest completed by the walkers after the burn-in (over all chains).
    """

    x: torch.Tensor
    x_rungs: torch.Tensor | None
    x_last: torch.Tensor
    rung_labels: list[str]
    levels: list[int]
    swap_acceptance: torch.Tensor
    mala_acceptance: torch.Tensor
    step_size: torch.Tensor
    log_Z_diff: torch.Tensor
    log_Z_diff_se: torch.Tensor
    log_Z_diff_se_iid: torch.Tensor
    f_diff: torch.Tensor
    log_Z_span: float
    log_Z_span_se: float
    n_model_evals: int
    n_target_evals: int
    round_trips: int
    n_rounds: int
    burn_in: int
    wall_s: float = 0.0

    def samples(self) -> torch.Tensor:
        """The coldest rung's kept samples as ``(n_kept * n_chains, d)``."""
        return self.x.reshape(-1, self.x.shape[-1])

    def mode_weights(self, gmm) -> tuple[np.ndarray, np.ndarray]:
        """Mode weights ``(K,)`` of the coldest rung's samples for a Gaussian mixture (soft assignment) and their
        standard errors from the spread of the per-chain averages (the chains are independent; each chain's
        autocorrelation is inside its average)."""
        n, c, d = self.x.shape
        r = gmm.responsibilities(self.x.reshape(-1, d).double().cpu()).reshape(n, c, -1).mean(0)  # (C, K)
        se = r.std(0) / math.sqrt(c) if c > 1 else torch.full((r.shape[1],), math.nan, dtype=torch.float64)
        return r.mean(0).numpy(), se.numpy()

    def summary(self) -> dict:
        """JSON-friendly figures."""
        return dict(
            n_rungs=len(self.rung_labels), n_chains=int(self.x.shape[1]), n_kept=int(self.x.shape[0]),
            n_rounds=int(self.n_rounds), burn_in=int(self.burn_in),
            n_model_evals=int(self.n_model_evals), n_target_evals=int(self.n_target_evals),
            swap_acceptance=[round(float(v), 4) for v in self.swap_acceptance],
            mala_acceptance=[round(float(v), 4) for v in self.mala_acceptance],
            log_Z_diff=[round(float(v), 5) for v in self.log_Z_diff],
            log_Z_diff_se=[round(float(v), 5) for v in self.log_Z_diff_se],
            log_Z_span=float(self.log_Z_span), log_Z_span_se=float(self.log_Z_span_se),
            round_trips=int(self.round_trips), wall_s=float(self.wall_s),
        )


# -- the sampler ---------------------------------------------------------------------------------------------
def _check_levels(n_grid: int, levels) -> list[int]:
    if levels is None:
        return list(range(n_grid))
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        m = int(levels)
        if m < 2 or m > n_grid:
            raise ConfigError(f"levels: expected an integer between 2 and the grid size {n_grid}, got {m}")
        return sorted(torch.linspace(0, n_grid - 1, m, dtype=torch.float64).round().long().unique().tolist())
    try:
        idx = [int(i) for i in levels]
    except (TypeError, ValueError):
        raise ConfigError(f"levels: expected None, an integer or a list of level indices, got {levels!r}") from None
    if any(i < 0 or i >= n_grid for i in idx):
        raise ConfigError(f"levels: expected indices in [0, {n_grid - 1}], got {idx}")
    if any(b <= a for a, b in zip(idx, idx[1:])):
        raise ConfigError(f"levels: expected strictly increasing indices, got {idx}")
    if not idx or idx[0] != 0 or idx[-1] != n_grid - 1:
        raise ConfigError(f"levels: a sub-grid must include level 0 and level {n_grid - 1}, got {idx}")
    return idx


def _positive_int(name: str, v, least: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < least:
        raise ConfigError(f"{name}: expected an integer >= {least}, got {v!r}")
    return int(v)


def _bar_ladder(w_f: list, w_r: list, n_groups: int):
    """BAR per pair on all chains, its group-spread and asymptotic SEs, and the span ``sum_k`` with its SE."""
    P = len(w_f)
    est, se_iid, per_group = np.full(P, np.nan), np.full(P, np.nan), np.full((P, n_groups), np.nan)
    for k in range(P):
        if not w_f[k]:
            continue
        wf, wr = torch.cat(w_f[k]).numpy(), torch.cat(w_r[k]).numpy()  # (n_attempts, C)
        grp = np.zeros(wf.shape[1], np.int64)  # chain -> group of chains
        for g, cols in enumerate(np.array_split(np.arange(wf.shape[1]), n_groups)):
            grp[cols] = g
        gf, gr = np.broadcast_to(grp, wf.shape).ravel(), np.broadcast_to(grp, wr.shape).ravel()
        # problem n_groups: all chains together
        d, s = bar_groups(
            np.concatenate([wf.ravel(), wf.ravel()]), np.concatenate([gf, np.full(wf.size, n_groups)]),
            np.concatenate([wr.ravel(), wr.ravel()]), np.concatenate([gr, np.full(wr.size, n_groups)]), n_groups + 1,
        )
        est[k], se_iid[k], per_group[k] = -d[-1], s[-1], -d[:-1]  # log Z_{k+1} - log Z_k = -(F_{k+1} - F_k)
    if n_groups > 1:
        se = per_group.std(1, ddof=1) / math.sqrt(n_groups)
        span_se = float(per_group.sum(0).std(ddof=1) / math.sqrt(n_groups))
    else:
        se, span_se = se_iid.copy(), float(np.sqrt(np.sum(se_iid**2)))
    return est, se, se_iid, float(est.sum()), span_se


@torch.no_grad()
def replica_exchange(
    model,
    n_chains: int,
    n_rounds: int,
    *,
    levels=None,
    target=None,
    mcmc: MCMCConfig | None = None,
    swap_every: int = 1,
    burn_in: int | None = None,
    descent_steps: int = 1,
    keep_rungs: bool = False,
    n_groups: int = 16,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> ReplicaResult:
    """Replica exchange over the levels of ``model`` (and the exact ``target``), see the module docstring.

    Parameters
    ----------
    model : LevelEnergy
    n_chains, n_rounds : int
        Independent walkers per rung; rounds of MALA moves (and swaps) after the descent.
    levels : None, int or sequence of int
        The rungs' levels: every level (None), ``m`` levels evenly spaced in index, or strictly increasing
        indices that include 0 and the noisiest level.
    target : Target, optional
        Add a colder rung at the exact energy ``u`` next to level 0.
    mcmc : MCMCConfig, optional
        ``kind`` must be ``"mala"``: ``n_steps`` MALA steps per round (default 1), ``step_size`` the first step
        relative to the level's variance (carried from rung to rung down the descent), ``target_accept`` and
        ``adapt_rate`` the burn-in adaptation (``adapt=False`` keeps the step fixed).
    swap_every : int
        Propose swaps after every ``swap_every``-th round.
    burn_in : int, optional
        Rounds left out of every statistic, while the step sizes adapt; default ``n_rounds // 4``.
    descent_steps : int
        MALA steps per rung in the initial run down the ladder.
    keep_rungs : bool
        Also keep every rung's samples (``x_rungs``).
    n_groups : int
        Groups of chains whose spread gives the BAR standard errors (at most ``n_chains``).
    seed, generator, progress
        All randomness comes from ``generator`` (or a fresh one seeded with ``seed``, default 0).
    """
    t0 = time.perf_counter()
    C = _positive_int("n_chains", n_chains)
    n_rounds = _positive_int("n_rounds", n_rounds)
    swap_every = _positive_int("swap_every", swap_every)
    descent_steps = _positive_int("descent_steps", descent_steps, 0)
    n_groups = min(_positive_int("n_groups", n_groups), C)
    burn_in = n_rounds // 4 if burn_in is None else burn_in
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) or not 0 <= burn_in < n_rounds:
        raise ConfigError(f"burn_in: expected an integer in [0, n_rounds - 1 = {n_rounds - 1}], got {burn_in!r}")
    cfg = MCMCConfig("mala", n_steps=1) if mcmc is None else mcmc
    if cfg.kind != "mala" or int(cfg.n_steps) < 1:
        raise ConfigError(f"mcmc: expected kind 'mala' with n_steps >= 1, got {cfg.kind!r}, {cfg.n_steps}")
    if target is not None and int(getattr(target, "dim", model.dim)) != model.dim:
        raise ConfigError(f"target: dimension {target.dim} differs from the model's {model.dim}")
    if generator is not None and seed is not None:
        raise ConfigError("seed: give either seed or generator, not both")
    gen = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else int(seed))
    lv = _check_levels(model.grid.n, levels)

    counter = EvalCounter()
    lad = _Ladder(model, lv, target, counter)
    R, d, dev = lad.n_rungs, model.dim, model_device(model)
    rel = torch.full((R,), float(cfg.step_size), dtype=torch.float64)  # step sizes relative to the level scale
    rate, aim = float(cfg.adapt_rate), float(cfg.target_accept)

    def adapt(r, acc):  # acc: (B,) accepted flags of the rows of rungs r (B,) long
        if cfg.adapt:
            frac = torch.zeros(R, dtype=torch.float64).index_add_(0, r, acc.double().cpu())
            n = torch.bincount(r, minlength=R).double()
            seen = n > 0
            rel[seen] *= torch.exp(rate * (frac[seen] / n[seen] - aim))

    # -- descent: start at the noisiest rung, carry each rung's walkers to the next colder rung ---------------
    x0, _ = initial_particles(model, C, gen, dtype=model_dtype(model))
    xs, sts, x = [None] * R, [None] * R, x0
    for r in _progress(range(R - 1, -1, -1), progress, "replica descent"):
        rows = torch.full((C,), r, dtype=torch.long)
        st = lad.evaluate(x, rows)
        for _ in range(descent_steps):
            x, st, acc = _mala_rows(lad, x, rows, st, rel[rows] * lad.scale[rows], gen)
            adapt(rows, acc)
        xs[r], sts[r] = x, st
        if r > 0:
            rel[r - 1] = rel[r]
    x = torch.cat(xs)  # (R * C, d), rung-major
    state = DensityEval(torch.cat([s.log_prob for s in sts]), torch.cat([s.grad for s in sts]))
    rung = torch.arange(R).repeat_interleave(C)

    # -- rounds ---------------------------------------------------------------------------------------------
    kept, kept_rungs, mala_acc, n_mala = [], [], torch.zeros(R, dtype=torch.float64), 0
    swap_acc, swap_n = torch.zeros(R - 1, dtype=torch.float64), torch.zeros(R - 1, dtype=torch.float64)
    w_f, w_r = [[] for _ in range(R - 1)], [[] for _ in range(R - 1)]
    label = torch.arange(R)[:, None].repeat(1, C)  # which walker sits at (rung, chain)
    seen_hot = torch.zeros(R, C, dtype=torch.bool)  # walker has reached the hottest rung since the coldest
    trips, phase = 0, 0
    f_dev = lad.f.to(dev)
    for k in _progress(range(n_rounds), progress, "replica rounds"):
        post = k >= burn_in
        for _ in range(int(cfg.n_steps)):
            x, state, acc = _mala_rows(lad, x, rung, state, rel[rung] * lad.scale[rung], gen)
            if post:
                mala_acc += torch.zeros(R, dtype=torch.float64).index_add_(0, rung, acc.double().cpu()) / C
                n_mala += 1
            else:
                adapt(rung, acc)
        if (k + 1) % swap_every == 0 and R > 1:
            lo = torch.arange(phase % 2, R - 1, 2)
            phase += 1
            if not lo.numel():
                continue
            a, (e_lo, e_hi, e_lo_xhi, e_hi_xlo) = swap_phase(lad, x, state, lo, C, gen)
            hi, ac = lo + 1, a.cpu()
            label[lo], label[hi] = torch.where(ac, label[hi], label[lo]), torch.where(ac, label[lo], label[hi])
            if post:
                swap_acc[lo] += a.double().mean(1).cpu()
                swap_n[lo] += 1
                f_lo, f_hi = f_dev[lo][:, None], f_dev[hi][:, None]
                w_f_k = ((e_hi_xlo - f_hi) - (e_lo - f_lo)).cpu()  # u_hi(x) - u_lo(x), x at rung lo (raw energies)
                w_r_k = ((e_lo_xhi - f_lo) - (e_hi - f_hi)).cpu()
                for j, p in enumerate(lo.tolist()):
                    w_f[p].append(w_f_k[j : j + 1])
                    w_r[p].append(w_r_k[j : j + 1])
                cols = torch.arange(C)
                seen_hot[label[R - 1], cols] = True
                trips += int(seen_hot[label[0], cols].sum())
                seen_hot[label[0], cols] = False
        if post:
            X = x.view(R, C, d)
            kept.append(X[0].detach().cpu().clone())
            if keep_rungs:
                kept_rungs.append(X.detach().cpu().clone())

    est, se, se_iid, span, span_se = _bar_ladder(w_f, w_r, n_groups)
    labels = ["target" if bool(lad.is_target[r]) else f"level {int(lad.level[r])}" for r in range(R)]
    return ReplicaResult(
        x=torch.stack(kept),
        x_rungs=torch.stack(kept_rungs) if keep_rungs else None,
        x_last=x.view(R, C, d).detach().cpu().clone(),
        rung_labels=labels,
        levels=lv,
        swap_acceptance=swap_acc / swap_n.clamp(min=1) + torch.where(swap_n > 0, 0.0, math.nan),
        mala_acceptance=mala_acc / max(n_mala, 1),
        step_size=rel * lad.scale,
        log_Z_diff=torch.as_tensor(est),
        log_Z_diff_se=torch.as_tensor(se),
        log_Z_diff_se_iid=torch.as_tensor(se_iid),
        f_diff=lad.f[1:] - lad.f[:-1],
        log_Z_span=span,
        log_Z_span_se=span_se,
        n_model_evals=counter.model,
        n_target_evals=counter.target,
        round_trips=trips,
        n_rounds=n_rounds,
        burn_in=int(burn_in),
        wall_s=time.perf_counter() - t0,
    )
