"""X²-VLM pre-training data pipeline (grainvl.data.pretrain) over a tiny synthetic world.

Batches must have the documented shapes and dtypes, MLM labels must sit exactly at the masked
positions, region samples must follow the box recipe (patch masks, targets, whole-image element, no
duplicated texts, flips that mirror boxes and swap left/right words), and streams must be
deterministic, resumable, sharded disjointly per rank, and name the file/line/image of a bad picture.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from grainvl.data.masking import pre_caption
from grainvl.data.pretrain import (
    ImageTextDataset,
    PretrainDataConfig,
    PretrainFiles,
    PretrainStream,
    RegionTextDataset,
    VideoTextDataset,
    build_pretrain_loaders,
    collate_region,
    eval_grounding,
    eval_image_text,
)
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.data.transforms import swap_left_right
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.errors import DataError

RES, PATCH = 64, 16
GRID = RES // PATCH


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(images=24, videos=6, resolution=96, text_scenes=0, dialogues=0), out)
    return out


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(packaged_minilm_path())


def _cfg(**overrides: Any) -> PretrainDataConfig:
    base = dict(
        resolution=RES,
        patch_size=PATCH,
        image_batch_size=4,
        region_batch_size=64,
        max_images_per_region_batch=3,
        video_batch_size=2,
    )
    return PretrainDataConfig(**{**base, **overrides})


def _assert_equal_batches(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _check_text_fields(batch: dict[str, torch.Tensor], tokenizer: Any, rows: int, max_masks: int) -> None:
    ids, atts, masked = batch["text_ids"], batch["text_atts"], batch["text_ids_masked"]
    pos, labels = batch["masked_pos"], batch["masked_ids"]
    assert ids.dtype == atts.dtype == masked.dtype == pos.dtype == labels.dtype == torch.long
    assert ids.shape == atts.shape == masked.shape and ids.shape[0] == rows
    assert pos.shape == labels.shape == (rows, max_masks)
    assert atts.sum(1).max() == ids.shape[1]  # padded to the longest text of the batch
    for row in range(rows):
        n = int(atts[row].sum())
        assert atts[row, :n].all() and not atts[row, n:].any()
        assert ids[row, 0] == tokenizer.cls_token_id and ids[row, n - 1] == tokenizer.sep_token_id
        assert (ids[row, n:] == tokenizer.pad_token_id).all()
        real = labels[row] != -100
        assert real.any() and (pos[row, ~real] == 0).all()
        positions = pos[row, real]
        assert (positions >= 1).all() and (positions < n).all()
        assert torch.equal(labels[row, real], ids[row, positions])  # labels are the original ids there
        changed = torch.nonzero(masked[row] != ids[row]).flatten()
        assert set(changed.tolist()) <= set(positions.tolist())  # corrupted only where predicted


# ---------------------------------------------------------------------------------------------
# Batch layouts


def test_image_batch_shapes_masks_and_image_ids(world: Path, tokenizer: Any) -> None:
    cfg = _cfg()
    stream = build_pretrain_loaders(world, "train", tokenizer, cfg, seed=3)["image"]
    first = stream.epoch_indices(0)[:4].tolist()  # the first batch is the start of epoch 0
    batch = next(stream)
    assert batch["image"].shape == (4, 3, RES, RES) and batch["image"].dtype == torch.float32
    _check_text_fields(batch, tokenizer, 4, cfg.max_masks)
    expected = [stream.dataset.image_ids[index] for index in first]
    assert batch["image_ids"].tolist() == expected and batch["image_ids"].dtype == torch.long


def test_video_batch_shapes(world: Path, tokenizer: Any) -> None:
    cfg = _cfg(frame_len=3)
    stream = build_pretrain_loaders(world, "train", tokenizer, cfg, seed=0)["video"]
    batch = next(stream)
    assert batch["video"].shape == (2, 3, 3, RES, RES) and batch["video"].dtype == torch.float32
    _check_text_fields(batch, tokenizer, 2, cfg.max_masks)
    assert batch["video_ids"].dtype == torch.long and batch["video_ids"].shape == (2,)


def test_video_test_mode_is_deterministic(world: Path, tokenizer: Any) -> None:
    files = PretrainFiles.from_world(world, "train")
    dataset = VideoTextDataset(files.video, files.root, tokenizer, _cfg(), train=False)
    a, b = dataset.sample(0, epoch=0), dataset.sample(0, epoch=5)
    assert torch.equal(a["video"], b["video"])  # middle-of-segment frames, plain resize


def _box_inside_patches(box: list[float], mask: torch.Tensor) -> None:
    """The masked patches form the smallest patch rectangle that holds ``box`` ([x, y, w, h] pixels)."""
    eps = 1e-3
    x, y, w, h = box
    grid = mask[1:].view(GRID, GRID).bool()
    assert mask[0] == 1
    rows, cols = torch.nonzero(grid, as_tuple=True)
    r0, r1, c0, c1 = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
    assert grid[r0:r1, c0:c1].all() and int(grid.sum()) == (r1 - r0) * (c1 - c0)  # one full rectangle
    assert c0 * PATCH <= x + eps and x + w <= c1 * PATCH + eps  # the box lies inside it
    assert r0 * PATCH <= y + eps and y + h <= r1 * PATCH + eps
    assert x < (c0 + 1) * PATCH + eps and x + w > (c1 - 1) * PATCH - eps  # and it is the tightest one
    assert y < (r0 + 1) * PATCH + eps and y + h > (r1 - 1) * PATCH - eps


def test_region_batch_layout_masks_boxes_and_no_duplicates(world: Path, tokenizer: Any) -> None:
    cfg = _cfg()
    stream = build_pretrain_loaders(world, "train", tokenizer, cfg, seed=1)["region"]
    samples = [stream.dataset.sample(index, 0) for index in stream.epoch_indices(0)[:3].tolist()]
    batch = next(stream)
    total = sum(len(s["texts"]) for s in samples)
    assert total <= cfg.region_batch_size
    assert batch["region_image_index"].shape == (total,)  # the real texts, none duplicated
    assert batch["image"].shape == (3, 3, RES, RES)
    assert batch["region_atts"].shape == (total, 1 + GRID * GRID) and batch["region_atts"].dtype == torch.float32
    assert batch["region_boxes"].shape == (total, 4) and batch["region_boxes"].dtype == torch.float32
    assert batch["is_image"].dtype == torch.bool and batch["image_ids"].dtype == torch.long
    _check_text_fields(batch, tokenizer, total, cfg.max_masks)
    boxes = batch["region_boxes"]
    assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] > 0).all()
    assert (boxes[:, :2] - boxes[:, 2:] / 2 >= -1e-6).all() and (boxes[:, :2] + boxes[:, 2:] / 2 <= 1 + 1e-6).all()
    whole = batch["is_image"]
    assert whole.any() and (~whole).any()
    assert (batch["region_atts"][whole] == 1).all()
    assert torch.equal(boxes[whole], torch.tensor([[0.5, 0.5, 1.0, 1.0]]).expand(int(whole.sum()), 4))
    for row in torch.nonzero(~whole).flatten().tolist():
        cx, cy, w, h = (boxes[row] * RES).tolist()
        _box_inside_patches([cx - w / 2, cy - h / 2, w, h], batch["region_atts"][row])
    for s, sample in enumerate(samples):  # texts of sample s point at image row s, with its image id
        rows = batch["region_image_index"] == s
        assert int(rows.sum()) == len(sample["texts"]) <= cfg.max_regions
        assert (batch["image_ids"][rows] == sample["image_id"]).all()
        assert torch.equal(batch["image"][s], sample["image"])


def test_region_collate_subsamples_without_duplicates_and_drops_unused_images(world: Path, tokenizer: Any) -> None:
    files = PretrainFiles.from_world(world, "train")
    dataset = RegionTextDataset(files.region, files.root, tokenizer, _cfg(), seed=0)
    samples = [dataset.sample(i) for i in range(6)]
    entries = {(s, k) for s, sample in enumerate(samples) for k in range(len(sample["texts"]))}
    batch = collate_region(samples, tokenizer.pad_token_id, 12, max_texts=5, rng=random.Random(0))
    assert batch["text_ids"].shape[0] == 5
    used = batch["region_image_index"]
    assert sorted(set(used.tolist())) == list(range(batch["image"].shape[0]))  # no image without a text
    # Match every text row back to its (sample, element): each one appears once.
    matched = []
    for row in range(5):
        for s, k in entries:
            sample = samples[s]
            ids = sample["texts"][k].ids
            if (
                sample["image_id"] == batch["image_ids"][row]
                and torch.equal(sample["region_boxes"][k], batch["region_boxes"][row])
                and batch["text_ids"][row, : len(ids)].tolist() == ids
            ):
                matched.append((s, k))
    assert len(matched) == len(set(matched)) == 5


# ---------------------------------------------------------------------------------------------
# Region geometry on a drawn image: boxes must land on their objects, flips must mirror them


def _region_file(tmp_path: Path) -> Path:
    """One 80x60 image: a red box on the left, a green box on the right, captions saying so."""
    image = Image.new("RGB", (80, 60), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle([6, 20, 35, 39], fill=(255, 0, 0))  # [x, y, w, h] = [6, 20, 30, 20]
    draw.rectangle([50, 4, 73, 27], fill=(0, 255, 0))  # [50, 4, 24, 24]
    image.save(tmp_path / "scene.png")
    line = {
        "image": "scene.png",
        "caption": "a red box on the left and a green box on the right",
        "elems": [
            {"caption": "the red box on the left", "attributes": "red", "bb": [6, 20, 30, 20]},
            {"caption": "the green box on the right", "attributes": "green", "bb": [50, 4, 24, 24]},
        ],
    }
    path = tmp_path / "region.jsonl"
    path.write_text(json.dumps(line) + "\n")
    return path


def _pixels(image: torch.Tensor, cfg: PretrainDataConfig) -> torch.Tensor:
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    return image * std + mean  # (3, R, R) in [0, 1]


def test_region_boxes_follow_their_objects(tmp_path: Path, tokenizer: Any) -> None:
    cfg = _cfg(augment=False)
    dataset = RegionTextDataset(_region_file(tmp_path), tmp_path, tokenizer, cfg, seed=0)
    flips = set()
    for epoch in range(12):
        sample = dataset.sample(0, epoch)
        flips.add(sample["flipped"])
        pixels = _pixels(sample["image"], cfg)
        for text, box, is_image in zip(sample["texts"], sample["boxes"].tolist(), sample["is_image"]):
            if is_image:
                continue
            x, y, w, h = box
            inner = pixels[:, math.ceil(y + 2) : math.floor(y + h - 2), math.ceil(x + 2) : math.floor(x + w - 2)]
            colour = 0 if text.caption.startswith("red") else 1
            assert inner.numel() > 0 and (inner[colour] > 0.8).all() and (inner[1 - colour] < 0.2).all()
            # A mirrored picture puts the red box on the right, and its caption must say so.
            side = "right" if sample["flipped"] == (colour == 0) else "left"
            assert text.caption.endswith(f"on the {side}"), (text.caption, sample["flipped"])
    assert flips == {True, False}


class _FixedCoin(random.Random):
    """``random()`` always returns ``value`` (0.0: every coin says flip); integer draws stay seeded."""

    def __init__(self, seed: int, value: float) -> None:
        super().__init__(seed)
        self.value = value

    def random(self) -> float:
        return self.value

    # Defining getrandbits keeps randint/shuffle on the seeded bit stream: a subclass that overrides
    # only random() gets integer draws built from random() instead.
    def getrandbits(self, k: int) -> int:
        return super().getrandbits(k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flip_mirrors_boxes_image_and_swaps_words(tmp_path: Path, tokenizer: Any, seed: int) -> None:
    cfg = _cfg(augment=False)
    dataset = RegionTextDataset(_region_file(tmp_path), tmp_path, tokenizer, cfg)
    plain = dataset.make_sample(0, _FixedCoin(seed, 0.99), random.Random(seed))
    flipped = dataset.make_sample(0, _FixedCoin(seed, 0.0), random.Random(seed))
    assert flipped["flipped"] and not plain["flipped"]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    mirrored = plain["boxes"].clone()
    mirrored[:, 0] = RES - plain["boxes"][:, 0] - plain["boxes"][:, 2]
    assert torch.allclose(flipped["boxes"], mirrored, atol=1e-4)
    assert torch.equal(flipped["is_image"], plain["is_image"])
    captions = [t.caption for t in plain["texts"]]
    assert [t.caption for t in flipped["texts"]] == [swap_left_right(c) for c in captions]
    assert any("left" in c for c in captions)


def test_careful_hflip_keeps_captions_with_left_right_unflipped(tmp_path: Path, tokenizer: Any) -> None:
    dataset = RegionTextDataset(_region_file(tmp_path), tmp_path, tokenizer, _cfg(careful_hflip=True))
    sample = dataset.make_sample(0, _FixedCoin(0, 0.0), random.Random(0))
    assert not sample["flipped"]
    assert sample["texts"][0].caption == "a red box on the left and a green box on the right"
    for text in sample["texts"][1:]:
        assert text.caption.endswith("on the left" if text.caption.startswith("red") else "on the right")


# ---------------------------------------------------------------------------------------------
# Streams: determinism, resume, sharding, threads


def test_same_seed_same_batches_other_seed_differs(world: Path, tokenizer: Any) -> None:
    cfg = _cfg()
    a = build_pretrain_loaders(world, "train", tokenizer, cfg, seed=7)
    b = build_pretrain_loaders(world, "train", tokenizer, cfg, seed=7)
    c = build_pretrain_loaders(world, "train", tokenizer, cfg, seed=8)
    assert set(a) == {"image", "region", "video"}
    for kind in a:
        for _ in range(2):
            _assert_equal_batches(next(a[kind]), next(b[kind]))
    assert not torch.equal(next(a["image"])["image"], next(c["image"])["image"])


@pytest.mark.parametrize("kind", ["image", "region", "video"])
def test_resume_gives_the_uninterrupted_next_batch(world: Path, tokenizer: Any, kind: str) -> None:
    cfg = _cfg()
    stream = build_pretrain_loaders(world, "train", tokenizer, cfg, seed=5)[kind]
    consumed = math.ceil(stream.samples_per_rank / stream.batch_size)  # the next batch crosses epochs
    for _ in range(consumed):
        next(stream)
    state = json.loads(json.dumps(stream.state_dict()))  # survives a checkpoint round trip
    expected = next(stream)
    resumed = build_pretrain_loaders(world, "train", tokenizer, cfg, seed=5)[kind]
    resumed.load_state_dict(state)
    _assert_equal_batches(next(resumed), expected)


def test_resume_refuses_a_different_setup(world: Path, tokenizer: Any) -> None:
    stream = build_pretrain_loaders(world, "train", tokenizer, _cfg(), seed=5)["image"]
    other = build_pretrain_loaders(world, "train", tokenizer, _cfg(), seed=6)["image"]
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(stream.state_dict())


def test_ranks_get_disjoint_equal_shards(world: Path, tokenizer: Any) -> None:
    cfg = _cfg()
    ranks = [build_pretrain_loaders(world, "train", tokenizer, cfg, seed=2, rank=r, world_size=2) for r in (0, 1)]
    for kind in ("image", "region"):
        streams = [r[kind] for r in ranks]
        n = len(streams[0].dataset)
        for epoch in (0, 1):
            shards = [set(s.epoch_indices(epoch).tolist()) for s in streams]
            assert len(shards[0]) == len(shards[1]) == n // 2 and not shards[0] & shards[1]
        # One epoch of batches per rank: disjoint images, the same batch shapes on both ranks.
        seen: list[set[int]] = [set(), set()]
        for _ in range(streams[0].samples_per_rank // streams[0].batch_size):
            batches = [next(s) for s in streams]
            assert batches[0]["image"].shape == batches[1]["image"].shape
            for r, batch in enumerate(batches):
                seen[r] |= set(batch["image_ids"].tolist())
        assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert streams[0].epoch_indices(0).tolist() != streams[0].epoch_indices(1).tolist()  # reshuffled


def test_threads_give_the_same_batches(world: Path, tokenizer: Any) -> None:
    files = PretrainFiles.from_world(world, "train")
    cfg = _cfg()
    dataset = RegionTextDataset(files.region, files.root, tokenizer, cfg, seed=0)
    serial, threaded = PretrainStream(dataset, 3), PretrainStream(dataset, 3, num_threads=3)
    for _ in range(2):
        _assert_equal_batches(next(serial), next(threaded))
    threaded.close()


# ---------------------------------------------------------------------------------------------
# Bad input


def test_corrupt_image_names_file_line_and_image(tmp_path: Path, tokenizer: Any) -> None:
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes((tmp_path / "good.jpg").read_bytes()[:60])  # truncated JPEG
    lines = [{"image": "good.jpg", "caption": "a grey square"}, {"image": "bad.jpg", "caption": "a cut picture"}]
    path = tmp_path / "image_text.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    stream = build_pretrain_loaders(PretrainFiles(tmp_path, image=path), "train", tokenizer, _cfg(image_batch_size=2))
    dataset = stream["image"].dataset
    assert dataset.sample(0)["image"].shape == (3, RES, RES)
    with pytest.raises(DataError) as error:
        dataset.sample(1)
    message = str(error.value)
    assert str(path) in message and "line 2" in message and "bad.jpg" in message
    state = stream["image"].state_dict()
    with pytest.raises(DataError):
        next(stream["image"])
    assert stream["image"].state_dict() == state  # a failed batch does not advance the stream


def test_config_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match="multiple"):
        PretrainDataConfig(resolution=100, patch_size=16)
    with pytest.raises(ValueError, match="min_perc_in_image"):
        PretrainDataConfig(min_perc_in_image=1.0)


# ---------------------------------------------------------------------------------------------
# Evaluation sets


def test_eval_image_text_has_every_caption_of_every_image(world: Path, tokenizer: Any) -> None:
    cfg = _cfg()
    data = eval_image_text(world, "val", tokenizer, cfg)
    lines = [
        json.loads(line) for line in (world / "annotations/pretrain/val/image_text.jsonl").read_text().splitlines()
    ]
    assert len(data.images) == len({line["image"] for line in lines})
    assert len(data.captions) == sum(len(line["caption"]) for line in lines) == data.text_ids.shape[0]
    assert data.text_atts.shape == data.text_ids.shape and data.text_image_index.dtype == torch.long
    assert (data.text_ids[:, 0] == tokenizer.cls_token_id).all()
    for image, texts in enumerate(data.image_text_index):
        assert (data.text_image_index[texts] == image).all()
    first = next(data.images.batches(2))
    assert first.shape == (min(2, len(data.images)), 3, RES, RES)
    assert torch.equal(first[0], data.images[0])


def test_eval_grounding_scales_boxes_to_the_resized_image(world: Path, tokenizer: Any) -> None:
    cfg = _cfg()
    data = eval_grounding(world, "val", tokenizer, cfg)
    records = json.loads((world / "annotations/refcoco+/refcoco+_val.json").read_text())
    assert len(data) == len(records)
    item = data[0]
    x, y, w, h = records[0]["bbox"]
    sx, sy = RES / records[0]["width"], RES / records[0]["height"]
    assert torch.allclose(item["box"], torch.tensor([x * sx, y * sy, w * sx, h * sy]))
    assert item["image"].shape == (3, RES, RES) and item["text_ids"][0] == tokenizer.cls_token_id
    batch = data.collate([data[i] for i in range(len(data))])
    assert batch["image"].shape == (len(data), 3, RES, RES) and batch["box"].shape == (len(data), 4)
    assert batch["text_ids"].shape == batch["text_atts"].shape


# ---------------------------------------------------------------------------------------------
# Captions in several languages, clip lists


def test_multilingual_captions_use_the_configured_language(world: Path, tokenizer: Any) -> None:
    path = world / "annotations/pretrain/train/image_text_multilingual.jsonl"
    line = json.loads(path.read_text().splitlines()[0])
    lang = next(iter(line["caption"]))

    dataset = ImageTextDataset(path, world, tokenizer, _cfg(language=lang, max_words=100, max_tokens=200))
    caption = dataset.sample(0)["text"].caption
    options = [
        pre_caption(c, 100)
        for c in (line["caption"][lang] if isinstance(line["caption"][lang], list) else [line["caption"][lang]])
    ]
    assert caption in options or caption in [pre_caption(swap_left_right(c, lang), 100) for c in options]
    missing = ImageTextDataset(path, world, tokenizer, _cfg(language="xx"))
    with pytest.raises(DataError, match="line 1"):
        missing.sample(0)


def test_continuous_clips_are_joined_without_skipped_captions(tmp_path: Path, tokenizer: Any) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    clips = []
    for c, colour in enumerate(colours):
        clips.append([])
        for f in range(2):
            Image.new("RGB", (32, 32), colour).save(tmp_path / f"c{c}f{f}.png")
            clips[-1].append(f"c{c}f{f}.png")
    texts = ["a red square appears", "[Music]", "a blue circle appears"]
    line = {"video_frames": clips, "text": texts, "is_continuous": True}
    path = tmp_path / "video.jsonl"
    path.write_text(json.dumps(line) + "\n")
    cfg = _cfg(frame_len=3, min_frames_before_sampling=4)
    sample = VideoTextDataset(path, tmp_path, tokenizer, cfg, train=False).sample(0)
    assert sample["text"].caption == "a red square appears a blue circle appears"
    # Usable frames: clip 0 and clip 2 (the [Music] clip is dropped); segment middles pick 0, 2, 3.
    pixels = [_pixels(frame, cfg)[:, 16, 16] for frame in sample["video"]]
    assert [int(p.argmax()) for p in pixels] == [0, 2, 2]


def test_world_streams_are_the_english_files_only(image_world: Path) -> None:
    """The world's training streams by name: its image_text_multilingual.jsonl is for CCLM, never X²-VLM's stream."""
    from grainvl.data.pretrain import PretrainFiles

    found = PretrainFiles.find(image_world, "train")
    assert found == PretrainFiles.from_world(image_world, "train")
    assert found.image == image_world / "annotations" / "pretrain" / "train" / "image_text.jsonl"
