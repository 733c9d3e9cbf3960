"""Scene and video sampling (sampler.py) and rendering (render.py) of the synthetic world."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
from PIL import Image

from grainvl.data.world.ontology import (
    BACKGROUNDS,
    COLORS,
    OOD_BACKGROUNDS,
    OOD_OBJECT_RANGE,
    SHAPES,
    SIZES,
    TEXTURES,
    VIDEO_EVENTS,
)
from grainvl.data.world.render import encode_jpeg, render_scene, render_video
from grainvl.data.world.sampler import is_ood_combo, sample_scene, sample_video
from grainvl.data.world.scene import Scene, VideoClip, WorldObject, compute_relations

ID_SPLITS = ("train", "val", "test")
SIZE_ORDER = tuple(SIZES)


def _assert_boxes_valid(scene: Scene) -> None:
    for obj in scene.objects:
        x, y, w, h = obj.box
        assert all(isinstance(v, int) for v in obj.box), obj
        assert w >= 4 and h >= 4, obj
        assert x >= 0 and y >= 0 and x + w <= scene.width and y + h <= scene.height, obj


def _overlap_too_much(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Independent check of the placement rule: IoU > 0.05 or a box centre inside the other box."""
    inter_w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    iou = inter / (a[2] * a[3] + b[2] * b[3] - inter)

    def centre_in(p: tuple[int, ...], q: tuple[int, ...]) -> bool:
        return q[0] <= p[0] + p[2] / 2 <= q[0] + q[2] and q[1] <= p[1] + p[3] / 2 <= q[1] + q[3]

    return iou > 0.05 or centre_in(a, b) or centre_in(b, a)


def _scene(objects: list[WorldObject], background: str = "plain", size: int = 128, seed: int = 0) -> Scene:
    return Scene(0, "train", size, size, background, objects, seed, compute_relations(objects))


# --------------------------------------------------------------------------- sampling


def test_same_seed_same_scene_and_bytes_different_seed_different():
    first = sample_scene(7, "test_ood", random.Random(123))
    again = sample_scene(7, "test_ood", random.Random(123))
    other = sample_scene(7, "test_ood", random.Random(124))
    assert first == again
    assert encode_jpeg(render_scene(first)) == encode_jpeg(render_scene(again))
    assert first != other
    assert encode_jpeg(render_scene(first)) != encode_jpeg(render_scene(other))


@pytest.mark.parametrize("resolution", [64, 224, 384])
@pytest.mark.parametrize("split", ["train", "test_ood"])
def test_boxes_inside_image_and_barely_overlapping(resolution, split):
    rng = random.Random(resolution)
    for image_id in range(100):
        scene = sample_scene(image_id, split, rng, resolution)
        assert scene.width == scene.height == resolution and scene.image_id == image_id
        _assert_boxes_valid(scene)
        boxes = [obj.box for obj in scene.objects]
        for i, a in enumerate(boxes):
            assert not any(_overlap_too_much(a, b) for b in boxes[i + 1 :]), boxes


def test_id_splits_never_show_held_out_combos_or_ood_backgrounds():
    rng = random.Random(0)
    counts = Counter()
    for image_id in range(300):
        scene = sample_scene(image_id, ID_SPLITS[image_id % 3], rng)
        assert scene.background in BACKGROUNDS
        assert not any(is_ood_combo(obj.color, obj.shape) for obj in scene.objects)
        counts[len(scene.objects)] += 1
        assert scene.relations == compute_relations(scene.objects)
    assert sorted(counts) == [1, 2, 3, 4]


@pytest.mark.parametrize("resolution", [64, 224])
def test_ood_scenes_are_crowded_and_show_a_held_out_combo(resolution):
    rng = random.Random(1)
    backgrounds = Counter()
    for image_id in range(200):
        scene = sample_scene(image_id, "test_ood", rng, resolution)
        assert len(scene.objects) >= OOD_OBJECT_RANGE[0]
        assert any(is_ood_combo(obj.color, obj.shape) for obj in scene.objects)
        backgrounds[scene.background in OOD_BACKGROUNDS] += 1
    assert backgrounds[True] > 50 and backgrounds[False] > 50  # OOD background about half the time


def test_is_ood_combo():
    assert is_ood_combo("red", "star")
    assert not is_ood_combo("star", "red")
    assert not is_ood_combo("red", "circle")


