"""Data sources by name, as configs refer to them."""
from __future__ import annotations

from pathlib import Path

from crossback.config.errors import DataError
from crossback.data.catalog import Catalog

from .bundled_sources import load_digits, load_emoji, load_fashion, load_glyphs
from .folder import load_folder
from .papers import load_cifar100, load_cub200, load_oxford102

BUNDLED = {"emoji": load_emoji, "digits": load_digits, "fashion": load_fashion, "glyphs": load_glyphs}
ON_DISK = {"folder": load_folder, "cifar100": load_cifar100, "cub200": load_cub200, "oxford102": load_oxford102}
SOURCES = tuple(BUNDLED) + tuple(ON_DISK)


def load_catalog(source: str, root: str | Path | None = None) -> Catalog:
    if source in BUNDLED:
        return BUNDLED[source]()
    if source in ON_DISK:
        if root is None:
            raise DataError(f"data.root is required for source {source!r}")
        root = Path(root)
        if not root.exists():
            raise DataError(f"data.root {root} does not exist (a relative data.root is resolved against the "
                            "config file's folder)")
        return ON_DISK[source](root)
    raise DataError(f"unknown data.source {source!r}; choose one of {list(SOURCES)}")
