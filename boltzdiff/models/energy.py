"""Gaussian-preconditioned time-dependent energy with learned per-level log-normalisers.

For a Gaussian fit ``N(mu, sigma_d^2 I)`` of the data, ``a_t^2 = alpha_t^2 sigma_d^2 + sigma_t^2`` and
``x~ = (x - alpha_t mu) / a_t``::

    E(x, t) = |x - alpha_t mu|^2 / (2 a_t^2) + c_t <NN(x~, t), x~> [+ g(x~, t)] + (d/2) log(2 pi a_t^2)

With a zero network output this is exactly ``-log`` of the noised Gaussian marginal, so the noisiest level is
(almost) normalised and ``f`` (gauge ``f_{N-1} = 0``) gives absolute log-normalisers at every level.

The vector term ``<NN, x~>`` vanishes at the data mean, so carving a deep, narrow mode near ``mu`` needs network
outputs that grow like ``1/|x~|``: without help such modes come out too light (on gmm40_2d the level-0 weights
of the modes within 20 of the centre averaged 0.012 against 0.025, correlation of log-weight with the
distance from the centre 0.6-0.8; benchmarks/RESULTS.md). A network with ``head = "inner+scalar"`` returns
one more column ``g`` that is added to the energy as is, and one with ``head = "scalar"`` only ``g``
(zero-initialised like the rest, so the Gaussian limit is unchanged).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from boltzdiff.errors import ConfigError
from boltzdiff.models.base import LevelEnergy
from boltzdiff.noise import LevelGrid


class PreconditionedEnergy(LevelEnergy):
    """``E_theta(x, t_i)`` around a vector network ``net(x~, c_noise) -> (B, d)`` (network term
    ``<net, x~>``), or a scalar network with attribute ``scalar_output = True``, ``net(x~, c_noise, level) ->
    (B,)`` (network term ``net`` itself).

    Parameters
    ----------
    net : nn.Module
        Maps ``(x~: (B, d), c_noise: (B,))`` to ``(B, d)``; its last layer should start at zero.
    grid : LevelGrid
    mu : (d,) tensor
        Data mean (zeros for centred particle systems).
    sigma_data : float
        Isotropic data standard deviation.
    time_input : {"logsnr", "t"}
        What the network sees as its noise input: the normalised log-SNR (default) or t.
    c_scale : {"one", "a"}
        The scale ``c_t`` of the network term.
    """

    def __init__(
        self, net: nn.Module, grid: LevelGrid, mu: torch.Tensor, sigma_data: float, time_input: str = "logsnr"
    ):
        super().__init__()
        if time_input not in ("logsnr", "t"):
            raise ConfigError(f"model.time_input: expected 'logsnr' or 't', got {time_input!r}")
        self.net = net
        self.grid = grid
        self.dim = int(mu.numel())
        self.time_input = time_input
        self.register_buffer("mu", mu.detach().to(torch.get_default_dtype()).reshape(-1).clone())
        self.sigma_data = float(sigma_data)
        a = grid.alpha
        self.register_buffer("alpha", a.to(torch.get_default_dtype()))
        self.register_buffer("a2", (a**2 * self.sigma_data**2 + grid.sigma**2).to(torch.get_default_dtype()))
        lam = grid.log_snr
        if time_input == "logsnr":
            c = (lam - lam.mean()) / (lam.std() + 1e-12) * 0.25
        else:
            c = grid.t
        self.register_buffer("c_noise", c.to(torch.get_default_dtype()))
        #: learned log-normalisers, gauge f[-1] = 0 (see :meth:`apply_gauge`)
        self.f = nn.Parameter(torch.zeros(grid.n))

    def energy(self, x: torch.Tensor, level) -> torch.Tensor:
        lv = self._levels(x, level)
        alpha = self.alpha[lv][:, None]
        a2 = self.a2[lv]
        r = x - alpha * self.mu
        xt = r / torch.sqrt(a2)[:, None]
        quad = 0.5 * (xt**2).sum(-1)
        if getattr(self.net, "scalar_output", False):  # a scalar network g(x~, t) (e.g. PairDistanceNet)
            nn_term = self.net(xt, self.c_noise[lv], lv)
        else:
            out = self.net(xt, self.c_noise[lv])
            head = getattr(self.net, "head", "inner")
            if head == "scalar":
                nn_term = out[:, 0]
            else:
                nn_term = (out[:, : self.dim] * xt).sum(-1)
                if head == "inner+scalar":
                    nn_term = nn_term + out[:, self.dim]
        return quad + nn_term + 0.5 * self.dim * torch.log(2 * math.pi * a2)

    def log_norm(self) -> torch.Tensor:
        return self.f

    @torch.no_grad()
    def apply_gauge(self) -> None:
        """``f <- f - f[-1]`` so that the noisiest level carries ``f = 0``."""
        self.f.sub_(self.f[-1].clone())


def build_mlp_energy(
    grid: LevelGrid,
    mu: torch.Tensor,
    sigma_data: float,
    width: int = 256,
    depth: int = 3,
    time_input: str = "logsnr",
    n_freq: int = 32,
    fourier_scale: float = 4.0,
    input_fourier: int = 0,
    input_fourier_scale: float = 4.0,
    head: str = "inner",
) -> PreconditionedEnergy:
    from boltzdiff.models.mlp import ResMLP

    net = ResMLP(
        int(mu.numel()),
        width=width,
        depth=depth,
        n_freq=n_freq,
        fourier_scale=fourier_scale,
        input_fourier=input_fourier,
        input_fourier_scale=input_fourier_scale,
        head=head,
    )
    return PreconditionedEnergy(net, grid, mu, sigma_data, time_input=time_input)
