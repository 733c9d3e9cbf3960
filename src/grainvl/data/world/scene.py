"""Scene and video data structures, and relations computed from geometry.

Boxes are COCO-style ``[x, y, w, h]`` in pixels of the rendered image, integers, always inside
the image. Everything here is plain data so that it pickles across worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorldObject:
    """One object in a scene. ``box`` is ``(x, y, w, h)`` in pixels."""

    shape: str
    color: str
    size: str
    texture: str
    box: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return (x + w / 2.0, y + h / 2.0)


@dataclass(frozen=True)
class Relation:
    """``subject`` <relation> ``object``, both indices into ``Scene.objects``."""

    subject: int
    relation: str  # one of ontology.RELATIONS
    object: int


@dataclass
class Scene:
    """A rendered still image. ``image_id`` is unique across splits of one world."""

    image_id: int
    split: str
    width: int
    height: int
    background: str
    objects: list[WorldObject]
    seed: int
    relations: list[Relation] = field(default_factory=list)


@dataclass(frozen=True)
class VideoEvent:
    """What happens to object ``object_index`` over the clip.

    ``kind`` is one of ontology.VIDEO_EVENTS; for ``change_color`` ``to_color`` is the final colour.
    """

    object_index: int
    kind: str
    to_color: str | None = None


@dataclass
class VideoClip:
    """``frames[t]`` is the scene state at frame t (same objects, same order, changed attributes)."""

    video_id: int
    split: str
    frames: list[Scene]
    events: list[VideoEvent]
    seed: int


def compute_relations(objects: list[WorldObject], next_to_gap: float = 0.6) -> list[Relation]:
    """Pairwise spatial relations from box geometry.

    A pair gets "left of"/"right of" when the horizontal centre offset dominates the vertical one,
    and "above"/"below" otherwise (image y grows downwards). "next to" is added (both ways) when
    the gap between the boxes is smaller than ``next_to_gap`` times the mean box side, so a close
    pair carries both a directional relation and "next to".
    """
    relations: list[Relation] = []
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i == j:
                continue
            (ax, ay), (bx, by) = a.center, b.center
            dx, dy = bx - ax, by - ay
            if abs(dx) >= abs(dy):
                relations.append(Relation(i, "left of" if dx > 0 else "right of", j))
            else:
                relations.append(Relation(i, "above" if dy > 0 else "below", j))
            if _box_gap(a.box, b.box) < next_to_gap * _mean_side(a.box, b.box):
                relations.append(Relation(i, "next to", j))
    return relations


def _box_gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Euclidean gap between two axis-aligned boxes (0 when they touch or overlap)."""
    gap_x = max(0, max(a[0], b[0]) - min(a[0] + a[2], b[0] + b[2]))
    gap_y = max(0, max(a[1], b[1]) - min(a[1] + a[3], b[1] + b[3]))
    return float((gap_x**2 + gap_y**2) ** 0.5)


def _mean_side(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    return (a[2] + a[3] + b[2] + b[3]) / 4.0
