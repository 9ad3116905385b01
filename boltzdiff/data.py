"""Training data: exact samples for analytic targets, or arrays from files (.npy, .npz, .h5)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from boltzdiff.errors import ConfigError

log = logging.getLogger(__name__)


def load_array(path: str | Path, dim: int) -> np.ndarray:
    """Read configurations from ``path`` as ``(n, dim)`` float array.

    ``.npy``: the array; ``.npz``: key ``x``, ``positions`` or the only array; ``.h5``: dataset ``positions`` or
    ``coordinates`` (mdtraj HDF5, nm). Rows are reshaped to ``dim`` values each.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data: file {p} does not exist (expected .npy, .npz or .h5 with configurations)")
    try:
        if p.suffix == ".npy":
            arr = np.load(p)
        elif p.suffix == ".npz":
            with np.load(p) as z:
                keys = [k for k in ("x", "positions") if k in z] or list(z.keys())
                if len(keys) != 1 and not any(k in z for k in ("x", "positions")):
                    raise ConfigError(f"data: {p} holds arrays {list(z.keys())}; expected one named 'x' or 'positions'")
                arr = z[keys[0]]
        elif p.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(p, "r") as fh:
                key = next((k for k in ("positions", "coordinates") if k in fh), None)
                if key is None:
                    raise ConfigError(f"data: {p} has no dataset 'positions' or 'coordinates'")
                arr = fh[key][()]
        else:
            raise ConfigError(f"data: {p} has suffix {p.suffix!r}; expected .npy, .npz or .h5")
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"data: cannot read {p} ({e})") from None
    arr = np.asarray(arr)
    if arr.ndim < 2 or int(np.prod(arr.shape[1:])) != dim:
        raise ConfigError(f"data: {p} has shape {arr.shape}; expected (n, {dim}) or (n, ...) with {dim} values per row")
    arr = arr.reshape(arr.shape[0], dim).astype(np.float64)
    ok = np.isfinite(arr).all(-1)
    if not ok.all():
        log.warning("data: dropped %d of %d rows of %s with non-finite values", (~ok).sum(), len(ok), p)
        arr = arr[ok]
    if len(arr) == 0:
        raise ConfigError(f"data: {p} has no finite configurations")
    return arr


def training_data(target, data_path: str | None, n_data: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, d)`` training configurations (default dtype)."""
    if data_path:
        return torch.as_tensor(load_array(data_path, target.dim), dtype=torch.get_default_dtype())
    if not target.has_exact_samples:
        raise ConfigError(
            f"data: system {getattr(target, 'name', type(target).__name__)} has no exact sampler; give 'data' "
            "(a .npy/.npz/.h5 file of configurations, e.g. from `boltzdiff simulate`)"
        )
    return target.sample(n_data, generator=generator).to(torch.get_default_dtype())


def load_log_weights(path: str | Path, n_rows: int) -> torch.Tensor:
    """Per-row log-weights ``(n_rows,)`` float64 of the training data from a .npy file (``data_log_weights``);
    one-line errors for a missing file, a wrong length or non-finite values."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data_log_weights: file {p} does not exist (expected .npy with one log-weight per data row)")
    try:
        a = np.load(p)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data_log_weights: cannot read {p} ({e})") from None
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.shape[0] != n_rows:
        raise ConfigError(f"data_log_weights: {p} holds {a.shape[0]} values; expected {n_rows}, one per data row")
    if not np.isfinite(a).all():
        raise ConfigError(f"data_log_weights: {p} has non-finite values")
    return torch.as_tensor(a)


def batch_indices(n: int, batch: int, generator: torch.Generator, probs: torch.Tensor | None = None) -> torch.Tensor:
    """``(batch,)`` row indices of one training batch: uniform over ``n`` rows, or with replacement in proportion
    to ``probs`` ``(n,)`` (weighted data)."""
    if probs is None:
        return torch.randint(0, n, (batch,), generator=generator)
    return torch.multinomial(probs, batch, replacement=True, generator=generator)


def weighted_view(data: torch.Tensor, probs: torch.Tensor | None, seed: int) -> torch.Tensor:
    """``data`` itself, or (weighted data) as many rows drawn in proportion to ``probs`` from their own stream
    of ``seed``: what statistics of the data distribution (mean, width, pair distances) are taken over."""
    if probs is None:
        return data
    g = torch.Generator().manual_seed(int(seed) + 7919)
    return data[torch.multinomial(probs, data.shape[0], replacement=True, generator=g)]


def _temperature_ratio(system, data_temperature: float | None) -> float:
    """``T_sys / T_data``: the factor from the system's reduced energy to the data's (1 without a data
    temperature)."""
    if data_temperature is None:
        return 1.0
    if system.temperature is None:
        raise ConfigError(f"data_temperature: system {system.name!r} has no temperature to rescale to")
    return float(system.temperature) / float(data_temperature)


def data_scores(
    system, data: torch.Tensor, data_temperature: float | None = None, chunk: int = 4096, mask: bool = False
):
    """``grad log p_data`` at each training configuration, from the target's forces: data sampled at
    ``data_temperature`` follow ``exp(-u T_sys / T_data)``, so the score is ``(T_sys / T_data) force``.
    Rows whose force is not finite are dropped (logged). Returns ``(data, score)`` (``mask``: and the kept rows)."""
    ratio = _temperature_ratio(system, data_temperature)
    out = []
    for s in range(0, data.shape[0], chunk):
        xb = data[s : s + chunk].to(torch.float64)
        out.append(system.target.force(xb).detach().to(torch.float64))
    g = torch.cat(out) * ratio
    ok = torch.isfinite(g).all(-1)
    if not ok.all():
        log.warning("tsm: %d of %d training configurations have a non-finite force; dropped", int((~ok).sum()), len(g))
        if not ok.any():
            raise ConfigError("tsm_scale: no training configuration has a finite force")
    return (data[ok], g[ok].to(data.dtype)) + ((ok,) if mask else ())


def data_energies(system, data: torch.Tensor, data_temperature: float | None = None, chunk: int = 4096):
    """The exact reduced energies of the training configurations, rescaled like :func:`data_scores` (data
    sampled at ``data_temperature`` follow ``exp(-u T_sys / T_data)``): ``(F,)`` in the data's dtype."""
    ratio = _temperature_ratio(system, data_temperature)
    u = torch.cat(
        [system.target.energy(data[s : s + chunk].to(torch.float64)).detach() for s in range(0, len(data), chunk)]
    )
    bad = int((~torch.isfinite(u)).sum())
    if bad:
        raise ConfigError(f"energy_weight: {bad} of {len(u)} training configurations have a non-finite energy")
    return (u.to(torch.float64) * ratio).to(device=data.device, dtype=data.dtype)
