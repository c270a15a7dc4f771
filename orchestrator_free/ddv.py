"""DDV probes (ModelDiff's decision distance vectors) in token space.

Both sides generate the same probe pairs from a shared spec, so no data is needed or sent:
``x_j ~ N(0, 1)`` of shape (token_count, C) and ``x'_j = x_j + perturbation * n_j``. A model's response
``attnRep(M, kv)`` is its (task's) latents attending to the probe tokens through its encoder
cross-attention with the key/value projections ``kv``; the DDV holds, per pair, the cosine distance
between the responses to ``x_j`` and ``x'_j``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import repeat
from torch import Tensor

from crossback.models.bounds import bounded, check_bounds
from crossback.models.learner import ContinualLearner
from crossback.models.perceiver import join_kv

CROSS_ATTN = "core.cross_attend_block.cross_attn"
KV_SOURCES = ("self", "inline")
MAX_PAIRS, MAX_TOKENS = 512, 1024


class ProbeSpecError(ValueError):
    pass


@dataclass(frozen=True)
class ProbeSpec:
    seed: int = bounded(0, ge=0, lt=2**63)
    pair_count: int = bounded(32, ge=1, le=MAX_PAIRS)
    token_count: int = bounded(16, ge=1, le=MAX_TOKENS)
    perturbation: float = bounded(0.1, gt=0.0, le=10.0)
    kv_source: str = bounded("self", choices=KV_SOURCES)

    def validate(self) -> "ProbeSpec":
        """The same bounds a config file is held to, for a spec that arrived over the wire."""
        try:
            check_bounds(self)
        except ValueError as exc:
            raise ProbeSpecError(str(exc)) from None
        return self


def probe_pairs(spec: ProbeSpec, token_dim: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(spec.seed)
    x = torch.randn(spec.pair_count, spec.token_count, token_dim, generator=gen)
    noise = torch.randn(spec.pair_count, spec.token_count, token_dim, generator=gen)
    return x, x + spec.perturbation * noise


@torch.no_grad()
def attn_rep(learner: ContinualLearner, task: int, kv: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """(batch, num_latents * latent_dim): the task's latents cross-attending to ``tokens`` through ``kv``."""
    params = learner.params_for(task)
    prefix = CROSS_ATTN + "."
    sub = {n[len(prefix):]: t for n, t in params.items() if n.startswith(prefix)}
    sub["fn.to_kv.weight"] = join_kv(kv).to(learner.device)
    tokens = tokens.to(learner.device)
    latents = repeat(params["core.latents"], "n d -> b n d", b=tokens.shape[0])
    module = learner.net.get_submodule(CROSS_ATTN)
    out = learner.call(module, sub, (latents,), {"context": tokens})
    return out.flatten(1)


def ddv(learner: ContinualLearner, task: int, kv: dict[str, Tensor], spec: ProbeSpec) -> Tensor:
    x, x_prime = probe_pairs(spec.validate(), learner.cfg.token_dim)
    a, b = attn_rep(learner, task, kv, x), attn_rep(learner, task, kv, x_prime)
    return (1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1)).cpu()
