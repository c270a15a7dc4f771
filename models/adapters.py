"""Modality adapters: raw inputs -> tokens of the swarm-wide width C (+ a padding mask).

Different input sizes only change the token count N; the Perceiver core does not care.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from crossback.config.model import ImageAdapterConfig, TextAdapterConfig

from .image_encoders import FEATURE_DIM, FEATURE_SIZE
from .text_encoders import MINILM_DIM

# transformers' PerceiverTokenizer: ids 0-5 are [PAD] [BOS] [EOS] [MASK] [CLS] [SEP], bytes follow.
PAD_ID, CLS_ID, SEP_ID, BYTE_OFFSET = 0, 4, 5, 6
BYTE_VOCAB = 256 + BYTE_OFFSET


def fourier_positions(h: int, w: int, num_bands: int, max_freq: float, device=None) -> Tensor:
    """2-D Fourier features of a (h, w) grid in [-1, 1]^2: (h*w, 2 * (2*num_bands + 1))."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in (h, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # h w 2
    freqs = torch.linspace(1.0, max_freq / 2, num_bands, device=device)
    scaled = grid[..., None] * freqs * math.pi  # h w 2 bands
    feats = torch.cat([scaled.sin(), scaled.cos(), grid[..., None]], dim=-1)
    return rearrange(feats, "h w axes f -> (h w) (axes f)")


class ImageAdapter(nn.Module):
    """Non-overlapping patches, linearly embedded, plus embedded 2-D Fourier positions.

    Takes (B, C, H, W) pixels as uint8 or as floats in [0, 1]; H and W need not divide by the patch
    size (the border is zero-padded)."""

    def __init__(self, cfg: ImageAdapterConfig, token_dim: int):
        super().__init__()
        self.cfg = cfg
        self.patch_proj = nn.Linear(cfg.channels * cfg.patch_size**2, token_dim)
        self.pos_proj = nn.Linear(2 * (2 * cfg.num_freq_bands + 1), token_dim)

    def forward(self, images: Tensor) -> tuple[Tensor, None]:
        if images.ndim != 4 or images.shape[1] != self.cfg.channels:
            raise ValueError(f"expected images (B, {self.cfg.channels}, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:  # datasets keep pixels as bytes; 4x less memory than floats
            images = images.float() / 255.0
        p = self.cfg.patch_size
        pad_h, pad_w = (-images.shape[2]) % p, (-images.shape[3]) % p
        x = F.pad(images * 2.0 - 1.0, (0, pad_w, 0, pad_h))
        h, w = x.shape[2] // p, x.shape[3] // p
        patches = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        pos = fourier_positions(h, w, self.cfg.num_freq_bands, self.cfg.max_freq, images.device)
        return self.patch_proj(patches) + self.pos_proj(pos), None


class TextAdapter(nn.Module):
    """UTF-8 byte embeddings plus learned positions; padding is masked out of cross-attention."""

    def __init__(self, cfg: TextAdapterConfig, token_dim: int):
        super().__init__()
        self.cfg = cfg
        self.byte_emb = nn.Embedding(BYTE_VOCAB, token_dim)
        self.pos_emb = nn.Embedding(cfg.max_length, token_dim)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        if ids.ndim != 2 or ids.shape[1] > self.cfg.max_length:
            raise ValueError(f"expected byte ids (B, N<= {self.cfg.max_length}), got {tuple(ids.shape)}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.byte_emb(ids) + self.pos_emb(positions), ids != PAD_ID


class MiniLMTokenAdapter(nn.Module):
    """Frozen MiniLM token embeddings (computed with the data, see ``text_encoders``) projected to C;
    the last input channel is the padding mask."""

    def __init__(self, token_dim: int):
        super().__init__()
        self.proj = nn.Linear(MINILM_DIM, token_dim)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        if feats.ndim != 3 or feats.shape[-1] != MINILM_DIM + 1:
            raise ValueError(f"expected MiniLM features (B, N, {MINILM_DIM + 1}), got {tuple(feats.shape)}")
        return self.proj(feats[..., :MINILM_DIM]), feats[..., MINILM_DIM] > 0.5


class ImageFeatureAdapter(nn.Module):
    """Frozen EfficientNet-Lite0 feature-map cells (computed with the data, see ``image_encoders``)
    projected to C, plus a learned embedding per grid position."""

    def __init__(self, token_dim: int):
        super().__init__()
        self.proj = nn.Linear(FEATURE_DIM, token_dim)
        self.pos = nn.Parameter(torch.randn((FEATURE_SIZE // 16) ** 2, token_dim) * 0.02)

    def forward(self, feats: Tensor) -> tuple[Tensor, None]:
        if feats.ndim != 3 or feats.shape[1:] != self.pos.shape[:1] + (FEATURE_DIM,):
            raise ValueError(f"expected EfficientNet features (B, {self.pos.shape[0]}, {FEATURE_DIM}), got {tuple(feats.shape)}")
        return self.proj(feats) + self.pos, None


def build_adapter(modality: str, image: ImageAdapterConfig, text: TextAdapterConfig, token_dim: int) -> nn.Module:
    if modality == "image":
        return ImageFeatureAdapter(token_dim) if image.encoder == "efficientnet" else ImageAdapter(image, token_dim)
    if modality == "text":
        return MiniLMTokenAdapter(token_dim) if text.encoder == "minilm" else TextAdapter(text, token_dim)
    raise ValueError(f"unknown modality {modality!r} (expected 'image' or 'text')")