@pytest.mark.parametrize("resolution", [63, 385])
def test_resolution_out_of_range_raises(resolution):
    with pytest.raises(ValueError, match="resolution"):
        sample_scene(0, "train", random.Random(0), resolution)
    with pytest.raises(ValueError, match="resolution"):
        sample_video(0, "train", random.Random(0), resolution)


def test_bad_split_and_frame_count_raise():
    with pytest.raises(ValueError, match="split"):
        sample_scene(0, "dev", random.Random(0))
    with pytest.raises(ValueError, match="frames"):
        sample_video(0, "train", random.Random(0), num_frames=1)


def test_relations_of_a_hand_built_pair():
    left = WorldObject("circle", "red", "small", "solid", (10, 50, 20, 20))
    far_right = WorldObject("square", "blue", "small", "solid", (100, 52, 20, 20))
    near_right = WorldObject("square", "blue", "small", "solid", (35, 52, 20, 20))
    far = {(r.subject, r.relation, r.object) for r in compute_relations([left, far_right])}
    near = {(r.subject, r.relation, r.object) for r in compute_relations([left, near_right])}
    assert (0, "left of", 1) in far and (1, "right of", 0) in far
    assert not any(relation == "next to" for _, relation, _ in far)
    assert {(0, "left of", 1), (0, "next to", 1), (1, "next to", 0)} <= near


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("background", BACKGROUNDS + OOD_BACKGROUNDS)
def test_solid_object_centre_is_its_colour(background):
    names = list(COLORS)
    objects = [
        WorldObject("square", name, "medium", "solid", (4 + 40 * (i % 4), 4 + 40 * (i // 4), 32, 32))
        for i, name in enumerate(names)
    ]
    image = render_scene(_scene(objects, background, size=164, seed=5))
    decoded = Image.open(io.BytesIO(encode_jpeg(image))).convert("RGB")
    for obj in objects:
        x, y, w, h = obj.box
        centre = (x + w // 4, y + h // 4, x + 3 * w // 4, y + 3 * h // 4)
        dominant = Counter(image.crop(centre).get_flattened_data()).most_common(1)[0][0]
        assert dominant == COLORS[obj.color], obj.color
        mean = [sum(channel) / len(channel) for channel in zip(*decoded.crop(centre).get_flattened_data())]
        assert all(abs(m - c) <= 12 for m, c in zip(mean, COLORS[obj.color])), obj.color


def test_white_object_on_light_background_has_dark_outline():
    square = WorldObject("square", "white", "large", "solid", (20, 20, 40, 40))
    image = render_scene(_scene([square]))
    assert sum(image.getpixel((40, 20))) < 3 * 150  # top edge of the box
    assert sum(image.getpixel((40, 40))) > 3 * 240  # white inside


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_cover_plausible_fractions_of_their_box(shape):
    # Area of the shape over its box (exact values plus anti-aliased edge pixels).
    expected = {"square": (0.95, 1.0), "circle": (0.76, 0.85), "oval": (0.76, 0.85), "triangle": (0.47, 0.56)}
    expected |= {"diamond": (0.47, 0.56), "cross": (0.53, 0.62), "star": (0.3, 0.45), "heart": (0.58, 0.7)}
    expected |= {"hexagon": (0.72, 0.82), "pentagon": (0.66, 0.76)}
    height = 37 if shape == "oval" else 60
    obj = WorldObject(shape, "black", "large", "solid", (10, 10, 60, height))
    image = render_scene(_scene([obj]))
    background = image.getpixel((0, 0))
    covered = sum(pixel != background for pixel in image.crop((10, 10, 70, 10 + height)).get_flattened_data())
    low, high = expected[shape]
    assert low <= covered / (60 * height) <= high


@pytest.mark.parametrize("texture", TEXTURES)
def test_textures_differ_and_keep_the_colour_visible(texture):
    obj = WorldObject("square", "blue", "large", texture, (10, 10, 60, 60))
    pixels = Counter(render_scene(_scene([obj])).crop((20, 20, 60, 60)).get_flattened_data())
    share = pixels[COLORS["blue"]] / sum(pixels.values())
    assert share == 1.0 if texture == "solid" else 0.4 <= share < 0.9


def test_render_is_deterministic_and_sized():
    scene = sample_scene(3, "train", random.Random(9), resolution=96)
    image = render_scene(scene)
    assert image.mode == "RGB" and image.size == (96, 96)
    assert image.tobytes() == render_scene(scene).tobytes()


def test_render_rejects_box_outside_image():
    obj = WorldObject("square", "red", "small", "solid", (120, 10, 20, 20))
    with pytest.raises(ValueError, match="not inside"):
        render_scene(_scene([obj]))


def test_encode_jpeg_round_trips_and_validates_quality():
    image = render_scene(sample_scene(0, "train", random.Random(0), resolution=64))
    data = encode_jpeg(image, quality=80)
    assert data[:2] == b"\xff\xd8" and Image.open(io.BytesIO(data)).size == (64, 64)
    assert data != encode_jpeg(image, quality=60)
    image.info["comment"] = b"made at 12:00"  # metadata must not reach the bytes
    assert encode_jpeg(image, quality=80) == data
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(image, quality=0)


# --------------------------------------------------------------------------- videos


def _clips(split: str, count: int, resolution: int = 224) -> list[VideoClip]:
    return [sample_video(i, split, random.Random(1000 + i), resolution) for i in range(count)]


def test_video_is_deterministic_and_renders_every_frame():
    clip = sample_video(4, "test_ood", random.Random(4), resolution=64, num_frames=5)
    assert clip == sample_video(4, "test_ood", random.Random(4), resolution=64, num_frames=5)
    frames = render_video(clip)
    assert len(frames) == 5 and all(frame.size == (64, 64) for frame in frames)
    assert frames[0].tobytes() != frames[-1].tobytes()


@pytest.mark.parametrize("split", ["train", "test_ood"])
@pytest.mark.parametrize("resolution", [64, 224])
def test_video_frames_keep_boxes_inside_and_split_rules(split, resolution):
    for clip in _clips(split, 60, resolution):
        assert len(clip.frames) == 8 and 1 <= len(clip.events) <= 2
        assert len({event.object_index for event in clip.events}) == len(clip.events)
        first = clip.frames[0]
        assert 1 <= len(first.objects) <= 3
        assert (first.background in BACKGROUNDS) or split == "test_ood"
        for frame in clip.frames:
            _assert_boxes_valid(frame)
            assert frame.relations == compute_relations(frame.objects)
            held_out = any(is_ood_combo(obj.color, obj.shape) for obj in frame.objects)
            assert held_out == (split == "test_ood")


def test_video_events_change_what_they_say():
    clips = _clips("train", 150)
    seen = set()
    for clip in clips:
        start, end, side = clip.frames[0], clip.frames[-1], clip.frames[0].width
        touched = {event.object_index for event in clip.events}
        for index, obj in enumerate(start.objects):
            if index not in touched:
                assert all(frame.objects[index] == obj for frame in clip.frames)
        for event in clip.events:
            seen.add(event.kind)
            before, after = start.objects[event.object_index], end.objects[event.object_index]
            _check_event(event.kind, before, after, side)
            if event.kind == "change_color":
                colors = [frame.objects[event.object_index].color for frame in clip.frames]
                assert colors == [before.color] * 4 + [event.to_color] * 4 and event.to_color != before.color
            else:
                assert event.to_color is None and after.color == before.color
    assert seen == set(VIDEO_EVENTS)


def _check_event(kind: str, before: WorldObject, after: WorldObject, side: int) -> None:
    (x0, y0, w0, h0), (x1, y1, w1, h1) = before.box, after.box
    travel = (abs(x1 - x0) + abs(y1 - y0)) / side
    if kind.startswith("move_"):
        assert (w1, h1) == (w0, h0) and 0.24 <= travel <= 0.36 and after.size == before.size
        direction = {"move_left": x1 < x0, "move_right": x1 > x0, "move_up": y1 < y0, "move_down": y1 > y0}
        assert direction[kind]
    elif kind == "grow":
        assert 1.45 <= w1 / w0 <= 1.75
        position = SIZE_ORDER.index(before.size)
        crossed = max(w1, h1) / side > SIZES[before.size][1] and position < len(SIZE_ORDER) - 1
        assert after.size == (SIZE_ORDER[position + 1] if crossed else before.size)
    elif kind == "shrink":
        assert 0.5 <= w1 / w0 <= 0.7
        assert SIZE_ORDER.index(after.size) in (SIZE_ORDER.index(before.size), SIZE_ORDER.index(before.size) - 1)
    else:
        assert after.box == before.box
