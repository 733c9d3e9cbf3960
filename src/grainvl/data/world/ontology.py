"""The world's closed vocabulary of attributes (English canonical names).

Every other module refers to attributes by these canonical English keys; surface forms in each
language live in ``language.py``. Keep the tuples ordered: indices are part of the seeded
generation, so reordering changes every generated world.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "diamond",
    "cross",
    "heart",
    "pentagon",
    "oval",
)

# RGB values chosen to be distinguishable after JPEG compression.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
    "pink": (245, 130, 190),
    "brown": (130, 80, 40),
    "gray": (128, 128, 128),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
    "cyan": (40, 210, 220),
}

# Object side length as a fraction of the image side: (low, high).
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.10, 0.15),
    "medium": (0.18, 0.24),
    "large": (0.27, 0.34),
}

TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")

# In-distribution backgrounds; OOD_BACKGROUNDS never appear in train/val/test (VLUE-style shift).
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise", "grid")
OOD_BACKGROUNDS: tuple[str, ...] = ("waves",)

# Attribute–shape combinations held out of the ID splits and used only in test_ood.
HELD_OUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("blue", "heart"),
    ("green", "triangle"),
    ("yellow", "hexagon"),
    ("purple", "circle"),
    ("orange", "square"),
)

# Objects per scene: ID scenes are sparser; OOD scenes are more crowded.
ID_OBJECT_RANGE: tuple[int, int] = (1, 4)
OOD_OBJECT_RANGE: tuple[int, int] = (4, 6)

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "next to")

# Video events: what can happen to one object over a clip.
VIDEO_EVENTS: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "grow",
    "shrink",
    "change_color",
)

SPLITS: tuple[str, ...] = ("train", "val", "test", "test_ood")
