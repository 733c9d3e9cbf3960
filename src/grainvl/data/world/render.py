"""Rasterise scenes into RGB images, and encode them as deterministic JPEG bytes.

The output depends only on the Scene: background parameters come from ``random.Random(scene.seed)``
and background noise from ``numpy.random.default_rng(scene.seed)``. Speed is the design driver
(the world generator renders hundreds of images per second per process), so everything that
depends only on geometry is cached: anti-aliased shape masks per (shape, w, h), texture masks
per (texture, w, h), gradient and wave ramps per image size, palettes per colour pair. Per image,
the work is one background fill (a palette lookup in Pillow) plus a few small masked pastes per
object, all in Pillow's C code.
"""

from __future__ import annotations

import io
import math
import random
from functools import cache, lru_cache

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
    return canvas


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
    # Explicit empty comment/EXIF: Pillow would otherwise copy a comment found in ``image.info``.
    image.save(
        buffer,
        format="JPEG",
        quality=quality,
        subsampling=JPEG_SUBSAMPLING,
        optimize=False,
        progressive=False,
        comment=b"",
        exif=b"",
    )
    return buffer.getvalue()


def _check_box(obj: WorldObject, width: int, height: int) -> None:
    x, y, w, h = obj.box
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"box {obj.box} of a {obj.shape} is not inside the {width}x{height} image")


# --------------------------------------------------------------------------- backgrounds


def _background(scene: Scene) -> Image.Image:
    """A fresh RGB background image of the scene's size."""
    rng = random.Random(scene.seed)
    size = (scene.width, scene.height)
    base = rng.choice(PASTELS)
    if scene.background == "plain":
        return Image.new("RGB", size, base)
    if scene.background == "gradient":
        other = rng.choice([color for color in PASTELS if color != base])
        return _colorize(_gradient_ramp(size, rng.randrange(3)), _blend_palette(base, other))
    if scene.background == "noise":
        return _colorize(_noise_image(size, scene.seed), _noise_palette(base))
    if scene.background == "grid":
        return _grid(size, base, rng)
    if scene.background == "waves":
        ramp = _wave_ramp(size, rng.randrange(4), rng.randrange(3))
        return _colorize(ramp, _blend_palette(base, _shade(base, 0.86)))
    raise ValueError(f"unknown background {scene.background!r}")


def _colorize(index_image: Image.Image, palette: bytes) -> Image.Image:
    """Map an "L" image through a 256-entry RGB palette (768 bytes) to a new RGB image.

    A palette lookup in Pillow is several times faster than numpy fancy indexing or three
    ``point`` calls plus ``merge``.
    """
    indexed = index_image.copy()
    indexed.putpalette(palette)
    return indexed.convert("RGB")


@lru_cache(maxsize=256)
def _blend_palette(first: tuple[int, int, int], second: tuple[int, int, int]) -> bytes:
    """Palette whose entry v mixes ``first`` (v = 0) into ``second`` (v = 255) linearly."""
    return bytes(round(a + (b - a) * v / 255) for v in range(256) for a, b in zip(first, second))


