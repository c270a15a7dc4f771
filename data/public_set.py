"""The public paired set: items every node holds out of its tasks, so that a teacher's features on them
move nothing private (frequency-decoupled KD's first source of pairs).

Membership is a salted hash of the item id against ``SplitSpec.public_fraction``: every node with the
same split config holds out the same items without talking to anyone, and an item's membership does
not depend on which other items a dataset has.
"""
from __future__ import annotations

import hashlib

from .catalog import Catalog, Item


def is_public(item_id: str, fraction: float, salt: str) -> bool:
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(item_id.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def public_set_name(source: str, fraction: float, salt: str) -> str:
    """What two nodes compare to know they hold out the same items."""
    return f"{source}/{fraction:g}/{salt}"


def public_set_for(source: str, split) -> str:
    """The name of the public set a node with this source and ``SplitSpec`` holds out ("" for none)."""
    return public_set_name(source, split.public_fraction, split.public_salt) if split.public_fraction > 0 else ""


def split_public(catalog: Catalog, fraction: float, salt: str) -> tuple[Catalog, list[Item]]:
    """(the catalog without its public items, the public items)."""
    public = [it for it in catalog.items if is_public(it.item_id, fraction, salt)]
    taken = {it.item_id for it in public}
    return Catalog(catalog.name, [it for it in catalog.items if it.item_id not in taken], catalog.notes), public
