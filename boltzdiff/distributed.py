"""Scale-out on :mod:`torch.distributed`: data-parallel training and SMC with its energy evaluations shared out
(docs/method.md#distributed). Processes are started by ``torchrun`` or SLURM's ``srun``, never by boltzdiff::

    torchrun --nproc_per_node 2 -m boltzdiff -- train --system gmm2_unbalanced --out runs/gmm
    srun --ntasks 4 python -m boltzdiff sample runs/gmm --n 4096 --out s.npz   # MASTER_ADDR, MASTER_PORT exported

(``--`` keeps torchrun from reading the command's own flags as abbreviations of its own: ``--n`` would match
``--nnodes``.)

:func:`init_from_env` reads who this process is from the launcher's environment:

- torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
- srun: ``SLURM_PROCID``, ``SLURM_NTASKS`` (``SLURM_STEP_NUM_TASKS`` where srun sets it) and ``SLURM_LOCALID``,
  with ``MASTER_ADDR`` (e.g. the first host of ``scontrol show hostnames $SLURM_JOB_NODELIST``) and
  ``MASTER_PORT`` exported by the job script: SLURM says who the processes are, not where they meet. Without
  them a SLURM environment counts as one process (a job script's own step looks like task 0 of the job's
  tasks), and task 1 or later is an error;
- neither: one process, and every helper here is a no-op.

The backend is ``nccl`` for CUDA (process ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``) and ``gloo`` on the CPU.

Training (:class:`LossStep`): every process draws the *whole* global batch (data indices, levels, noise) from
the same generator, seeded as in one process, and keeps its rows; the loss is the forward of a
DistributedDataParallel module, so the gradients of all parameters, the log-normalisers ``f`` included, are
averaged over the processes. The parameters stay identical everywhere, and a run is the one-process run up to
the order of the gradient sums; resuming with another number of processes continues the same run.

SMC (:class:`Communicator`): every process holds all particles and the same generator and runs the same
sampler; the energy evaluations (the model's energies and scores, the target's energies and forces), which are
its cost, are split into contiguous row blocks, one per process, and all-gathered. ESS, resampling and log Z
therefore see the global weights on every process by construction.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from boltzdiff.errors import ConfigError

log = logging.getLogger(__name__)


# -- the launch -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node, and the
    ``launcher`` whose environment said so (``torchrun``, ``srun`` or ``none``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"


def _int_var(env, name: str) -> int:
    value = env.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None


def launch_from_env(env=None) -> Launch:
    """The launch that the environment ``env`` (default ``os.environ``) describes; checks only, connects nothing.

    A launch that cannot be right (``WORLD_SIZE`` without ``RANK``, ``RANK >= WORLD_SIZE``, a missing
    ``MASTER_ADDR``...) is a one-line :class:`~boltzdiff.errors.ConfigError` naming the variable.
    """
    env = os.environ if env is None else env
    if "RANK" in env or "WORLD_SIZE" in env:
        for name, other in (("RANK", "WORLD_SIZE"), ("WORLD_SIZE", "RANK")):
            if name not in env:
                raise ConfigError(
                    f"{name}: {other}={env[other]} is set but {name} is not; start the processes with torchrun "
                    "(or unset both for one process)"
                )
        rank_var, size_var, launcher = "RANK", "WORLD_SIZE", "torchrun"
        local = _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else None
    elif "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        rank_var, launcher = "SLURM_PROCID", "srun"
        size_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        local = _int_var(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else None
        if _int_var(env, size_var) > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
            if _int_var(env, rank_var) == 0:
                return Launch()
            raise ConfigError(
                f"MASTER_ADDR: srun started task {env[rank_var]} of {env[size_var]} but MASTER_ADDR and "
                "MASTER_PORT are not set; export them in the job script (docs/method.md#distributed)"
            )
    else:
        return Launch()
    rank, size = _int_var(env, rank_var), _int_var(env, size_var)
    if size < 1:
        raise ConfigError(f"{size_var}: expected an integer >= 1, got {size}")
    if not 0 <= rank < size:
        raise ConfigError(f"{rank_var}: expected 0 <= {rank_var} < {size_var} = {size}, got {rank}")
    if local is not None and local < 0:
        raise ConfigError(f"LOCAL_RANK: expected an integer >= 0, got {local}")
    if size > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise ConfigError(f"{name}: {size_var}={size} processes need {name} to meet at; it is not set")
        _int_var(env, "MASTER_PORT")
    return Launch(rank, size, rank if local is None else local, launcher)


_launch = Launch()
_owned = False  # whether init_from_env started the process group (and shutdown() should end it)


def initialised() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def init_from_env(device: str | torch.device = "cpu", timeout_s: float = 1800.0) -> Launch:
    """Join the process group that the launcher's environment describes (see the module's docstring); one
    process (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) starts nothing. ``device`` picks the backend: ``nccl`` for
    CUDA, ``gloo`` otherwise. A group that is already running (started by the caller) is used as it is."""
    global _launch, _owned
    if initialised():
        _launch = Launch(tdist.get_rank(), tdist.get_world_size(), local_rank(), _launch.launcher)
        return _launch
    launch = launch_from_env()
    if launch.world_size > 1:
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(launch.local_rank)
        tdist.init_process_group(
            "nccl" if cuda else "gloo",
            init_method="env://",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        _owned = True
        log.debug(
            "process %d of %d (%s, local rank %d)", launch.rank, launch.world_size, launch.launcher, launch.local_rank
        )
    _launch = launch
    return launch


def shutdown() -> None:
    """Leave the process group if :func:`init_from_env` started it."""
    global _owned, _launch
    if _owned and initialised():
        tdist.destroy_process_group()
    _owned, _launch = False, Launch()


@contextmanager
def launched(device: str | torch.device = "cpu"):
    """``with launched(device) as comm:`` a command body run by every process of a torchrun/srun launch
    (:func:`init_from_env` ... :func:`shutdown`); ``comm`` is the SMC :class:`Communicator`. Processes other
    than rank 0 log warnings only."""
    init_from_env(device)
    root = logging.getLogger()
    level = root.level
    if not is_main():
        root.setLevel(logging.WARNING)
    try:
        yield Communicator.from_env()
    finally:
        root.setLevel(level)
        shutdown()


# -- helpers (no-ops in one process) ----------------------------------------------------------------------------
def world() -> int:
    """Number of processes (1 without a process group)."""
    return tdist.get_world_size() if initialised() else 1


def rank() -> int:
    return tdist.get_rank() if initialised() else 0


def local_rank() -> int:
    return _launch.local_rank if _launch.world_size > 1 else int(os.environ.get("LOCAL_RANK", rank()))


def is_main() -> bool:
    """Whether this process writes outputs (rank 0; the only process when there is no group)."""
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        tdist.barrier()


def _comm_device(t: torch.Tensor | None = None) -> torch.device:
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if t is None else t.device


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """The tensors ``t`` of all processes (same shape everywhere) concatenated along dim 0 in rank order."""
    if world() == 1:
        return t
    src = t.detach().contiguous().to(_comm_device(t))
    parts = [torch.empty_like(src) for _ in range(world())]
    tdist.all_gather(parts, src)
    return torch.cat(parts).to(t.device)


def broadcast_object(obj, src: int = 0):
    """``obj`` of process ``src``, on every process (pickled)."""
    if world() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src, device=_comm_device() if tdist.get_backend() == "nccl" else None)
    return box[0]


def any_true(flag: bool) -> bool:
    """Whether ``flag`` holds on any process (e.g. a Ctrl-C that reached one of them)."""
    if world() == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=_comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def device_for(device: str | torch.device) -> torch.device:
    """``device``, with a bare ``cuda`` read as this process's ``cuda:LOCAL_RANK`` under a launch."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None and world() > 1:
        return torch.device("cuda", local_rank())
    return d


