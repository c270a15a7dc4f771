"""MergeNet transfer (Li et al.): the task learns from one matrix of the peer, through a parameter adapter.

The task gets its own copy of the matrix it transfers into (``matrix: kv``, the default: the encoder K/V;
``matrix: latents``: the latent array, a per-task tensor already), so nothing an earlier task owns is
ever written. While the task adapts on its own loss, every ``t_cycle`` steps the
adapter (``LPKA``) generates the copy anew from (the copy, the peer's matrix); the task then takes its
ordinary step from the generated weights, and the adapter is trained with the hypernetwork rule

    phi <- phi - lr * (dW~/dphi)^T dW,    dW = W~ - W'   (the change the task's step wanted)

where ``W'`` is the copy after that step, so the adapter learns to generate what the task's loss would
move towards, using the peer's knowledge. After the task the adapter is dropped; the copy stays with the
task. The peer sends its K/V (already fetched for selection; no other payload) and nothing else — no
data, features or gradients. Peers whose K/V shapes differ from ours are candidates too.

Without a peer (the ``none`` arm) the task adapts its copy the same way, with no generation, so the
arms differ only in the adapter's use of the peer's matrix.
"""
from __future__ import annotations

import torch

from crossback.config.transfer import MergeNetConfig
from crossback.models.optim import AdamW
from crossback.models.perceiver import ENCODER_KV

LATENTS = "core.latents"
from crossback.models.training import fit

from .base import AdaptOptions, Strategy
from .lpka import LPKA

MATRICES = {"kv": ENCODER_KV, "latents": LATENTS}  # matrix = the payload kind it arrives in -> parameter it goes into


class MergeNetTransfer(Strategy):
    name = "mergenet"
    any_shape = True  # the adapter reads matrices of any shape: peers with other K/V shapes are candidates
    borrows_parts = False  # the task runs its own (generated) weights, not the peer's
    keep_rule = "accuracy"
    extra: str | None = None

    def __init__(self, cfg: MergeNetConfig = MergeNetConfig()):
        self.cfg = cfg
        self.borrow = cfg.matrix  # the payload kind selection fetches
        self.needs = frozenset({cfg.matrix})

    def adapt(self, learner, task, data, payload, opts: AdaptOptions, generator: torch.Generator) -> dict:
        target = MATRICES[self.cfg.matrix]
        # the K/V is shared across tasks: the task gets its own copy; the latents are per-task already
        start = (learner.make_own_copy(task, target) if target in learner.layers
                 else learner.task_params[task][target].detach().clone())
        learner.begin_adaptation(task, None, opts.own_weights)
        try:
            if payload is None:
                fit(learner, task, data.train, opts.epochs, opts.train, generator, "adapt")
                facts = {}
            else:
                facts = self._adapt_with(learner, task, data, payload[target], opts, generator)
        finally:
            learner.end_adaptation()
        final = learner.task_params[task][target]
        return facts | {"matrix": target, "delta_norm": float((final - start.to(final.device)).norm())}

    def _adapt_with(self, learner, task, data, source: torch.Tensor, opts: AdaptOptions, generator) -> dict:
        cfg, target = self.cfg, MATRICES[self.cfg.matrix]
        copy = learner.task_params[task][target]
        source = source.detach().to(copy.device, copy.dtype)
        with torch.random.fork_rng(devices=[]):  # the adapter's init follows the arm's seed alone
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            adapter = LPKA((copy.shape[0], copy.shape[1]), (source.shape[0], source.shape[1]), cfg.rank, cfg.dim,
                           cfg.heads, cfg.layers)
        adapter.to(copy.device)
        optimizer = AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        pending: dict[str, torch.Tensor] = {}
        moved = []

        def generate(step: int) -> None:
            if step % cfg.t_cycle:
                return
            with torch.enable_grad():
                generated = adapter(copy.detach(), source)
            with torch.no_grad():
                moved.append(float((generated - copy).norm()))
                copy.copy_(generated)
            pending["w"] = generated

        def train_adapter(step: int) -> None:
            generated = pending.pop("w", None)
            if generated is None:
                return
            with torch.enable_grad():
                wanted = (generated.detach() - copy.detach())  # dW: what the task's step changed
                optimizer.zero_grad(set_to_none=True)
                (generated * wanted).sum().backward()
                optimizer.step()

        fit(learner, task, data.train, opts.epochs, opts.train, generator, "adapt", before_step=generate,
            after_step=train_adapter)
        return {"generations": len(moved), "generated_change": round(sum(moved), 6),
                "mixing_weights": adapter.mixing_weights(), "source_shape": list(source.shape),
                "adapter_params": sum(p.numel() for p in adapter.parameters())}
