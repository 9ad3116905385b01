"""Residual MLP with a Fourier time embedding: the vector network for mixtures and other flat targets."""

from __future__ import annotations

import math

import torch
from torch import nn

#: output heads of ResMLP, see its ``head`` parameter
HEADS = ("inner", "inner+scalar", "scalar")


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar noise input, ``(B,) -> (B, 2 * n_freq)``."""

    def __init__(self, n_freq: int = 32, scale: float = 4.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(n_freq, generator=torch.Generator().manual_seed(1234)) * scale)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * c[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, width: int, emb: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb, width)
        self.lin2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h, emb_rows):
        """``emb_rows``: this block's time projection, already gathered per row ``(B, width)``."""
        z = self.lin1(self.act(self.norm(h))) + emb_rows
        return h + self.lin2(self.act(z))


class ResMLP(nn.Module):
    """``(x: (B, d), c_noise: (B,)) -> (B, d)`` (or ``(B, d + 1)``, ``(B, 1)``: see ``head``); smooth activations
    (SiLU), last layer zero-initialised.

    Parameters
    ----------
    dim : int
        Input and output size.
    width, depth : int
        Hidden width and number of residual blocks.
    n_freq : int
        Fourier features of the noise input.
    fourier_scale : float
        Standard deviation of their frequencies: lower values make the energy vary more smoothly across levels.
    input_fourier : int
        Number of random Fourier features of the (preconditioned) input appended to it (0: none). For
        low-dimensional targets with many narrow modes, where a plain MLP is too smooth to resolve them.
    input_fourier_scale : float
        Typical length of their frequency vectors (cycles per unit of the preconditioned input; each component
        has standard deviation ``input_fourier_scale / sqrt(dim)``).
    head : {"inner", "inner+scalar", "scalar"}
        What the network returns for :class:`boltzdiff.models.energy.PreconditionedEnergy`: a vector ``(B, d)``
        (energy term ``<NN, x~>``), the vector plus a scalar ``g`` as one more column ``(B, d + 1)`` (term
        ``<NN, x~> + g``), or the scalar alone ``(B, 1)`` (term ``g``).
    """

    def __init__(
        self,
        dim: int,
        width: int = 256,
        depth: int = 3,
        n_freq: int = 32,
        fourier_scale: float = 4.0,
        input_fourier: int = 0,
        input_fourier_scale: float = 4.0,
        head: str = "inner",
    ):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {head!r}")
        self.head = head
        self.temb = FourierEmbedding(n_freq, fourier_scale)
        emb = 2 * n_freq
        self.temb_mlp = nn.Sequential(nn.Linear(emb, width), nn.SiLU(), nn.Linear(width, width))
        if input_fourier > 0:
            g = torch.Generator().manual_seed(4321)
            self.register_buffer(
                "x_freqs", torch.randn(dim, input_fourier, generator=g) * (input_fourier_scale / math.sqrt(dim))
            )
        else:
            self.x_freqs = None
        self.inp = nn.Linear(dim + 2 * max(0, input_fourier), width)
        self.blocks = nn.ModuleList([ResBlock(width, width) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, {"inner": dim, "inner+scalar": dim + 1, "scalar": 1}[head])
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        # a batch holds few distinct noise levels: embed each once, then gather per row
        levels, inv = torch.unique(c_noise, return_inverse=True)
        temb = self.temb_mlp(self.temb(levels))
        if self.x_freqs is not None:
            arg = 2 * math.pi * (x @ self.x_freqs)
            x = torch.cat([x, torch.cos(arg), torch.sin(arg)], dim=-1)
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, b.emb(temb)[inv])
        return self.out(torch.nn.functional.silu(self.out_norm(h)))
