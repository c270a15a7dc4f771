"""Build the bundled paired glyph dataset: a held-out set no default was tuned on (image + caption,
labelled writing system or symbol family -> Unicode block).

Inputs come from Debian's fonts (run once, on a machine that has them) and Python's own Unicode tables:

    apt-get install fonts-dejavu-core fonts-dejavu-extra
    python -m crossback.data.build_glyphs --out data/bundled/glyphs.npz

An *item* is one code point of the blocks below that DejaVu Sans draws. Its image view is the glyph
rendered in every DejaVu face that has it (regular, bold, oblique, serif, mono, condensed: a style
spread, as handwriting has), black on white, centred and scaled to ``--size``; its text view is its
Unicode character name in lower case *without the words that name its block* ("greek small letter
alpha" becomes "small letter alpha"), so a caption does not spell out its own label. Classes are
Unicode blocks (two merged where one alone is small), superclasses ``scripts`` and ``symbols``.
"""
from __future__ import annotations

import argparse
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FACES = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSerif", "DejaVuSerif-Bold",
         "DejaVuSansMono", "DejaVuSansCondensed", "DejaVuSerif-Italic")
REFERENCE_FACE = "DejaVuSans"  # an item is a code point this face draws
RENDER_PIXELS = 48


@dataclass(frozen=True)
class Block:
    superclass: str
    label: str
    ranges: tuple[tuple[int, int], ...]
    leaks: tuple[str, ...]  # caption words that would name the class


BLOCKS = (
    Block("scripts", "latin-extended", ((0x0100, 0x017F),), ()),
    Block("scripts", "ipa", ((0x0250, 0x02AF),), ()),
    Block("scripts", "greek", ((0x0370, 0x03FF), (0x1F00, 0x1FFF)), ("greek", "coptic")),
    Block("scripts", "cyrillic", ((0x0400, 0x04FF),), ("cyrillic",)),
    Block("scripts", "armenian", ((0x0530, 0x058F),), ("armenian",)),
    Block("scripts", "hebrew", ((0x0590, 0x05FF),), ("hebrew",)),
    Block("scripts", "arabic", ((0x0600, 0x06FF),), ("arabic",)),
    Block("scripts", "nko", ((0x07C0, 0x07FF),), ("nko",)),
    Block("scripts", "lao", ((0x0E80, 0x0EFF),), ("lao",)),
    Block("scripts", "georgian", ((0x10A0, 0x10FF),), ("georgian",)),
    Block("scripts", "canadian-syllabics", ((0x1400, 0x167F),), ("canadian", "syllabics")),
    Block("scripts", "tifinagh", ((0x2D30, 0x2D7F),), ("tifinagh",)),
    Block("symbols", "letterlike", ((0x2100, 0x214F), (0x2150, 0x218F)), ()),
    Block("symbols", "arrows", ((0x2190, 0x21FF), (0x27F0, 0x27FF)), ()),
    Block("symbols", "math-operators", ((0x2200, 0x22FF), (0x2A00, 0x2AFF)), ()),
    Block("symbols", "technical", ((0x2300, 0x23FF),), ()),
    Block("symbols", "box-drawing", ((0x2500, 0x257F),), ("box", "drawings")),
    Block("symbols", "shapes", ((0x2580, 0x259F), (0x25A0, 0x25FF)), ()),
    Block("symbols", "misc-symbols", ((0x2600, 0x26FF),), ()),
    Block("symbols", "dingbats", ((0x2700, 0x27BF),), ()),
    Block("symbols", "braille", ((0x2800, 0x28FF),), ("braille", "pattern")),
)


def caption(char: str, block: Block) -> str:
    """The character's Unicode name in lower case, without the words that name its block."""
    words = unicodedata.name(char).lower().split()
    kept = [w for w in words if w not in block.leaks]
    return " ".join(kept or words)


def covered(face: Path) -> set[int]:
    from fontTools.ttLib import TTFont

    with TTFont(str(face), lazy=True) as font:
        return set(font.getBestCmap())


def render(char: str, font, size: int) -> np.ndarray | None:
    """The glyph black on white, its ink box centred in a square and resized to ``size``; None when the
    face draws nothing for it (a space or a combining mark alone)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (RENDER_PIXELS * 3, RENDER_PIXELS * 3), 255)
    ImageDraw.Draw(canvas).text((RENDER_PIXELS, RENDER_PIXELS // 2), char, font=font, fill=0)
    box = Image.eval(canvas, lambda v: 255 - v).getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size) + 4
    square = Image.new("L", (side, side), 255)
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def build(out: Path, size: int, font_dir: Path = FONT_DIR) -> dict:
    from PIL import ImageFont

    faces = [(name, font_dir / f"{name}.ttf") for name in FACES if (font_dir / f"{name}.ttf").exists()]
    fonts = {name: (ImageFont.truetype(str(path), RENDER_PIXELS), covered(path)) for name, path in faces}
    reference = fonts[REFERENCE_FACE][1]
    images, sample_item, item_char, item_caption, item_super, item_label = [], [], [], [], [], []
    for block in BLOCKS:
        for lo, hi in block.ranges:
            for code in range(lo, hi + 1):
                char = chr(code)
                if code not in reference or not unicodedata.name(char, "") or unicodedata.combining(char):
                    continue
                renders = [img for font, cmap in fonts.values() if code in cmap
                           and (img := render(char, font, size)) is not None]
                if not renders:
                    continue
                idx = len(item_char)
                item_char.append(char)
                item_caption.append(caption(char, block))
                item_super.append(block.superclass)
                item_label.append(block.label)
                images.extend(renders)
                sample_item.extend([idx] * len(renders))
    meta = {
        "source": {"fonts": f"Debian packages fonts-dejavu-core, fonts-dejavu-extra ({font_dir}): "
                            + ", ".join(name for name, _ in faces),
                   "names": f"Python {'.'.join(map(str, __import__('sys').version_info[:2]))} unicodedata "
                            f"(Unicode {unicodedata.unidata_version})"},
        "license": {"images": "rendered from DejaVu fonts (Bitstream Vera license, public-domain changes)",
                    "names": "Unicode License (Unicode Data Files and Software)"},
        "size": size, "items": len(item_char), "samples": len(images),
        "classes": {b.label: item_label.count(b.label) for b in BLOCKS},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=np.stack(images), sample_item=np.asarray(sample_item, dtype=np.int32),
                        item_char=np.asarray(item_char), item_caption=np.asarray(item_caption),
                        item_superclass=np.asarray(item_super), item_label=np.asarray(item_label),
                        meta_json=np.asarray(json.dumps(meta)))
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "bundled" / "glyphs.npz")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--fonts", type=Path, default=FONT_DIR)
    args = parser.parse_args(argv)
    if not (args.fonts / f"{REFERENCE_FACE}.ttf").exists():
        raise SystemExit(f"{args.fonts / REFERENCE_FACE}.ttf not found: apt-get install fonts-dejavu-core fonts-dejavu-extra")
    print(json.dumps(build(args.out, args.size, args.fonts), indent=2))


if __name__ == "__main__":
    main()
