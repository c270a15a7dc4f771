"""Borrowed parts: weights a task runs with that another node learned.

A payload kind names which of a peer's tensors a task borrows, by the receiver's own parameter names:

- ``kv``: the encoder cross-attention key/value projection (the CrossBack paper's unit);
- ``latents``: the latent array alone (MergeNet can transfer into it);
- ``block``: the whole encoder cross-attention block (K/V, query and output projections, its
  feed-forward, norms, biases) plus the latent array;
- ``backbone``: the peer's whole model but its task head and query (Pick-a-back). A receiver whose
  adapter has the same tensors and shapes (same modality, same input layout) takes all of it, adapter
  included; any other receiver keeps what reads its own tokens — its adapter, the encoder K/V and the
  context norm before it — and takes the encoder body only. The latter is what the paper authors'
  code does across modalities (it moves the local K/V into the selected peer's model), and the split
  MoNA draws between embedder and body;
- ``encoder``: that encoder body alone, for every receiver (MoNA's theta_f): ``backbone`` without the
  adapter and the token readers. The receiver keeps its own embedder whatever the peer's modality.
- ``task``: ``backbone`` plus the task's query and head, from a peer task with exactly the receiver's
  label set (the same-task path, crossback.orchestrator_free.same_task); the head's rows come in the
  receiver's label order. Not a FetchPayload kind: FetchTask serves it.

Borrowed *shared-weight matrices* run frozen under the task's own binary mask (Piggyback over the
peer's weights). Borrowed *per-task tensors* (adapter, latents, biases, norms) replace the task's own
copies as a starting point and keep adapting with them, as Piggyback adapts biases and norms per task.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from crossback.config.transfer import PART_KINDS

from .masks import binarize
from .perceiver import ENCODER_KV, join_kv, split_kv

HEAD_PARTS = ("query", "head.weight", "head.bias")  # what ``task`` adds to ``backbone``
BLOCK_PREFIX = "core.cross_attend_block."
# what reads the modality's tokens: stays the task's own under ``backbone``
TOKEN_READERS = (ENCODER_KV, "core.cross_attend_block.cross_attn.norm_context.weight",
                 "core.cross_attend_block.cross_attn.norm_context.bias")
BORROWED_EVENT = "borrowed"  # task-record event: whose parts the task runs on (provenance)


def part_names(kind: str, names) -> list[str]:
    """The parameter names (out of ``names``) that payload ``kind`` covers, sorted."""
    if kind == "kv":
        picked = [n for n in names if n == ENCODER_KV]
    elif kind == "latents":
        picked = [n for n in names if n == "core.latents"]
    elif kind == "block":
        picked = [n for n in names if n.startswith(BLOCK_PREFIX) or n == "core.latents"]
    elif kind == "backbone":
        picked = [n for n in names if n.startswith(("core.", "adapter."))]
    elif kind == "task":
        picked = [n for n in names if n.startswith(("core.", "adapter.")) or n in HEAD_PARTS]
    elif kind == "encoder":
        picked = [n for n in names if n.startswith("core.") and n not in TOKEN_READERS]
    else:
        raise ValueError(f"unknown payload kind {kind!r}; choose one of {list(PART_KINDS)}")
    return sorted(picked)


def kv_parts(kv: dict[str, Tensor]) -> dict[str, Tensor]:
    """The wire form of K/V (``cross_attn.key`` / ``cross_attn.value``) as borrowed parts."""
    return {ENCODER_KV: join_kv(kv)}


def parts_kv(parts: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The K/V inside borrowed parts, in wire form (None if they hold none)."""
    return split_kv(parts[ENCODER_KV]) if ENCODER_KV in parts else None


