"""The Target protocol: a reduced energy u(x) = U(x)/kT on configurations.

Conventions (bgflow-compatible):

- positions are in nm (for molecules); energies are *reduced* (units of kT) and have shape ``(B,)``;
- ``log_prob(x) = -energy(x)`` (unnormalised unless the target says otherwise);
- ``force(x) = -grad_x energy(x)``, derived once here by autograd.

Subclasses implement :meth:`Target._energy` on a flat batch ``(B, dim)``; the public :meth:`Target.energy`
checks and reshapes inputs. Any object with a bgflow-style ``energy(x)`` method returning ``(B,)`` or
``(B, 1)`` can be wrapped with :func:`as_target`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from boltzdiff.errors import ConfigError
from boltzdiff.geometry import chirality_signs


class Target:
    """Base class of all targets.

    Parameters
    ----------
    dim : int
        Number of degrees of freedom ``d`` (``3 n`` for ``n`` particles in 3-D).
    event_shape : tuple of int, optional
        Natural shape of one configuration, e.g. ``(n, 3)``; defaults to ``(dim,)``.
    """

    #: True when ``log_prob`` is normalised (``-energy`` integrates to one).
    normalized: bool = False

    def __init__(self, dim: int, event_shape: tuple[int, ...] | None = None):
        self.dim = int(dim)
        self.event_shape = tuple(event_shape) if event_shape is not None else (self.dim,)
        if math.prod(self.event_shape) != self.dim:
            raise ConfigError(f"event_shape {self.event_shape} does not have dim={self.dim} entries")

    # -- shape handling ---------------------------------------------------------------------------------
    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` as ``(B, dim)``; accepts ``(B, dim)``, ``(B, *event_shape)`` or one configuration."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=torch.get_default_dtype())
        if x.shape == torch.Size(self.event_shape) or (x.dim() == 1 and x.shape[0] == self.dim):
            x = x.reshape(1, self.dim)
        if x.dim() >= 2 and math.prod(x.shape[1:]) == self.dim:
            return x.reshape(x.shape[0], self.dim)
        raise ConfigError(
            f"{type(self).__name__}: expected positions of shape (B, {self.dim}) or (B, "
            f"{', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
        )

    # -- the protocol -----------------------------------------------------------------------------------
    def _energy(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Reduced energy of a flat batch ``x: (B, dim)`` -> ``(B,)``."""
        raise NotImplementedError

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy u(x) in kT, shape ``(B,)``."""
        u = self._energy(self.flatten(x))
        if u.dim() == 2 and u.shape[1] == 1:
            u = u[:, 0]
        return u

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``-energy(x)``, shape ``(B,)``."""
        return -self.energy(x)

    def gauge_energy(self, x: torch.Tensor) -> torch.Tensor:
        """The part of ``energy(x)`` that only fixes a gauge, such as :class:`ComRestrained`'s restraint on the
        centre of mass, ``(B,)`` float64: zero here. ``energy - gauge_energy`` is the physical energy."""
        return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """``-grad_x energy(x)`` with the shape of ``x`` (kT per unit length)."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            u = self.energy(xr)
            (g,) = torch.autograd.grad(u.sum(), xr)
        return -g

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples ``(n, dim)`` where the target has them."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    @property
    def has_exact_samples(self) -> bool:
        return type(self).sample is not Target.sample


class WrappedTarget(Target):
    """Adapts any object with a bgflow-style ``energy(x)`` (returning ``(B,)`` or ``(B, 1)``)."""

    def __init__(self, obj: Any, dim: int | None = None, event_shape: tuple[int, ...] | None = None):
        dim = dim if dim is not None else getattr(obj, "dim", None)
        if dim is None:
            raise ConfigError("as_target: the wrapped object has no `dim`; pass dim= explicitly")
        if event_shape is None:
            es = getattr(obj, "event_shapes", None) or getattr(obj, "event_shape", None)
            if es is not None and not isinstance(es, int):
                es = es[0] if isinstance(es[0], (tuple, list, torch.Size)) else es
                event_shape = tuple(es)
        super().__init__(int(dim), event_shape)
        self.obj = obj

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        inp = x.reshape(x.shape[0], *self.event_shape) if len(self.event_shape) > 1 else x
        u = self.obj.energy(inp)
        if u.dim() == 2 and u.shape[1] == 1:
            u = u[:, 0]
        if u.shape != (x.shape[0],):
            raise ConfigError(
                f"{type(self.obj).__name__}.energy returned shape {tuple(u.shape)}; expected ({x.shape[0]},) "
                f"or ({x.shape[0]}, 1)"
            )
        return u

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if not hasattr(self.obj, "sample"):
            return super().sample(n, generator)
        return self.flatten(self.obj.sample(n))


def gauge_of(target, x: torch.Tensor) -> torch.Tensor:
    """``target.gauge_energy(x)`` (float64), or zeros for an energy object without one (e.g. a bgflow energy)."""
    g = getattr(target, "gauge_energy", None)
    return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device) if g is None else g(x).double()


def as_target(obj: Any, dim: int | None = None) -> Target:
    """Return ``obj`` if it is a :class:`Target`, else wrap a bgflow-style energy object."""
    if isinstance(obj, Target):
        return obj
    if not hasattr(obj, "energy"):
        raise ConfigError(f"as_target: {type(obj).__name__} has no energy(x) method")
    return WrappedTarget(obj, dim=dim)


class ComRestrained(Target):
    """A translation-invariant particle target made proper by a harmonic term on the centre of mass.

    ``u'(x) = u(x) + n |x_bar|^2 / (2 var)`` with ``x_bar`` the centre of the ``n`` particles: the centre of mass
    then follows ``N(0, var / n)`` independently of the internal coordinates, so every translation-invariant
    observable has the same distribution under ``u'`` as under ``u``. With ``var`` equal to the model's own
    centre-of-mass variance, importance weights against an invariant model are unchanged by this gauge.
    """

    normalized = False

    def __init__(self, target: Target, var: float):
        super().__init__(target.dim, target.event_shape)
        if len(target.event_shape) != 2:
            raise ConfigError("ComRestrained: needs a particle target with event_shape (n, spatial_dim)")
        self.inner, self.var = target, float(var)

    def _com_term(self, x):
        n, s = self.event_shape
        com = x.reshape(x.shape[0], n, s).mean(1)
        return n * (com**2).sum(-1) / (2 * self.var)

    def _energy(self, x):
        return self.inner.energy(x) + self._com_term(x)

    def gauge_energy(self, x):
        return self._com_term(self.flatten(x).double()) + gauge_of(self.inner, x)


class HandRestricted(Target):
    """A target restricted to one mirror image: ``u(x)`` where every declared chiral centre has the reference
    hand, ``+inf`` (weight zero) where any has the other.

    A force field gives a molecule and its mirror image the same energy, so an unrestricted target has both
    enantiomers in equal measure; a sampler whose model prefers one hand (``pairmlp: {chiral_norm: true}``)
    would give its rare mirror-image particles weights ~``exp(E(mirror) - E)`` that dominate every estimate.
    Restricted, the target is the declared enantiomer alone (normalising constant halved, every observable of
    that enantiomer unchanged).

    Parameters
    ----------
    target : particle target of event shape ``(n, 3)``
    chiral_quads : ``[(center, a, b, c), ...]`` atom indices
    reference_sign : one sign (+1/-1) per quadruple (:func:`boltzdiff.geometry.reference_chirality`)
    """

    normalized = False

    def __init__(self, target: Target, chiral_quads, reference_sign):
        super().__init__(target.dim, target.event_shape)
        if tuple(target.event_shape)[-1:] != (3,):
            raise ConfigError("HandRestricted: needs a 3-D particle target with event_shape (n, 3)")
        self.inner = target
        self.quads = [tuple(int(i) for i in q) for q in chiral_quads]
        self.ref = torch.as_tensor([float(v) for v in reference_sign])
        if not self.quads or self.ref.numel() != len(self.quads):
            raise ConfigError(f"HandRestricted: expected one reference sign per chiral centre, got {reference_sign!r}")

    def gauge_energy(self, x):
        return gauge_of(self.inner, x)

    def _energy(self, x):
        u = self.inner.energy(x)
        wrong = (chirality_signs(x.detach(), self.quads) != self.ref.to(x)).any(-1)
        return torch.where(wrong, torch.full_like(u, float("inf")), u)
