"""E(n)-equivariant vector network for particle systems and molecules, optionally chirality-aware.

:class:`EGNNNet` is the ``net`` of :class:`~boltzdiff.models.energy.PreconditionedEnergy` for particles:
it maps the scaled, centre-of-mass-free configuration ``x~: (B, n * dim)`` and the noise input
``c_noise: (B,)`` to a vector field ``v(x~): (B, n * dim)`` that is *equivariant*: built only from relative
vectors ``x_i - x_j`` multiplied by invariant functions of pairwise distances, node types and time (EGNN-style
message passing, Satorras et al. 2021). Hence the network term ``<v(x~), x~>`` of the energy is invariant to
rotations (and reflections), to translations (``v`` sums to zero over particles), and to permutations of
particles of the same atom type.

Chirality: a network that sees only distances is also invariant to reflection, so it gives a configuration
and its mirror image the same energy; a model trained on L-alanine then generates D-alanine as often (whose
phi has the opposite sign). Two remedies are provided:

* :func:`boltzdiff.geometry.fix_chirality` (post hoc): detect the handedness from the sign of the signed volume
  at a chiral centre (``boltzdiff.geometry.signed_volume``) and mirror wrong-handed samples (``x -> -x``, re-centred).
  The physical energy is reflection-invariant, so a mirrored sample keeps its target energy and importance
  weight; this maps the model's mirror-symmetric distribution onto the L half that MD sees.
* ``chiral_quads=`` on :class:`EGNNNet`: the signed volumes of the given quadruples enter the node features
  as pseudo-scalars, so the network (and the energy) is *not* reflection-invariant and can learn that the
  mirror image is improbable. Rotation/translation invariance is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from boltzdiff.geometry import signed_volume
from boltzdiff.models.energy import PreconditionedEnergy
from boltzdiff.models.mlp import FourierEmbedding
from boltzdiff.noise import LevelGrid


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class _EdgeMessage(nn.Module):
    """Symmetric pair message ``m_ij = SiLU(W2 SiLU(A h_i + A h_j + C rbf_ij + c d2_ij + b))``, ``(B, P, H)``.

    ``A h`` is computed per node and gathered for the pairs, so the first layer costs ``O(n H^2 + P K H)``
    instead of ``O(P H^2)``; only the ``P = n (n - 1) / 2`` unordered pairs ``i < j`` are evaluated.
    """

    def __init__(self, hidden: int, n_rbf: int):
        super().__init__()
        self.node = nn.Linear(hidden, hidden)
        self.rbf = nn.Linear(n_rbf, hidden, bias=False)
        self.d2 = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h, ii, jj, rbf, d2):
        a = self.node(h)  # (B, n, H)
        z = a[:, ii] + a[:, jj] + self.rbf(rbf) + d2[..., None] * self.d2
        return self.act(self.out(self.act(z)))


def _scatter_pairs(val: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor, n: int, sign_j: float) -> torch.Tensor:
    """``out_k = sum_{p: i_p = k} val_p + sign_j * sum_{p: j_p = k} val_p`` for ``val: (B, P, F)`` ->
    ``(B, n, F)``."""
    out = val.new_zeros(val.shape[0], n, val.shape[2])
    out = out.index_add(1, ii, val)
    return out.index_add(1, jj, val, alpha=sign_j)


class EGNNLayer(nn.Module):
    """One message-passing layer: invariant node update and (optionally) an equivariant coordinate update.

    ``h_i <- h_i + phi_h([h_i, mean_j m_ij])``;
    ``x_i <- x_i + mean_j (x_i - x_j) / (r_ij + 1) * phi_x(m_ij)`` (the ``r + 1`` keeps updates bounded).
    """

    def __init__(self, hidden: int, n_rbf: int, update_coords: bool):
        super().__init__()
        self.message = _EdgeMessage(hidden, n_rbf)
        self.node = _mlp(2 * hidden, hidden, hidden)
        self.coord = nn.Linear(hidden, 1) if update_coords else None
        if self.coord is not None:  # small initial coordinate updates (as in the EGNN reference code)
            nn.init.xavier_uniform_(self.coord.weight, gain=1e-3)
            nn.init.zeros_(self.coord.bias)

    def forward(self, h, x, ii, jj, diff, r, rbf, d2):
        n = h.shape[1]
        m = self.message(h, ii, jj, rbf, d2)  # (B, P, H)
        agg = _scatter_pairs(m, ii, jj, n, 1.0) / (n - 1)
        h = h + self.node(torch.cat([h, agg], dim=-1))
        if self.coord is not None:
            wgt = self.coord(m) / (r[..., None] + 1.0)  # (B, P, 1)
            x = x + _scatter_pairs(diff * wgt, ii, jj, n, -1.0) / (n - 1)
        return h, x


class EGNNNet(nn.Module):
    """E(n)-equivariant vector field ``(x~: (B, n * dim), c_noise: (B,)) -> v: (B, n * dim)``.

    Fully connected graph over the ``P = n (n - 1) / 2`` unordered pairs, vectorised with ``(B, P, ...)``
    tensors (no Python loop over edges); symmetric pair weights times antisymmetric ``x_i - x_j`` make
    ``sum_i v_i = 0``. SiLU everywhere so second derivatives exist (DSM needs ``grad_x E`` with
    ``create_graph=True``). The readout ``v_i = mean_j (x_i - x_j) w(m_ij)`` is zero at initialisation
    (last layer zero-initialised). The input is re-centred inside, so ``v`` depends on ``x~`` only through
    relative positions.

    Parameters
    ----------
    n_particles : int
    spatial_dim : int
        2 (e.g. DW4) or 3.
    hidden : int
        Width of node and edge features.
    n_layers : int
        Message-passing layers (>= 1).
    atom_types : list of int, length ``n_particles``, or None
        Type index of each particle (permutation symmetry holds among equal types); None = all identical.
    n_freq : int
        Fourier features of the noise input.
    n_rbf : int
        Gaussian radial basis functions of the pairwise distance on ``[0, rbf_max]`` (in units of ``x~``,
        which is the configuration divided by ``a_t``, so distances are O(1)); the squared distance is
        also an edge feature.
    rbf_max : float
    update_coords : bool
        EGNN coordinate updates in the hidden layers (the readout uses the updated coordinates).
    chiral_quads : sequence of ``(center, a, b, c)`` or None
        Pseudo-scalar inputs (signed volumes, see :func:`boltzdiff.geometry.signed_volume`) that make the
        network chirality-aware, i.e. not reflection-invariant. 3-D only.
    chiral_scale : float
        The signed volumes enter as ``tanh(V / chiral_scale)``.
    """

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int = 3,
        hidden: int = 64,
        n_layers: int = 4,
        atom_types: Sequence[int] | None = None,
        n_freq: int = 16,
        n_rbf: int = 16,
        rbf_max: float = 6.0,
        update_coords: bool = True,
        chiral_quads: Sequence[Sequence[int]] | None = None,
        chiral_scale: float = 0.1,
    ):
        super().__init__()
        if n_particles < 2:
            raise ValueError("EGNNNet needs at least 2 particles")
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        self.n = int(n_particles)
        self.dim = int(spatial_dim)
        types = [0] * self.n if atom_types is None else [int(t) for t in atom_types]
        if len(types) != self.n or min(types) < 0:
            raise ValueError(f"atom_types: expected {self.n} non-negative ints, got {atom_types!r}")
        self.register_buffer("types", torch.tensor(types, dtype=torch.long))
        self.type_emb = nn.Embedding(max(types) + 1, hidden)
        self.temb = FourierEmbedding(n_freq)
        self.temb_mlp = _mlp(2 * n_freq, hidden, hidden)
        self.quads = [tuple(int(i) for i in q) for q in (chiral_quads or ())]
        if self.quads:
            if self.dim != 3:
                raise ValueError("chiral_quads need spatial_dim = 3")
            if any(len(q) != 4 or max(q) >= self.n or min(q) < 0 for q in self.quads):
                raise ValueError(f"chiral_quads: expected (center, a, b, c) atom indices < {self.n}")
            self.chiral = nn.Linear(len(self.quads), hidden)
            self.chiral_scale = float(chiral_scale)
        self.register_buffer("rbf_mu", torch.linspace(0.0, rbf_max, n_rbf))
        self.rbf_gamma = 0.5 / (rbf_max / max(n_rbf - 1, 1)) ** 2
        self.layers = nn.ModuleList(
            [EGNNLayer(hidden, n_rbf, update_coords and i < n_layers - 1) for i in range(n_layers)]
        )
        self.readout_msg = _EdgeMessage(hidden, n_rbf)
        self.readout = nn.Linear(hidden, 1)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)
        ii, jj = torch.triu_indices(self.n, self.n, offset=1)
        self.register_buffer("ii", ii)
        self.register_buffer("jj", jj)

    def _edges(self, x: torch.Tensor):
        diff = x[:, self.ii] - x[:, self.jj]  # (B, P, dim)
        d2 = (diff * diff).sum(-1)
        r = torch.sqrt(d2 + 1e-12)
        rbf = torch.exp(-self.rbf_gamma * (r[..., None] - self.rbf_mu) ** 2)
        return diff, r, rbf, d2

    def pseudo_scalars(self, x: torch.Tensor) -> torch.Tensor:
        """Signed volumes ``(B, Q)`` of the chiral quadruples in ``x: (B, n, 3)``."""
        return torch.stack([signed_volume(x, *q) for q in self.quads], dim=-1)

    def forward(self, x_flat: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        B = x_flat.shape[0]
        x = x_flat.reshape(B, self.n, self.dim)
        x = x - x.mean(1, keepdim=True)
        h = self.type_emb(self.types)[None] + self.temb_mlp(self.temb(c_noise.to(x)))[:, None, :]
        if self.quads:
            h = h + self.chiral(torch.tanh(self.pseudo_scalars(x) / self.chiral_scale))[:, None, :]
        for layer in self.layers:
            diff, r, rbf, d2 = self._edges(x)
            h, x = layer(h, x, self.ii, self.jj, diff, r, rbf, d2)
        diff, r, rbf, d2 = self._edges(x)
        wgt = self.readout(self.readout_msg(h, self.ii, self.jj, rbf, d2))  # (B, P, 1)
        v = _scatter_pairs(diff * wgt, self.ii, self.jj, self.n, -1.0) / (self.n - 1)
        v = v - v.mean(1, keepdim=True)
        return v.reshape(B, self.n * self.dim)


def build_egnn_energy(
    grid: LevelGrid,
    n_particles: int,
    spatial_dim: int,
    sigma_data: float,
    hidden: int = 64,
    n_layers: int = 4,
    atom_types: Sequence[int] | None = None,
    time_input: str = "logsnr",
    chiral_quads: Sequence[Sequence[int]] | None = None,
    **net_kwargs,
) -> PreconditionedEnergy:
    """Gaussian-preconditioned energy (``mu = 0``) around an :class:`EGNNNet`, for centred particle data.

    Parameters
    ----------
    grid : LevelGrid
    n_particles, spatial_dim : int
        The flat dimension is ``d = n_particles * spatial_dim``.
    sigma_data : float
        Isotropic standard deviation of the centred data coordinates.
    hidden, n_layers, atom_types, chiral_quads, **net_kwargs
        Passed to :class:`EGNNNet`.
    time_input : {"logsnr", "t"}
    """
    net = EGNNNet(
        n_particles,
        spatial_dim,
        hidden=hidden,
        n_layers=n_layers,
        atom_types=atom_types,
        chiral_quads=chiral_quads,
        **net_kwargs,
    )
    mu = torch.zeros(n_particles * spatial_dim)
    return PreconditionedEnergy(net, grid, mu, sigma_data, time_input=time_input)

__all__ = ["EGNNLayer", "EGNNNet", "build_egnn_energy"]
