"""Launcher detection, single-process behaviour, and 2-process gloo DDP parity of the ITC gradients."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from grainvl.losses.itc import itc_loss
from grainvl.utils import distributed as gdist
from grainvl.utils.distributed import DistEnv, detect_env, first_slurm_host, init_distributed

LAUNCH_VARS = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NODELIST",
    "SLURM_JOB_NODELIST",
    "SLURM_STEP_NODELIST",
    "SLURM_JOB_ID",
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------------------------------------
# Detection


def test_detect_single_process(clean_env: pytest.MonkeyPatch) -> None:
    env = detect_env(use_cuda=False)
    assert env == DistEnv(device=torch.device("cpu"))
    assert not env.is_distributed and env.backend == "gloo"


def test_detect_torchrun(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "29501"}.items():
        clean_env.setenv(name, value)
    env = detect_env(use_cuda=False)
    assert (env.rank, env.local_rank, env.world_size, env.launcher) == (3, 1, 4, "torchrun")
    assert env.device == torch.device("cpu") and env.backend == "gloo"
    cuda_env = detect_env(use_cuda=True)
    assert cuda_env.device == torch.device("cuda", 1) and cuda_env.backend == "nccl"


def test_detect_slurm_derives_rendezvous(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[003-005,9],cpu1",
        "SLURM_JOB_ID": "123456",
    }.items():
        clean_env.setenv(name, value)
    env = detect_env(use_cuda=False)
    assert (env.rank, env.local_rank, env.world_size, env.launcher) == (5, 1, 8, "slurm")
    assert env.master_addr == "gpu003" and env.master_port == 15000 + 123456 % 20000
    # Explicit MASTER_ADDR/PORT win over the derived ones.
    clean_env.setenv("MASTER_ADDR", "head")
    clean_env.setenv("MASTER_PORT", "4242")
    env = detect_env(use_cuda=False)
    assert (env.master_addr, env.master_port) == ("head", 4242)


def test_torchrun_variables_win_over_slurm(clean_env: pytest.MonkeyPatch) -> None:
    # torchrun started inside a one-task SLURM allocation: torchrun's ranks are the real ones.
    for name, value in {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "RANK": "1", "WORLD_SIZE": "2"}.items():
        clean_env.setenv(name, value)
    env = detect_env(use_cuda=False)
    assert (env.rank, env.world_size, env.launcher) == (1, 2, "torchrun")


def test_detect_env_errors(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        detect_env({"RANK": "0", "WORLD_SIZE": "two"}, use_cuda=False)
    with pytest.raises(ValueError, match="outside"):
        detect_env({"RANK": "2", "WORLD_SIZE": "2"}, use_cuda=False)
    with pytest.raises(ValueError, match="SLURM_NODELIST"):
        detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, use_cuda=False)


def test_first_slurm_host() -> None:
    assert first_slurm_host("node7") == "node7"
    assert first_slurm_host("node[01-04]") == "node01"
    assert first_slurm_host("gpu[12,3-5],cpu1") == "gpu12"
    assert first_slurm_host("a1,b[2-3]") == "a1"
    assert first_slurm_host("rack[2-3]n[07-09]") == "rack2n07"


def test_single_process_creates_no_group(clean_env: pytest.MonkeyPatch) -> None:
    env = init_distributed(detect_env(use_cuda=False))
    assert not dist.is_initialized()
    assert env.world_size == 1
    assert (gdist.get_rank(), gdist.get_world_size(), gdist.is_main()) == (0, 1, True)
    gdist.barrier()
    x = torch.randn(3, 2, requires_grad=True)
    assert gdist.all_gather_with_grad(x) is x
    assert gdist.all_gather_no_grad(x) is x
    mean = gdist.all_reduce_mean(x)
    assert torch.equal(mean, x.detach()) and mean is not x
    gdist.cleanup()
    assert not dist.is_initialized()


# ---------------------------------------------------------------------------------------------
# Two gloo processes


class TwoTower(nn.Module):
    """A tiny image/text encoder pair with a learnable temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(5, 4)
        self.text = nn.Linear(6, 4)
        self.temp = nn.Parameter(torch.tensor(0.2))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1)


