"""Perceiver IO classifier on perceiver-pytorch, and the KV contract.

The network is a *structure*: which tensors it runs with (shared masked weights, per-task copies of
everything else) is decided by ``crossback.models.learner`` through ``torch.func.functional_call``.

KV contract
-----------
The unit that peers exchange is the encoder cross-attention's key and value projection, each a
``(d, C)`` matrix with ``d = cross_heads * cross_dim_head`` and ``C`` the token width. Its shape depends
only on ``C`` and ``d``, so an image node's KV fits a text node. perceiver-pytorch fuses both into one
linear layer, ``core.cross_attend_block.cross_attn.fn.to_kv`` (weight ``(2d, C)``), whose output it
splits with ``chunk(2)``: key rows first, value rows second. Our stable names are ``KV_NAMES``.
"""
from __future__ import annotations

import torch
from perceiver_pytorch.perceiver_io import PerceiverIO
from torch import Tensor, nn

from crossback.config.model import PerceiverConfig
from crossback.models.adapters import build_adapter

KEY, VALUE = "cross_attn.key", "cross_attn.value"
KV_NAMES = (KEY, VALUE)
ENCODER_KV = "core.cross_attend_block.cross_attn.fn.to_kv.weight"


class PerceiverClassifier(nn.Module):
    """adapter -> Perceiver IO (one encoder cross-attention, latent blocks) -> one query -> head."""

    def __init__(self, cfg: PerceiverConfig, modality: str, core_seed: int | None = None):
        """``core_seed``: reseed the global RNG before drawing the core, so the core's initial weights
        depend on that seed and its shape only, not on the modality's adapter (a swarm genesis)."""
        super().__init__()
        self.cfg, self.modality = cfg, modality
        self.adapter = build_adapter(modality, cfg.image, cfg.text, cfg.token_dim)
        if core_seed is not None:
            torch.manual_seed(core_seed)
        self.core = PerceiverIO(
            depth=cfg.depth,
            dim=cfg.token_dim,
            queries_dim=cfg.queries_dim,
            logits_dim=None,
            num_latents=cfg.num_latents,
            latent_dim=cfg.latent_dim,
            cross_heads=cfg.cross_heads,
            latent_heads=cfg.latent_heads,
            cross_dim_head=cfg.cross_dim_head,
            latent_dim_head=cfg.latent_dim_head,
        )
        # Placeholders: every task brings its own query and head (its own class count).
        self.query = nn.Parameter(torch.randn(1, cfg.queries_dim))
        self.head = nn.Linear(cfg.queries_dim, 2)

    def forward(self, inputs: Tensor, features: bool = False) -> Tensor:
        """Logits, or with ``features`` the decoded query the head reads (b, queries_dim)."""
        tokens, mask = self.adapter(inputs)
        decoded = self.core(tokens, mask=mask, queries=self.query)[:, 0]  # b queries_dim
        return decoded if features else self.head(decoded)


def split_kv(fused: Tensor) -> dict[str, Tensor]:
    key, value = fused.chunk(2, dim=0)
    return {KEY: key, VALUE: value}


def join_kv(kv: dict[str, Tensor]) -> Tensor:
    missing = [n for n in KV_NAMES if n not in kv]
    if missing:
        raise KeyError(f"KV is missing {missing}; expected names {list(KV_NAMES)}")
    if kv[KEY].shape != kv[VALUE].shape or kv[KEY].ndim != 2:
        raise ValueError(f"key {tuple(kv[KEY].shape)} and value {tuple(kv[VALUE].shape)} must be equal (d, C)")
    return torch.cat([kv[KEY], kv[VALUE]], dim=0)


def kv_shapes(cfg: PerceiverConfig) -> dict[str, tuple[int, int]]:
    return {name: (cfg.kv_dim, cfg.token_dim) for name in KV_NAMES}
