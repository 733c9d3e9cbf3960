"""Rasterise scenes into RGB images, and encode them as deterministic JPEG bytes.

The output depends only on the Scene: background parameters come from ``random.Random(scene.seed)``
and background noise from ``numpy.random.default_rng(scene.seed)``. Speed is the design driver
(the world generator renders hundreds of images per second per process), so everything that
depends only on geometry is cached: anti-aliased shape masks per (shape, w, h), texture patterns
per (texture, w, h), gradient and wave ramps per image size. Per image, the work is one background
fill plus one small alpha blend per object.
"""

from __future__ import annotations

import io
import math
import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from grainvl.data.world.ontology import COLORS
from grainvl.data.world.sampler import OVAL_HEIGHT_RATIO
from grainvl.data.world.scene import Scene, VideoClip, WorldObject

SUPERSAMPLE = 4  # masks are drawn this many times larger, then box-averaged: anti-aliased edges
NOISE_AMPLITUDE = 10  # +- grey levels of the "noise" background: low contrast keeps objects visible
JPEG_SUBSAMPLING = "4:2:0"  # fixed so bytes never depend on Pillow's default

# Light pastel background colours; every object colour stays distinguishable on all of them.
PASTELS: tuple[tuple[int, int, int], ...] = (
    (245, 240, 230),
    (230, 240, 250),
    (235, 248, 235),
    (250, 235, 240),
    (245, 245, 220),
    (235, 235, 245),
    (225, 245, 245),
    (240, 240, 240),
)

_POLYGON_SHAPES = ("square", "triangle", "star", "hexagon", "diamond", "cross", "heart", "pentagon")


# --------------------------------------------------------------------------- public API


def render_scene(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``scene.width`` x ``scene.height`` pixels.

    Objects are drawn in list order (later ones on top), each filled with its colour and texture
    and edged with a thin outline of a darker shade, so even a white object on a light background
    has a visible border. Raises ValueError for an unknown background, shape, colour or texture,
    or a box that is not inside the image.
    """
    canvas = _background(scene)
    for obj in scene.objects:
        _check_box(obj, scene.width, scene.height)
        _draw_object(canvas, obj)
    return Image.fromarray(canvas, mode="RGB")


def render_video(clip: VideoClip) -> list[Image.Image]:
    """One RGB image per frame of ``clip``."""
    return [render_scene(frame) for frame in clip.frames]


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """Baseline JPEG bytes that depend only on the pixels and ``quality`` (1–95).

    Fixed chroma subsampling, no optimisation pass, no EXIF, ICC or timestamps, so the same image
    always gives the same bytes (and so the same sha256 in the world manifest).
    """
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be in [1, 95], got {quality}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING, optimize=False, progressive=False)
    return buffer.getvalue()


def _check_box(obj: WorldObject, width: int, height: int) -> None:
    x, y, w, h = obj.box
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"box {obj.box} of a {obj.shape} is not inside the {width}x{height} image")


# --------------------------------------------------------------------------- backgrounds


def _background(scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8 background, a fresh writable array."""
    rng = random.Random(scene.seed)
    shape = (scene.height, scene.width)
    base = rng.choice(PASTELS)
    if scene.background == "plain":
        return _filled(shape, base)
    if scene.background == "gradient":
        other = rng.choice([color for color in PASTELS if color != base])
        return _blend(base, other, _gradient_ramp(shape, rng.randrange(3)))
    if scene.background == "noise":
        return _noise(shape, base, scene.seed)
    if scene.background == "grid":
        return _grid(shape, base, rng)
    if scene.background == "waves":
        other = _shade(base, 0.82)
        return _blend(base, other, _wave_ramp(shape, rng.randrange(4), rng.randrange(3)))
    raise ValueError(f"unknown background {scene.background!r}")


def _filled(shape: tuple[int, int], color: tuple[int, int, int]) -> np.ndarray:
    canvas = np.empty((*shape, 3), dtype=np.uint8)
    canvas[:] = color
    return canvas


def _blend(first: tuple[int, int, int], second: tuple[int, int, int], ramp: np.ndarray) -> np.ndarray:
    """Per-pixel mix of two colours; ``ramp`` is an (H, W) uint8 index, 0 -> first, 255 -> second."""
    steps = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]  # (256, 1)
    lut = np.asarray(first, np.float32) + (np.asarray(second, np.float32) - np.asarray(first, np.float32)) * steps
    return np.rint(lut).astype(np.uint8)[ramp]  # (H, W, 3)


