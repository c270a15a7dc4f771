"""Build the bundled paired emoji dataset (image + CLDR name, labelled group -> subgroup).

Inputs come from two Debian packages (run once, on a machine that has them):

    apt-get install fonts-noto-color-emoji unicode-data
    python -m crossback.data.build_emoji --out data/bundled/emoji.npz

Every fully-qualified emoji of ``emoji-test.txt`` is rendered with Noto Color Emoji onto white and
downsampled to ``--size`` pixels. Skin-tone and gender variants collapse onto one *item* (their base
emoji), so a split by item never puts a variant of a test emoji into training. The output is a single
``.npz`` (no pickled objects) holding per-sample images and names and per-item group/subgroup labels.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_PIXELS = 109  # the only size at which the CBDT bitmaps of Noto Color Emoji render
SKIP_GROUPS = {"Component"}

SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
VARIATION_SELECTOR = 0xFE0F
ZWJ = 0x200D
GENDER_SIGNS = {0x2640, 0x2642}
# gendered people fold onto their neutral form
GENDER_FOLD = {
    0x1F468: 0x1F9D1, 0x1F469: 0x1F9D1,  # man, woman -> person
    0x1F466: 0x1F9D2, 0x1F467: 0x1F9D2,  # boy, girl -> child
    0x1F474: 0x1F9D3, 0x1F475: 0x1F9D3,  # old man, old woman -> older person
}


@dataclass
class Item:
    key: tuple[int, ...]
    group: str
    subgroup: str
    variants: list[tuple[str, str]] = field(default_factory=list)  # (emoji string, CLDR name)


def collapse_key(codepoints: list[int]) -> tuple[int, ...]:
    """The base emoji a variant belongs to: no skin tone, no gender sign, neutral person."""
    cps = [c for c in codepoints if c not in SKIN_TONES and c != VARIATION_SELECTOR]
    out: list[int] = []
    i = 0
    while i < len(cps):
        if cps[i] == ZWJ and i + 1 < len(cps) and cps[i + 1] in GENDER_SIGNS:
            i += 2
            continue
        out.append(GENDER_FOLD.get(cps[i], cps[i]))
        i += 1
    return tuple(out)


def parse_emoji_test(path: Path) -> list[Item]:
    items: dict[tuple[int, ...], Item] = {}
    group = subgroup = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line:
            if group in SKIP_GROUPS:
                continue
            codes, comment = line.split("#", 1)
            cps = [int(c, 16) for c in codes.split(";")[0].split()]
            # comment looks like " 😀 E1.0 grinning face"
            name = comment.strip().split(" ", 2)[2]
            key = collapse_key(cps)
            item = items.setdefault(key, Item(key, group, subgroup))
            item.variants.append(("".join(map(chr, cps)), name))
    return list(items.values())


def render(text: str, font, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((8, 8), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"emoji {text!r} rendered empty")
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    white = Image.new("RGBA", square.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, square).convert("RGB")
    return np.asarray(flat.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def build(out: Path, size: int, emoji_test: Path = EMOJI_TEST, font_path: Path = EMOJI_FONT) -> dict:
    from PIL import ImageFont

    font = ImageFont.truetype(str(font_path), FONT_PIXELS)
    items = parse_emoji_test(emoji_test)
    images, sample_item, sample_name = [], [], []
    for idx, item in enumerate(items):
        for text, name in item.variants:
            images.append(render(text, font, size))
            sample_item.append(idx)
            sample_name.append(name)
    meta = {
        "source": {
            "emoji-test.txt": f"Debian package unicode-data ({emoji_test})",
            "font": f"Debian package fonts-noto-color-emoji ({font_path})",
        },
        "license": {
            "names and groups": "Unicode License (Unicode Data Files and Software)",
            "images": "rendered from Noto Color Emoji, SIL Open Font License 1.1",
        },
        "size": size,
        "items": len(items),
        "samples": len(images),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        images=np.stack(images),
        sample_item=np.asarray(sample_item, dtype=np.int32),
        sample_name=np.asarray(sample_name),
        item_name=np.asarray([it.variants[0][1] for it in items]),
        item_emoji=np.asarray([it.variants[0][0] for it in items]),
        item_group=np.asarray([it.group for it in items]),
        item_subgroup=np.asarray([it.subgroup for it in items]),
        meta_json=np.asarray(json.dumps(meta)),
    )
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "bundled" / "emoji.npz")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--emoji-test", type=Path, default=EMOJI_TEST)
    parser.add_argument("--font", type=Path, default=EMOJI_FONT)
    args = parser.parse_args(argv)
    for p in (args.emoji_test, args.font):
        if not p.exists():
            raise SystemExit(f"{p} not found: apt-get install fonts-noto-color-emoji unicode-data")
    print(json.dumps(build(args.out, args.size, args.emoji_test, args.font), indent=2))


if __name__ == "__main__":
    main()
