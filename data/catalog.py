"""The one in-memory shape every dataset is read into: items labelled superclass -> class.

An *item* is the unit that splits never cut: all of its images and captions land in the same split
(an emoji with its skin-tone variants, a photo with its ten captions). Images are either arrays
(bundled data) or paths read lazily, so a large on-disk dataset costs nothing until a task uses it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

ImageRef = Union[np.ndarray, Path]  # HxW (grey) or HxWxC uint8 array, or an image file


@dataclass(frozen=True)
class Item:
    item_id: str
    superclass: str
    label: str
    images: tuple[ImageRef, ...] = ()
    texts: tuple[str, ...] = ()
    fixed_split: str | None = None  # "train" / "val" / "test" where the dataset defines its own split


@dataclass
class Catalog:
    name: str
    items: list[Item]
    notes: dict = field(default_factory=dict)

    def by_class(self) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = defaultdict(list)
        for item in self.items:
            out[item.label].append(item)
        return dict(out)

    def superclasses(self) -> dict[str, list[str]]:
        """superclass -> its classes, in first-seen order."""
        out: dict[str, dict[str, None]] = defaultdict(dict)
        for item in self.items:
            out[item.superclass][item.label] = None
        return {s: list(c) for s, c in out.items()}

    def has_view(self, modality: str) -> bool:
        attr = "images" if modality == "image" else "texts"
        return any(getattr(item, attr) for item in self.items)
