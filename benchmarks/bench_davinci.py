"""DaVinci data-scale benchmark (issue 17 §6): world sizes × objectives at equal steps, on 2 CPU cores.

The paper pre-trains one backbone with different objectives on corpora of growing size. Here: worlds of
``--sizes`` images (default 100, 1,000, 10,000; each its own generated world at 64 px) × objectives
{PLM only, PIM only, both} (``objectives.plm`` / ``objectives.pim`` weights; the text-only stream is off in
every run, so the three differ only in the image–caption objectives), ``davinci-tiny``, the same number of
steps and batch size everywhere, so the sizes differ in data diversity, not in compute. One image tokenizer
(trained briefly on the 1,000-image world) serves every run.

Every run is read out on one common test set (the largest world's ``test`` (ID) and ``test_ood`` (OOD) splits):

* ``plm_test_loss`` / ``pim_test_loss``: teacher-forced PLM and PIM losses (fixed prefix splits and rows) on
  ``--eval-pairs`` test pairs, also for the objective a run did not train (what it transfers);
* text-to-image on ``--eval-captions`` ID test captions (1 sample, no re-ranking): FID on EfficientNet-Lite0
  features (not Inception) and the attribute probe's accuracy (:mod:`grainvl.metrics.generation`);
* a downstream task: DaVinci's linear probe (``linear_probe``: the frozen pre-trained model, one linear layer per
  attribute on its encoder and decoder states after an affine-free BatchNorm (``feature_norm``), trained
  ``--lp-steps`` steps on ``--lp-train`` images of the common world's ``train`` split) classifying shape, colour and
  object count of ``test`` / ``test_ood`` images: ``probe_test_acc`` / ``probe_ood_acc`` (percent, mean of the three
  attributes), the kind of downstream read-out the paper's data-scale table reports.

Writes OUT/results.jsonl (one row per run and metric), OUT/table.md and OUT/curves.png; prints the table and
the wall time. ``--quick`` is a 1-minute smoke run (sizes 30/60/120, 4 steps).

    python benchmarks/bench_davinci.py --out runs/bench_davinci
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from grainvl.config import with_values
from grainvl.data.pretrain import PretrainDataConfig, PretrainFiles
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.metrics.generation import EfficientNetFeatures
from grainvl.models.davinci import STRIDE, DaVinci
from grainvl.models.factory import get_tokenizer, load_davinci_model
from grainvl.models.vq import VQTokenizer
from grainvl.recipes.davinci import DaVinciPretrainConfig, run_davinci_pretrain
from grainvl.recipes.davinci_tokenizer import DavinciTokenizerConfig, run_tokenizer_training
from grainvl.recipes.finetune import FinetuneConfig, finetune
from grainvl.recipes.generate import GenerateConfig, evaluate_split, fit_probe
from grainvl.tasks.davinci import DaVinciObjectives, DaVinciPretrainTask, PairDataset, TextEncoder
from grainvl.utils.fileio import atomic_write_text, write_jsonl

OBJECTIVE_SETS = {"plm": {"plm": 1.0, "pim": 0.0}, "pim": {"plm": 0.0, "pim": 1.0}, "both": {"plm": 1.0, "pim": 1.0}}
METRICS = (
    "plm_test_loss",
    "pim_test_loss",
    "plm_ood_loss",
    "pim_ood_loss",
    "probe_test_acc",
    "probe_ood_acc",
    "fid_efficientnet_lite0",
    "attr_acc",
)
MODEL = "davinci-tiny"
RESOLUTION = 64  # davinci-tiny's image side


# ---------------------------------------------------------------------------------------------- building
def make_worlds(out: Path, sizes: Sequence[int]) -> dict[int, Path]:
    worlds = {}
    for n in sizes:
        worlds[n] = out / f"world_{n}"
        if not (worlds[n] / "manifest.json").is_file():
            cfg = WorldConfig(images=n, videos=0, resolution=RESOLUTION, text_scenes=0, dialogues=0)
            generate_world(cfg, worlds[n])
    return worlds


def train_tokenizer(out: Path, world: Path, steps: int) -> Path:
    folder = out / "tokenizer"
    if not (folder / "tokenizer" / "config.json").is_file():
        cfg = with_values(
            DavinciTokenizerConfig(),
            {
                "data.world": str(world),
                "data.resolution": RESOLUTION,
                "train.steps": steps,
                "train.run_dir": str(folder),
            },
        )
        run_tokenizer_training(cfg)
    return folder / "tokenizer"


def pretrain(
    out: Path, world: Path, tokenizer: Path, weights: dict[str, float], args: argparse.Namespace, lr: float = -1.0
) -> Path:
    """One pre-training run; ``lr >= 0`` overrides the learning rate (0 with one step: the untrained reference)."""
    values: dict[str, Any] = {
        "model": MODEL,
        "tokenizer": str(tokenizer),
        "data.world": str(world),
        "data.batch_size": args.batch_size,
        "objectives.plm": weights["plm"],
        "objectives.pim": weights["pim"],
        "objectives.text": 0.0,
        "train.steps": args.steps,
        "train.run_dir": str(out),
        "train.seed": 0,
    }
    if lr >= 0:
        values.update({"optim.lr": lr, "train.steps": 1})
    run_davinci_pretrain(with_values(DaVinciPretrainConfig(), values))
    return out / "model"


# ---------------------------------------------------------------------------------------------- readouts
@torch.no_grad()
def test_losses(model: DaVinci, vq: VQTokenizer, world: Path, split: str, pairs: int) -> dict[str, float]:
    """Teacher-forced PLM and PIM losses on the first ``pairs`` pairs of a split (fixed splits: seed 0)."""
    text_tokenizer = get_tokenizer(MODEL)
    files = PretrainFiles.find(world, split)
    dcfg = PretrainDataConfig(
        resolution=RESOLUTION,
        patch_size=STRIDE,
        max_tokens=30,
        max_words=30,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        augment=False,
    )
    objectives = DaVinciObjectives(plm=1.0, pim=1.0, text=0.0)
    dataset = PairDataset(files.image, files.root, text_tokenizer, dcfg, train=False, seed=0)
    dataset.configure(TextEncoder(text_tokenizer, 30), objectives, RESOLUTION // STRIDE)
    task = DaVinciPretrainTask(model.eval(), vq.eval(), objectives)
    rng, totals, batches = random.Random(0), {"plm_loss": 0.0, "pim_loss": 0.0}, 0
    count = min(pairs, len(dataset))
    for start in range(0, count, 16):
        batch = dataset.collate([dataset.sample(i, 0) for i in range(start, min(start + 16, count))], rng)
        losses, _ = task({"pair": batch})
        for key in totals:
            totals[key] += float(losses[key])
        batches += 1
    return {key: value / batches for key, value in totals.items()}


def linear_probe(model_dir: Path, eval_world: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """The frozen model's linear probe (shape, colour, count) on the common world: ID and OOD ``acc`` (percent)."""
    values = {
        "task": "linear_probe",
        "model": str(model_dir),
        "world": str(eval_world),
        "data.batch_size": 32,
        "data.max_train_samples": args.lp_train,
        "optim.lr": args.lp_lr,
        "optim.weight_decay": 0.0,
        "options.feature_norm": True,  # MAE's affine-free BatchNorm: short-run features barely vary (docs/davinci.md)
        "train.steps": args.lp_steps,
        "train.run_dir": str(out),
        "train.seed": 0,
        "train.progress": False,
        "train.tensorboard": False,
        "train.log_every": max(1, args.lp_steps),
    }
    shutil.rmtree(out, ignore_errors=True)  # a fresh probe every time (an existing run folder would be resumed)
    report = finetune(with_values(FinetuneConfig(), values))
    evaluations = report["evaluations"]
    return {"probe_test_acc": evaluations["test"]["acc"], "probe_ood_acc": evaluations["test_ood"]["acc"]}


