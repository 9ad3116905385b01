"""Energy quality against exact answers (docs/method.md#diffclf), for targets with exact noised marginals.

- Multi-level classification loss over all N levels on Markov noising chains: each chain starts from an exact
  sample at level 0 and moves up with the closed-form transitions; the element at level i is classified among
  all N levels with logits ``log q(x, t_b) = -E(x, t_b) - f_b``. Reported raw, for the exact log p_t (the Bayes
  floor), and as the excess (model minus exact), both with the model's learned f and with the best f fitted
  afterwards on separate chains (the fair score for DSM-only models, which learn no f). The fit uses
  ``n_chains_fit`` chains (default 16x the scored ones): f fitted on as few chains as are scored carries its own
  sampling error into the score, ~±0.003 nats for 256 chains of 64 levels even for the exact energy, as large
  as the excesses being compared.
- Per level: std of ``log q - log p_t`` and the normalised ESS of ``exp(log q - log p_t)`` on exact samples.
- Mode weights at every level (the lowest one reported as ``mode_weights``): self-normalised importance weights
  ``exp(log q - log p_t)`` on exact samples, summed per component label; ``mode_weight_error_per_level`` is the
  max abs error against the exact weights at each level.
- Mode offsets at every level: the mean of ``log q - log p_t`` over each component's exact samples, minus
  their weight-averaged mean (``mode_offsets_per_level``, kT; its max minus min is
  ``mode_offset_range_per_level``). A component's offset is the log-factor by which the model over-weights it,
  up to its within-component spread; unlike the mode weights it does not saturate when one mode takes all the
  mass, and it shows whether offsets are constant over the cleanest levels (where the classification between
  levels cannot see them) or grow across the levels where the modes separate.
- The DiffCLF paper's units (docs/method.md#paper-metrics): its excess classification loss is a total over the
  levels of a noising path, not a mean over its elements. ``clf_excess`` is the mean over the ``n_levels *
  n_chains`` chain elements, so ``clf_excess_paper = n_levels * clf_excess`` (exactly, on the same chains) is the
  excess summed over the ``n_levels`` levels of a chain, averaged over the chains; likewise
  ``clf_excess_paper_fitted_f = n_levels * clf_excess_fitted_f`` and ``clf_excess_paper_se = n_levels *
  clf_excess_se``. The sample-based MMD is in :mod:`boltzdiff.evaluate_paper`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from boltzdiff.models.base import LevelEnergy
from boltzdiff.noise import LevelGrid
from boltzdiff.samplers.resampling import kish_ess
from boltzdiff.targets.gmm import GaussianMixture


def noising_chains(gmm: GaussianMixture, grid: LevelGrid, n_chains: int, generator: torch.Generator) -> torch.Tensor:
    """Markov noising chains ``(N, n_chains, d)`` float64: level 0 exact, then forward transitions."""
    x, _ = gmm.sample_with_labels(n_chains, generator, grid.alpha[0], grid.sigma[0])
    out = [x]
    for i in range(grid.n - 1):
        x = grid.forward_step(x, i, i + 1, generator=generator)
        out.append(x)
    return torch.stack(out)


@torch.no_grad()
def level_energy_matrix(model: LevelEnergy, chains: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """``-E(x_i, t_b)`` for every chain element at level i and candidate level b: ``(N_i, C, N_b)`` float64."""
    N, C, d = chains.shape
    nb = model.grid.n
    dtype = (
        next((p.dtype for p in model.parameters()), torch.get_default_dtype())
        if list(model.parameters())
        else torch.get_default_dtype()
    )
    flat = chains.reshape(N * C, d)
    out = torch.empty(N * C, nb, dtype=torch.float64)
    rows_per = max(1, chunk // nb)
    for s in range(0, N * C, rows_per):
        xs = flat[s : s + rows_per]
        xr = xs.repeat_interleave(nb, 0).to(dtype)
        lv = torch.arange(nb).repeat(xs.shape[0])
        out[s : s + rows_per] = -model.energy(xr, lv).double().reshape(-1, nb)
    return out.reshape(N, C, nb)


def clf_loss_from_matrix(neg_e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Mean CE of classifying each element to its own level; ``neg_e: (N_i, C, N_b)``, ``f: (N_b,)``."""
    logits = neg_e - f[None, None, :]
    N = neg_e.shape[0]
    own = logits[torch.arange(N), :, torch.arange(N)]  # (N, C)
    return -(own - torch.logsumexp(logits, dim=-1)).mean()