@lru_cache(maxsize=64)
def _gradient_ramp(shape: tuple[int, int], direction: int) -> np.ndarray:
    """(H, W) uint8 linear ramp: 0 horizontal, 1 vertical, 2 diagonal. Read-only (cached)."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    position = (xs / max(1, width - 1), ys / max(1, height - 1), (xs + ys) / max(1, width + height - 2))[direction]
    ramp = np.rint(position * 255).astype(np.uint8)
    ramp.flags.writeable = False
    return ramp


@lru_cache(maxsize=64)
def _wave_ramp(shape: tuple[int, int], angle_index: int, wavelength_index: int) -> np.ndarray:
    """(H, W) uint8 sinusoidal bands at one of 4 angles and 3 wavelengths. Read-only (cached)."""
    height, width = shape
    angle = math.pi * angle_index / 4
    wavelength = min(shape) / (4, 6, 9)[wavelength_index]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / wavelength)
    ramp = np.rint((0.5 + 0.5 * np.sin(phase)) * 255).astype(np.uint8)
    ramp.flags.writeable = False
    return ramp


def _noise(shape: tuple[int, int], base: tuple[int, int, int], seed: int) -> np.ndarray:
    """Grey per-pixel noise of +- NOISE_AMPLITUDE levels around ``base`` (pastels stay in range)."""
    noise = np.random.default_rng(seed).integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=(*shape, 1), dtype=np.int16)
    return np.clip(noise + np.asarray(base, np.int16), 0, 255).astype(np.uint8)


def _grid(shape: tuple[int, int], base: tuple[int, int, int], rng: random.Random) -> np.ndarray:
    """Thin 1 px lines of a slightly darker shade every side/6 … side/12 pixels."""
    canvas = _filled(shape, base)
    spacing = max(4, min(shape) // rng.choice((6, 8, 10, 12)))
    offset_y, offset_x = rng.randrange(spacing), rng.randrange(spacing)
    line = _shade(base, 0.85)
    canvas[offset_y::spacing, :] = line
    canvas[:, offset_x::spacing] = line
    return canvas


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    """``factor`` < 1 darkens towards black; > 1 lightens towards white by ``factor - 1``."""
    if factor <= 1.0:
        return (round(color[0] * factor), round(color[1] * factor), round(color[2] * factor))
    mix = factor - 1.0
    return (round(color[0] + (255 - color[0]) * mix), round(color[1] + (255 - color[1]) * mix), round(color[2] + (255 - color[2]) * mix))


# --------------------------------------------------------------------------- shapes


@lru_cache(maxsize=None)
def _unit_polygon(shape: str) -> tuple[tuple[float, float], ...]:
    """Vertices in [0, 1]^2 (y down), stretched so the shape touches all four sides of its box."""
    if shape == "square":
        points = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "triangle":
        points = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "diamond":
        points = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    elif shape == "cross":
        a, b = 1 / 3, 2 / 3  # arm thickness: one third of the box
        points = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    elif shape in ("star", "hexagon", "pentagon"):
        corners, inner = {"star": (5, 0.4), "hexagon": (6, 1.0), "pentagon": (5, 1.0)}[shape]
        step = 2 if inner < 1.0 else 1  # a star alternates outer and inner vertices
        points = []
        for k in range(corners * step):
            radius = inner if k % 2 and step == 2 else 1.0
            angle = -math.pi / 2 + math.pi * 2 * k / (corners * step)
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
    elif shape == "heart":
        # The classic parametric heart curve; y is negated because image y grows downwards.
        ts = [2 * math.pi * k / 64 for k in range(64)]
        points = [
            (16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
            for t in ts
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return _normalise(points)


def _normalise(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    return tuple(((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)) for x, y in points)


@lru_cache(maxsize=8192)
def _shape_masks(shape: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(fill, inner) anti-aliased coverage in [0, 1], each (h, w, 1) float32, read-only.

    ``fill`` covers the whole shape; ``inner`` is the shape minus its outline band, so the outline
    is ``fill - inner``. The band is about 1 px per 36 px of object side, at least 1 px.
    """
    big_w, big_h = width * SUPERSAMPLE, height * SUPERSAMPLE
    band = max(SUPERSAMPLE, round(min(width, height) * SUPERSAMPLE / 36))
    canvas = Image.new("L", (big_w, big_h), 0)
    draw = ImageDraw.Draw(canvas)
    # Pillow draws the outline inward, so 255 marks the interior and 128 the outline band.
    if shape in ("circle", "oval"):
        inset = 0.0 if shape == "circle" else max(0.0, (big_h - big_w * OVAL_HEIGHT_RATIO) / 2)
        draw.ellipse((0, inset, big_w - 1, big_h - 1 - inset), fill=255, outline=128, width=band)
    elif shape in _POLYGON_SHAPES:
        points = [(u * (big_w - 1), v * (big_h - 1)) for u, v in _unit_polygon(shape)]
        draw.polygon(points, fill=255, outline=128, width=band)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    drawn = np.asarray(canvas)
    fill = _downsample(drawn > 0, height, width)
    inner = _downsample(drawn == 255, height, width)
    return fill, inner


