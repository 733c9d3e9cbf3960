"""``grainvl world``: generate a seeded synthetic world in the official dataset formats.

Determinism: every image, video, text task and dialogue draws from its own ``random.Random``
seeded by a string that names the world seed and the item (``"grainvl:1:image:17"``), so the
output does not depend on the number of worker processes or the order work finishes in. Files
are written with fixed bytes (no timestamps), so the same options give byte-identical files and
manifests.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grainvl.config import to_dict
from grainvl.data.formats.convai2 import VARIANTS, as_variant, write_convai2, write_revealed
from grainvl.data.formats.dailydialog import write_dailydialog
from grainvl.data.formats.dialogue_nli import write_dialogue_nli
from grainvl.data.formats.glue import write_tsv
from grainvl.data.formats.squad import write_squad
from grainvl.data.formats.webdataset import ShardWriter
from grainvl.data.world import annotate, daily_dialogue, dialogue, ontology, text_tasks
from grainvl.data.world.annotations import ImageAnnotations, ParallelPair, VideoAnnotations, XVNLIItem
from grainvl.data.world.export import WorldExporter, frame_relpath, image_relpath
from grainvl.data.world.language import LANGUAGES
from grainvl.data.world.render import encode_jpeg, render_scene, render_video
from grainvl.data.world.sampler import sample_scene, sample_video
from grainvl.utils import fileio

MANIFEST_VERSION = 1


@dataclass
class WorldConfig:
    """What to generate. Changing any field changes the world (and the manifest)."""

    images: int = 200  # still images over all splits
    videos: int = 10  # video clips over all splits
    seed: int = 0
    resolution: int = 224  # square images, 64-384 px
    frames: int = 8  # frames per video clip
    split_fractions: tuple[float, float, float, float] = (0.7, 0.1, 0.1, 0.1)  # train, val, test, test_ood
    captions_per_image: int = 5
    questions_per_image: int = 4
    text_scenes: int = 400  # scenes described by the text-only task suite (0: no text suite)
    text_train: int = 200  # examples per text task (train)
    text_dev: int = 100  # examples per text task (dev)
    dialogues: int = 60  # ConvAI2-style persona episodes over train/valid/test (0: no dialogue data at all)
    dialogue_split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, valid, test of every dialogue set
    daily_dialogues: int = 60  # persona-free DailyDialog-style dialogues (written when dialogues > 0)
    nli_pairs: int = 600  # Dialogue NLI utterance-persona pairs (written when dialogues > 0)
    shards: bool = False  # also write WebDataset tar shards of images + annotations
    shard_size: int = 1000  # samples per shard
    jpeg_quality: int = 90


@dataclass
class ImageResult:
    annotations: ImageAnnotations
    xvnli: XVNLIItem
    pairs: list[ParallelPair]
    jpeg: bytes | None  # returned only when shards are written


@dataclass
class WorldSummary:
    out: Path
    counts: dict[str, dict[str, int]]
    text_tasks: dict[str, str] = field(default_factory=dict)  # name -> kind
    dialogues: int = 0  # ConvAI2 episodes
    dialogue_sets: dict[str, int] = field(default_factory=dict)  # dialogue set -> dialogues (or NLI pairs)
    files: int = 0


def item_rng(seed: int, kind: str, index: int) -> random.Random:
    """An independent, reproducible stream per item (string seeds hash with SHA-512 in CPython)."""
    return random.Random(f"grainvl:{seed}:{kind}:{index}")


def split_plan(total: int, fractions: tuple[float, ...]) -> list[tuple[str, int]]:
    """Assign ids 0..total-1 to splits in order; every split with a positive fraction gets >= 1 when possible."""
    if len(fractions) != len(ontology.SPLITS) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split_fractions must be {len(ontology.SPLITS)} non-negative numbers, got {fractions}")
    norm = [f / sum(fractions) for f in fractions]
    counts = [int(total * f) for f in norm]
    for i in sorted(range(len(norm)), key=lambda i: -norm[i]):  # hand out the remainder, largest fraction first
        if sum(counts) >= total:
            break
        counts[i] += 1
    for i, f in enumerate(norm):  # a tiny world still gets one item in every requested split
        if f > 0 and counts[i] == 0 and max(counts) > 1:
            counts[counts.index(max(counts))] -= 1
            counts[i] = 1
    return [(split, n) for split, n in zip(ontology.SPLITS, counts)]


def _ids_by_split(total: int, fractions: tuple[float, ...]) -> list[tuple[int, str]]:
    out, next_id = [], 0
    for split, n in split_plan(total, fractions):
        out.extend((next_id + k, split) for k in range(n))
        next_id += n
    return out


def make_image(task: tuple[WorldConfig, Path, int, str]) -> ImageResult:
    """Sample, render, save and annotate one image (runs in worker processes)."""
    cfg, out, image_id, split = task
    rng = item_rng(cfg.seed, "image", image_id)
    scene = sample_scene(image_id, split, rng, cfg.resolution)
    jpeg = encode_jpeg(render_scene(scene), cfg.jpeg_quality)
    fileio.atomic_write_bytes(out / image_relpath(split, image_id), jpeg)
    qids, rids = iter(range(image_id * 1000, image_id * 1000 + 1000)), iter(range(image_id * 100, image_id * 100 + 100))
    ann = annotate.annotate_image(scene, rng, qids, rids, cfg.captions_per_image, cfg.questions_per_image)
    xvnli = annotate.make_xvnli(scene, rng, image_id)
    pairs = annotate.parallel_pairs(ann, rng)
    return ImageResult(ann, xvnli, pairs, jpeg if cfg.shards else None)


def make_video(task: tuple[WorldConfig, Path, int, str]) -> VideoAnnotations:
    cfg, out, video_id, split = task
    rng = item_rng(cfg.seed, "video", video_id)
    clip = sample_video(video_id, split, rng, cfg.resolution, cfg.frames)
    for t, frame in enumerate(render_video(clip)):
        fileio.atomic_write_bytes(out / frame_relpath(split, video_id, t), encode_jpeg(frame, cfg.jpeg_quality))
    qids = iter(range(video_id * 100, video_id * 100 + 100))
    return annotate.annotate_video(clip, rng, qids, cfg.captions_per_image)


def _parallel_map(fn: Callable[[Any], Any], tasks: list[Any], workers: int) -> Iterator[Any]:
    """Ordered map over a process pool (or in-process for one worker)."""
    if workers <= 1:
        yield from map(fn, tasks)
        return
    ctx = mp.get_context("fork") if hasattr(mp, "get_context") else mp
    with ctx.Pool(workers) as pool:
        yield from pool.imap(fn, tasks, chunksize=8)


def generate_world(
    cfg: WorldConfig, out: str | Path, workers: int = 1, progress: Callable[[str, int, int], None] | None = None
) -> WorldSummary:
    """Generate the whole world under ``out``; returns counts. Existing files are overwritten."""
    if not 64 <= cfg.resolution <= 384:
        raise ValueError(f"resolution must be within 64-384 px, got {cfg.resolution}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exporter = WorldExporter(out, LANGUAGES)
    shard_writer = _open_shards(out, cfg)
    _generate_images(cfg, out, workers, exporter, shard_writer, progress)
    if shard_writer is not None:
        shard_writer.close()
    video_info = _generate_videos(cfg, out, workers, exporter, progress)
    exporter.finish(video_info)
    summary = WorldSummary(out, {s: dict(c) for s, c in exporter.counts.items()})
    summary.text_tasks = _generate_text(cfg, out)
    summary.dialogue_sets = _generate_dialogues(cfg, out)
    summary.dialogues = summary.dialogue_sets.get("convai2", 0)
    summary.files = write_manifest(cfg, out, summary)
    return summary


def _generate_images(
    cfg: WorldConfig,
    out: Path,
    workers: int,
    exporter: WorldExporter,
    shards: Any,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    plan = _ids_by_split(cfg.images, cfg.split_fractions)
    tasks = [(cfg, out, image_id, split) for image_id, split in plan]
    waiting: dict[str, Any] = {}  # split -> scene waiting for its NLVR partner
    for done, result in enumerate(_parallel_map(make_image, tasks, workers), start=1):
        ann = result.annotations
        exporter.add_image(ann, result.xvnli, result.pairs)
        split = ann.scene.split
        if split in waiting:  # consecutive images of a split form an NLVR2 pair
            left = waiting.pop(split)
            rng = item_rng(cfg.seed, "nlvr", left.image_id)
            for k in range(2):
                exporter.add_nlvr(split, annotate.make_nlvr(left, ann.scene, rng, left.image_id * 10 + k))
        else:
            waiting[split] = ann.scene
        if shards is not None:
            shards.write(_shard_sample(ann, result.jpeg))
        if progress:
            progress("images", done, len(tasks))


def _generate_videos(
    cfg: WorldConfig, out: Path, workers: int, exporter: WorldExporter, progress: Callable[[str, int, int], None] | None
) -> dict[str, list[dict[str, Any]]]:
    plan = _ids_by_split(cfg.videos, cfg.split_fractions) if cfg.videos > 0 else []
    tasks = [(cfg, out, video_id, split) for video_id, split in plan]
    info: dict[str, list[dict[str, Any]]] = {}
    for done, ann in enumerate(_parallel_map(make_video, tasks, workers), start=1):
        exporter.add_video(ann)
        clip = ann.clip
        info.setdefault(clip.split, []).append(
            {
                "video_id": f"video{clip.video_id}",
                "id": clip.video_id,
                "num_frames": len(clip.frames),
                "captions": ann.captions["en"],
            }
        )
        if progress:
            progress("videos", done, len(tasks))
    return info


def _open_shards(out: Path, cfg: WorldConfig) -> Any:
    if not cfg.shards:
        return None

    writer = ShardWriter(str(out / "shards" / "world-%06d.tar"), max_count=cfg.shard_size)
    return writer.__enter__()


def _shard_sample(ann: ImageAnnotations, jpeg: bytes | None) -> dict[str, Any]:
    scene = ann.scene
    meta = {
        "image_id": scene.image_id,
        "split": scene.split,
        "width": scene.width,
        "height": scene.height,
        "captions": ann.captions,
        "elems": [{"caption": ann.region_phrases["en"][i], "bb": list(o.box)} for i, o in enumerate(scene.objects)],
    }
    return {"__key__": f"{scene.image_id:08d}", "jpg": jpeg or b"", "json": meta, "txt": ann.captions["en"][0]}


def _generate_text(cfg: WorldConfig, out: Path) -> dict[str, str]:
    """GLUE-style TSV and SQuAD v1.1 tasks described from their own ID scenes."""

    if cfg.text_scenes <= 0:
        return {}
    scenes = [
        sample_scene(10_000_000 + i, "train", item_rng(cfg.seed, "text-scene", i), cfg.resolution)
        for i in range(cfg.text_scenes)
    ]
    suite = text_tasks.build_text_suite(scenes, item_rng(cfg.seed, "text-suite", 0), cfg.text_train, cfg.text_dev)
    kinds = {}
    for name, task in sorted(suite.items()):
        kinds[name] = task.kind
        if task.kind == "classification":
            write_tsv(out / "text" / "glue" / name / "train.tsv", task.columns, task.train_rows)
            write_tsv(out / "text" / "glue" / name / "dev.tsv", task.columns, task.dev_rows)
        else:
            write_squad(out / "text" / "squad" / name / "train-v1.1.json", task.train)
            write_squad(out / "text" / "squad" / name / "dev-v1.1.json", task.dev)
    return kinds


# Each dialogue set's split names, as its official release spells them (train, valid/validation/dev, test).
DIALOGUE_SPLITS = {
    "convai2": ("train", "valid", "test"),
    "dailydialog": ("train", "validation", "test"),
    "dnli": ("train", "dev", "test"),
}


def _generate_dialogues(cfg: WorldConfig, out: Path) -> dict[str, int]:
    """ConvAI2 persona dialogues (+ reveal side files), DailyDialog-style dialogues and Dialogue NLI pairs.

    Every split is drawn from its own seeded stream, so candidates and distractors never cross splits.
    A split with no items gets no files.
    """
    if cfg.dialogues <= 0:
        return {}
    if len(cfg.dialogue_split_fractions) != 3:
        raise ValueError(
            f"dialogue_split_fractions must be 3 numbers (train, valid, test), got {cfg.dialogue_split_fractions}"
        )
    root = out / "dialogue"
    for k, n in enumerate(_dialogue_counts(cfg.dialogues, cfg)):
        if n == 0:
            continue
        split = DIALOGUE_SPLITS["convai2"][k]
        episodes = dialogue.build_dialogues(n, item_rng(cfg.seed, "dialogue", k))
        for variant in VARIANTS:  # the same episodes in each of ParlAI's persona variants
            write_convai2(root / "convai2" / f"{split}_{variant}_original.txt", as_variant(episodes, variant))
        write_revealed(root / "convai2" / f"{split}_revealed.jsonl", dialogue.revealed_records(episodes))
    for k, n in enumerate(_dialogue_counts(cfg.daily_dialogues, cfg)):
        if n == 0:
            continue
        split = DIALOGUE_SPLITS["dailydialog"][k]
        dialogues = daily_dialogue.build_daily_dialogues(n, item_rng(cfg.seed, "daily-dialogue", k))
        write_dailydialog(root / "dailydialog" / split / f"dialogues_{split}.txt", dialogues)
    # One draw of distinct pairs split afterwards, so no pair is in two splits.
    pairs = iter(dialogue.build_dialogue_nli(cfg.nli_pairs, item_rng(cfg.seed, "dialogue-nli", 0)))
    for k, n in enumerate(_dialogue_counts(cfg.nli_pairs, cfg)):
        if n == 0:
            continue
        split = DIALOGUE_SPLITS["dnli"][k]
        chunk = [{**next(pairs), "id": f"dialogue_nli_{split}_{i}"} for i in range(n)]
        write_dialogue_nli(root / "dnli" / f"dialogue_nli_{split}.jsonl", chunk)
    return {"convai2": cfg.dialogues, "dailydialog": max(cfg.daily_dialogues, 0), "dnli": max(cfg.nli_pairs, 0)}


def _dialogue_counts(total: int, cfg: WorldConfig) -> list[int]:
    """Items per train / valid / test split: ``split_plan``'s rounding, with no test_ood share."""
    return [n for _, n in split_plan(max(total, 0), (*cfg.dialogue_split_fractions, 0.0))][:3]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(cfg: WorldConfig, out: Path, summary: WorldSummary) -> int:
    """manifest.json: options, seed, counts, the OOD construction and the sha256 of every file."""

    files = {
        p.relative_to(out).as_posix(): sha256_file(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and not p.name.startswith(".")
    }
    manifest = {
        "generator": "grainvl world",
        "manifest_version": MANIFEST_VERSION,
        "seed": cfg.seed,
        "options": to_dict(cfg),
        "languages": list(LANGUAGES),
        "counts": summary.counts,
        "text_tasks": summary.text_tasks,
        "dialogues": summary.dialogues,
        "ood": ood_description(),
        "files": files,
    }
    fileio.atomic_write_text(out / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True))
    return len(files)