def readouts(model_dir: Path, tokenizer: Path, eval_world: Path, probe: Any, args: argparse.Namespace) -> dict:
    model, vq = load_davinci_model(model_dir).eval(), VQTokenizer.from_pretrained(tokenizer).eval()
    out: dict[str, float] = {}
    for name, split in (("test", "test"), ("ood", "test_ood")):
        losses = test_losses(model, vq, eval_world, split, args.eval_pairs)
        out[f"plm_{name}_loss"], out[f"pim_{name}_loss"] = losses["plm_loss"], losses["pim_loss"]
    cfg = GenerateConfig(
        model=str(model_dir),
        tokenizer=str(tokenizer),
        world=str(eval_world),
        samples=1,
        top_k=4000,
        limit=args.eval_captions,
        feature_resolution=RESOLUTION,
    )
    generator = (model, vq, get_tokenizer(model_dir))
    metrics, _, _, _ = evaluate_split(cfg, "test", generator, probe[0], probe[1], None)
    out["fid_efficientnet_lite0"], out["attr_acc"] = metrics["fid_efficientnet_lite0"], metrics["attr_acc"]
    if args.lp_steps > 0:
        out.update(linear_probe(model_dir, eval_world, model_dir.parent / "probe", args))
    return out


# ---------------------------------------------------------------------------------------------- reporting
def format_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """A Markdown table: one line per (world size, objectives) run, a column per metric (— when missing)."""
    lines = [
        "| images | objectives | " + " | ".join(metrics) + " |",
        "|---:|---|" + "---:|" * len(metrics),
    ]
    for row in rows:
        cells = [f"{row[m]:.3f}" if row.get(m) is not None else "—" for m in metrics]
        lines.append(f"| {row['images']:,} | {row['objectives']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: Path) -> None:
    """One panel per metric: value against world size (log axis), one line per objective set, the untrained
    reference (if any) dashed."""
    # Imported here: matplotlib is optional and only the report needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for objectives in OBJECTIVE_SETS:
            points = sorted((r["images"], r[metric]) for r in rows if r["objectives"] == objectives and r.get(metric))
            if points:
                ax.plot(*zip(*points), marker="o", label=objectives)
        reference = [r[metric] for r in rows if r["objectives"] == "untrained" and r.get(metric) is not None]
        if reference:  # the untrained model: what pre-training has to beat
            ax.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label="untrained")
        ax.set_xscale("log")
        ax.set_xlabel("world images")
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench_davinci"), help="output folder (default: %(default)s)")
    p.add_argument("--sizes", default="100,1000,10000", help="world sizes in images (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000, help="pre-training steps of every run (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (default: %(default)s)")
    p.add_argument("--tokenizer-steps", type=int, default=2000, help="image tokenizer steps (default: %(default)s)")
    p.add_argument("--eval-pairs", type=int, default=48, help="test pairs per split for losses (default: %(default)s)")
    p.add_argument("--eval-captions", type=int, default=24, help="ID captions to generate (default: %(default)s)")
    p.add_argument(
        "--probe-images", type=int, default=600, help="train images of the generation probe (default: %(default)s)"
    )
    p.add_argument("--lp-steps", type=int, default=300, help="linear-probe steps; 0: none (default: %(default)s)")
    p.add_argument("--lp-train", type=int, default=2000, help="linear-probe train images (default: %(default)s)")
    p.add_argument("--lp-lr", type=float, default=3e-3, help="linear-probe learning rate (default: %(default)s)")
    p.add_argument(
        "--no-untrained", dest="untrained", action="store_false", help="skip the untrained reference row (default: on)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 30,60,120, 4 steps (default: off)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.tokenizer_steps, args.eval_pairs, args.eval_captions = "30,60,120", 4, 4, 8, 4
        args.lp_steps, args.lp_train = 4, 64
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args, start = parse_args(argv), time.perf_counter()
    sizes = [int(s) for s in args.sizes.split(",")]
    worlds = make_worlds(args.out, sizes)
    tokenizer = train_tokenizer(args.out, worlds[sorted(sizes)[len(sizes) // 2]], args.tokenizer_steps)
    eval_world = worlds[max(sizes)]
    features = EfficientNetFeatures(RESOLUTION)
    probe = fit_probe(worlds[sorted(sizes)[len(sizes) // 2]], features, RESOLUTION, args.probe_images)[0]
    print(f"setup (worlds, tokenizer, probe): {time.perf_counter() - start:.0f} s")
    rows = []
    if args.untrained:  # the reference every run is read against: the same model after one step at lr 0
        t0 = time.perf_counter()
        model_dir = pretrain(args.out / "runs" / "untrained", eval_world, tokenizer, OBJECTIVE_SETS["both"], args, 0.0)
        rows.append(
            {
                "images": 0,
                "objectives": "untrained",
                **readouts(model_dir, tokenizer, eval_world, (features, probe), args),
            }
        )
        rows[-1]["wall_s"] = time.perf_counter() - t0
    for n in sizes:
        for name, weights in OBJECTIVE_SETS.items():
            t0 = time.perf_counter()
            model_dir = pretrain(args.out / "runs" / f"{n}_{name}", worlds[n], tokenizer, weights, args)
            row = {
                "images": n,
                "objectives": name,
                **readouts(model_dir, tokenizer, eval_world, (features, probe), args),
            }
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"{n:>6} {name:<5} " + " ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
    write_jsonl(args.out / "results.jsonl", rows)
    table = format_table(rows, METRICS)
    atomic_write_text(args.out / "table.md", table + "\n")
    plot_curves(rows, METRICS, args.out / "curves.png")
    print(table)
    print(f"total wall time {time.perf_counter() - start:.0f} s; {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
