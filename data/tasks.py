"""Task streams: which classes a task holds, deterministic splits by item, tensors for one modality."""
from __future__ import annotations

import difflib
import random
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from crossback.config.data import ItemPartition, SplitSpec, TaskSpec, View
from crossback.config.errors import DataError
from crossback.data.catalog import Catalog, ImageRef, Item
from crossback.models.task_data import Split, TaskData
from crossback.models.text_encoders import encode_texts

from .images import ImageProblem, open_image, to_array
from .partition import take_part
from .public_set import split_public


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {close}?" if close else ""


def _usable(items: list[Item], view: View) -> list[Item]:
    attr = "images" if view.modality == "image" else "texts"
    return [i for i in items if getattr(i, attr)]


def resolve_classes(catalog: Catalog, spec: TaskSpec, split: SplitSpec, view: View) -> tuple[list[str], list[str]]:
    """(classes of the task, classes of its superclass dropped as too small to split)."""
    by_class = catalog.by_class()
    counts = {c: len(_usable(items, view)) for c, items in by_class.items()}
    if spec.classes is not None:
        for c in spec.classes:
            if c not in by_class:
                raise DataError(f"task {spec.name!r} names unknown class {c!r} in {catalog.name}{_suggest(c, list(by_class))}")
            if counts[c] == 0:
                raise DataError(f"task {spec.name!r}: class {c!r} has no items with a {view.modality} view")
            if counts[c] < split.min_items_per_class:
                raise DataError(f"task {spec.name!r}: class {c!r} has {counts[c]} items, fewer than "
                                f"min_items_per_class={split.min_items_per_class}")
        classes, dropped = list(spec.classes), []
    else:
        supers = catalog.superclasses()
        sup = spec.group
        if sup not in supers:
            raise DataError(f"task {spec.name!r} names unknown superclass {sup!r} in {catalog.name}{_suggest(sup, list(supers))}")
        classes = [c for c in supers[sup] if counts[c] >= split.min_items_per_class]
        dropped = [c for c in supers[sup] if counts[c] < split.min_items_per_class]
        if len(classes) < 2:  # name what is there: a small folder is otherwise a silent 0
            held = ", ".join(f"{c}: {counts[c]}" for c in sorted(supers[sup], key=lambda c: (-counts[c], c))[:12])
            more = f" and {len(supers[sup]) - 12} more" if len(supers[sup]) > 12 else ""
            raise DataError(f"task {spec.name!r}: superclass {sup!r} in {catalog.name} has {len(classes)} class(es) with "
                            f"at least min_items_per_class={split.min_items_per_class} {view.modality} items, a task "
                            f"needs 2; its classes and their items: {held}{more}. Lower split.min_items_per_class or "
                            "add items")
    if len(classes) < 2:
        raise DataError(f"task {spec.name!r} has {len(classes)} class(es) with at least "
                        f"{split.min_items_per_class} {view.modality} items; a task needs 2")
    return classes, dropped


def split_items(items: list[Item], split: SplitSpec, seed: int, label: str) -> dict[str, list[Item]]:
    """Deterministic per-class split by item: same items, seed and fractions give the same split."""
    ordered = sorted(items, key=lambda it: it.item_id)
    rng = random.Random(seed * 1_000_003 + zlib.crc32(label.encode()))
    fixed = [it for it in ordered if it.fixed_split is not None]
    if split.max_items_per_class is not None and len(ordered) > split.max_items_per_class:
        ordered = sorted(rng.sample(ordered, split.max_items_per_class), key=lambda it: it.item_id)
        fixed = [it for it in ordered if it.fixed_split is not None]
    if fixed and len(fixed) == len(ordered):
        parts = {name: [it for it in ordered if it.fixed_split == name] for name in ("train", "val", "test")}
        if not parts["val"]:  # carve validation out of the dataset's own training items
            pool = parts["train"][:]
            rng.shuffle(pool)
            n_val = max(1, round(len(pool) * split.val / (split.train + split.val)))
            parts["val"], parts["train"] = sorted(pool[:n_val], key=lambda i: i.item_id), sorted(pool[n_val:], key=lambda i: i.item_id)
        empty = [name for name, part in parts.items() if not part]
        if empty:
            raise DataError(f"class {label!r}: the dataset's own split leaves {empty} empty")
        return parts
    shuffled = ordered[:]
    rng.shuffle(shuffled)
    n = len(shuffled)
    n_test = max(1, round(n * split.test))
    n_val = max(1, round(n * split.val))
    if n - n_test - n_val < 1:
        raise DataError(f"class {label!r} has {n} items, too few to split")
    return {"test": shuffled[:n_test], "val": shuffled[n_test : n_test + n_val], "train": shuffled[n_test + n_val :]}


def load_image(ref: ImageRef, view: View) -> np.ndarray:
    """One image as the model reads it: (S, S, C) uint8. A file is read within ``.images``' bounds;
    DataError names it and says why it cannot be read."""
    if isinstance(ref, np.ndarray):
        try:
            return to_array(Image.fromarray(ref), view)
        except (ImageProblem, TypeError, ValueError) as exc:
            raise DataError(f"cannot read image array of shape {ref.shape}: {exc}") from None
    try:
        with open_image(Path(ref), view) as image:
            return to_array(image, view)
    except ImageProblem as exc:
        raise DataError(f"cannot read image {ref}: {exc}") from None


def image_inputs(arrays: list[np.ndarray], view: View) -> torch.Tensor:
    """What the model reads for images already loaded by ``load_image``: training and prediction alike."""
    inputs = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # uint8; the adapter scales it
    if view.image_encoder == "efficientnet":
        from crossback.models.image_encoders import encode_efficientnet

        inputs = encode_efficientnet(inputs)
    return inputs.contiguous()


