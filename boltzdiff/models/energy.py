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

With ``local_sigma = rho`` (the data's local width) the vector term is multiplied by
``c_t = a_t^2 / (alpha_t^2 rho^2 + sigma_t^2)`` and the scalar term is not (docs/method.md#local-scale).
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
    local_sigma : float, optional
        The data's local width ``rho`` (data units): the vector term is scaled by
        ``a_t^2 / (alpha_t^2 rho^2 + sigma_t^2)``. None: unscaled.
    """

    def __init__(
        self,
        net: nn.Module,
        grid: LevelGrid,
        mu: torch.Tensor,
        sigma_data: float,
        time_input: str = "logsnr",
        local_sigma: float | None = None,
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
        self.local_sigma = None if local_sigma is None else float(local_sigma)
        if self.local_sigma is not None and not self.local_sigma > 0:
            raise ConfigError(f"local_scale: expected a positive width, got {local_sigma}")
        self.register_buffer("c_net", self._net_scale(grid), persistent=False)
        #: learned log-normalisers, gauge f[-1] = 0 (see :meth:`apply_gauge`)
        self.f = nn.Parameter(torch.zeros(grid.n))

    def _net_scale(self, grid: LevelGrid) -> torch.Tensor | None:
        """The vector term's per-level factor ``c_t`` (None: unscaled)."""
        if self.local_sigma is None:
            return None
        a2 = grid.alpha**2 * self.sigma_data**2 + grid.sigma**2
        return (a2 / (grid.alpha**2 * self.local_sigma**2 + grid.sigma**2)).to(torch.get_default_dtype())

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
                if self.c_net is not None:
                    nn_term = self.c_net[lv].to(nn_term) * nn_term
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
    local_sigma: float | None = None,
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
    return PreconditionedEnergy(net, grid, mu, sigma_data, time_input=time_input, local_sigma=local_sigma)


def refine_levels(model: PreconditionedEnergy, factor: int) -> PreconditionedEnergy:
    """A copy of ``model`` (sharing nothing mutable with it) on a grid with ``factor - 1`` levels inserted
    between every two neighbours, evenly in log-SNR; the original levels keep their times exactly (level
    ``i`` becomes level ``factor * i``).

    The network sees the noise only through continuous inputs (the log-SNR or t embedding, and per-level
    scales such as ``a_t`` that are functions of ``t``), so it can be evaluated between the levels it was
    trained on; the preconditioning and the network's per-level buffers (``alpha``, ``sigma``, ``a2``) are
    recomputed for the new grid, and the time input keeps the original grid's normalisation. The learned
    log-normalisers ``f`` are interpolated linearly in between (only log-Z estimates use them; self-normalised
    SMC weights do not). Smaller steps shrink the SMC's incremental-weight variance per step roughly
    quadratically, so the variance summed over the path roughly halves for ``factor = 2``, at twice the cost.
    """
    import copy

    from boltzdiff.noise import LevelGrid

    factor = int(factor)
    if factor < 1:
        raise ConfigError(f"refine: expected an integer >= 1, got {factor}")
    if factor == 1:
        return model
    if not isinstance(model, PreconditionedEnergy):
        raise ConfigError(f"refine: needs a trained Gaussian-preconditioned energy, got {type(model).__name__}")
    g = model.grid
    lam = g.log_snr
    frac = torch.arange(factor, dtype=torch.float64) / factor
    lam_new = torch.cat([(lam[:-1, None] + frac * (lam[1:, None] - lam[:-1, None])).reshape(-1), lam[-1:]])
    t_new = g.schedule.t_of_log_snr(lam_new)
    t_new[::factor] = g.t  # the trained levels exactly
    grid = LevelGrid(g.schedule, t_new, g.spacing)
    new = copy.deepcopy(model)
    new.grid = grid
    dt = model.alpha.dtype
    dev = model.alpha.device

    def sd2(a2, alpha, sigma):  # the preconditioning variance a buffer was built with
        return float((a2[0].double() - sigma[0] ** 2) / alpha[0] ** 2)

    s2 = sd2(model.a2, g.alpha, g.sigma)
    new.alpha = grid.alpha.to(dt).to(dev)
    new.a2 = (grid.alpha**2 * s2 + grid.sigma**2).to(dt).to(dev)
    if model.time_input == "logsnr":
        c = (grid.log_snr - lam.mean()) / (lam.std() + 1e-12) * 0.25
    else:
        c = grid.t
    new.c_noise = c.to(dt).to(dev)
    for name in ("alpha", "a2", "c_noise"):  # the trained levels bit for bit
        getattr(new, name)[::factor] = getattr(model, name)
    if model.c_net is not None:
        new.c_net = new._net_scale(grid).to(dt).to(dev)
        new.c_net[::factor] = model.c_net
    f = model.f.detach().double()
    f_new = torch.cat([(f[:-1, None] + frac * (f[1:, None] - f[:-1, None])).reshape(-1), f[-1:]])
    new.f = torch.nn.Parameter(f_new.to(model.f.dtype).to(model.f.device), requires_grad=False)
    net = new.net
    if all(isinstance(getattr(net, k, None), torch.Tensor) for k in ("alpha", "sigma", "a2")):
        s2n = sd2(net.a2, g.alpha, g.sigma)
        net.alpha = grid.alpha.to(net.alpha)
        net.sigma = grid.sigma.to(net.sigma)
        old_buf = {k: getattr(model.net, k) for k in ("alpha", "sigma", "a2")}
        net.a2 = (grid.alpha**2 * s2n + grid.sigma**2).to(net.a2)
        for k, v in old_buf.items():
            getattr(net, k)[::factor] = v
    return new
