"""Swarm genesis: one seed from which every node initialises its core and its modality's adapter.

Federated learning starts every client from one global model; a swarm without a server gets the same
by agreeing on a seed. Nodes of one genesis (and one core shape) start from identical cores, and nodes
of one modality and adapter shape from identical adapters, so their tokens and latents live in one
basis and a borrowed part means the same thing on both sides. A node advertises its genesis id in
``GetInfo``; a node with a genesis skips peers of another one.
"""
from __future__ import annotations

import hashlib
import json

from crossback.config.model import PerceiverConfig

CORE_FIELDS = ("token_dim", "num_latents", "latent_dim", "depth", "cross_heads", "cross_dim_head", "latent_heads",
               "latent_dim_head", "queries_dim")


def genesis_id(genesis: int | None, model: PerceiverConfig) -> str:
    """``"<seed>:<digest of the core shape>"``, or "" without a genesis."""
    if genesis is None:
        return ""
    shape = json.dumps({k: getattr(model, k) for k in CORE_FIELDS}, sort_keys=True)
    return f"{genesis}:{hashlib.sha256(shape.encode()).hexdigest()[:12]}"
