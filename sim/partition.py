"""A device group's classes -> each device's task stream: a fixed number of classes per task, Dirichlet
label skew over the group's devices, and a share of devices that learn one common stream."""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from math import comb

from crossback.config.data import SplitSpec
from crossback.config.errors import ConfigError
from crossback.config.scenario import DeviceGroup
from crossback.data.catalog import Catalog
from crossback.data.partition import part_counts, part_shares
from crossback.data.sources import load_catalog
from crossback.data.tasks import split_items

SPLIT = SplitSpec()  # the node's default split: the plan counts items exactly as a node will


@dataclass(frozen=True)
class Stream:
    tasks: list[dict]  # {"name", "classes"}
    shared: bool = False
    partition: dict | None = field(default=None)  # the node's data.partition


@lru_cache(maxsize=8)
def _catalog(source: str, root: str | None) -> Catalog:
    return load_catalog(source, root)


def _usable(catalog: Catalog, modality: str) -> dict[str, list]:
    attr = "images" if modality == "image" else "texts"
    return {c: [it for it in items if getattr(it, attr)] for c, items in catalog.by_class().items()}


def class_pool(group: DeviceGroup, where: str) -> list[str]:
    """The classes the group draws from: its ``classes``, or every class of its source big enough to split."""
    usable = _usable(_catalog(group.source, group.root), group.modality)
    if group.classes:
        unknown = [c for c in group.classes if c not in usable]
        if unknown:
            raise ConfigError(f"{where}.classes: {unknown} not in {group.source} (it has e.g. {sorted(usable)[:8]})")
        pool = list(group.classes)
    else:
        pool = sorted(c for c, items in usable.items() if len(items) >= SPLIT.min_items_per_class)
    small = [c for c in pool if len(usable[c]) < SPLIT.min_items_per_class]
    if small:
        raise ConfigError(f"{where}.classes: {small} have fewer than {SPLIT.min_items_per_class} "
                          f"{group.modality} items")
    if len(pool) < group.partition.classes_per_task:
        raise ConfigError(f"{where}.partition.classes_per_task: {group.partition.classes_per_task} classes per task, "
                          f"but the group's pool has {len(pool)}")
    return pool


def task_name(classes: list[str]) -> str:
    """A task is named after its classes (the same classes, the same name, on every device)."""
    name = "+".join(classes)
    if len(name) <= 60:
        return name
    return f"{name[:40]}..{zlib.crc32(name.encode()):08x}"


def _fixed_stream(pool: list[str], k: int, tasks: int, rng: random.Random) -> list[dict]:
    if len(pool) >= k * tasks:
        drawn = rng.sample(pool, k * tasks)
        chunks = [drawn[i * k:(i + 1) * k] for i in range(tasks)]
    else:  # classes may repeat across tasks, never within one, and no two tasks are the same set
        chunks, seen = [], set()
        while len(chunks) < tasks:
            chunk = rng.sample(pool, k)
            if frozenset(chunk) not in seen or len(seen) >= comb(len(pool), k):
                seen.add(frozenset(chunk))
                chunks.append(chunk)
    return [{"name": task_name(sorted(c)), "classes": sorted(c)} for c in chunks]


def _dirichlet_streams(group: DeviceGroup, pool: list[str], genesis: int, seed: int, where: str) -> list[Stream]:
    p, n = group.partition, group.count
    catalog_items = _usable(_catalog(group.source, group.root), group.modality)
    held: list[dict[str, int]] = [{} for _ in range(n)]
    for c in pool:
        parts = split_items(catalog_items[c], SPLIT, genesis, c)
        shares = part_shares(n, p.alpha, seed, c)
        train, val = part_counts(len(parts["train"]), shares), part_counts(len(parts["val"]), shares)
        for j in range(n):
            if train[j] >= p.min_items and val[j] >= 1:
                held[j][c] = train[j]
    streams = []
    for j in range(n):
        ranked = sorted(held[j], key=lambda c: (-held[j][c], c))
        k = p.classes_per_task
        count = min(p.tasks, len(ranked) // k)
        if count == 0:
            raise ConfigError(f"{where}.partition: device {group.name}-{j} holds {len(ranked)} class(es) with at "
                              f"least {p.min_items} train items under alpha={p.alpha}; a task needs "
                              f"{k}: raise alpha, lower min_items or classes_per_task, or use fewer devices")
        tasks = [sorted(ranked[t * k:(t + 1) * k]) for t in range(count)]
        streams.append(Stream([{"name": task_name(c), "classes": c} for c in tasks],
                              partition={"parts": n, "index": j, "alpha": p.alpha, "seed": seed}))
    return streams


def group_streams(group: DeviceGroup, pool: list[str], seed: int, genesis: int, where: str) -> list[Stream]:
    """Every device's stream of ``group``, seeded; the shared devices learn the group's common stream."""
    p = group.partition
    if p.kind == "dirichlet":
        streams = _dirichlet_streams(group, pool, genesis, seed, where)
    else:
        streams = [Stream(_fixed_stream(pool, p.classes_per_task, p.tasks, random.Random(
            zlib.crc32(f"{seed}:{group.name}:{j}".encode())))) for j in range(group.count)]
    shared = round(p.shared * group.count)
    if shared:
        rng = random.Random(zlib.crc32(f"{seed}:{group.name}:shared".encode()))
        common = _fixed_stream(pool, p.classes_per_task, p.tasks, rng)
        for j in sorted(rng.sample(range(group.count), shared)):
            streams[j] = Stream(common, shared=True)
    return streams
