"""MoNA transfer (Ma et al., "Learning Modality Knowledge Alignment"), decentralised by its first-order form.

Mapped onto our Perceiver: the task's *embedder* phi_e is what reads its modality's tokens (its adapter,
the encoder K/V and the context norm); the *encoder body* theta_f (payload kind ``encoder``) comes from
the peer. Stage 1 meta-learns phi_e so that one virtual fine-tuning step of the body on our task would
keep the body discriminative on the *peer's* data. Its exact objective (Eq. 7)

    min_phi  L_inner(theta_f, phi) + lambda * L_outer(theta_f - alpha * grad_theta L_inner(theta_f, phi))

needs the peer's labelled items. To first order in alpha (appendix A.3, Eq. 9) it is

    min_phi  L_inner(theta_f, phi) - lambda * alpha * g_outer . grad_theta L_inner(theta_f, phi)

where ``g_outer = grad L_outer(theta_f)`` depends on the peer's data and body only: the peer computes it
once, on its own items (``FetchOuterGrad``), and sends it with its body; nothing of its data leaves it.
theta_f stays at the peer's values through stage 1 (reset every step, as in Algorithm 1). Our
gradient of the objective needs the second derivative of *our* loss only (a Hessian-vector product
with g_outer, by double backward). The head learns on L_inner alone beside phi_e: ours was fit to our
own body. Stage 2 is the node's ordinary adaptation on the borrowed body (as CrossBack's: the peer's
matrices frozen under piggyback masks the task learns, its per-task tensors fine-tuned), stored with
the task. The task's K/V becomes a per-task copy, so no other task's weights move.

Without a peer (the ``none`` arm) the task runs the same two stages on its own body, with no alignment
term (embedder warm-up, then adaptation): arms differ only in the peer's body and gradient.
"""
from __future__ import annotations

import math
import operator
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor

from crossback.config.errors import WireError
from crossback.config.transfer import MonaConfig
from crossback.models.borrowed import TOKEN_READERS, accept_parts
from crossback.models.learner import HEAD_NAMES
from crossback.models.optim import Adam
from crossback.models.perceiver import ENCODER_KV
from crossback.models.training import epoch_batches

from .alignment import body_names
from .base import AdaptOptions, Extra, Strategy
from .crossback import adapt_on_parts

OUTER_GRAD = "outer_grad::"  # prefix of the gradient tensors inside a mona payload
MAX_SAMPLES = 1 << 40  # bound on a peer's claimed sample count
MAX_NAME = 256  # characters of a peer id shown in an error


def embedder_names(params: dict) -> list[str]:
    """phi_e: the task's own tensors that read its modality's tokens."""
    return sorted(n for n in params if n.startswith("adapter.") or n in TOKEN_READERS)


def split_payload(payload: dict | None) -> tuple[dict | None, dict | None]:
    """(body, outer gradient by body name) of a mona payload; (None, None) without a peer."""
    if payload is None:
        return None, None
    body = {n: t for n, t in payload.items() if not n.startswith(OUTER_GRAD)}
    grad = {n.removeprefix(OUTER_GRAD): t for n, t in payload.items() if n.startswith(OUTER_GRAD)}
    if set(grad) != set(body):
        raise ValueError(f"mona payload: gradient for {sorted(set(grad) ^ set(body))[:4]} does not match the body")
    return body, grad


def first_order_objective(logits_fn, theta: dict[str, Tensor], labels: Tensor, g_outer: dict[str, Tensor] | None,
                          weight: float) -> tuple[Tensor, Tensor, Tensor | None, dict | None]:
    """(objective, L_inner, g_outer . grad_theta L_inner, grad_theta L_inner) of Eq. 9 with
    ``weight = lambda * alpha``; ``logits_fn(theta)`` runs the task with body ``theta`` (leaves).
    Differentiable in everything ``logits_fn`` reads besides theta (phi_e)."""
    inner = F.cross_entropy(logits_fn(theta), labels)
    if g_outer is None:
        return inner, inner, None, None
    names = sorted(theta)
    grads = torch.autograd.grad(inner, [theta[n] for n in names], create_graph=True, allow_unused=True)
    g_in = {n: g for n, g in zip(names, grads) if g is not None}
    dot = reduce(operator.add, [(g * g_outer[n].to(g.dtype)).sum() for n, g in g_in.items()], inner.new_zeros(()))
    return inner - weight * dot, inner, dot, g_in