class _OfficialAllGather(torch.autograd.Function):
    """The official X-VLM gather: backward returns only the local slice of the incoming gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        chunks = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(chunks, x.contiguous())
        ctx.rank, ctx.batch = dist.get_rank(), x.shape[0]
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def _official_itc(image: torch.Tensor, text: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    image_all, text_all = _OfficialAllGather.apply(image), _OfficialAllGather.apply(text)
    logits = image_all @ text_all.t() / temp
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


# Rows of the 8-sample global batch held by each rank, per case.
SPLITS = {
    "equal": ([0, 1, 2, 3], [4, 5, 6, 7]),
    "unequal_idx": ([0, 1, 2, 3, 4], [5, 6, 7]),  # 5 + 3 rows: the gather pads and unpads
    "official": ([0, 1, 2, 3], [4, 5, 6, 7]),
}


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    import os

    # The SLURM path with MASTER_PORT but no MASTER_ADDR: the host comes from the node list and the
    # group is created through tcp:// (torchrun's env:// path is the other branch).
    os.environ.update(
        {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world), "SLURM_LOCALID": str(rank)},
        SLURM_NODELIST="127.0.0.1",
        MASTER_PORT=str(port),
    )
    for name in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(name, None)
    from datetime import timedelta

    env = init_distributed(detect_env(use_cuda=False), timeout=timedelta(seconds=60))
    data = torch.load(Path(folder) / "data.pt", weights_only=True)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TwoTower())
    out: dict[str, object] = {"rank": gdist.get_rank(), "world": gdist.get_world_size(), "main": gdist.is_main()}
    for case, split in SPLITS.items():
        rows = torch.tensor(split[rank])
        model.zero_grad()
        image, text = model(data["images"][rows], data["texts"][rows])
        temp = model.module.temp
        if case == "official":
            loss = _official_itc(image, text, temp)
        else:
            loss = itc_loss(image, text, temp, idx=data["idx"][rows] if case == "unequal_idx" else None)
        loss.backward()
        out[case] = {"loss": loss.detach(), "grads": _grads(model.module)}
    out["gathered_idx"] = gdist.all_gather_no_grad(data["idx"][torch.tensor(SPLITS["unequal_idx"][rank])])
    out["mean"] = gdist.all_reduce_mean(torch.tensor([float(rank)]))
    gdist.barrier()
    torch.save(out, Path(folder) / f"rank{env.rank}.pt")
    gdist.cleanup()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(world: int, folder: Path, timeout_s: float = 120.0) -> None:
    context = mp.start_processes(
        _worker, args=(world, _free_port(), str(folder)), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"DDP workers did not finish within {timeout_s:.0f} s")


@pytest.mark.slow  # two spawned interpreters importing torch: ~13 s on the 2-core CI machine
def test_two_process_ddp_itc_gradients_match_single_process(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    data = {
        "images": torch.randn(8, 5, generator=generator),
        "texts": torch.randn(8, 6, generator=generator),
        "idx": torch.tensor([0, 1, 1, 2, 3, 3, 4, 5]),
    }
    torch.save(data, tmp_path / "data.pt")
    _spawn(2, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [(r["rank"], r["world"], r["main"]) for r in ranks] == [(0, 2, True), (1, 2, False)]
    assert ranks[0]["gathered_idx"].tolist() == data["idx"].tolist()
    assert ranks[1]["mean"].item() == pytest.approx(0.5)

    # The same model on the whole batch in this process (no process group: gathers are identities).
    assert not dist.is_initialized()
    for case, idx in (("equal", None), ("unequal_idx", data["idx"]), ("official", None)):
        torch.manual_seed(0)
        model = TwoTower()
        image, text = model(data["images"], data["texts"])
        loss = itc_loss(image, text, model.temp, idx=idx)
        loss.backward()
        reference = _grads(model)
        for rank in ranks:
            assert rank[case]["loss"].item() == pytest.approx(loss.item(), abs=1e-6)
            for name, grad in rank[case]["grads"].items():
                if case == "official" and name != "temp":
                    # The official gather leaves the encoders' ITC gradient W = 2 times too small.
                    assert torch.allclose(grad * 2, reference[name], atol=1e-6), (case, name)
                    assert not torch.allclose(grad, reference[name], atol=1e-4), (case, name)
                else:
                    assert torch.allclose(grad, reference[name], atol=1e-6), (case, name, grad, reference[name])