def per_chain_se(ne_model: torch.Tensor, f: torch.Tensor, ne_exact: torch.Tensor) -> float:
    """Standard error of the paired excess classification loss over chains (chains are independent)."""
    N, C, _ = ne_model.shape

    def per_chain(ne, f_):
        logits = ne - f_[None, None, :]
        own = logits[torch.arange(N), :, torch.arange(N)]
        return -(own - torch.logsumexp(logits, -1)).mean(0)  # (C,)

    d = per_chain(ne_model, f) - per_chain(ne_exact, torch.zeros_like(f))
    return float(d.std() / C**0.5)


def fit_log_norm(neg_e: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """The f minimising the classification loss given energies (convex in f), gauge f[-1] = 0."""
    f = torch.zeros(neg_e.shape[-1], dtype=torch.float64, requires_grad=True)
    # a good start: per-level log-mean-exp of -E on its own samples (exact when classes are separable)
    with torch.no_grad():
        N = neg_e.shape[0]
        own = neg_e[torch.arange(N), :, torch.arange(N)]
        f0 = own.mean(-1)
        f.copy_(f0 - f0[-1])
    opt = torch.optim.LBFGS([f], lr=1, max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-10)

    def closure():
        opt.zero_grad()
        loss = clf_loss_from_matrix(neg_e, f)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (f - f[-1]).detach()


@dataclass
class MixtureEval:
    clf_raw: float
    clf_exact: float
    clf_excess: float
    clf_excess_se: float
    clf_raw_fitted_f: float
    clf_excess_fitted_f: float
    clf_excess_per_level: list
    clf_excess_paper: float
    clf_excess_paper_se: float
    clf_excess_paper_fitted_f: float
    log_ratio_std: list
    ess_per_level: list
    mode_weights: list
    true_mode_weights: list
    mode_weights_se: list
    mode_weight_error: float
    mode_weights_per_level: list
    mode_weight_error_per_level: list
    mode_offsets_per_level: list
    mode_offset_range_per_level: list
    n_levels: int
    n_chains: int
    n_samples: int
    n_chains_fit: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def labelled_mode_weights(log_w: torch.Tensor, labels: torch.Tensor, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Self-normalised weights summed per known component label ``(K,)``, and their delta-method standard errors.

    For samples whose generating component is known (``labels``); samples with unknown components are split
    by responsibility in :func:`boltzdiff.samplers.diagnostics.weighted_mode_weights`.
    """
    w = torch.softmax(log_w.double(), 0)
    est = torch.zeros(K, dtype=torch.float64).index_add_(0, labels, w)
    n = len(w)
    onehot = torch.nn.functional.one_hot(labels, K).double()
    # SE of a self-normalised IS ratio: sqrt(sum w_i^2 (1[k_i=k] - est_k)^2)
    se = torch.sqrt(((w[:, None] ** 2) * (onehot - est[None, :]) ** 2).sum(0))
    del n
    return est.numpy(), se.numpy()


def mode_offsets(lr: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor, weights: np.ndarray) -> list:
    """Per component, the mean log-ratio ``lr`` over its finite samples minus the weight-average of those means
    (kT; NaN for a component without samples)."""
    m = np.array(
        [float(lr[(labels == k) & ok].mean()) if ((labels == k) & ok).any() else np.nan for k in range(len(weights))]
    )
    have = np.isfinite(m)
    return (m - np.sum(weights[have] * m[have]) / np.sum(weights[have])).tolist()


def evaluate_mixture(
    model: LevelEnergy,
    gmm: GaussianMixture,
    n_chains: int = 32,
    n_samples: int = 2000,
    n_samples_lowest: int = 20000,
    seed: int = 0,
    progress: bool = False,
    n_chains_fit: int | None = None,
) -> MixtureEval:
    """Compare a model's level energies with the exact noised mixture (see the module docstring).
    ``n_chains_fit``: chains the post-hoc f is fitted on (default ``16 * n_chains``)."""
    from boltzdiff.models.exact import ExactMixtureEnergy

    grid = model.grid
    gen = torch.Generator().manual_seed(seed)
    exact = ExactMixtureEnergy(gmm, grid)
    n_fit = 16 * n_chains if n_chains_fit is None else int(n_chains_fit)
    if n_fit < 2:
        raise ValueError(f"n_chains_fit: expected at least 2 chains, got {n_chains_fit}")
    # classification over all levels: f fitted on chains of its own, scored on the others
    chains_eval = noising_chains(gmm, grid, n_chains, gen)
    chains_fit = noising_chains(gmm, grid, n_fit, gen)
    ne_model = level_energy_matrix(model, chains_eval)
    ne_exact = level_energy_matrix(exact, chains_eval)
    f_model = model.log_norm().detach().double().cpu()
    raw = float(clf_loss_from_matrix(ne_model, f_model))
    floor = float(clf_loss_from_matrix(ne_exact, torch.zeros(grid.n, dtype=torch.float64)))
    f_fit = fit_log_norm(level_energy_matrix(model, chains_fit))
    raw_fit = float(clf_loss_from_matrix(ne_model, f_fit))

    def per_level(ne, f):
        logits = ne - f[None, None, :]
        N = ne.shape[0]
        own = logits[torch.arange(N), :, torch.arange(N)]
        return -(own - torch.logsumexp(logits, -1)).mean(-1)

    excess_levels = per_level(ne_model, f_model) - per_level(ne_exact, torch.zeros(grid.n, dtype=torch.float64))
    excess_se = per_chain_se(ne_model, f_model, ne_exact)

    # per-level log-ratio spread, ESS and mode weights on exact samples of p_t
    K = gmm.n_components
    stds, esss, mw_levels, offsets = [], [], [], []
    true_w = gmm.weights.numpy()
    mw0 = se0 = None
    dtype = next(iter(model.parameters())).dtype if list(model.parameters()) else torch.get_default_dtype()
    with torch.no_grad():
        for i in range(grid.n):
            n_i = n_samples_lowest if i == 0 else n_samples
            x, lab = gmm.sample_with_labels(n_i, gen, grid.alpha[i], grid.sigma[i])
            lq = model.log_q(x.to(dtype), i).double()
            lp = gmm.log_prob_t(x, grid.alpha[i], grid.sigma[i])
            lr = lq - lp
            ok = torch.isfinite(lr)
            stds.append(float(lr[ok].std()) if ok.sum() > 1 else float("nan"))
            esss.append(kish_ess(torch.where(ok, lr, torch.tensor(-torch.inf, dtype=torch.float64))))
            mw, se = labelled_mode_weights(torch.where(ok, lr, torch.tensor(-torch.inf, dtype=torch.float64)), lab, K)
            mw_levels.append(mw.tolist())
            offsets.append(mode_offsets(lr, lab, ok, true_w))
            if i == 0:
                mw0, se0 = mw, se
    n_lv = grid.n  # the paper's figure sums the per-element excess over the N levels of a chain
    return MixtureEval(
        clf_raw=raw,
        clf_exact=floor,
        clf_excess=raw - floor,
        clf_excess_se=excess_se,
        clf_raw_fitted_f=raw_fit,
        clf_excess_fitted_f=raw_fit - floor,
        clf_excess_per_level=excess_levels.tolist(),
        clf_excess_paper=n_lv * (raw - floor),
        clf_excess_paper_se=n_lv * excess_se,
        clf_excess_paper_fitted_f=n_lv * (raw_fit - floor),
        log_ratio_std=stds,
        ess_per_level=esss,
        mode_weights=mw0.tolist(),
        true_mode_weights=true_w.tolist(),
        mode_weights_se=se0.tolist(),
        mode_weight_error=float(np.abs(mw0 - true_w).max()),
        mode_weights_per_level=mw_levels,
        mode_weight_error_per_level=[float(np.abs(np.asarray(m) - true_w).max()) for m in mw_levels],
        mode_offsets_per_level=offsets,
        mode_offset_range_per_level=[float(np.nanmax(o) - np.nanmin(o)) for o in offsets],
        n_levels=n_lv,
        n_chains=n_chains,
        n_samples=n_samples,
        n_chains_fit=n_fit,
    )


def plot_mixture_eval(ev: dict, path, title: str = "") -> None:
    """PNG of the per-level curves: log-ratio std, ESS, excess CE, mode weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))
    lv = np.arange(len(ev["log_ratio_std"]))
    ax[0].semilogy(lv, ev["log_ratio_std"])
    ax[0].set(xlabel="level (0 = cleanest)", ylabel="std(log q - log p_t)", title="log-ratio spread")
    ax[1].plot(lv, ev["ess_per_level"])
    ax[1].set(xlabel="level", ylabel="normalised ESS", ylim=(0, 1.05), title="ESS of exp(log q - log p_t)")
    ax[2].plot(lv, ev["clf_excess_per_level"])
    ax[2].set(xlabel="level", ylabel="excess CE (nats)", title=f"classification excess = {ev['clf_excess']:.3g}")
    mw = np.array(ev["mode_weights_per_level"])
    tw = np.array(ev["true_mode_weights"])
    K = mw.shape[1]
    for k in range(min(K, 8)):
        line = ax[3].plot(lv, mw[:, k], label=f"mode {k}")[0]
        ax[3].axhline(tw[k], color=line.get_color(), ls=":")
    ax[3].set(xlabel="level", ylabel="weight", title="mode weights (dotted: exact)")
    if K <= 8:
        ax[3].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
