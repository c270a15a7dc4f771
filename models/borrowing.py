"""What a learner runs of its peers: per task, the shared-weight matrices it borrowed (frozen) and the
binary piggyback masks it learned over them; while a task adapts, the real-valued mask scores being
trained (straight-through, as Piggyback's). Which parts exist and how they are named: ``.borrowed``."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .masks import binarize


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
