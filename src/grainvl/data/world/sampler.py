"""Seeded sampling of scenes (still images) and video clips of the synthetic world.

All randomness comes from the ``random.Random`` passed in, drawn in a fixed order, so one seed
always gives the same world. Geometry invariants every caller may rely on:

- boxes are COCO-style ``(x, y, w, h)`` integers with ``w, h >= MIN_BOX_SIDE`` and the whole box
  inside the ``resolution x resolution`` image;
- objects overlap little: pairwise IoU <= ``MAX_IOU`` and no box centre lies inside another box
  (in still images and in the first frame of a clip; moving objects may pass each other);
- in still scenes and first frames an object's ``size`` label matches its box: the longer box
  side over the image side lies in ``ontology.SIZES[size]`` (up to integer rounding and the 4 px
  floor at low resolution); in later frames a grown or shrunk object changes label once it
  crosses its category's bound.

Split rules (VLUE-style out-of-distribution test): ``train``/``val``/``test`` never contain a
(colour, shape) pair from ``HELD_OUT_COMBOS`` nor an ``OOD_BACKGROUNDS`` background;
``test_ood`` scenes are more crowded (``OOD_OBJECT_RANGE``), use an OOD background half of the
time, and always show at least one held-out pair.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from grainvl.data.world.ontology import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT_COMBOS,
    ID_OBJECT_RANGE,
    OOD_BACKGROUNDS,
    OOD_OBJECT_RANGE,
    SHAPES,
    SIZES,
    SPLITS,
    TEXTURES,
    VIDEO_EVENTS,
)
from grainvl.data.world.scene import Scene, VideoClip, VideoEvent, WorldObject, compute_relations

MIN_RESOLUTION = 64
MAX_RESOLUTION = 384
MIN_BOX_SIDE = 4  # pixels; smaller boxes are not recognisable after JPEG
MAX_IOU = 0.05
# An oval's box is tight around an ellipse this much flatter than it is wide (render.py draws it so).
OVAL_HEIGHT_RATIO = 0.62

PLACEMENT_ATTEMPTS = 40  # random positions tried per object and size category
PLACEMENT_ROUNDS = 3  # whole-scene retries before the deterministic grid fallback

VIDEO_ID_OBJECT_RANGE = (1, 3)
VIDEO_OOD_OBJECT_COUNT = 3  # OOD clips are the crowded end of the ID range
MOVE_TRAVEL = (0.25, 0.35)  # centre travel as a fraction of the image side
GROW_FACTOR = (1.5, 1.7)
SHRINK_FACTOR = (0.55, 0.65)
EVENT_ATTEMPTS = 12  # tries to find an event whose end box does not collide with another object

_COLOR_NAMES: tuple[str, ...] = tuple(COLORS)  # dict order is insertion order, not hash order
_SIZE_ORDER: tuple[str, ...] = tuple(SIZES)  # small < medium < large
_HELD_OUT: frozenset[tuple[str, str]] = frozenset(HELD_OUT_COMBOS)
_MOVE_OPPOSITE = {"move_left": "move_right", "move_right": "move_left", "move_up": "move_down", "move_down": "move_up"}

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class _ObjectSpec:
    """An object's attributes before it has a place; ``size`` is the wished-for category."""

    shape: str
    color: str
    size: str
    texture: str


def is_ood_combo(color: str, shape: str) -> bool:
    """True when (color, shape) is held out of the ID splits and reserved for ``test_ood``."""
    return (color, shape) in _HELD_OUT


def sample_scene(image_id: int, split: str, rng: random.Random, resolution: int = 224) -> Scene:
    """Draw one still scene for ``split`` at ``resolution`` x ``resolution`` pixels.

    Raises ValueError for an unknown split or a resolution outside [MIN_RESOLUTION, MAX_RESOLUTION].
    ``Scene.seed`` is drawn from ``rng``; the renderer seeds its background noise from it.
    """
    _check_arguments(split, resolution)
    ood = split == "test_ood"
    seed = rng.getrandbits(31)
    low, high = OOD_OBJECT_RANGE if ood else ID_OBJECT_RANGE
    count = rng.randint(low, high)
    background = _sample_background(ood, rng)
    specs = _sample_specs(count, ood, rng)
    objects = _place_objects(specs, resolution, rng)
    return _square_scene(image_id, split, resolution, background, objects, seed)