@lru_cache(maxsize=64)
def _noise_palette(base: tuple[int, int, int]) -> bytes:
    """Palette mapping a uniform byte to ``base`` plus a grey offset in [-NOISE_AMPLITUDE, +NOISE_AMPLITUDE]."""
    levels = 2 * NOISE_AMPLITUDE + 1
    offsets = [v * levels // 256 - NOISE_AMPLITUDE for v in range(256)]
    return bytes(min(255, max(0, channel + offset)) for offset in offsets for channel in base)


def _noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """ "L" image of uniform random bytes from ``numpy.random.default_rng(seed)``."""
    width, height = size
    return Image.frombytes("L", size, np.random.default_rng(seed).bytes(width * height))


@lru_cache(maxsize=64)
def _gradient_ramp(size: tuple[int, int], direction: int) -> Image.Image:
    """ "L" linear ramp 0..255: direction 0 horizontal, 1 vertical, 2 diagonal. Never mutate (cached)."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    position = (xs / max(1, width - 1), ys / max(1, height - 1), (xs + ys) / max(1, width + height - 2))[direction]
    return Image.fromarray(np.rint(position * 255).astype(np.uint8), mode="L")


@lru_cache(maxsize=64)
def _wave_ramp(size: tuple[int, int], angle_index: int, wavelength_index: int) -> Image.Image:
    """ "L" sinusoidal bands at one of 4 angles and 3 wavelengths. Never mutate (cached)."""
    width, height = size
    angle = math.pi * angle_index / 4
    wavelength = min(size) / (4, 6, 9)[wavelength_index]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / wavelength)
    return Image.fromarray(np.rint((0.5 + 0.5 * np.sin(phase)) * 255).astype(np.uint8), mode="L")


def _grid(size: tuple[int, int], base: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """Thin 1 px lines of a slightly darker shade every side/6 … side/12 pixels."""
    width, height = size
    canvas = Image.new("RGB", size, base)
    spacing = max(4, min(size) // rng.choice((6, 8, 10, 12)))
    offset_y, offset_x = rng.randrange(spacing), rng.randrange(spacing)
    line = _shade(base, 0.85)
    for y in range(offset_y, height, spacing):
        canvas.paste(line, (0, y, width, y + 1))
    for x in range(offset_x, width, spacing):
        canvas.paste(line, (x, 0, x + 1, height))
    return canvas


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    """``factor`` < 1 darkens towards black; > 1 lightens towards white by ``factor - 1``."""
    if factor <= 1.0:
        red, green, blue = (round(channel * factor) for channel in color)
    else:
        red, green, blue = (round(channel + (255 - channel) * (factor - 1.0)) for channel in color)
    return (red, green, blue)


# --------------------------------------------------------------------------- shapes


@cache
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
def _shape_masks(shape: str, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """(fill, inner) anti-aliased "L" coverage masks of size (w, h). Never mutate (cached).

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
    return _downsample(drawn > 0, height, width), _downsample(drawn == 255, height, width)


def _downsample(mask: np.ndarray, height: int, width: int) -> Image.Image:
    """Box-average a (h*S, w*S) bool mask to an (w, h) "L" coverage image (0..255)."""
    coverage = mask.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3))
    return Image.fromarray(np.rint(coverage * 255).astype(np.uint8), mode="L")


# --------------------------------------------------------------------------- textures and compositing


@lru_cache(maxsize=8192)
def _texture_mask(texture: str, width: int, height: int) -> Image.Image | None:
    """(w, h) "L" mask, 255 where the texture's second shade goes; None for solid. Never mutate.

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
    return Image.fromarray(pattern.astype(np.uint8) * 255, mode="L")


@cache
def _object_colors(color: str, texture: str) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """(body colour, texture shade, outline colour) for a ``color`` object with ``texture``.

    Light colours get darker shades and dark colours lighter ones so the texture is visible;
    dots contrast more than stripes or checks. The outline is always a dark version of the colour.
    """
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}")
    rgb = COLORS[color]
    light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140
    strength = 0.6 if texture == "dotted" else 0.35
    second = _shade(rgb, 1.0 - strength) if light else _shade(rgb, 1.0 + strength)
    return rgb, second, _shade(rgb, 0.35)


def _draw_object(canvas: Image.Image, obj: WorldObject) -> None:
    """Composite one object onto ``canvas`` in place: outline colour under the whole shape,
    then the (textured) body inside the outline band."""
    x, y, w, h = obj.box
    fill, inner = _shape_masks(obj.shape, w, h)
    body_color, second, outline = _object_colors(obj.color, obj.texture)
    pattern = _texture_mask(obj.texture, w, h)
    patch = Image.new("RGB", (w, h), outline)
    if pattern is None:
        patch.paste(body_color, (0, 0, w, h), inner)
    else:
        body = Image.new("RGB", (w, h), body_color)
        body.paste(second, (0, 0, w, h), pattern)
        patch.paste(body, (0, 0), inner)
    canvas.paste(patch, (x, y), fill)
