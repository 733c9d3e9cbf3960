"""Launcher detection, single-process behaviour, 2-process gloo DDP parity of the ITC and MLM/TACO gradients,
and workers that die with their launcher."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from grainvl.losses.itc import itc_loss
from grainvl.losses.mlm import mlm_loss
from grainvl.losses.taco import sample_negative_index, sample_positive_index, taco_loss
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
    total = gdist.all_reduce_sum_no_grad(x)
    assert torch.equal(total, x.detach()) and total is not x and not total.requires_grad
    assert gdist.to_global_mean(x, 5) is x  # one process: the local mean, untouched
    gdist.cleanup()
    assert not dist.is_initialized()


def test_global_mean_share_hand_computed() -> None:
    # The case: 28 and 37 masked tokens on two ranks, per-rank means 2.0 and 1.0.
    counts, means = [28, 37], [torch.tensor(2.0, requires_grad=True), torch.tensor(1.0, requires_grad=True)]
    total = torch.tensor(65)
    shares = [gdist.global_mean_share(m, torch.tensor(n), total, 2) for m, n in zip(means, counts)]
    assert [s.item() for s in shares] == pytest.approx([2.0 * 28 * 2 / 65, 1.0 * 37 * 2 / 65], abs=1e-6)
    # DDP averages over the two ranks: (56 + 37) / 65 is the mean over all 65 tokens ...
    assert ((shares[0] + shares[1]) / 2).item() == pytest.approx((2.0 * 28 + 1.0 * 37) / 65, abs=1e-6)
    # ... while the per-rank means average to 1.5.
    assert (means[0] + means[1]).item() / 2 == 1.5
    shares[0].backward()
    assert means[0].grad.item() == pytest.approx(28 * 2 / 65, abs=1e-7)  # d share / d mean = n_r W / N
    # No item on any rank: 0, not NaN.
    empty = gdist.global_mean_share(torch.tensor(0.0), torch.tensor(0), torch.tensor(0), 2)
    assert empty.item() == 0.0


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


def _join_as_slurm_task(rank: int, world: int, port: int) -> DistEnv:
    # The SLURM path with MASTER_PORT but no MASTER_ADDR: the host comes from the node list and the
    # group is created through tcp:// (torchrun's env:// path is the other branch).
    os.environ.update(
        {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world), "SLURM_LOCALID": str(rank)},
        SLURM_NODELIST="127.0.0.1",
        MASTER_PORT=str(port),
    )
    for name in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(name, None)
    return init_distributed(detect_env(use_cuda=False), timeout=timedelta(seconds=60))


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    env = _join_as_slurm_task(rank, world, port)
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


def _spawn(world: int, folder: Path, timeout_s: float = 120.0, worker: Callable[..., None] = _worker) -> None:
    context = mp.start_processes(
        worker, args=(world, _free_port(), str(folder)), nprocs=world, join=False, start_method="spawn"
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


# ---------------------------------------------------------------------------------------------
# Two gloo processes: MLM and TACO are means over the global batch's tokens

# Rows 0-3 on rank 0, 4-7 on rank 1: 7 vs 21 masked tokens and 17 vs 23 TACO anchors.
MASKED_PER_ROW = [1, 2, 1, 3, 6, 5, 4, 6]
LENGTHS = [6, 2, 3, 6, 6, 6, 5, 6]
NUM_NEGATIVES = 3


class TokenModel(nn.Module):
    """Token features → hidden states (TACO's h) → MLM logits."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(5, 4)
        self.head = nn.Linear(4, 7)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.proj(features)  # (B, L, 4)
        return hidden, self.head(hidden)  # (B, L, 7)


def _token_losses(model: nn.Module, data: dict, rows: torch.Tensor, rank: int, global_mean: bool) -> torch.Tensor:
    """MLM + TACO on ``rows`` with rank ``rank``'s sampled TACO positives/negatives (local to its rows)."""
    hidden, logits = model(data["features"][rows])
    mlm = mlm_loss(logits, data["labels"][rows], global_mean=global_mean)
    taco = taco_loss(
        hidden,
        data["embeddings"][rows],
        data["mask"][rows],
        num_negatives=NUM_NEGATIVES,
        positive_index=data["positive"][rank],
        negative_index=(data["negative_rows"][rank], data["negative_cols"][rank]),
        global_mean=global_mean,
    )
    return mlm + taco


def _token_worker(rank: int, world: int, port: int, folder: str) -> None:
    env = _join_as_slurm_task(rank, world, port)
    data = torch.load(Path(folder) / "data.pt", weights_only=True)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TokenModel())
    rows = torch.arange(4) + 4 * rank
    out = {}
    for case, global_mean in (("global", True), ("per_rank", False)):
        model.zero_grad()
        loss = _token_losses(model, data, rows, rank, global_mean)
        loss.backward()
        out[case] = {"loss": loss.detach(), "grads": _grads(model.module)}
    torch.save(out, Path(folder) / f"rank{env.rank}.pt")
    gdist.cleanup()


