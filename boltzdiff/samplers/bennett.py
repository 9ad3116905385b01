"""Bennett's acceptance ratio (BAR) for many independent two-state problems at once, in NumPy float64.

For states 0 and 1 with reduced energies ``u_0``, ``u_1`` and ``F = -log Z``, forward works ``w_f = u_1(x) -
u_0(x)`` of samples of state 0 and reverse works ``w_r = u_0(x) - u_1(x)`` of samples of state 1 give ``Delta F =
F_1 - F_0`` as the root ``D`` of (Bennett 1976)

    sum_F s(M + w_f - D) = sum_R s(-M + w_r + D),    s(y) = 1 / (1 + e^y),  M = log(n_F / n_R),

whose left side increases and right side decreases in ``D``. It is solved by Newton steps kept inside a bracket
that always holds the root; the standard error is the asymptotic one of Shirts et al. (2003), which assumes
independent works. :func:`~boltzdiff.samplers.replica.replica_exchange` uses it between neighbouring rungs.
"""

from __future__ import annotations

import numpy as np


def _group_lse(v: np.ndarray, g: np.ndarray, n: int) -> np.ndarray:
    """``log sum exp`` of ``v`` within each group id ``g`` in ``[0, n)`` (``-inf`` for an empty group)."""
    mx = np.full(n, -np.inf)
    np.maximum.at(mx, g, v)
    base = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.bincount(g, np.exp(v - base[g]), minlength=n)) + base


def bar_groups(w_f, g_f, w_r, g_r, n: int, tol: float = 1e-11) -> tuple[np.ndarray, np.ndarray]:
    """BAR for ``n`` independent problems at once: works ``w_f`` / ``w_r`` with group ids ``g_f`` / ``g_r`` in
    ``[0, n)``. Returns ``Delta F (n,)`` and its asymptotic standard error ``(n,)`` (nan for a group with an
    empty side); see :func:`bar`. Safeguarded Newton on the monotone gap of the two Fermi sums."""
    w_f, w_r = np.asarray(w_f, dtype=np.float64), np.asarray(w_r, dtype=np.float64)
    g_f, g_r = np.asarray(g_f, dtype=np.int64), np.asarray(g_r, dtype=np.int64)
    keep_f, keep_r = np.isfinite(w_f), np.isfinite(w_r)
    w_f, g_f, w_r, g_r = w_f[keep_f], g_f[keep_f], w_r[keep_r], g_r[keep_r]
    n_f, n_r = np.bincount(g_f, minlength=n).astype(float), np.bincount(g_r, minlength=n).astype(float)
    ok = (n_f > 0) & (n_r > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(ok, np.log(n_f / n_r), 0.0)
        d_f = np.log(n_f) - _group_lse(-w_f, g_f, n)  # one-sided (EXP) estimates
        d_r = _group_lse(-w_r, g_r, n) - np.log(n_r)
    d_f, d_r = np.where(ok, d_f, 0.0), np.where(ok, d_r, 0.0)

    def gap(d):  # log sum_F s(M + w_f - D) - log sum_R s(-M + w_r + D), increasing in D; and its derivative
        ls_f, ls_r = -np.logaddexp(0.0, m[g_f] + w_f - d[g_f]), -np.logaddexp(0.0, -m[g_r] + w_r + d[g_r])
        lf, lr = _group_lse(ls_f, g_f, n), _group_lse(ls_r, g_r, n)
        # d/dD log sum s = sum s (1 - s) / sum s, with the weights s normalised in log space
        der = np.zeros(n)
        der += np.bincount(g_f, np.exp(ls_f - lf[g_f]) * -np.expm1(ls_f), minlength=n)
        der += np.bincount(g_r, np.exp(ls_r - lr[g_r]) * -np.expm1(ls_r), minlength=n)
        return np.where(ok, lf - lr, 0.0), der

    lo, hi = np.minimum(d_f, d_r) - 1.0, np.maximum(d_f, d_r) + 1.0
    for _ in range(60):  # widen until the bracket holds the root
        g_lo, g_hi = gap(lo)[0] > 0, gap(hi)[0] < 0
        if not (g_lo.any() or g_hi.any()):
            break
        w = hi - lo
        lo, hi = np.where(g_lo, lo - 2 * w, lo), np.where(g_hi, hi + 2 * w, hi)
    d = 0.5 * (lo + hi)
    for _ in range(200):
        val, der = gap(d)
        lo, hi = np.where(val < 0, d, lo), np.where(val > 0, d, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = d - val / der
        new = np.where(np.isfinite(new) & (new > lo) & (new < hi), new, 0.5 * (lo + hi))
        done = np.all(np.abs(new - d) <= tol * (1 + np.abs(d)))
        d = new
        if done:
            break
    y_f, y_r = m[g_f] + w_f - d[g_f], -m[g_r] + w_r + d[g_r]
    f_f, f_r = np.exp(-np.logaddexp(0.0, y_f)), np.exp(-np.logaddexp(0.0, y_r))
    with np.errstate(divide="ignore", invalid="ignore"):
        var = sum(
            (np.bincount(g, f**2, minlength=n) * k / np.bincount(g, f, minlength=n) ** 2 - 1) / k
            for g, f, k in ((g_f, f_f, n_f), (g_r, f_r, n_r))
        )
        se = np.sqrt(np.maximum(var, 0.0))
    return np.where(ok, d, np.nan), np.where(ok, se, np.nan)


def bar(w_f, w_r) -> tuple[float, float]:
    """BAR estimate of ``Delta F = F_1 - F_0`` and its asymptotic standard error from forward works ``w_f = u_1(x)
    - u_0(x)``, ``x ~ p_0``, and reverse works ``w_r = u_0(x) - u_1(x)``, ``x ~ p_1`` (any shapes, flattened).
    Non-finite works are dropped; ``(nan, nan)`` when a side is empty."""
    w_f, w_r = np.asarray(w_f, dtype=np.float64).ravel(), np.asarray(w_r, dtype=np.float64).ravel()
    d, se = bar_groups(w_f, np.zeros(w_f.size, np.int64), w_r, np.zeros(w_r.size, np.int64), 1)
    return float(d[0]), float(se[0])
