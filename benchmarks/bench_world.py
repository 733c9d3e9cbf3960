"""World generation rate and reader throughput, measured side by side in one run.

    python benchmarks/bench_world.py [--images 600] [--resolution 224]

Prints per-stage cost per image (sampling, rendering, JPEG, annotation in 6 languages), the
end-to-end generation rate with 1 and 2 processes (images/s per process; the target is >= 300 at
224 px), and reader throughput (records/s, and images decoded/s when images are checked).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from grainvl.data.formats.albef import read_retrieval
from grainvl.data.formats.webdataset import iter_shard
from grainvl.data.formats.xvlm_pretrain import read_region
from grainvl.data.world import annotate
from grainvl.data.world.generate import WorldConfig, generate_world, item_rng
from grainvl.data.world.render import encode_jpeg, render_scene
from grainvl.data.world.sampler import sample_scene


def stage_costs(n: int, resolution: int) -> dict[str, float]:
    """Milliseconds per image for each generation stage, in one process."""
    times = dict.fromkeys(("sample", "render", "jpeg", "annotate"), 0.0)
    for i in range(n):
        rng = item_rng(0, "image", i)
        t0 = time.perf_counter()
        scene = sample_scene(i, "train", rng, resolution)
        t1 = time.perf_counter()
        image = render_scene(scene)
        t2 = time.perf_counter()
        encode_jpeg(image)
        t3 = time.perf_counter()
        annotate.annotate_image(scene, rng, itertools.count(i * 1000), itertools.count(i * 100))
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key] += dt
    return {k: 1000 * v / n for k, v in times.items()}


def generation_rate(images: int, resolution: int, workers: int, tmp: Path) -> float:
    """Images per second for the whole generator (images only; videos/text/dialogues off)."""
    cfg = WorldConfig(images=images, videos=0, resolution=resolution, text_scenes=0, dialogues=0, shards=True)
    out = tmp / f"w{workers}"
    start = time.perf_counter()
    generate_world(cfg, out, workers=workers)
    return images / (time.perf_counter() - start)


def reader_rates(world: Path) -> dict[str, float]:
    region = world / "annotations" / "pretrain" / "train" / "region.jsonl"
    retrieval = world / "annotations" / "retrieval" / "coco_train.json"
    rates = {}
    for name, fn in [
        ("region.jsonl records/s (no image check)", lambda: read_region(region)),
        ("region.jsonl records/s (images decoded)", lambda: read_region(region, image_root=world)),
        ("coco_train.json records/s (no image check)", lambda: read_retrieval(retrieval)),
        (
            "webdataset samples/s (stream)",
            lambda: [s for p in sorted((world / "shards").glob("*.tar")) for s in iter_shard(p)],
        ),
    ]:
        start = time.perf_counter()
        records = fn()
        rates[name] = len(records) / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()

    costs = stage_costs(min(args.images, 300), args.resolution)
    total = sum(costs.values())
    print(
        f"per-image cost at {args.resolution} px (ms): "
        + ", ".join(f"{k} {v:.2f}" for k, v in costs.items())
        + f"; total {total:.2f} -> {1000 / total:.0f} images/s of pure compute"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rate1 = generation_rate(args.images, args.resolution, 1, Path(tmp))
        rate2 = generation_rate(args.images, args.resolution, 2, Path(tmp))
        print(
            f"end-to-end generation (files, annotations, shards, manifest): 1 process {rate1:.0f} images/s; "
            f"2 processes {rate2:.0f} images/s ({rate2 / 2:.0f} per process); speed-up x{rate2 / rate1:.2f}"
        )
        print(
            f"target >= 300 images/s per process: {'met' if rate1 >= 300 else 'NOT met'} ({rate1 / 300:.2f} of target)"
        )
        for name, rate in reader_rates(Path(tmp) / "w1").items():
            print(f"reader: {name}: {rate:.0f}")


if __name__ == "__main__":
    main()