def _token_data() -> dict:
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(7, (8, 6), generator=generator)
    labels[torch.arange(6)[None, :] >= torch.tensor(MASKED_PER_ROW)[:, None]] = -100
    mask = (torch.arange(6)[None, :] < torch.tensor(LENGTHS)[:, None]).long()  # (8, 6), right-padded
    data: dict = {
        "features": torch.randn(8, 6, 5, generator=generator),
        "embeddings": torch.randn(8, 6, 4, generator=generator),
        "labels": labels,
        "mask": mask,
        "positive": [],
        "negative_rows": [],
        "negative_cols": [],
    }
    for rank in range(2):
        lengths = mask[4 * rank : 4 * rank + 4].sum(1)
        data["positive"].append(sample_positive_index(lengths, 6, generator=generator))
        negative_rows, negative_cols = sample_negative_index(lengths, 6, NUM_NEGATIVES, generator=generator)
        data["negative_rows"].append(negative_rows)
        data["negative_cols"].append(negative_cols)
    return data


@pytest.mark.slow  # two spawned interpreters importing torch, as the ITC test above
def test_two_process_ddp_mlm_and_taco_gradients_are_global_means(tmp_path: Path) -> None:
    data = _token_data()
    torch.save(data, tmp_path / "data.pt")
    _spawn(2, tmp_path, worker=_token_worker)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # One process, the whole global batch: MLM over all 28 masked tokens; TACO over all 40 anchors,
    # each anchor with the negatives its rank drew (a rank only sees its own rows' tokens).
    assert not dist.is_initialized()
    torch.manual_seed(0)
    model = TokenModel()
    hidden, logits = model(data["features"])
    mlm = mlm_loss(logits, data["labels"])
    anchors = [sum(LENGTHS[4 * r : 4 * r + 4]) for r in range(2)]  # every sequence has >= 2 tokens
    taco_per_rank = [
        taco_loss(
            hidden[4 * r : 4 * r + 4],
            data["embeddings"][4 * r : 4 * r + 4],
            data["mask"][4 * r : 4 * r + 4],
            num_negatives=NUM_NEGATIVES,
            positive_index=data["positive"][r],
            negative_index=(data["negative_rows"][r], data["negative_cols"][r]),
        )
        for r in range(2)
    ]
    taco = sum(n * loss for n, loss in zip(anchors, taco_per_rank)) / sum(anchors)
    (mlm + taco).backward()
    reference = _grads(model)

    # What the loop logs (the rank average) is the global mean; DDP's averaged gradient is its gradient.
    logged = (ranks[0]["global"]["loss"] + ranks[1]["global"]["loss"]) / 2
    assert logged.item() == pytest.approx((mlm + taco).item(), abs=1e-6)
    for rank in ranks:
        for name, grad in rank["global"]["grads"].items():
            assert torch.allclose(grad, reference[name], atol=1e-6), (name, grad, reference[name])
    # Per-rank means (what DDP averaged before) weigh rank 0's 7 tokens like rank 1's 21.
    differences = [(ranks[0]["per_rank"]["grads"][k] - reference[k]).abs().max().item() for k in reference]
    assert max(differences) > 1e-3


# ---------------------------------------------------------------------------------------------
# Workers die with their launcher

SLEEPER = """
import os
import sys
import time
from pathlib import Path

from grainvl.utils import distributed as gdist


def write_pid_and_sleep(rank):
    pid_file = Path(sys.argv[1]) / f"rank{rank}.pid"
    pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
    os.replace(pid_file.with_suffix(".tmp"), pid_file)
    time.sleep(300)


mode = sys.argv[2]
if mode == "torchrun":
    gdist.run_in_process_group(lambda env: write_pid_and_sleep(env.rank))
else:
    if mode == "watchdog":
        gdist._set_parent_death_signal = lambda sig: False  # as on a platform without prctl
    gdist.exit_with_parent(poll_s=0.2)
    write_pid_and_sleep(0)
"""


def _running(pid: int) -> bool:
    """True while ``pid`` runs; an exited process that nobody reaped yet (a zombie) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _survivors_of_killed_launcher(launcher: subprocess.Popen, pid_files: list[Path], log: Path) -> list[int]:
    """Wait for the workers' pid files, ``kill -9`` the launcher, return the workers still running 10 s later."""
    deadline = time.monotonic() + 180
    while not all(f.exists() for f in pid_files):
        if launcher.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the workers did not start (launcher: {launcher.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    pids = [int(f.read_text()) for f in pid_files]
    try:
        assert all(_running(pid) for pid in pids), "a worker died before its launcher"
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        return [pid for pid in pids if _running(pid)]
    finally:
        for pid in pids:  # never leave a sleeping worker behind, whatever the outcome
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _launch(cmd: list[str], log: Path) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    with log.open("w") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env={**environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see whether a process runs")
@pytest.mark.parametrize("mode", ["prctl", "watchdog"])
def test_worker_dies_with_its_parent(mode: str, tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    middle = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(300)"
    log = tmp_path / "log.txt"
    parent = _launch([sys.executable, "-c", middle, sys.executable, str(script), str(tmp_path), mode], log)
    assert _survivors_of_killed_launcher(parent, [tmp_path / "rank0.pid"], log) == []


@pytest.mark.slow  # three interpreters importing torch: 2 s on an idle 2-core machine, far more under load
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see whether a process runs")
def test_torchrun_workers_die_when_the_launcher_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    log = tmp_path / "torchrun.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    launcher = _launch([*cmd, str(script), str(tmp_path), "torchrun"], log)
    pid_files = [tmp_path / f"rank{rank}.pid" for rank in range(2)]
    assert _survivors_of_killed_launcher(launcher, pid_files, log) == []