def _downsample(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Box-average a (h*S, w*S) bool mask to (h, w, 1) float32 coverage, read-only."""
    coverage = mask.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)
    coverage = coverage[:, :, None]
    coverage.flags.writeable = False
    return coverage


# --------------------------------------------------------------------------- textures and compositing


@lru_cache(maxsize=8192)
def _texture_pattern(texture: str, width: int, height: int) -> np.ndarray | None:
    """(h, w, 1) float32 in {0, 1}: where the texture's second shade goes. None for solid.

    Pattern periods scale with the object (a quarter of its shorter side, at least 3 px) so
    the texture reads the same at every resolution. The second shade covers well under half
    of the area for stripes and dots, so the object's own colour still dominates.
    """
    if texture == "solid":
        return None
    period = max(3, round(min(width, height) / 4))
    ys, xs = np.mgrid[0:height, 0:width]
    if texture == "striped":
        pattern = (xs + ys) % period < max(1, period // 3)
    elif texture == "dotted":
        dx, dy = xs % period - (period - 1) / 2, ys % period - (period - 1) / 2
        pattern = dx * dx + dy * dy <= (period * 0.3) ** 2
    elif texture == "checkered":
        pattern = (xs // period + ys // period) % 2 == 1
    else:
        raise ValueError(f"unknown texture {texture!r}")
    result = pattern.astype(np.float32)[:, :, None]
    result.flags.writeable = False
    return result


@lru_cache(maxsize=None)
def _object_colors(color: str, texture: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(body colour, texture shade, outline colour) as float32 (3,) arrays.

    Light colours get darker shades and dark colours lighter ones so the texture is visible;
    dots contrast more than stripes or checks. The outline is always a dark version of the colour.
    """
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}")
    rgb = COLORS[color]
    light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140
    strength = 0.6 if texture == "dotted" else 0.35
    second = _shade(rgb, 1.0 - strength) if light else _shade(rgb, 1.0 + strength)
    outline = _shade(rgb, 0.35)
    return tuple(np.asarray(c, dtype=np.float32) for c in (rgb, second, outline))  # type: ignore[return-value]


def _draw_object(canvas: np.ndarray, obj: WorldObject) -> None:
    """Alpha-blend one object into ``canvas`` (H, W, 3) uint8, in place."""
    x, y, w, h = obj.box
    fill, inner = _shape_masks(obj.shape, w, h)  # (h, w, 1) each
    body, second, outline = _object_colors(obj.color, obj.texture)
    pattern = _texture_pattern(obj.texture, w, h)
    if pattern is not None:
        body = body + (second - body) * pattern  # (h, w, 3)
    colored = outline + (body - outline) * inner  # (h, w, 3): outline band, then body inside it
    region = canvas[y : y + h, x : x + w].astype(np.float32)
    region += (colored - region) * fill
    canvas[y : y + h, x : x + w] = np.rint(region).astype(np.uint8)
