"""Users' own data: ``ROOT/<superclass>/<class>/<item>.{png,jpg,jpeg}`` and ``<item>.txt``.

Files that share a stem are one item: its image and its captions (one per non-empty line of the
``.txt``). An image node reads the images, a text node the captions. Hidden files are ignored.
"""
from __future__ import annotations

from pathlib import Path

from crossback.config.errors import DataError
from crossback.data.catalog import Catalog, Item

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_captions(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read captions {path}: {exc}") from exc
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_folder(root: Path) -> Catalog:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder")
    items: list[Item] = []
    for sup in _subdirs(root):
        for cls in _subdirs(sup):
            stems: dict[str, dict] = {}
            for f in sorted(cls.iterdir()):
                if f.name.startswith(".") or not f.is_file():
                    continue
                suffix = f.suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    stems.setdefault(f.stem, {}).setdefault("images", []).append(f)
                elif suffix == ".txt":
                    stems.setdefault(f.stem, {})["texts"] = read_captions(f)
            for stem, parts in stems.items():
                items.append(Item(f"{sup.name}/{cls.name}/{stem}", sup.name, cls.name,
                                  tuple(parts.get("images", ())), tuple(parts.get("texts", ()))))
    if not items:
        raise DataError(f"dataset root {root} holds no items: expected ROOT/<superclass>/<class>/<item>.png|.jpg|.txt")
    return Catalog(f"folder:{root}", items)
