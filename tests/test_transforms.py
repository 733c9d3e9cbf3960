"""Box-carrying image transforms, left/right text flips and frame sampling (grainvl.data.transforms)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from grainvl.data import transforms as T

FAST = settings(max_examples=50, deadline=None)
EPS = 1e-3  # pixels; boxes come back as float32


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@st.composite
def scenes(draw: st.DrawFn) -> tuple[int, int, list[list[float]]]:
    """An image size and 1-6 boxes with positive size inside it."""
    width, height = draw(st.integers(8, 80)), draw(st.integers(8, 80))
    boxes = []
    for _ in range(draw(st.integers(1, 6))):
        x, y = draw(st.floats(0, width - 1)), draw(st.floats(0, height - 1))
        w, h = draw(st.floats(0.5, width - x)), draw(st.floats(0.5, height - y))
        boxes.append([x, y, w, h])
    return width, height, boxes


def _visible_fraction(box: list[float], crop: tuple[int, int, int, int]) -> float:
    top, left, crop_h, crop_w = crop
    x, y, w, h = box
    vis_w = max(0.0, min(x + w, left + crop_w) - max(x, left))
    vis_h = max(0.0, min(y + h, top + crop_h) - max(y, top))
    return vis_w * vis_h / (w * h)


def _check_crop_result(
    boxes: list[list[float]],
    crop: tuple[int, int, int, int],
    out: int,
    kept: torch.Tensor,
    keep: list[int],
    min_vis: float,
) -> None:
    top, left, crop_h, crop_w = crop
    assert kept.shape == (len(keep), 4)
    assert keep == sorted(set(keep))
    for box_out, index in zip(kept.tolist(), keep):
        x, y, w, h = box_out
        assert w > 0 and h > 0
        assert x >= -EPS and y >= -EPS and x + w <= out + EPS and y + h <= out + EPS
        # Invert the crop+resize: the kept box must be a part of the original box.
        ox, oy = x * crop_w / out + left, y * crop_h / out + top
        ow, oh = w * crop_w / out, h * crop_h / out
        bx, by, bw, bh = boxes[index]
        assert ox >= bx - EPS and oy >= by - EPS and ox + ow <= bx + bw + EPS and oy + oh <= by + bh + EPS
        assert _visible_fraction(boxes[index], crop) >= min_vis - 1e-6
    for index in set(range(len(boxes))) - set(keep):
        assert _visible_fraction(boxes[index], crop) < min_vis + 1e-6


@FAST
@given(
    scene=scenes(),
    seed=st.integers(0, 2**32 - 1),
    out=st.integers(4, 48),
    min_vis=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
)
def test_random_resized_crop_keeps_only_correct_boxes(scene, seed, out, min_vis):
    width, height, boxes = scene
    image, kept, keep = T.random_resized_crop(
        _image(width, height), boxes, random.Random(seed), out, min_visible=min_vis
    )
    assert image.size == (out, out)
    # The crop is the first thing drawn from the rng, so the same seed reproduces it.
    crop = T.random_resized_crop_params(width, height, random.Random(seed))
    _check_crop_result(boxes, crop, out, kept, keep, min_vis)


@FAST
@given(scene=scenes(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_crop_keeping_box_contains_target(scene, seed, data):
    width, height, boxes = scene
    boxes = torch.tensor(boxes, dtype=torch.float32).tolist()  # the values the transform sees
    target = data.draw(st.integers(0, len(boxes) - 1))
    _, kept, keep = T.crop_keeping_box(_image(width, height), boxes, target, random.Random(seed), 16)
    # Rebuild the crop from the documented draw order: left, top, right, bottom edges.
    x, y, w, h = boxes[target]
    rng = random.Random(seed)
    left, top = rng.randint(0, math.floor(x)), rng.randint(0, math.floor(y))
    right = rng.randint(min(math.ceil(x + w), width), width)
    bottom = rng.randint(min(math.ceil(y + h), height), height)
    crop = (top, left, bottom - top, right - left)
    _check_crop_result(boxes, crop, 16, kept, keep, 0.5)
    assert target in keep
    # The whole target survives: mapping its output box back gives the original box.
    ox, oy, ow, oh = kept[keep.index(target)].double().tolist()
    back = [ox * crop[3] / 16 + left, oy * crop[2] / 16 + top, ow * crop[3] / 16, oh * crop[2] / 16]
    assert np.allclose(back, boxes[target], atol=1e-3)


def test_random_resized_crop_params_fallback_is_centre_crop():
    class AlwaysTooBig(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b * 50  # every try asks for more area than the image has

    assert T.random_resized_crop_params(100, 20, AlwaysTooBig(0)) == (0, 36, 20, 27)  # ratio clamped to 4/3
    assert T.random_resized_crop_params(30, 30, AlwaysTooBig(0)) == (0, 0, 30, 30)


def test_random_resized_crop_distribution_matches_scale():
    rng = random.Random(0)
    fractions = []
    for _ in range(400):
        top, left, h, w = T.random_resized_crop_params(200, 200, rng, scale=(0.2, 1.0))
        assert 0 <= top <= 200 - h and 0 <= left <= 200 - w
        fractions.append(h * w / 200**2)
    assert min(fractions) >= 0.18 and max(fractions) <= 1.0
    assert 0.5 < float(np.mean(fractions)) < 0.7  # uniform on [0.2, 1] (tries that do not fit skew it)


def test_drops_box_outside_crop():
    image = _image(100, 100)
    crop = (0, 0, 50, 50)
    _, kept, keep = T.crop_and_resize(image, [[60, 60, 10, 10], [40, 40, 20, 20], [10, 10, 10, 10]], crop, 25)
    assert keep == [2]  # the second shows only a quarter of itself
    assert torch.allclose(kept, torch.tensor([[5.0, 5.0, 5.0, 5.0]]))
    _, kept, keep = T.crop_and_resize(image, [[40, 40, 20, 20]], crop, 25, min_visible=0.25)
    assert keep == [0] and torch.allclose(kept, torch.tensor([[20.0, 20.0, 5.0, 5.0]]))


@FAST
@given(scene=scenes(), out_h=st.integers(1, 64), out_w=st.integers(1, 64))
def test_resize_scales_boxes_exactly(scene, out_h, out_w):
    width, height, boxes = scene
    image, resized = T.resize(_image(width, height), boxes, (out_h, out_w))
    assert image.size == (out_w, out_h)
    expected = torch.tensor(boxes, dtype=torch.float64) * torch.tensor([out_w / width, out_h / height] * 2)
    assert torch.allclose(resized.double(), expected, atol=1e-4)


def test_bad_boxes_are_rejected():
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        T.as_boxes([[1, 2, 3]])
    with pytest.raises(ValueError, match="NaN"):
        T.resize(_image(8, 8), [[0, 0, float("nan"), 1]], 4)
    assert T.as_boxes(None).shape == (0, 4) and T.as_boxes([]).shape == (0, 4)


def test_resize_int_is_square():
    image, boxes = T.resize(_image(40, 20), [[4, 2, 8, 4]], 10)
    assert image.size == (10, 10)
    assert boxes.tolist() == [[1.0, 1.0, 2.0, 2.0]]


@FAST
@given(
    scene=scenes(),
    words=st.lists(st.sampled_from(["left", "Right", "LEFT", "leftover", "of", "rightmost"]), max_size=8),
)
def test_flip_twice_is_identity(scene, words):
    width, height, boxes = scene
    image = _image(width, height)
    text = " ".join(words)
    once = T.horizontal_flip(image, boxes, text)
    twice = T.horizontal_flip(*once)
    assert np.array_equal(np.asarray(twice[0]), np.asarray(image))
    assert torch.allclose(twice[1], torch.tensor(boxes), atol=EPS)
    assert twice[2] == text
    # Once: the box mirrors around the vertical centre line.
    flipped_x = once[1][:, 0] + once[1][:, 2]
    assert torch.allclose(flipped_x, width - torch.tensor(boxes)[:, 0], atol=EPS)


def test_flip_moves_pixels_and_boxes_together():
    image = Image.new("RGB", (10, 4), (0, 0, 0))
    image.putpixel((1, 2), (255, 0, 0))
    flipped, boxes, _ = T.horizontal_flip(image, [[1, 2, 1, 1]])
    assert flipped.getpixel((8, 2)) == (255, 0, 0)
    assert boxes.tolist() == [[8.0, 2.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("lang", "text", "expected"),
    [
        (
            "en",
            "The cube left of the Right ball; LEFT leftover rightmost.",
            "The cube right of the Left ball; RIGHT leftover leftmost.",
        ),
        ("en", "left-hand side, left_x", "right-hand side, left_x"),
        ("de", "Links die linke Kugel, rechts der Linkshänder.", "Rechts die rechte Kugel, links der Linkshänder."),
        ("fr", "à gauche de la boule droite, gaucherie", "à droite de la boule gauche, gaucherie"),
        ("es", "Izquierda del cubo derecho; izquierdazo", "Derecha del cubo izquierdo; izquierdazo"),
        ("zh", "红色的球在左边，右边是方块，左右对称", "红色的球在右边，左边是方块，左右对称"),
        ("ja", "赤いボールは左にあり、右に箱がある", "赤いボールは右にあり、左に箱がある"),
    ],
)
def test_swap_left_right_whole_words(lang, text, expected):
    assert T.swap_left_right(text, lang) == expected
    assert T.swap_left_right(expected, lang) == text


def test_swap_left_right_unknown_language_is_clear():
    with pytest.raises(ValueError, match="no left/right word list for language 'xx'"):
        T.swap_left_right("left", "xx")


def test_random_flip_is_seeded():
    image = _image(12, 8)
    results = [T.random_horizontal_flip(image, [[0, 0, 2, 2]], "left", random.Random(s))[2] for s in range(40)]
    assert set(results) == {"left", "right"}
    assert results == [T.random_horizontal_flip(image, [[0, 0, 2, 2]], "left", random.Random(s))[2] for s in range(40)]
    never = T.random_horizontal_flip(image, [[0, 0, 2, 2]], "left", random.Random(0), p=0.0)
    assert never[2] == "left" and never[1].tolist() == [[0.0, 0.0, 2.0, 2.0]]


def test_to_tensor_and_normalize():
    image = Image.new("L", (3, 2), 255)
    tensor = T.to_tensor(image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32 and torch.all(tensor == 1.0)
    normed = T.normalize(tensor, T.EFFICIENTNET_LITE_MEAN, T.EFFICIENTNET_LITE_STD)
    assert torch.all(normed == 1.0)  # [0, 1] -> [-1, 1]
    assert torch.allclose(
        T.normalize(torch.zeros(2, 3, 1, 1), T.CLIP_MEAN, T.CLIP_STD)[0, :, 0, 0],
        -torch.tensor(T.CLIP_MEAN) / torch.tensor(T.CLIP_STD),
    )
    assert T.XVLM_MEAN == (0.48145466, 0.4578275, 0.40821073) and T.XVLM_STD == (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("kind", ["pretrain", "finetune", "test"])
def test_image_transform_pipeline(kind):
    transform = T.build_transform(kind, 32)
    image = _image(60, 40)
    boxes = [[5, 5, 20, 20], [40, 10, 15, 25]]
    tensor, out_boxes, text, keep = transform(image, boxes, "the box left of the circle", rng=random.Random(3))
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert out_boxes.shape == (len(keep), 4)
    assert text in ("the box left of the circle", "the box right of the circle")
    if kind == "test":
        assert keep == [0, 1] and text == "the box left of the circle"
        assert torch.allclose(out_boxes[0], torch.tensor([5 * 32 / 60, 5 * 32 / 40, 20 * 32 / 60, 20 * 32 / 40]))
    again = transform(image, boxes, "the box left of the circle", rng=random.Random(3))
    assert torch.equal(again[0], tensor) and again[3] == keep


def test_image_transform_region_crop_keeps_target():
    transform = T.build_transform("pretrain", 24)
    boxes = [[30, 20, 10, 10], [0, 0, 5, 5]]
    for seed in range(20):
        _, _, _, keep = transform(_image(64, 48), boxes, rng=random.Random(seed), target_index=0)
        assert 0 in keep


def test_rand_augment_plan_is_seeded_and_colour_only_when_asked():
    plans = [T.sample_rand_augment(random.Random(s), geometric=False) for s in range(50)]
    assert all(op in T.COLOR_OPS for plan in plans for op, _ in plan)
    assert plans == [T.sample_rand_augment(random.Random(s), geometric=False) for s in range(50)]
    every_op = [(op, 0.3) for op in T.COLOR_OPS + T.GEOMETRIC_OPS]
    assert T.apply_rand_augment(_image(16, 12), every_op).size == (16, 12)


@FAST
@given(num_frames=st.integers(1, 60), num_segments=st.integers(1, 16), seed=st.integers(0, 1000))
def test_sample_frame_ids_properties(num_frames, num_segments, seed):
    for ids in (
        T.sample_frame_ids(num_frames, num_segments, random.Random(seed)),
        T.sample_frame_ids(num_frames, num_segments),
    ):
        assert len(ids) == num_segments
        assert ids == sorted(ids)
        assert all(0 <= i < num_frames for i in ids)
        if num_frames >= num_segments:
            assert len(set(ids)) == num_segments  # no repeats when the clip is long enough
    assert T.sample_frame_ids(num_frames, num_segments) == T.sample_frame_ids(num_frames, num_segments)


def test_sample_frame_ids_values():
    assert T.sample_frame_ids(12, 3) == [2, 6, 10]  # segment middles
    assert T.sample_frame_ids(2, 4) == [0, 0, 1, 1]  # short clip: frames repeat
    draws = {tuple(T.sample_frame_ids(12, 3, random.Random(s))) for s in range(200)}
    assert {d[0] for d in draws} == {0, 1, 2, 3} and {d[2] for d in draws} == {8, 9, 10, 11}
    with pytest.raises(ValueError):
        T.sample_frame_ids(0, 3)


def test_video_transform_shares_one_crop_and_flip():
    frame = _image(40, 30, seed=1)
    for seed in range(6):
        video, text = T.video_transform([frame, frame, frame], 16, random.Random(seed), text="it moves left")
        assert video.shape == (3, 3, 16, 16)
        assert torch.equal(video[0], video[1]) and torch.equal(video[1], video[2])  # same ops on equal frames
        assert text in ("it moves left", "it moves right")
    test_video, text = T.video_transform([frame, _image(40, 30, seed=2)], 16, kind="test", text="left")
    assert test_video.shape == (2, 3, 16, 16) and text == "left"
    with pytest.raises(ValueError, match="same size"):
        T.video_transform([frame, _image(20, 30)], 16, random.Random(0))
