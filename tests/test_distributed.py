"""Scale-out on torch.distributed (boltzdiff/distributed.py): two CPU processes (gloo, spawned with
torch.multiprocessing) against one, with exact answers: DDP gradients equal the one-process gradient of the same
global batch, a two-process training run equals the one-process run and its checkpoint resumes in one process
(and back), and distributed SMC equals one-process SMC for a fixed seed (float64)."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from boltzdiff import distributed as bd
from boltzdiff.config import TrainConfig
from boltzdiff.errors import ConfigError
from boltzdiff.losses import diffclf_loss, draw_levels, dsm_only_loss
from boltzdiff.models.exact import ExactMixtureEnergy
from boltzdiff.noise import VPSchedule, make_grid
from boltzdiff.samplers import MCMCConfig, SMCConfig, smc
from boltzdiff.targets.gmm import GaussianMixture
from boltzdiff.train import build_grid, build_model, train

WORLD = 2


# -- spawning --------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, name, args):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD, init_method=f"tcp://127.0.0.1:{port}")
    try:
        globals()[name](rank, *args)
    finally:
        tdist.destroy_process_group()


def spawn(fn, *args):
    """Run ``fn(rank, *args)`` in WORLD processes of one gloo group; an exception in one fails the test. Forked
    (torch and boltzdiff are imported already, which is most of a spawned process's start on a busy machine)."""
    mp.start_processes(_worker, args=(_free_port(), fn.__name__, args), nprocs=WORLD, start_method="fork")


# -- the launch environment --------------------------------------------------------------------------------
TORCHRUN = dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")


def test_launch_from_env():
    assert bd.launch_from_env({}) == bd.Launch()
    assert bd.launch_from_env(TORCHRUN) == bd.Launch(1, 2, 1, "torchrun")
    assert bd.launch_from_env(dict(RANK="0", WORLD_SIZE="1")) == bd.Launch(0, 1, 0, "torchrun")
    slurm = dict(SLURM_PROCID="3", SLURM_NTASKS="4", SLURM_LOCALID="1", MASTER_ADDR="n1", MASTER_PORT="29500")
    assert bd.launch_from_env(slurm) == bd.Launch(3, 4, 1, "srun")
    # a job script's own step (task 0, no meeting point) is one process; srun's count wins over the job's
    assert bd.launch_from_env(dict(SLURM_PROCID="0", SLURM_NTASKS="4")) == bd.Launch()
    assert bd.launch_from_env({**slurm, "SLURM_STEP_NUM_TASKS": "8"}).world_size == 8


@pytest.mark.parametrize(
    "env, name",
    [
        (dict(WORLD_SIZE="2", MASTER_ADDR="h", MASTER_PORT="1"), "RANK"),
        (dict(RANK="0"), "WORLD_SIZE"),
        ({**TORCHRUN, "RANK": "2"}, "RANK"),
        ({**TORCHRUN, "RANK": "-1"}, "RANK"),
        ({**TORCHRUN, "WORLD_SIZE": "two"}, "WORLD_SIZE"),
        ({**TORCHRUN, "WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE"),
        ({k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"}, "MASTER_ADDR"),
        ({**TORCHRUN, "MASTER_PORT": "x"}, "MASTER_PORT"),
        (dict(SLURM_PROCID="1", SLURM_NTASKS="2"), "MASTER_ADDR"),
        (dict(SLURM_PROCID="2", SLURM_NTASKS="2", MASTER_ADDR="h", MASTER_PORT="1"), "SLURM_PROCID"),
    ],
)
def test_mismatched_launch_is_one_line_config_error(env, name, monkeypatch):
    with pytest.raises(ConfigError, match=f"^{name}:") as e:
        bd.launch_from_env(env)
    assert "\n" not in str(e.value)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=f"^{name}:"):  # before any connection is tried
        bd.init_from_env()
    assert not bd.initialised()


def test_cli_reports_a_bad_launch_in_one_line(tmp_path, monkeypatch, capsys):
    from boltzdiff.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    assert main(["train", "--system", "gmm2_unbalanced", "--steps", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("boltzdiff train: error: RANK: WORLD_SIZE=2 is set") and "\n" not in err
    assert not (tmp_path / "r" / "ckpt.pt").exists()


def test_single_process_helpers_are_no_ops():
    assert (bd.world(), bd.rank(), bd.is_main()) == (1, 0, True)
    t = torch.arange(3.0)
    assert bd.all_gather_tensor(t) is t and bd.broadcast_object({"a": 1}) == {"a": 1} and bd.any_true(True)
    bd.barrier()
    assert bd.SINGLE.shard_model(t) is t and bd.SINGLE.shard_target(None) is None


# -- data-parallel gradients ---------------------------------------------------------------------------------
B, K = 8, 3


def _grad_setup():
    """A float64 MLP energy (random f) on gmm2_unbalanced, and one global batch with its noise."""
    from boltzdiff.systems import load_system

    cfg = TrainConfig(width=16, depth=2, n_levels=12, k=K, batch_size=B)
    system = load_system(cfg.system)
    torch.manual_seed(0)
    model = build_model(cfg, build_grid(cfg), torch.zeros(system.target.dim), 0.8, system).double()
    with torch.no_grad():
        model.f.normal_()
    g = torch.Generator().manual_seed(1)
    x0 = system.target.sample(B, generator=g).double()
    levels = draw_levels(B, model.grid.n, K, g, "mixed")
    eps = torch.randn((B, K, system.target.dim), generator=g, dtype=torch.float64)
    return model, x0, levels, eps


def _grads(model, loss_fn, x0, levels, eps):
    step = bd.LossStep(model, torch.device("cpu"), B)
    res = step(loss_fn, x0[step.rows], levels[step.rows], 0.8, eps=eps[step.rows])
    model.zero_grad(set_to_none=True)
    res.total.backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return grads, float(res.total.detach()), float(res.dsm)


def _ddp_grads(rank, out):
    model, x0, levels, eps = _grad_setup()
    got = {fn.__name__: _grads(model, fn, x0, levels, eps) for fn in (diffclf_loss, dsm_only_loss)}
    f = bd.all_gather_tensor(model.f.detach()[None])
    got["f_same"] = bool((f == f[0]).all())
    with pytest.raises(ConfigError, match="^batch_size: 9 does not split evenly over 2 processes"):
        bd.LossStep(model, torch.device("cpu"), 9)
    # a non-finite loss on one process is non-finite on all (every one skips the step), and DDP goes on
    step = bd.LossStep(model, torch.device("cpu"), B)
    bad = x0.clone()
    bad[-1] = float("nan")  # in the second process's rows
    res = step(diffclf_loss, bad[step.rows], levels[step.rows], 0.8, eps=eps[step.rows])
    got["skipped"] = not bool(torch.isfinite(res.total))
    got["after"] = _grads(model, diffclf_loss, x0, levels, eps)
    torch.save(got, f"{out}/grads{rank}.pt")


def test_ddp_gradients_equal_single_process(tmp_path):
    model, x0, levels, eps = _grad_setup()
    want = {fn.__name__: _grads(model, fn, x0, levels, eps) for fn in (diffclf_loss, dsm_only_loss)}
    assert want["diffclf_loss"][0]["f"].abs().max() > 1e-3  # f is trained by the classification loss ...
    assert want["dsm_only_loss"][0]["f"] is None  # ... and untouched by DSM
    spawn(_ddp_grads, str(tmp_path))
    for r in range(WORLD):
        got = torch.load(tmp_path / f"grads{r}.pt")
        assert got["f_same"] and got["skipped"]
        got["diffclf_loss_after"] = got["after"]
        for name, (g_want, total, dsm) in [*want.items(), ("diffclf_loss_after", want["diffclf_loss"])]:
            g_got, total_got, dsm_got = got[name]
            assert abs(total_got - total) < 1e-12 and abs(dsm_got - dsm) < 1e-12  # global means
            for p, gw in g_want.items():
                if gw is None:
                    assert g_got[p] is None, p
                else:
                    torch.testing.assert_close(g_got[p], gw, rtol=1e-6, atol=1e-10, msg=f"{name} {p}")


# -- training: two processes, then one ---------------------------------------------------------------------
def _tiny(steps, **kw):
    return TrainConfig(
        system="gmm2_unbalanced", steps=steps, batch_size=16, k=2, width=16, depth=2, n_levels=12, n_data=1000,
        checkpoint_every=10, lr_warmup=5, warmup_steps=5, seed=4, **kw,
    )  # fmt: skip


def _train_two(rank, out, steps):
    res = train(_tiny(steps), out, resume=os.path.exists(f"{out}/ckpt.pt"), progress=False)
    torch.save(res.model.state_dict(), f"{out}/../ema{rank}.pt")


def test_two_process_training_resumes_in_one_process_and_back(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    spawn(_train_two, str(two), 20)
    sd0, sd1 = (torch.load(tmp_path / f"ema{r}.pt") for r in range(WORLD))
    for k in sd0:  # the ranks hold the same model, f included
        assert torch.equal(sd0[k], sd1[k]), k
    ck = torch.load(two / "ckpt.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in ck["model"]) and ck["world_sizes"] == [[0, 2]]
    assert json.loads((two / "train_summary.json").read_text())["world_size"] == 2
    # the same run as one process, up to the order of the gradient sums (float32)
    ref = train(_tiny(20), one, progress=False).model.state_dict()
    for k in ref:
        torch.testing.assert_close(sd0[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)
    # one process resumes the two-process checkpoint and finishes it; two processes take it on again
    assert train(_tiny(30), two, resume=True, progress=False).steps == 30
    spawn(_train_two, str(two), 40)
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["steps"] == 40 and summary["world_sizes"] == [[0, 2], [20, 1], [30, 2]]
    assert [json.loads(ln)["step"] for ln in (two / "metrics.jsonl").read_text().splitlines()] == [20, 30, 40]


def test_resuming_another_systems_run_is_config_error(tmp_path):
    train(_tiny(6), tmp_path, progress=False)
    other = TrainConfig(**{**_tiny(8).to_dict(), "system": "gmm40_2d"})
    with pytest.raises(ConfigError, match="^--resume: .* was trained on system 'gmm2_unbalanced'") as e:
        train(other, tmp_path, resume=True, progress=False)
    assert "\n" not in str(e.value)


# -- SMC ------------------------------------------------------------------------------------------------------
def _stratum(x):
    return (x[:, 0] > 0).long()


class _CountingModel(ExactMixtureEnergy):
    """Counts the rows this process evaluates."""

    rows = 0

    def energy_and_score(self, x, level):
        type(self).rows += x.shape[0]
        return super().energy_and_score(x, level)


class _CountingMixture(GaussianMixture):
    rows = 0

    def energy(self, x):
        type(self).rows += x.shape[0]
        return super().energy(x)


N_SMC = 301  # odd: the second process's block is one row short (padded)


def _smc_case(comm=None):
    _CountingModel.rows = _CountingMixture.rows = 0
    gmm = _CountingMixture([0.2, 0.5, 0.3], [[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [0.5, 1.0, 0.7])
    model = _CountingModel(gmm, make_grid(VPSchedule(), 24), weights=torch.tensor([0.6, 0.1, 0.3]))
    cfg = SMCConfig(
        ess_threshold=0.9,
        mcmc=MCMCConfig("mala", n_steps=1),
        bridge_mcmc=MCMCConfig("hmc", n_steps=1, n_leapfrog=2),
        bridge_cess=0.9,
        bridge_strata=_stratum,
    )
    gen = torch.Generator().manual_seed(7)
    res = smc(model.double(), N_SMC, cfg, target=gmm, generator=gen, comm=comm)
    return res, _CountingModel.rows, _CountingMixture.rows


def _smc_two(rank, out):
    res, rows, target_rows = _smc_case(bd.Communicator.from_env())
    keep = dict(x=res.x, log_w=res.log_w, log_Z=res.log_Z, n=res.n_resample, evals=res.n_model_evals)
    torch.save(dict(keep, rows=rows, target_rows=target_rows), f"{out}/smc{rank}.pt")


def test_distributed_smc_equals_single_process(tmp_path):
    want, rows, target_rows = _smc_case()
    assert want.n_resample > 3 and len(want.lambdas) > 2  # the case exercises resampling and the bridge
    spawn(_smc_two, str(tmp_path))
    for r in range(WORLD):
        got = torch.load(tmp_path / f"smc{r}.pt")
        assert got["n"] == want.n_resample and got["evals"] == want.n_model_evals
        torch.testing.assert_close(got["log_w"], want.log_w, rtol=0, atol=1e-10)
        torch.testing.assert_close(got["x"], want.x, rtol=0, atol=1e-10)
        assert abs(got["log_Z"] - want.log_Z) < 1e-10
        # each process evaluated its block of ceil(301 / 2) = 151 rows of every batch of 301, model and target
        assert got["rows"] * N_SMC == rows * 151 and got["target_rows"] * N_SMC == target_rows * 151


def test_commands_that_do_not_distribute_are_refused_under_several_processes(monkeypatch, capsys):
    """`boltzdiff run` (or evaluate, ...) under torchrun with 2 processes would run two copies into one output."""
    from boltzdiff.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["evaluate", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "WORLD_SIZE=2" in err[0] and "evaluate" in err[0]