def ood_description() -> dict[str, Any]:
    """How test_ood differs from the ID splits (recorded so an ID->OOD gap can be interpreted)."""
    return {
        "split": "test_ood",
        "held_out_combos": [list(c) for c in ontology.HELD_OUT_COMBOS],
        "held_out_combo_rule": "never in train/val/test; every test_ood image has at least one",
        "ood_backgrounds": list(ontology.OOD_BACKGROUNDS),
        "ood_background_rule": "never in train/val/test; about half of test_ood images",
        "id_object_range": list(ontology.ID_OBJECT_RANGE),
        "ood_object_range": list(ontology.OOD_OBJECT_RANGE),
        "vlue_files": "annotations/vlue/*_vlue_test.json are built from test_ood",
    }


def progress_printer(enabled: bool) -> Callable[[str, int, int], None] | None:
    """A light single-line progress indicator on stderr (no dependency, cheap per call)."""
    if not enabled:
        return None
    last = {"t": 0.0}

    def report(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last["t"] > 0.5:
            last["t"] = now
            end = "\n" if done == total else ""
            print(f"\r  {what}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return report


def format_world_summary(summary: WorldSummary) -> str:
    """A plain-text table of per-split counts."""
    keys = [
        "images",
        "objects",
        "captions",
        "vqa_questions",
        "refexps",
        "nlvr_statements",
        "parallel_pairs",
        "videos",
        "video_questions",
    ]
    header = f"{'split':<10}" + "".join(f"{k:>16}" for k in keys)
    lines = [header, "-" * len(header)]
    for split in ontology.SPLITS:
        counts = summary.counts.get(split, {})
        lines.append(f"{split:<10}" + "".join(f"{counts.get(k, 0):>16}" for k in keys))
    n_cls = sum(1 for k in summary.text_tasks.values() if k == "classification")
    n_qa = sum(1 for k in summary.text_tasks.values() if k == "qa")
    sets = summary.dialogue_sets
    lines.append(
        f"text tasks: {n_cls} classification (GLUE TSV), {n_qa} extractive QA (SQuAD v1.1); "
        f"dialogues: {summary.dialogues} ConvAI2, {sets.get('dailydialog', 0)} DailyDialog, "
        f"{sets.get('dnli', 0)} Dialogue NLI pairs"
    )
    return "\n".join(lines)
