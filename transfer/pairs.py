"""Paired items for frequency-decoupled KD: which items a student asks a teacher about, and how.

Two sources, both decentralised (payload kinds):

- ``public_features``: items of the public paired set (``crossback.data.public_set``), named by their
  public ids; nothing private moves either way.
- ``features``: items both nodes hold (two views of one scene). The student sends blake2b hashes of
  its item ids keyed with the swarm's pair secret and a fresh random salt per request; the teacher
  hashes its own ids the same way and answers only for the ones it also holds. Item ids are guessable
  (``emoji-0000``, ...): without the secret in the key, anyone could hash every guess and learn which
  items a node trained on. With it, a caller outside the swarm cannot form a single matching hash; an
  eavesdropper sees neither side's ids (and cannot match hashes across requests); the teacher learns
  only which of its own items the student has, which the method cannot avoid. A member holding the
  secret can still ask about guessed ids: the secret bounds the oracle to the swarm, TLS to its members.

A teacher answers with one feature vector per matched item (the mean of what its head reads over the
item's samples) and the positions of those items in the request.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

from crossback.config.transfer import MAX_PAIR_ITEMS
from crossback.models.task_data import Split

FEATURE_KINDS = ("public_features", "features")
MAX_ITEM_ID = 128  # characters of a public item id
MAX_SET_NAME = 256
HASH_BYTES = 32
SALT_BYTES = 16
MIN_SECRET_BYTES = 16
MAX_FEATURE_WIDTH = 4096


class NoPairs(Exception):
    """The teacher holds none of the items asked about: not a fault, the peer is just no teacher here."""


def item_hash(secret: bytes, salt: bytes, item_id: str) -> bytes:
    """The hash of an item id under the swarm's pair ``secret`` and one request's ``salt``."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the swarm pair secret must be at least {MIN_SECRET_BYTES} bytes")
    key = hashlib.blake2b(salt, digest_size=HASH_BYTES, key=secret[:64]).digest()
    return hashlib.blake2b(item_id.encode(), digest_size=HASH_BYTES, key=key).digest()


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


@dataclass(frozen=True)
class Pairs:
    """The student's side of a pair request: the items (sorted ids, at most ``MAX_PAIR_ITEMS``), their
    labels, and for every sample of ``source`` the position of its item (-1: not asked about)."""

    kind: str
    source: Split
    keys: tuple[str, ...]
    labels: Tensor  # (len(keys),) long
    sample_key: Tensor  # (len(source),) long
    public_set: str = ""  # the public set the keys belong to (public_features)
    secret: bytes = field(default=b"", repr=False)  # the swarm's pair secret (features)

    @classmethod
    def from_split(cls, kind: str, source: Split, max_items: int = MAX_PAIR_ITEMS, public_set: str = "",
                   secret: bytes = b"") -> "Pairs":
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown pair kind {kind!r}; choose one of {list(FEATURE_KINDS)}")
        if source.items is None:
            raise ValueError("the pair source has no item ids")
        first: dict[str, int] = {}
        for i, item in enumerate(source.items):
            first.setdefault(item, i)
        keys = sorted(first)
        if len(keys) > max_items:  # a deterministic subset, spread over the id order
            keys = sorted(keys, key=lambda k: hashlib.blake2b(k.encode(), digest_size=8).digest())[:max_items]
            keys.sort()
        position = {k: i for i, k in enumerate(keys)}
        labels = torch.tensor([int(source.labels[first[k]]) for k in keys], dtype=torch.long)
        sample_key = torch.tensor([position.get(item, -1) for item in source.items], dtype=torch.long)
        return cls(kind, source, tuple(keys), labels, sample_key, public_set, secret)

    def hashes(self, salt: bytes) -> list[bytes]:
        return [item_hash(self.secret, salt, k) for k in self.keys]


def fetch_pairs(client, pairs: Pairs, peer: str, min_version: int = 1) -> tuple[dict[str, Tensor], int, int]:
    """({features, matched, labels}, snapshot_version, bytes received) of a teacher's answer to
    ``pairs``. NoPairs when it matched nothing, WireError when it answered out of form."""
    if pairs.kind == "public_features":
        feats, matched, version = client.fetch_public_features(list(pairs.keys), pairs.public_set,
                                                               min_version=min_version)
    else:
        salt = new_salt()
        feats, matched, version = client.fetch_shared_features(pairs.hashes(salt), salt, min_version=min_version)
    feats = check_answer(feats, matched, len(pairs.keys), peer)
    if not matched:
        raise NoPairs(f"holds none of the {len(pairs.keys)} items asked about ({pairs.kind})")
    index = torch.tensor(matched, dtype=torch.long)
    return {"features": feats, "matched": index, "labels": pairs.labels[index]}, version, feats.numel() * 4


def check_answer(features: Tensor | None, matched: list[int], requested: int, peer: str) -> Tensor:
    """The teacher's answer, checked: distinct in-range positions, one finite row per position."""
    from crossback.config.errors import WireError

    if len(set(matched)) != len(matched) or any(not 0 <= m < requested for m in matched):
        raise WireError(f"peer {peer[:MAX_SET_NAME]!r}: matched positions are not distinct positions of the request")
    if not matched:
        if features is not None:
            raise WireError(f"peer {peer[:MAX_SET_NAME]!r}: features without matched items")
        return torch.empty(0, 0)
    if features is None or features.ndim != 2 or features.shape[0] != len(matched) \
            or not 2 <= features.shape[1] <= MAX_FEATURE_WIDTH:
        shape = None if features is None else list(features.shape)
        raise WireError(f"peer {peer[:MAX_SET_NAME]!r}: features of shape {shape} for {len(matched)} matched items")
    return features.float()
