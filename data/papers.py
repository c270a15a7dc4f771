"""Readers for the papers' datasets in their standard on-disk layouts (nothing is downloaded).

- CIFAR-100, python version: ``ROOT/cifar-100-python/{train,test,meta}`` (or ROOT is that folder).
  20 superclasses (coarse labels) of 5 classes each; the official test set is kept as the test split.
- CUB-200-2011: ``ROOT/CUB_200_2011/{images.txt,image_class_labels.txt,classes.txt,
  train_test_split.txt,images/}`` with captions, where present, in Reed et al.'s layout
  ``ROOT/text_c10/<class folder>/<image stem>.txt`` (ten captions per image, one per line).
  Superclass: the bird family, the last word of the class name (``Black_footed_Albatross`` ->
  ``Albatross``).
- Oxford-102 Flowers: ``ROOT/jpg/image_00001.jpg``, ``ROOT/imagelabels.mat``, ``ROOT/setid.mat``,
  captions in ``ROOT/text_c10/class_00001/image_00001.txt``. Classes are ``class_001``..``class_102``,
  grouped ten at a time into superclasses ``flowers_001_010``, ...
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from crossback.config.errors import DataError
from crossback.data.catalog import Catalog, Item

from .folder import read_captions


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python files are pickles of dicts of lists and numpy arrays. This unpickler resolves
    only numpy's array-reconstruction helpers, so a crafted file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_file(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR-100 file {path} is missing")
    try:
        raw = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as exc:  # any malformed file: name it and stop
        raise DataError(f"cannot read CIFAR-100 file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"CIFAR-100 file {path} does not hold a dict")
    out = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    for value in out.values():
        if isinstance(value, np.ndarray) and value.dtype == object:
            raise DataError(f"CIFAR-100 file {path} holds an object array")
    return out


def load_cifar100(root: Path) -> Catalog:
    root = Path(root)
    base = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
    if not base.is_dir():
        raise DataError(f"dataset root {root} does not exist")
    meta = _read_cifar_file(base / "meta")
    try:
        fine_names = [str(n) for n in meta["fine_label_names"]]
        coarse_names = [str(n) for n in meta["coarse_label_names"]]
    except KeyError as exc:
        raise DataError(f"CIFAR-100 meta file {base / 'meta'} lacks {exc}") from exc
    items: list[Item] = []
    for split in ("train", "test"):
        part = _read_cifar_file(base / split)
        try:
            data = np.asarray(part["data"], dtype=np.uint8)
            fine, coarse = part["fine_labels"], part["coarse_labels"]
        except KeyError as exc:
            raise DataError(f"CIFAR-100 file {base / split} lacks {exc}") from exc
        if data.ndim != 2 or data.shape[1] != 3072 or len(fine) != len(data) or len(coarse) != len(data):
            raise DataError(f"CIFAR-100 file {base / split}: data {data.shape} does not match its labels")
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for i in range(len(data)):
            items.append(Item(f"{split}-{i:05d}", coarse_names[coarse[i]], fine_names[fine[i]],
                              (images[i],), fixed_split=split))
    return Catalog("cifar100", items)


def _read_table(path: Path, columns: int) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"{path} is missing")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=columns - 1)
        if len(parts) != columns:
            raise DataError(f"{path}:{n}: expected {columns} columns, got {line!r}")
        rows.append(parts)
    return rows


def _captions_dir(root: Path) -> Path | None:
    for candidate in (root / "text_c10", root / "cvpr2016_cub" / "text_c10", root / "cvpr2016_flowers" / "text_c10"):
        if candidate.is_dir():
            return candidate
    return None


def load_cub200(root: Path) -> Catalog:
    root = Path(root)
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    if not (base / "images.txt").is_file():
        raise DataError(f"{base / 'images.txt'} is missing: expected the CUB_200_2011 layout under {root}")
    paths = dict(_read_table(base / "images.txt", 2))
    labels = dict(_read_table(base / "image_class_labels.txt", 2))
    classes = dict(_read_table(base / "classes.txt", 2))
    is_train = dict(_read_table(base / "train_test_split.txt", 2))
    captions = _captions_dir(root)
    items = []
    for image_id, rel in paths.items():
        if image_id not in labels or labels[image_id] not in classes:
            raise DataError(f"{base / 'image_class_labels.txt'}: image {image_id} has no known class")
        folder = classes[labels[image_id]]  # e.g. 001.Black_footed_Albatross
        label = folder.split(".", 1)[-1]
        texts: tuple[str, ...] = ()
        if captions is not None:
            cap = captions / Path(rel).with_suffix(".txt")
            if cap.is_file():
                texts = read_captions(cap)
        split = "train" if is_train.get(image_id, "1") == "1" else "test"
        items.append(Item(f"cub-{image_id}", label.split("_")[-1], label, (base / "images" / rel,), texts, split))
    return Catalog("cub200", items)


def load_oxford102(root: Path) -> Catalog:
    from scipy.io import loadmat

    root = Path(root)
    for needed in ("imagelabels.mat", "setid.mat", "jpg"):
        if not (root / needed).exists():
            raise DataError(f"{root / needed} is missing: expected the Oxford-102 layout under {root}")
    try:
        labels = loadmat(root / "imagelabels.mat")["labels"].ravel().astype(int)
        setid = loadmat(root / "setid.mat")
        splits = {int(i): name for key, name in (("trnid", "train"), ("valid", "val"), ("tstid", "test"))
                  for i in setid[key].ravel()}
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"cannot read Oxford-102 labels under {root}: {exc}") from exc
    captions = _captions_dir(root)
    items = []
    for index, label in enumerate(labels, 1):
        stem = f"image_{index:05d}"
        texts: tuple[str, ...] = ()
        if captions is not None:
            cap = captions / f"class_{label:05d}" / f"{stem}.txt"
            if cap.is_file():
                texts = read_captions(cap)
        lo = (label - 1) // 10 * 10 + 1
        items.append(Item(f"oxford-{index:05d}", f"flowers_{lo:03d}_{min(lo + 9, 102):03d}", f"class_{label:03d}",
                          (root / "jpg" / f"{stem}.jpg",), texts, splits.get(index)))
    return Catalog("oxford102", items)