def sample_video(
    video_id: int, split: str, rng: random.Random, resolution: int = 224, num_frames: int = 8
) -> VideoClip:
    """Draw one clip: 1–3 objects and 1–2 events (on distinct objects) spread over ``num_frames``.

    Events run from the first to the last frame: boxes are interpolated linearly, a colour change
    switches at frame ``num_frames // 2``, and a size label moves one category when the box side
    crosses its category's bound. Every frame is a full Scene (same object order, relations
    recomputed, ``image_id = video_id``, the clip's seed so the background stays still).
    """
    _check_arguments(split, resolution)
    if num_frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got num_frames={num_frames}")
    ood = split == "test_ood"
    seed = rng.getrandbits(31)
    count = VIDEO_OOD_OBJECT_COUNT if ood else rng.randint(*VIDEO_ID_OBJECT_RANGE)
    background = _sample_background(ood, rng)
    objects = _place_objects(_sample_specs(count, ood, rng), resolution, rng)
    events, end_boxes = _sample_events(objects, ood, rng, resolution)
    frames = []
    for t in range(num_frames):
        frame_objects = _objects_at_frame(objects, events, end_boxes, t, num_frames, resolution)
        frames.append(_square_scene(video_id, split, resolution, background, frame_objects, seed))
    return VideoClip(video_id=video_id, split=split, frames=frames, events=events, seed=seed)


def _square_scene(
    image_id: int, split: str, resolution: int, background: str, objects: list[WorldObject], seed: int
) -> Scene:
    """A ``resolution``² Scene of ``objects`` with their relations computed (an image or one clip frame)."""
    return Scene(
        image_id=image_id,
        split=split,
        width=resolution,
        height=resolution,
        background=background,
        objects=objects,
        seed=seed,
        relations=compute_relations(objects),
    )


def _check_arguments(split: str, resolution: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}] pixels, got {resolution}")


# --------------------------------------------------------------------------- attributes


def _sample_background(ood: bool, rng: random.Random) -> str:
    if ood and rng.random() < 0.5:
        return rng.choice(OOD_BACKGROUNDS)
    return rng.choice(BACKGROUNDS)


def _sample_specs(count: int, ood: bool, rng: random.Random) -> list[_ObjectSpec]:
    """``count`` attribute sets; in OOD one random object is forced onto a held-out pair.

    Other OOD objects draw from every pair (held-out ones included), ID objects only from allowed
    pairs — rejection sampling keeps the allowed pairs uniformly likely.
    """
    specs = []
    for _ in range(count):
        color, shape = _sample_color_shape(rng, allow_held_out=ood)
        specs.append(_ObjectSpec(shape, color, rng.choice(_SIZE_ORDER), rng.choice(TEXTURES)))
    if ood:
        index = rng.randrange(count)
        color, shape = rng.choice(HELD_OUT_COMBOS)
        specs[index] = replace(specs[index], color=color, shape=shape)
    return specs


def _sample_color_shape(rng: random.Random, allow_held_out: bool) -> tuple[str, str]:
    while True:
        color, shape = rng.choice(_COLOR_NAMES), rng.choice(SHAPES)
        if allow_held_out or not is_ood_combo(color, shape):
            return color, shape


# --------------------------------------------------------------------------- placement


def _box_size(shape: str, side_fraction: float, resolution: int) -> tuple[int, int]:
    """(w, h) in pixels for an object whose longer side is ``side_fraction`` of the image side."""
    width = max(MIN_BOX_SIDE, round(side_fraction * resolution))
    height = max(MIN_BOX_SIDE, round(width * OVAL_HEIGHT_RATIO)) if shape == "oval" else width
    return width, height


def _iou(a: Box, b: Box) -> float:
    inter_w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    inter_h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _center_inside(a: Box, b: Box) -> bool:
    """True when the centre of box ``a`` lies inside box ``b`` (borders included)."""
    cx, cy = a[0] + a[2] / 2.0, a[1] + a[3] / 2.0
    return b[0] <= cx <= b[0] + b[2] and b[1] <= cy <= b[1] + b[3]


def boxes_conflict(a: Box, b: Box) -> bool:
    """True when two boxes overlap more than the world allows (IoU or a centre inside the other)."""
    return _iou(a, b) > MAX_IOU or _center_inside(a, b) or _center_inside(b, a)


