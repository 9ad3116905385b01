"""Invariant pair-distance energy network for labelled molecules (a fast alternative to the EGNN on CPU).

:class:`PairDistanceNet` is a *scalar* ``net`` of :class:`~boltzdiff.models.energy.PreconditionedEnergy`:
the energy is ``E(x, t) = |x~|^2 / 2 + g(x~, t) + (d/2) log(2 pi a_t^2)`` where ``g`` is a residual MLP of

* every interatomic distance ``r_ij`` of ``x~`` (all ``P = n (n - 1) / 2`` pairs), each *standardised per
  level*: ``z_ij = (r_ij - m_ij(t)) / s_ij(t)`` with ``m_ij(t)^2 = (alpha_t^2 (mu_ij^2 + v_ij) + 6 sigma_t^2)
  / a_t^2`` and ``s_ij(t)^2 = (alpha_t^2 v_ij + 2 sigma_t^2) / a_t^2``, where ``mu_ij``, ``v_ij`` are the
  mean and variance of that distance in the training data (set once by :meth:`set_pair_stats`). A bond whose
  length fluctuates by 0.003 nm and a contact that spans 1 nm both enter as O(1) numbers at every noise level,
  so stiff covalent geometry is easy to represent;
* optional pseudo-scalars from the signed volumes ``V`` at chiral centres, which make ``g`` not
  reflection-invariant so the model can prefer L- over D-alanine: ``tanh(V / chiral_scale)``, or with
  ``chiral_norm`` ``tanh(V / s_V(t))``, standardised per level like the distances (below). A signed volume
  of bond vectors ~0.15 nm is ~0.002 nm^3, so the fixed scale left the input at ~0.02 and the trained model
  ignored it (half its samples were D-alanine, RESULTS.md); the per-level scale makes it O(1) at every level;
* a Fourier embedding of the noise input, added in every residual block;

plus a harmonic term ``1/2 sum_ij k_ij(t) z_ij^2`` whose per-pair stiffnesses are a linear function of the
time embedding (zero at initialisation). Bonds and bond angles (1-3 distances) make the low-noise levels of a
molecule very stiff: without this term a plain MLP learnt only ~15 % of that curvature in 2000 steps and its
samples had bonds 40x too loose; with it, the stiffness is one linear layer away.

Distances make ``g`` invariant to rotations and translations. The atoms of a molecule are labelled (each its own
type), so no permutation symmetry is imposed; use the EGNN for identical particles (LJ, DW4). Cost per energy is
one MLP on ``P`` inputs, roughly 20x cheaper than the EGNN's per-pair message passing for alanine dipeptide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from boltzdiff.geometry import signed_volume
from boltzdiff.models.energy import PreconditionedEnergy
from boltzdiff.models.mlp import FourierEmbedding, ResBlock
from boltzdiff.noise import LevelGrid


class PairDistanceNet(nn.Module):
    """Scalar network ``(x~: (B, n * dim), c_noise: (B,), level: (B,)) -> g: (B,)``.

    Parameters
    ----------
    n_particles, spatial_dim : int
    grid : LevelGrid
        The model's level grid (for the per-level standardisation).
    sigma_data : float
        The preconditioning's data standard deviation (``a_t^2 = alpha_t^2 sigma_data^2 + sigma_t^2``).
    width, depth : int
        Hidden width and number of residual blocks.
    n_freq : int
        Fourier features of the noise input.
    chiral_quads : sequence of ``(center, a, b, c)`` or None
        Chiral centres (3-D only) whose signed volumes enter as pseudo-scalar inputs.
    chiral_scale : float
    torsions : sequence of ``(i, j, k, l)`` or None
        Dihedral angles whose sine and cosine enter as extra inputs (torsion features: the pair distances carry
        a dihedral only through 1-4 distances, where it is a small part of their spread).
    chiral_norm : bool
        Standardise the signed volumes per level instead of dividing by ``chiral_scale``: with ``u, v, w`` the
        bond vectors from the centre, noised by ``x_t = alpha x + sigma eps`` (each vector's noise has variance
        ``2 sigma^2`` per component), ``Var V_t ~ alpha^6 E[V^2] + 2 sigma^2 alpha^4 E[|v x w|^2 + |w x u|^2 +
        |u x v|^2] + 4 sigma^4 alpha^2 E[|u|^2 + |v|^2 + |w|^2] + 48 sigma^6`` (first-, second- and third-order
        noise terms; data moments set by :meth:`set_pair_stats`), and ``s_V(t) = sqrt(Var V_t) / a_t^3`` in the
        preconditioned coordinates.
    stiffness_init : float
        0: the harmonic stiffnesses start at zero and may take either sign (a zero network output is then the
        exact Gaussian marginal); > 0: they are kept positive (softplus) and start at this value.
    """

    scalar_output = True

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        grid: LevelGrid,
        sigma_data: float,
        width: int = 256,
        depth: int = 3,
        n_freq: int = 16,
        chiral_quads: Sequence[Sequence[int]] | None = None,
        chiral_scale: float = 0.1,
        stiffness_init: float = 0.0,
        chiral_norm: bool = False,
        torsions: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        if n_particles < 2:
            raise ValueError("PairDistanceNet needs at least 2 particles")
        self.n, self.dim = int(n_particles), int(spatial_dim)
        ii, jj = torch.triu_indices(self.n, self.n, offset=1)
        self.register_buffer("ii", ii)
        self.register_buffer("jj", jj)
        p = ii.numel()
        # data statistics of each distance (in units of x, nm); defaults until set_pair_stats is called
        self.register_buffer("pair_mean", torch.ones(p))
        self.register_buffer("pair_var", torch.ones(p))
        dt = torch.get_default_dtype()
        self.register_buffer("alpha", grid.alpha.to(dt))
        self.register_buffer("sigma", grid.sigma.to(dt))
        self.register_buffer("a2", (grid.alpha**2 * float(sigma_data) ** 2 + grid.sigma**2).to(dt))
        self.quads = [tuple(int(i) for i in q) for q in (chiral_quads or ())]
        if self.quads and (self.dim != 3 or any(len(q) != 4 or max(q) >= self.n or min(q) < 0 for q in self.quads)):
            raise ValueError(f"chiral_quads: expected (center, a, b, c) atom indices < {self.n} in 3-D")
        self.chiral_scale = float(chiral_scale)
        self.torsions = [tuple(int(i) for i in q) for q in (torsions or ())]
        if self.torsions and (
            self.dim != 3 or any(len(q) != 4 or max(q) >= self.n or min(q) < 0 for q in self.torsions)
        ):
            raise ValueError(f"torsions: expected (i, j, k, l) atom indices < {self.n} in 3-D")
        self.chiral_norm = bool(chiral_norm) and bool(self.quads)
        if self.chiral_norm:  # data moments of each chiral centre (nm^6, nm^4, nm^2); set by set_pair_stats
            q = len(self.quads)
            self.register_buffer("chiral_v2", torch.full((q,), 1e-5))
            self.register_buffer("chiral_g", torch.full((q,), 1e-3))
            self.register_buffer("chiral_h", torch.full((q,), 0.1))
        self.temb = FourierEmbedding(n_freq)
        self.temb_mlp = nn.Sequential(nn.Linear(2 * n_freq, width), nn.SiLU(), nn.Linear(width, width))
        # per-pair, per-level stiffness of the harmonic term: zero at initialisation (stiffness_init = 0, any
        # sign), or softplus-positive starting at stiffness_init (every distance held near its noised mean)
        self.stiffness = nn.Linear(width, p)
        nn.init.zeros_(self.stiffness.weight)
        self.stiffness_init = float(stiffness_init)
        if self.stiffness_init < 0:
            raise ValueError(f"stiffness_init: expected >= 0, got {stiffness_init}")
        b0 = math.log(math.expm1(self.stiffness_init)) if self.stiffness_init > 0 else 0.0
        nn.init.constant_(self.stiffness.bias, b0)
        self.inp = nn.Linear(p + len(self.quads) + 2 * len(self.torsions), width)
        self.blocks = nn.ModuleList([ResBlock(width, width) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @torch.no_grad()
    def set_pair_stats(self, x: torch.Tensor) -> None:
        """Mean and variance of every pair distance over data ``x: (B, n * dim)`` (any units the model sees
        before preconditioning, i.e. nm)."""
        r = self.distances(x.to(self.pair_mean))
        self.pair_mean.copy_(r.mean(0))
        self.pair_var.copy_(r.var(0).clamp_min(1e-12))
        if self.chiral_norm:
            x3 = x.to(self.pair_mean).reshape(x.shape[0], self.n, self.dim)
            for k, (o, a, b, c) in enumerate(self.quads):
                u, v, w = x3[:, a] - x3[:, o], x3[:, b] - x3[:, o], x3[:, c] - x3[:, o]
                vol = (u * torch.linalg.cross(v, w)).sum(-1)
                cr = sum((torch.linalg.cross(p, q) ** 2).sum(-1) for p, q in ((v, w), (w, u), (u, v)))
                self.chiral_v2[k] = (vol**2).mean()
                self.chiral_g[k] = cr.mean()
                self.chiral_h[k] = ((u**2).sum(-1) + (v**2).sum(-1) + (w**2).sum(-1)).mean()

    def chiral_sd(self, level: torch.Tensor) -> torch.Tensor:
        """``s_V(t)`` (class docstring) of every chiral centre at integer levels ``(B,)``, ``(B, Q)``."""
        al, sg, a2 = self.alpha[level][:, None], self.sigma[level][:, None], self.a2[level][:, None]
        var = (
            al**6 * self.chiral_v2 + 2 * sg**2 * al**4 * self.chiral_g + 4 * sg**4 * al**2 * self.chiral_h + 48 * sg**6
        )
        return torch.sqrt(var) / a2**1.5

    def distances(self, x_flat: torch.Tensor) -> torch.Tensor:
        x = x_flat.reshape(x_flat.shape[0], self.n, self.dim)
        diff = x[:, self.ii] - x[:, self.jj]
        return torch.sqrt((diff * diff).sum(-1) + 1e-12)

    def standardised_distances(self, x_flat: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``z_ij = (r_ij - m_ij(t)) / s_ij(t)`` of preconditioned configurations ``(B, n * dim)`` at integer
        levels ``(B,)`` (formulas in the module docstring), ``(B, P)``."""
        al, sg, a2 = self.alpha[level][:, None], self.sigma[level][:, None], self.a2[level][:, None]
        m = torch.sqrt((al**2 * (self.pair_mean**2 + self.pair_var) + 6 * sg**2) / a2)
        s = torch.sqrt((al**2 * self.pair_var + 2 * sg**2) / a2)
        return (self.distances(x_flat) - m) / s

    def forward(self, x_flat: torch.Tensor, c_noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        feats = self.standardised_distances(x_flat, level)
        if self.quads:
            x = x_flat.reshape(x_flat.shape[0], self.n, self.dim)
            vol = torch.stack([signed_volume(x, *q) for q in self.quads], dim=-1)
            scale = self.chiral_sd(level) if self.chiral_norm else self.chiral_scale
            feats = torch.cat([feats, torch.tanh(vol / scale)], dim=-1)
        if self.torsions:
            x = x_flat.reshape(x_flat.shape[0], self.n, self.dim)
            feats = torch.cat([feats, torsion_features(x, self.torsions)], dim=-1)
        levels, inv = torch.unique(c_noise, return_inverse=True)
        temb = self.temb_mlp(self.temb(levels))
        z = feats[:, : self.ii.numel()]
        k = self.stiffness(temb)[inv]
        if self.stiffness_init > 0:
            k = torch.nn.functional.softplus(k)
        harmonic = 0.5 * (k * z * z).sum(-1)
        h = self.inp(feats)
        for b in self.blocks:
            h = b(h, b.emb(temb)[inv])
        return harmonic + self.out(torch.nn.functional.silu(self.out_norm(h)))[:, 0]


def torsion_features(x: torch.Tensor, torsions: Sequence[Sequence[int]], eps: float = 1e-6) -> torch.Tensor:
    """``(sin, cos)`` of each dihedral of ``x: (B, n, 3)``, ``(B, 2 T)``, smooth everywhere.

    With the bond vectors b0, b1, b2 and n1 = b0 x b1, n2 = b1 x b2, the angle's cosine and sine are ``n1.n2``
    and ``(b1/|b1| x n1).n2`` (the sign convention of boltzdiff.geometry.dihedral), divided by their norm plus
    ``eps`` (nm^4), so that collinear atoms (possible at high noise) give a finite gradient, not atan2's 0/0.
    """
    out = []
    for a, b, c, d in torsions:
        b0, b1, b2 = x[:, b] - x[:, a], x[:, c] - x[:, b], x[:, d] - x[:, c]
        n1, n2 = torch.linalg.cross(b0, b1), torch.linalg.cross(b1, b2)
        m1 = torch.linalg.cross(b1 / torch.sqrt((b1 * b1).sum(-1, keepdim=True) + eps**2), n1)
        cos, sin = (n1 * n2).sum(-1), (m1 * n2).sum(-1)
        r = torch.sqrt(cos * cos + sin * sin + eps**2)
        out += [sin / r, cos / r]
    return torch.stack(out, dim=-1)


def build_pairmlp_energy(
    grid: LevelGrid,
    n_particles: int,
    spatial_dim: int,
    sigma_data: float,
    time_input: str = "logsnr",
    **net_kwargs,
) -> PreconditionedEnergy:
    """Gaussian-preconditioned energy (``mu = 0``) around a :class:`PairDistanceNet`, for centred molecules.
    Call ``model.net.set_pair_stats(data)`` before training."""
    net = PairDistanceNet(n_particles, spatial_dim, grid, sigma_data, **net_kwargs)
    mu = torch.zeros(n_particles * spatial_dim)
    return PreconditionedEnergy(net, grid, mu, sigma_data, time_input=time_input)
