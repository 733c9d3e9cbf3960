"""A contact sheet PNG: world images with their boxes, region phrases and a caption, plus video frames."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from grainvl.utils import fileio

TILE = 224
CAPTION_H = 60
BOX_COLOURS = ((255, 0, 0), (0, 160, 0), (0, 0, 255), (255, 128, 0), (160, 0, 160), (0, 150, 150))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(text: str, width_chars: int, max_lines: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width_chars and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return lines[:max_lines]


def _image_tile(world: Path, record: dict, font_small, font_caption) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + CAPTION_H), "white")
    with Image.open(world / record["image"]) as im:
        scale = TILE / im.width
        tile.paste(im.convert("RGB").resize((TILE, TILE), Image.Resampling.BICUBIC), (0, 0))
    draw = ImageDraw.Draw(tile)
    for k, elem in enumerate(record["elems"]):
        x, y, w, h = (v * scale for v in elem["bb"])
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        draw.text((x + 2, max(0, y - 11)), elem["caption"], fill=colour, font=font_small)
    caption = record["caption"][0] if isinstance(record["caption"], list) else str(record["caption"])
    for i, line in enumerate(_wrap(caption, 40, 4)):
        draw.text((3, TILE + 2 + 14 * i), line, fill="black", font=font_caption)
    return tile


def make_contact_sheet(world: str | Path, out_png: str | Path, n_images: int = 12, n_video_frames: int = 8) -> Path:
    """Draw up to ``n_images`` train/test_ood images (boxes + phrases + caption) and one clip's frames."""
    world, out_png = Path(world), Path(out_png)
    records = []
    for split in ("train", "test_ood"):
        region = world / "annotations" / "pretrain" / split / "region.jsonl"
        if region.exists():
            take = n_images // 2 if split == "train" else n_images - len(records)
            records.extend(r for _, r in zip(range(take), (rec for _, rec in fileio.iter_jsonl(region))))
    cols = 4
    rows = (len(records) + cols - 1) // cols
    frames = _video_frames(world, n_video_frames)
    frame_side = TILE * cols // max(1, len(frames[0])) if frames else 0
    sheet = Image.new("RGB", (TILE * cols, rows * (TILE + CAPTION_H) + frame_side + (24 if frames else 0)), "white")
    font_small, font_caption = _font(10), _font(12)
    for k, rec in enumerate(records):
        sheet.paste(
            _image_tile(world, rec, font_small, font_caption), ((k % cols) * TILE, (k // cols) * (TILE + CAPTION_H))
        )
    if frames:
        top = rows * (TILE + CAPTION_H)
        draw = ImageDraw.Draw(sheet)
        draw.text((4, top + 4), "video: " + frames[1], fill="black", font=font_caption)
        for t, path in enumerate(frames[0]):
            with Image.open(world / path) as im:
                sheet.paste(im.convert("RGB").resize((frame_side, frame_side)), (t * frame_side, top + 24))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, format="PNG")
    return out_png


def _video_frames(world: Path, n: int) -> tuple[list[str], str] | None:
    video = world / "annotations" / "pretrain" / "train" / "video.jsonl"
    if not video.exists():
        return None
    for _, rec in fileio.iter_jsonl(video):
        text = rec["text"][0] if isinstance(rec["text"], list) else rec["text"]
        return rec["video_frames"][:n], text
    return None
