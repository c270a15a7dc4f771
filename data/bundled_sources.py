"""The data sources that ship with crossback: paired emoji (image + text), paired glyphs (image + text,
the held-out set no default is tuned on), sklearn digits and a fixed Fashion-MNIST subset (image)."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np

from crossback.config.errors import DataError
from crossback.data.catalog import Catalog, Item

EMOJI_FILE = Path(__file__).parent / "bundled" / "emoji.npz"
FASHION_FILE = Path(__file__).parent / "bundled" / "fashion.npz"
GLYPHS_FILE = Path(__file__).parent / "bundled" / "glyphs.npz"


def load_emoji(path: Path = EMOJI_FILE) -> Catalog:
    """Noto emoji, labelled Unicode group -> subgroup; image view = renders, text view = CLDR names."""
    if not path.exists():
        raise DataError(f"bundled emoji data {path} is missing; rebuild it with python -m crossback.data.build_emoji")
    with np.load(path, allow_pickle=False) as z:
        images, sample_item, sample_name = z["images"], z["sample_item"], z["sample_name"]
        groups, subgroups, names = z["item_group"], z["item_subgroup"], z["item_name"]
        meta = json.loads(str(z["meta_json"]))
    per_item_images: list[list[np.ndarray]] = [[] for _ in range(len(groups))]
    per_item_names: list[list[str]] = [[] for _ in range(len(groups))]
    for img, idx, name in zip(images, sample_item, sample_name):
        per_item_images[idx].append(img)
        per_item_names[idx].append(str(name))
    items = [
        Item(f"emoji-{i:04d}", str(groups[i]), str(subgroups[i]), tuple(per_item_images[i]), tuple(per_item_names[i]))
        for i in range(len(groups))
    ]
    return Catalog("emoji", items, {"meta": meta, "item_names": [str(n) for n in names]})


def load_glyphs(path: Path = GLYPHS_FILE) -> Catalog:
    """Unicode glyphs, labelled scripts / symbols -> Unicode block; image view = the glyph in up to eight
    DejaVu faces, text view = its character name without the words naming its block. Held out: no
    default or threshold is chosen on it (docs/benchmarks.md). See GLYPHS_PROVENANCE.md."""
    if not path.exists():
        raise DataError(f"bundled glyph data {path} is missing; rebuild it with python -m crossback.data.build_glyphs")
    with np.load(path, allow_pickle=False) as z:
        images, sample_item = z["images"], z["sample_item"]
        chars, captions = z["item_char"], z["item_caption"]
        superclasses, labels = z["item_superclass"], z["item_label"]
        meta = json.loads(str(z["meta_json"]))
    per_item: list[list[np.ndarray]] = [[] for _ in range(len(chars))]
    for img, idx in zip(images, sample_item):
        per_item[idx].append(img)
    items = [Item(f"glyph-{ord(str(c)):05x}", str(s), str(label), tuple(per_item[i]), (str(captions[i]),))
             for i, (c, s, label) in enumerate(zip(chars, superclasses, labels))]
    return Catalog("glyphs", items, {"meta": meta})


def digits_file() -> Path:
    """scikit-learn's bundled digits table, found without importing scikit-learn (scipy and sklearn
    would add ~75 MiB to every node process that only needs 1,797 8x8 images)."""
    spec = importlib.util.find_spec("sklearn")  # a top-level package: located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits source needs scikit-learn installed (its bundled digits.csv.gz)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise DataError(f"scikit-learn's digits table {path} is missing")
    return path


def load_digits() -> Catalog:
    """scikit-learn's 8x8 handwritten digits (image only); one superclass, classes '0'..'9'. The same
    values as sklearn.datasets.load_digits (tested), read straight from its gzipped CSV."""
    with gzip.open(digits_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    pixels = np.clip(images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    items = [
        Item(f"digit-{i:04d}", "digits", str(int(t)), (pixels[i],))
        for i, t in enumerate(target)
    ]
    return Catalog("digits", items)


def load_fashion(path: Path = FASHION_FILE) -> Catalog:
    """A fixed 3,000-item subset of Fashion-MNIST (28x28 grey, 300 per class; image only); one
    superclass, ``fashion``, its ten classes named as the dataset names them. See FASHION_PROVENANCE.md."""
    if not path.exists():
        raise DataError(f"bundled Fashion-MNIST subset {path} is missing; rebuild it with python -m crossback.data.build_fashion")
    with np.load(path, allow_pickle=False) as z:
        images, labels, index = z["images"], z["labels"], z["index"]
        meta = json.loads(str(z["meta_json"]))
    classes = meta["classes"]
    items = [Item(f"fashion-{int(i):05d}", "fashion", classes[int(y)], (img,)) for img, y, i in zip(images, labels, index)]
    return Catalog("fashion", items, {"meta": meta})