def text_inputs(texts: list[str], view: View) -> torch.Tensor:
    """What the model reads for strings: training and prediction alike."""
    return encode_texts(texts, view.text_max_length, view.text_encoder).contiguous()


def to_split(items: list[Item], labels: list[int], view: View) -> Split:
    if view.modality == "image":
        arrays, ys, ids = [], [], []
        for item, y in zip(items, labels):
            for ref in item.images:
                arrays.append(load_image(ref, view))
                ys.append(y)
                ids.append(item.item_id)
        inputs = image_inputs(arrays, view)
    else:
        texts, ys, ids = [], [], []
        for item, y in zip(items, labels):
            texts.extend(item.texts)
            ys.extend([y] * len(item.texts))
            ids.extend([item.item_id] * len(item.texts))
        inputs = text_inputs(texts, view)
    return Split(inputs, torch.tensor(ys, dtype=torch.long), tuple(ids))


def build_task(catalog: Catalog, spec: TaskSpec, split: SplitSpec, view: View, seed: int,
               shots: int | None = None, partition: ItemPartition | None = None) -> tuple[TaskData, dict]:
    """The task's tensors and a description (classes, dropped classes, item and sample counts).

    ``shots`` keeps only that many (seeded, random) items per class in train and in val, for a
    data-starved learner; the test split is untouched, so it is the same as without ``shots``.
    With ``split.public_fraction`` the public items are in no split; those of the task's classes are
    the task's ``public`` split. ``partition``: only this node's part of each class's train and val
    items (before ``shots``)."""
    if not catalog.has_view(view.modality):
        raise DataError(f"dataset {catalog.name} has no {view.modality} view")
    classes, dropped, parts, public = _resolve_task(catalog, spec, split, view, seed, shots, partition)
    empty = [c for y, c in enumerate(classes) if y not in parts["train"][1] or y not in parts["val"][1]] \
        if partition is not None else []
    if empty:
        raise DataError(f"task {spec.name!r}: this node's part of the items holds no train or no val item of "
                        f"class(es) {empty} (data.partition: part {partition.index} of {partition.parts})")
    tensors = {name: to_split(items, ys, view) for name, (items, ys) in parts.items()}
    index = {c: y for y, c in enumerate(classes)}
    mine = [it for it in _usable(public, view) if it.label in index]
    public_split = to_split(mine, [index[it.label] for it in mine], view) if mine else None
    test_labels = tensors["test"].labels
    info = {
        "name": spec.name,
        "classes": classes,
        "dropped_classes": dropped,
        "items": {name: len(items) for name, (items, _) in parts.items()} | ({"public": len(mine)} if public else {}),
        "samples": {name: len(t) for name, t in tensors.items()},
        # accuracy of always answering the most frequent class (1/K only holds for balanced classes)
        "majority": float(test_labels.bincount().max()) / len(test_labels) if len(test_labels) else None,
    }
    return TaskData(spec.name, classes, tensors["train"], tensors["val"], tensors["test"], public_split), info


def _resolve_task(catalog: Catalog, spec: TaskSpec, split: SplitSpec, view: View, seed: int, shots: int | None,
                  partition: ItemPartition | None = None):
    """(classes, dropped classes, split name -> (items, labels), public items) of one task."""
    public = []
    if split.public_fraction > 0:
        catalog, public = split_public(catalog, split.public_fraction, split.public_salt)
    classes, dropped = resolve_classes(catalog, spec, split, view)
    return classes, dropped, _split_items_by_class(catalog, classes, split, view, seed, shots, partition), public


def task_items(catalog: Catalog, spec: TaskSpec, split: SplitSpec, view: View, seed: int,
               shots: int | None = None, partition: ItemPartition | None = None,
               ) -> tuple[list[str], dict[str, tuple[list[Item], list[int]]]]:
    """(the task's classes in label order, split name -> (its items, their labels)): the raw items
    behind the tensors ``build_task`` makes, for a test or an example prediction."""
    classes, _, parts, _ = _resolve_task(catalog, spec, split, view, seed, shots, partition)
    return classes, parts


def _split_items_by_class(catalog: Catalog, classes: list[str], split: SplitSpec, view: View, seed: int,
                          shots: int | None, partition: ItemPartition | None = None,
                          ) -> dict[str, tuple[list[Item], list[int]]]:
    by_class = catalog.by_class()
    parts: dict[str, tuple[list[Item], list[int]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for y, c in enumerate(classes):
        for name, chosen in split_items(_usable(by_class[c], view), split, seed, c).items():
            if partition is not None and name != "test":
                chosen = take_part(chosen, partition, c)
            if shots is not None and name != "test":
                chosen = chosen[:shots]
            parts[name][0].extend(chosen)
            parts[name][1].extend([y] * len(chosen))
    return parts


def public_items(catalog: Catalog, split: SplitSpec, view: View) -> Split | None:
    """Every public item (any class) in ``view``, labels 0: what a teacher answers public-set requests from."""
    if split.public_fraction <= 0:
        return None
    items = _usable(split_public(catalog, split.public_fraction, split.public_salt)[1], view)
    return to_split(items, [0] * len(items), view) if items else None


MIN_TEST_ITEMS = 20


def data_warnings(infos: list[dict], min_test: int = MIN_TEST_ITEMS) -> list[str]:
    """What makes a task's numbers noisy: too few test samples to tell a few points apart."""
    return [f"task {i['name']!r}: its test split has only {i['samples']['test']} samples (< {min_test}); "
            "its accuracy moves in steps of several points" for i in infos if i["samples"]["test"] < min_test]