class MonaTransfer(Strategy):
    name = "mona"
    borrow = "encoder"  # selection fetches every candidate's body and scores it
    extra: str | None = "outer_grad"  # fetched only for the candidates whose arms run, once each
    needs = frozenset({"encoder", "outer_grad"})
    any_shape = False  # the task runs the peer's body, so it must have our core shapes
    borrows_parts = True
    keep_rule = "accuracy"

    def __init__(self, cfg: MonaConfig = MonaConfig()):
        self.cfg = cfg

    def fetch_extra(self, client, peer: str, parts: dict | None, snapshot_version: int,
                    own: dict[str, tuple[int, ...]]) -> Extra:
        """The peer's encoder body with its outer-loss gradient, both checked against our body's names
        and shapes. The peer leaves out the body we already hold (``parts``) when its snapshot has not
        moved; when it has, the new body replaces the one selection fetched (body and gradient always
        come from one snapshot)."""
        held = (snapshot_version, {n: tuple(t.shape) for n, t in parts.items()}) if parts else None
        body, grad, summary, version = client.fetch_outer_grad(min_version=snapshot_version,
                                                               max_batches=self.cfg.outer_batches, held=held)
        if not body and held is not None and version == held[0]:
            body = parts  # the body selection fetched: the peer's snapshot has not moved since
        wanted = accept_parts("encoder", body, own)
        if set(wanted) != set(body):
            raise WireError(f"peer {peer[:MAX_NAME]!r}: outer-gradient body holds {sorted(set(body) - set(wanted))[:4]}, "
                            "not our encoder body")
        figures = {"outer_loss": summary.outer_loss, "align_loss": summary.align_loss,
                   "uniform_loss": summary.uniform_loss}
        if not 2 <= summary.sample_count <= MAX_SAMPLES or summary.batch_count < 1 or not all(
                map(math.isfinite, figures.values())):
            raise WireError(f"peer {peer[:MAX_NAME]!r}: malformed outer-gradient summary "
                            f"(samples {summary.sample_count}, batches {summary.batch_count})")
        facts = {"sample_count": summary.sample_count, "batch_count": summary.batch_count,
                 **{k: round(v, 6) for k, v in figures.items()}, "snapshot_version": version}
        sent = grad.values() if body is parts else (*body.values(), *grad.values())
        return Extra(wanted, wanted | {OUTER_GRAD + n: g for n, g in grad.items()}, facts, version,
                     sum(t.numel() * t.element_size() for t in sent))

    def adapt(self, learner, task, data, payload, opts: AdaptOptions, generator: torch.Generator) -> dict:
        body, g_outer = split_payload(payload)
        if ENCODER_KV in learner.layers:  # phi_e includes the K/V: the task's own copy
            learner.make_own_copy(task, ENCODER_KV)
        return adapt_on_parts(learner, task, data, body, opts, generator,
                              warm_up=lambda: self._stage1(learner, task, data, g_outer, opts, generator))

    def _stage1(self, learner, task, data, g_outer: dict | None, opts: AdaptOptions, generator) -> dict:
        cfg = self.cfg
        own = learner.task_params[task]
        phi = [own[n] for n in embedder_names(own)]
        head = [own[n] for n in HEAD_NAMES]
        body = body_names(learner, task)
        optimizer = Adam(phi + head, lr=cfg.lr or opts.train.lr)
        weight = cfg.trade_off * cfg.inner_lr
        g_out = None if g_outer is None else {n: g.to(learner.device) for n, g in g_outer.items()}
        inner_losses, dots, cosines, norms = [], [], [], []
        for batches in epoch_batches(len(data.train), opts.train.batch_size, cfg.stage1_epochs, generator):
            for idx in batches:
                x, y = data.train.inputs[idx].to(learner.device), data.train.labels[idx].to(learner.device)
                params = dict(learner.params_for(task))
                theta = {k: params[k].detach().requires_grad_(True) for k in body}  # the peer's values, every step

                def logits_fn(th):
                    return learner.call(learner.net, params | th, (x,))

                objective, inner, dot, g_in = first_order_objective(logits_fn, theta, y, g_out, weight)
                grads_phi = torch.autograd.grad(objective, phi, retain_graph=True, allow_unused=True)
                grads_head = torch.autograd.grad(inner, head, retain_graph=dot is not None, allow_unused=True)
                if dot is not None and g_out is not None and g_in is not None:
                    cosines.append(_cosine(g_out, g_in))
                    norms.append(float(torch.cat([g.detach().reshape(-1) for g in g_in.values()]).norm()))
                    dots.append(float(dot.detach()))
                for p, g in zip(phi + head, list(grads_phi) + list(grads_head)):
                    p.grad = None if g is None else g.detach()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                inner_losses.append(float(inner.detach()))
        facts: dict[str, object] = {"stage1_steps": len(inner_losses)}
        if inner_losses:
            facts["stage1_inner_loss"] = [round(inner_losses[0], 4), round(inner_losses[-1], 4)]
        if cosines and g_out is not None:  # does our task's gradient on the body come to point along the peer's?
            facts |= {"grad_cosine": [round(cosines[0], 4), round(cosines[-1], 4)],
                      "alignment_term": [round(weight * dots[0], 5), round(weight * dots[-1], 5)],
                      "inner_grad_norm": [round(norms[0], 5), round(norms[-1], 5)],
                      "outer_grad_norm": round(float(torch.cat([g.reshape(-1) for g in g_out.values()]).norm()), 5)}
        return facts


def _cosine(g_out: dict[str, Tensor], g_in: dict[str, Tensor]) -> float:
    """cos(g_outer, grad_theta L_inner) over the whole body (reported: stage 1 should raise it)."""
    a = torch.cat([g_out[n].reshape(-1) for n in g_in])
    b = torch.cat([g.detach().reshape(-1) for g in g_in.values()])
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else 0.0
