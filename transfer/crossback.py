"""CrossBack transfer: run the task on the chosen peer's K and V (frozen) under a new piggyback mask,
and adapt the task's own tensors and that mask. Without a payload it is the no-transfer baseline:
the same adaptation on the task's own K and V, so arms differ only in what was borrowed."""
from __future__ import annotations

import torch

from crossback.models.perceiver import ENCODER_KV
from crossback.models.training import fit

from .base import AdaptOptions, InjectionError


class CrossBackTransfer:
    name = "crossback"
    needs = frozenset({"kv"})

    def adapt(self, learner, task, data, payload, opts: AdaptOptions, generator: torch.Generator) -> dict:
        with torch.no_grad():
            local = learner.params_for(task)[ENCODER_KV].clone()
        learner.begin_adaptation(task, payload, opts.own_weights)
        facts = {}
        try:
            if payload is not None:
                with torch.no_grad():
                    running = learner.params_for(task)[ENCODER_KV]
                expected = torch.cat([payload["cross_attn.key"], payload["cross_attn.value"]]).to(running.device)
                if not torch.equal(running, expected):
                    raise InjectionError("the task does not run with the borrowed K/V")
                changed = float((running != local).float().mean())
                if changed == 0.0:
                    raise InjectionError("the borrowed K/V equals the local one: nothing was transferred")
                facts["kv_changed_fraction"] = changed
                facts["kv_delta_norm"] = float((running - local).norm())
            fit(learner, task, data.train, opts.epochs, opts.train, generator, "adapt")
        finally:
            learner.end_adaptation()
        if task in learner.kv_masks:
            facts["kv_mask_kept"] = float(learner.kv_masks[task].float().mean())
        return facts
