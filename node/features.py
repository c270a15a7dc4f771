"""Serving a teacher's features for frequency-decoupled KD: per item, from the published snapshot only,
computed once per snapshot and source however many peers ask."""
from __future__ import annotations

import threading

import torch
from torch import Tensor

from crossback.models.task_data import Split
from crossback.models.training import features
from crossback.transfer.pairs import item_hash

from .snapshot import Snapshot


def item_features(snap: Snapshot, split: Split) -> dict[str, Tensor]:
    """item id -> mean over the item's samples of what the published task's head reads."""
    with torch.no_grad():
        f = features(snap.learner, snap.task, split.inputs)
    rows: dict[str, list[int]] = {}
    for i, item in enumerate(split.items or ()):
        rows.setdefault(item, []).append(i)
    return {item: f[idx].mean(dim=0) for item, idx in rows.items()}


class FeatureService:
    """Answers FetchPublicFeatures and FetchSharedFeatures. The items answered from are the node's own
    (its published task's training items, for ``features``) and its public set (``public_features``);
    their features are computed once per snapshot, so a request costs a dictionary lookup per id or a
    hash per held item, bounded by the request size limit and the node's own data."""

    def __init__(self, pair_secret: bytes = b""):
        self.pair_secret = pair_secret  # the swarm's (pairs.item_hash); without one, ``shared`` answers nothing
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, str], dict[str, Tensor]] = {}

    def _table(self, snap: Snapshot, source: str) -> dict[str, Tensor]:
        split = snap.public if source == "public" else snap.data
        if split is None or split.items is None:
            return {}
        key = (snap.version, source)
        with self._lock:
            if key not in self._cache:
                self._cache = {k: v for k, v in self._cache.items() if k[0] == snap.version}
                self._cache[key] = item_features(snap, split)
            return self._cache[key]

    def public(self, snap: Snapshot, ids: list[str]) -> tuple[list[int], Tensor | None]:
        table = self._table(snap, "public")
        matched = [i for i, item in enumerate(ids) if item in table]
        return matched, torch.stack([table[ids[i]] for i in matched]) if matched else None

    def shared(self, snap: Snapshot, salt: bytes, hashes: list[bytes]) -> tuple[list[int], Tensor | None]:
        if not self.pair_secret:
            return [], None
        table = self._table(snap, "own")
        by_hash = {item_hash(self.pair_secret, salt, item): f for item, f in table.items()}
        matched = [i for i, h in enumerate(hashes) if h in by_hash]
        return matched, torch.stack([by_hash[hashes[i]] for i in matched]) if matched else None