def world_history(saved, step: int) -> list[list[int]]:
    """``[[first_step, world_size], ...]``: the process counts a run was trained with, from a checkpoint's list
    ``saved`` (a checkpoint without one was written by one process) and the current count from ``step`` on."""
    hist = [[int(a), int(b)] for a, b in (saved or ([[0, 1]] if step else []))]
    if not hist or hist[-1][1] != world():
        hist.append([int(step), world()])
    return hist


# -- data-parallel training --------------------------------------------------------------------------------
class _LossModule(torch.nn.Module):
    """The loss as a module's forward, so that DistributedDataParallel sees every parameter the loss uses."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, loss_fn, *args, **kwargs):
        res = loss_fn(self.model, *args, **kwargs)
        return res.total, res


class LossStep:
    """``step(loss_fn, x0, levels, ...) -> LossOutput``: the loss of this process's rows ``rows`` (a slice) of
    the global batch of ``batch_size``.

    One process: ``loss_fn(model, ...)`` as it is. Under a launch the model is wrapped in DistributedDataParallel
    (its plain ``state_dict`` is unchanged), whose backward averages the gradients over the processes; as each
    process's loss is the mean over its equal share of the rows, that is the gradient of the global batch's mean.
    The returned ``total``, ``dsm`` and ``clf`` carry the global means as values (one all-reduce), so a
    non-finite loss on any process skips the step everywhere; ``total`` keeps the local graph for ``backward``.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int):
        self.world, self.rank = world(), rank()
        if batch_size % self.world:
            raise ConfigError(
                f"batch_size: {batch_size} does not split evenly over {self.world} processes (WORLD_SIZE); "
                f"expected a multiple of {self.world}"
            )
        b = batch_size // self.world
        self.rows = slice(self.rank * b, (self.rank + 1) * b)
        self.module: torch.nn.Module = _LossModule(model)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # f gets no gradient in DSM-only steps: find_unused_parameters leaves it out of those reductions
            self.module = DistributedDataParallel(
                self.module,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    def __call__(self, loss_fn, *args, **kwargs):
        total, res = self.module(loss_fn, *args, **kwargs)
        if self.world == 1:
            return res
        clf = torch.zeros_like(res.dsm) if res.clf is None else res.clf
        vals = torch.stack([total.detach(), res.dsm, clf]).to(torch.float64)
        dev = vals.device
        vals = vals.to(_comm_device(vals))
        tdist.all_reduce(vals)
        vals = (vals / self.world).to(dev)
        if not bool(torch.isfinite(vals[0])):
            total.backward()  # DDP expects a backward after each forward; the step is skipped, its gradient unused
        g = vals.to(total.dtype)
        return dataclasses.replace(
            res, total=total + (g[0] - total.detach()), dsm=g[1], clf=None if res.clf is None else g[2]
        )


# -- SMC with the energy evaluations shared out ------------------------------------------------------------
class Communicator:
    """The processes that share one SMC run: this one is ``rank`` of ``size``. With ``size`` 1 (the default,
    :data:`SINGLE`) every method returns its input; :func:`boltzdiff.samplers.smc.smc` takes one as ``comm``.

    All processes hold the same particles and the same generator state; :meth:`shard_model` and
    :meth:`shard_target` wrap the energies so that each process evaluates the rows :meth:`rows` (a contiguous
    block of ``ceil(n / size)``, the last ones padded with copies of the last particle) and all of them receive
    every row (:meth:`gather_rows`). Cost per evaluation of ``n`` particles in ``d`` dimensions: an all-gather of
    ``n (d + 1)`` numbers, plus the sampler's own ``O(n d)`` arithmetic and memory on every process.
    """

    def __init__(self, rank: int = 0, size: int = 1):
        self.rank, self.size = int(rank), int(size)

    @classmethod
    def from_env(cls) -> Communicator:
        """The current process group (one process without one)."""
        return cls(rank(), world())

    def rows(self, n: int) -> torch.Tensor:
        """Indices ``(ceil(n / size),)`` of the rows this process evaluates."""
        c = math.ceil(n / self.size)
        return torch.arange(self.rank * c, (self.rank + 1) * c).clamp_(max=n - 1)

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """All processes' ``local`` blocks (from :meth:`rows`) as the ``n`` rows in order."""
        return all_gather_tensor(local)[:n] if self.size > 1 else local

    def shard_model(self, model):
        return model if self.size == 1 else _ShardedModel(model, self)

    def shard_target(self, target):
        return target if self.size == 1 or target is None else _ShardedTarget(target, self)

    def check_same(self, value: float, what: str) -> None:
        """Raise if ``value`` differs between the processes (the replicated sampler went out of step)."""
        if self.size == 1:
            return
        got = all_gather_tensor(torch.tensor([float(value)], dtype=torch.float64))
        if not bool((got == got[0]).all() | (torch.isnan(got).all())):
            raise RuntimeError(f"distributed SMC: {what} differs between the processes: {got.tolist()}")


SINGLE = Communicator()


class _Sharded:
    """A model or target whose attributes are its wrapped one's, except the evaluations defined below."""

    def __init__(self, inner, comm: Communicator):
        self._inner, self._comm = inner, comm

    def __getattr__(self, name):
        if name in ("_inner", "_comm"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return self._comm.rows(x.shape[0]).to(x.device)


class _ShardedModel(_Sharded):
    """A level energy whose ``energy_and_score`` and ``score`` (without ``create_graph``) are computed by rows
    across the processes; ``energy`` itself (used for Hessians, on a few particles) runs on every process."""

    def _level(self, level, idx):
        return level[idx] if isinstance(level, torch.Tensor) and level.dim() > 0 else level

    def energy_and_score(self, x: torch.Tensor, level):
        idx = self._rows(x)
        e, s = self._inner.energy_and_score(x[idx], self._level(level, idx))
        return self._comm.gather_rows(e, x.shape[0]), self._comm.gather_rows(s, x.shape[0])

    def score(self, x: torch.Tensor, level, create_graph: bool = False):
        if create_graph:
            return self._inner.score(x, level, create_graph=True)
        idx = self._rows(x)
        return self._comm.gather_rows(self._inner.score(x[idx], self._level(level, idx)), x.shape[0])


class _GatheredEnergy(torch.autograd.Function):
    """A target's energy ``(B,)`` evaluated by rows across the processes, with its gradient (first order)."""

    @staticmethod
    def forward(ctx, x, sharded):
        idx = sharded._rows(x)
        with torch.enable_grad():
            xr = x[idx].detach().requires_grad_(True)
            u = sharded._inner.energy(xr)
            (g,) = torch.autograd.grad(u.sum(), xr)
        n = x.shape[0]
        ctx.save_for_backward(sharded._comm.gather_rows(g, n))
        return sharded._comm.gather_rows(u.detach(), n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u):
        (g,) = ctx.saved_tensors
        return grad_u[:, None].to(g) * g, None


class _ShardedTarget(_Sharded):
    """A target whose ``energy`` (and its gradient, for MALA and the bridge) is computed by rows across the
    processes."""

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _GatheredEnergy.apply(x, self)
        with torch.no_grad():
            return self._comm.gather_rows(self._inner.energy(x[self._rows(x)]), x.shape[0])