def _place_objects(specs: list[_ObjectSpec], resolution: int, rng: random.Random) -> list[WorldObject]:
    """Give every spec a box by rejection sampling; keep ``specs`` order.

    An object that does not fit tries the next smaller size category before it is dropped, and a
    scene that lost objects is redrawn up to PLACEMENT_ROUNDS times. If that still fails, a
    jittered grid of small boxes places every object: at MIN_RESOLUTION a 3x3 grid of 21 px cells
    holds up to 9 small (<= 10 px) objects, so no scene ever loses an object for lack of room.
    """
    for _ in range(PLACEMENT_ROUNDS):
        placed: list[WorldObject] = []
        for spec in specs:
            obj = _place_one(spec, resolution, placed, rng)
            if obj is not None:
                placed.append(obj)
        if len(placed) == len(specs):
            return placed
    return _place_on_grid(specs, resolution, rng)


def _place_one(spec: _ObjectSpec, resolution: int, placed: list[WorldObject], rng: random.Random) -> WorldObject | None:
    """Try ``spec``'s size category, then each smaller one; None when nothing fits."""
    for size in reversed(_SIZE_ORDER[: _SIZE_ORDER.index(spec.size) + 1]):
        low, high = SIZES[size]
        for _ in range(PLACEMENT_ATTEMPTS):
            width, height = _box_size(spec.shape, rng.uniform(low, high), resolution)
            box = (rng.randint(0, resolution - width), rng.randint(0, resolution - height), width, height)
            if not any(boxes_conflict(box, other.box) for other in placed):
                return WorldObject(spec.shape, spec.color, size, spec.texture, box)
    return None


def _place_on_grid(specs: list[_ObjectSpec], resolution: int, rng: random.Random) -> list[WorldObject]:
    """Fallback: one small object per cell of a square grid, jittered inside its cell."""
    per_row = math.ceil(math.sqrt(len(specs)))
    cell = resolution // per_row
    low, high = SIZES["small"]
    objects = []
    for index, spec in enumerate(specs):
        width, height = _box_size(spec.shape, min(rng.uniform(low, high), 0.9 / per_row), resolution)
        row, col = divmod(index, per_row)
        x = col * cell + rng.randint(0, max(0, cell - width))
        y = row * cell + rng.randint(0, max(0, cell - height))
        objects.append(WorldObject(spec.shape, spec.color, "small", spec.texture, (x, y, width, height)))
    return objects


# --------------------------------------------------------------------------- video events


def _sample_events(
    objects: list[WorldObject], ood: bool, rng: random.Random, resolution: int
) -> tuple[list[VideoEvent], dict[int, Box]]:
    """1–2 events on distinct objects, and the end box of every object (unchanged ones included).

    Each event is redrawn up to EVENT_ATTEMPTS times to find one whose end box does not collide
    with the other objects' end boxes; the last draw is kept if none is clean.
    """
    end_boxes = {index: obj.box for index, obj in enumerate(objects)}
    events: list[VideoEvent] = []
    for _ in range(rng.randint(1, min(2, len(objects)))):
        taken = {event.object_index for event in events}
        recoloured = {event.object_index for event in events if event.kind == "change_color"}
        free = [index for index in range(len(objects)) if index not in taken]
        for _attempt in range(EVENT_ATTEMPTS):
            index = rng.choice(free)
            keep_color = ood and _sole_held_out_carrier(objects, index, recoloured)
            event, end_box = _sample_event(objects[index], index, keep_color, ood, rng, resolution)
            others = [box for other, box in end_boxes.items() if other != index]
            if not any(boxes_conflict(end_box, box) for box in others):
                break
        events.append(event)
        end_boxes[event.object_index] = end_box
    return events, end_boxes


def _sample_event(
    obj: WorldObject, index: int, keep_color: bool, ood: bool, rng: random.Random, resolution: int
) -> tuple[VideoEvent, Box]:
    """One event for ``obj`` (at ``index``) and its box at the last frame; no recolour if ``keep_color``."""
    kinds = tuple(kind for kind in VIDEO_EVENTS if kind != "change_color") if keep_color else VIDEO_EVENTS
    kind = rng.choice(kinds)
    if kind == "change_color":
        return VideoEvent(index, kind, _sample_new_color(obj, ood, rng)), obj.box
    if kind in _MOVE_OPPOSITE:
        return _sample_move(obj, index, kind, rng, resolution)
    low, high = GROW_FACTOR if kind == "grow" else SHRINK_FACTOR
    return VideoEvent(index, kind), _scaled_box(obj.box, rng.uniform(low, high), resolution)


