"""Pre-training throughput and model FLOPs utilisation (MFU), measured side by side in one run.

    python benchmarks/bench_pretrain.py [--steps 3]

For each model: samples/s of a full X²-VLM pre-training step (image-text ITC + ITM with hard
negatives + MLM, forward + backward + AdamW) on synthetic batches (no data loading, so the model is
what is measured), the FLOPs of that step counted by ``torch.utils.flop_counter``, and MFU =
achieved FLOP/s / this machine's fp32 matmul peak measured in the same process with the same
threads. Also inference latency at batch 1 (image encoder + text encoder + fusion + ITM head),
p50/p90 after warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from grainvl.models.factory import create_model, get_model_config
from grainvl.models.xvlm import XVLM
from grainvl.tasks.pretrain import PretrainTask, PretrainWeights


def matmul_peak(n: int = 1024, repeats: int = 20) -> float:
    """fp32 GFLOP/s of an n x n matmul loop (the machine's practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def synthetic_batch(model: XVLM, batch: int, length: int = 24) -> dict:
    res = model.config.vision.resolution
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    masked = ids.clone()
    masked[:, 1:7] = 103
    return {
        "image": {
            "image": torch.randn(batch, 3, res, res, generator=g),
            "image_ids": torch.arange(batch),
            "text_ids": ids,
            "text_atts": torch.ones_like(ids),
            "text_ids_masked": masked,
            "masked_pos": torch.arange(1, 7).expand(batch, -1),
            "masked_ids": ids[:, 1:7].clone(),
        }
    }


def train_throughput(model: XVLM, batch: int, steps: int) -> tuple[float, float]:
    """(samples/s, FLOPs per step) of pre-training steps on an image-text batch."""
    task = PretrainTask(model, PretrainWeights(region=0, video=0)).train()
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-5)
    data = synthetic_batch(model, batch)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses, _ = task(data)
        sum(losses.values()).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = (time.perf_counter() - start) / steps
    return batch / elapsed, float(counter.get_total_flops())


@torch.no_grad()
def latency(model: XVLM, repeats: int = 10) -> tuple[float, float]:
    """p50, p90 milliseconds for one image-text pair through all towers and the ITM head."""
    model.eval()
    data = synthetic_batch(model, 1)["image"]
    times = []
    for k in range(repeats + 3):
        start = time.perf_counter()
        feats = model.extract_features(data, mode="multimodal")
        model.itm_logits(feats.fused)
        if k >= 3:
            times.append(1000 * (time.perf_counter() - start))
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    base_cfg = get_model_config("x2vlm-base")
    base_cfg = dataclasses.replace(
        base_cfg, name="x2vlm-base@96px", vision=dataclasses.replace(base_cfg.vision, resolution=96)
    )
    models = [("xvlm-small", create_model("xvlm-small"), 12), (base_cfg.name, XVLM(base_cfg), 4)]
    print(
        f"{'model':<18}{'params':>9}{'batch':>7}{'samples/s':>11}{'GFLOP/step':>12}{'GFLOP/s':>9}{'MFU':>7}"
        f"{'lat p50 ms':>12}{'p90 ms':>8}"
    )
    for name, model, batch in models:
        params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) / 1e6
        rate, flops = train_throughput(model, batch, args.steps)
        achieved = flops * rate / batch / 1e9
        p50, p90 = latency(model)
        print(
            f"{name:<18}{params:>8.1f}M{batch:>7}{rate:>11.2f}{flops / 1e9:>12.1f}{achieved:>9.1f}"
            f"{achieved / peak:>7.2f}{p50:>12.1f}{p90:>8.1f}"
        )
    print(
        "MFU = (counted FLOPs of a training step x steps/s) / matmul peak; the frozen EfficientNet of xvlm-small "
        "runs without backward, so its step has fewer FLOPs per sample."
    )


if __name__ == "__main__":
    main()