def accept_parts(kind: str, received: dict[str, Tensor], own: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """What of a peer's payload ``kind`` this receiver (tensor shapes ``own``) runs on. Raises ValueError
    naming the first missing or misshapen part; tensors outside the kind are ignored."""
    wanted = part_names(kind, own)
    if kind in ("backbone", "task"):
        adapter = [n for n in wanted if n.startswith("adapter.")]
        fits = all(n in received and tuple(received[n].shape) == tuple(own[n]) for n in adapter)
        if not fits:  # another modality or input layout: read our tokens ourselves
            wanted = [n for n in wanted if not n.startswith("adapter.") and n not in TOKEN_READERS]
    for n in wanted:
        if n not in received:
            raise ValueError(f"payload {kind!r} lacks {n!r}")
        if tuple(received[n].shape) != tuple(own[n]):
            raise ValueError(f"payload {kind!r}: {n!r} has shape {tuple(received[n].shape)}, this model needs {tuple(own[n])}")
    return {n: received[n] for n in wanted}


def check_parts(parts: dict[str, Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Every part has a known name, the receiver's shape and finite values (ValueError naming the part)."""
    if not parts:
        raise ValueError("no borrowed parts")
    for name, t in parts.items():
        if name not in expected:
            raise ValueError(f"borrowed part {name!r} is not a tensor of this model")
        if tuple(t.shape) != tuple(expected[name]):
            raise ValueError(f"borrowed part {name!r} has shape {tuple(t.shape)}, this model needs {tuple(expected[name])}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"borrowed part {name!r} contains NaN or Inf")


def average_parts(payloads: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The uniform average of several payloads, tensor by tensor, over the tensors all of them hold with
    one shape (FedAvg's mean / a uniform model soup); {} for fewer than two payloads. Peers of another
    modality hand over the body only, so a mixed set averages the body and the receiver keeps its own
    token readers."""
    if len(payloads) < 2:
        return {}
    first = payloads[0]
    names = [n for n in first if all(n in p and p[n].shape == first[n].shape for p in payloads)]
    return {n: torch.stack([p[n].float() for p in payloads]).mean(dim=0).to(first[n].dtype) for n in names}


# What a learner runs of its peers: per task, the shared-weight matrices it borrowed (frozen) and the
# binary piggyback masks it learned over them; while a task adapts, the real-valued mask scores being
# trained (straight-through, as Piggyback's).
class BorrowedParts:
    def __init__(self, threshold: float, init_score: float):
        self.threshold, self.init_score = threshold, init_score
        self.weights: dict[int, dict[str, Tensor]] = {}  # task -> {shared-weight name -> a peer's weight}
        self.masks: dict[int, dict[str, Tensor]] = {}  # task -> its learned binary masks over them
        self.scores: dict[str, nn.Parameter] = {}  # real-valued mask scores of the task being adapted

    def weight(self, task: int, name: str, train: bool, adapting: bool) -> Tensor:
        """Borrowed matrix ``name`` as task ``task`` runs it: under the scores being trained while
        ``adapting`` (binarised; differentiable with ``train``), else under its learned mask."""
        borrowed = self.weights[task][name]
        if adapting and name in self.scores:
            scores = self.scores[name]
            if train:
                return borrowed * binarize(scores, self.threshold)
            return torch.where(scores.detach() > self.threshold, borrowed, torch.zeros(()))
        mask = self.masks.get(task, {}).get(name)
        return borrowed if mask is None else torch.where(mask, borrowed, torch.zeros(()))

    def load(self, task: int, weights: dict[str, Tensor]) -> None:
        """``task`` now runs these peer matrices, with no mask learned over them yet."""
        self.weights[task] = weights
        self.masks.pop(task, None)

    def open_scores(self, task: int, device: torch.device) -> None:
        """Start learning new masks over ``task``'s borrowed matrices (every score at ``init_score``)."""
        self.scores = {n: nn.Parameter(torch.full(w.shape, self.init_score, device=device))
                       for n, w in self.weights[task].items()}

    def close_scores(self, task: int) -> None:
        """Keep the binarised scores as ``task``'s masks (if any were being learned)."""
        if self.scores:
            self.masks[task] = {n: s.detach() > self.threshold for n, s in self.scores.items()}
            self.scores = {}

    def state(self, task: int) -> dict:
        return {"borrowed": self.weights.get(task), "masks": self.masks.get(task)}

    def set_state(self, task: int, state: dict) -> None:
        for store, key in ((self.weights, "borrowed"), (self.masks, "masks")):
            if state[key] is None:
                store.pop(task, None)
            else:
                store[task] = state[key]

    def to(self, device: torch.device) -> None:
        self.weights = {t: {n: w.to(device) for n, w in d.items()} for t, d in self.weights.items()}
        self.masks = {t: {n: m.to(device) for n, m in d.items()} for t, d in self.masks.items()}
        self.scores = {}