def _sole_held_out_carrier(objects: list[WorldObject], index: int, recoloured: set[int]) -> bool:
    """True when recolouring ``objects[index]`` could leave the OOD clip without a held-out pair.

    Objects already being recoloured no longer count as carriers for the clip's last frames.
    """
    carriers = [i for i, obj in enumerate(objects) if is_ood_combo(obj.color, obj.shape) and i not in recoloured]
    return carriers == [index]


def _sample_new_color(obj: WorldObject, ood: bool, rng: random.Random) -> str:
    """A colour different from the current one; in ID splits never a held-out pair with the shape."""
    choices = [c for c in _COLOR_NAMES if c != obj.color and (ood or not is_ood_combo(c, obj.shape))]
    return rng.choice(choices)


def _sample_move(
    obj: WorldObject, index: int, kind: str, rng: random.Random, resolution: int
) -> tuple[VideoEvent, Box]:
    """Move the centre MOVE_TRAVEL of the side, flipping direction when the wished one has no room.

    Boxes are at most 0.35 of the side, so one of the two directions on an axis always has at
    least 0.32 of the side free, more than the minimum travel.
    """
    x, y, w, h = obj.box
    room = {"move_left": x, "move_right": resolution - x - w, "move_up": y, "move_down": resolution - y - h}
    min_travel = MOVE_TRAVEL[0] * resolution
    if room[kind] < min_travel:
        kind = _MOVE_OPPOSITE[kind]
    max_travel = max(min_travel, min(MOVE_TRAVEL[1] * resolution, room[kind]))
    travel = min(room[kind], round(rng.uniform(min_travel, max_travel)))
    dx = {"move_left": -travel, "move_right": travel}.get(kind, 0)
    dy = {"move_up": -travel, "move_down": travel}.get(kind, 0)
    return VideoEvent(index, kind), (x + dx, y + dy, w, h)


def _scaled_box(box: Box, factor: float, resolution: int) -> Box:
    """``box`` scaled about its centre by ``factor``, shifted back inside the image if needed."""
    x, y, w, h = box
    new_w = min(resolution, max(MIN_BOX_SIDE, round(w * factor)))
    new_h = min(resolution, max(MIN_BOX_SIDE, round(h * factor)))
    new_x = min(max(0, round(x + w / 2.0 - new_w / 2.0)), resolution - new_w)
    new_y = min(max(0, round(y + h / 2.0 - new_h / 2.0)), resolution - new_h)
    return (new_x, new_y, new_w, new_h)


def _interpolate_box(start: Box, end: Box, fraction: float) -> Box:
    """Linear blend of the box edges, rounded so the box stays inside whatever holds both ends.

    Rounding the left and right edges (not x and w) keeps ``x + w`` within the image, and
    ``w >= min(start w, end w)`` because rounding is monotone.
    """
    left = start[0] + (end[0] - start[0]) * fraction
    top = start[1] + (end[1] - start[1]) * fraction
    right = left + start[2] + (end[2] - start[2]) * fraction
    bottom = top + start[3] + (end[3] - start[3]) * fraction
    x, y = round(left), round(top)
    return (x, y, round(right) - x, round(bottom) - y)


def _size_at(obj: WorldObject, kind: str, box: Box, resolution: int) -> str:
    """Size label for ``obj`` at ``box``: one category up (grow) or down (shrink) once past the bound."""
    fraction = max(box[2], box[3]) / resolution
    position = _SIZE_ORDER.index(obj.size)
    low, high = SIZES[obj.size]
    if kind == "grow" and fraction > high and position + 1 < len(_SIZE_ORDER):
        return _SIZE_ORDER[position + 1]
    if kind == "shrink" and fraction < low and position > 0:
        return _SIZE_ORDER[position - 1]
    return obj.size


def _objects_at_frame(
    objects: list[WorldObject],
    events: list[VideoEvent],
    end_boxes: dict[int, Box],
    t: int,
    num_frames: int,
    resolution: int,
) -> list[WorldObject]:
    """The objects as they are at frame ``t`` (0-based)."""
    fraction = t / (num_frames - 1)
    by_object = {event.object_index: event for event in events}
    frame = []
    for index, obj in enumerate(objects):
        event = by_object.get(index)
        if event is None:
            frame.append(obj)
            continue
        box = _interpolate_box(obj.box, end_boxes[index], fraction)
        color = event.to_color if event.to_color is not None and t >= num_frames // 2 else obj.color
        frame.append(replace(obj, box=box, color=color, size=_size_at(obj, event.kind, box, resolution)))
    return frame
