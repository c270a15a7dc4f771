"""Frequency-decoupled cross-modal KD (section 4 of "Frequency-Decoupled Cross-Modal Knowledge
Distillation"), between a student node and a teacher peer that sees the same items in another modality.

The teacher sends only features: for every paired item, the mean of what its published task's head
reads over the item's samples (``crossback.transfer.pairs``; pairs come from the public paired
set or from item ids both nodes hold). The student finishes its task on

    L = L_task + L_align + lambda_1 L_low + lambda_2 L_high                      (Eq. 11)

- ``L_task``: cross-entropy of the task's own head on the raw features of its own items, plus that of
  two shared classifiers Phi_l, Phi_h on their low and high frequency bands;
- ``L_align`` (Eq. 10): Phi_l and Phi_h on the low / high bands of the student's *and* the teacher's
  features of the paired items: one decision boundary for both modalities. The student's half is the
  band part of ``L_task`` on the same items (its own items, or the public ones), counted once;
- ``L_low`` / ``L_high`` (Eq. 8-9, ``freqkd_bands``): MSE of the standardised low bands, MSE after a
  sign-preserving log of the standardised high bands.

The classifiers read the standardised bands scaled to unit RMS (the scale alignment of section 4.2;
otherwise the two modalities' feature scales decide the boundary), and are first fit by a linear probe
on both sides' bands (``probe_classifiers``; with a few steps of adaptation a random shared classifier
would only send noise into the student). A student of another feature width
than its teacher's learns a linear projection to it for these terms. Phi_l, Phi_h and that projection
exist only while the task adapts; the task keeps only its own tensors, so no other task changes.

The ``none`` arm runs the same loop with every teacher term removed: with the public set it still
learns from the public items' labels (which the teacher's arm has too), so the difference between the
arms is the teacher's features alone. ``decouple: false`` is the ablation without the band split: one
classifier on the whole standardised feature and a plain MSE on it (weight ``low_weight``).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor

from crossback.config.transfer import PAIR_KINDS, FreqKDConfig
from crossback.models.optim import Adam
from crossback.models.task_data import Split
from crossback.models.training import epoch_batches, features, fit_linear
from crossback.transfer.pairs import MIN_SECRET_BYTES, Pairs

from .base import AdaptOptions, Strategy
from .freqkd_bands import decoupled_losses, split_bands, standardise


@dataclass
class _Pool:
    """Paired samples: student inputs and labels, and the teacher's feature row of each (-1: none)."""

    inputs: Tensor
    labels: Tensor
    teacher_row: Tensor
    student_terms: bool  # public items are not the task's own: learn their labels too (both arms)


class FreqKDTransfer(Strategy):
    name = "freqkd"
    any_shape = True  # only features cross; their widths may differ (a learned projection bridges them)
    borrows_parts = False  # the task keeps only its own tensors: nothing to record as borrowed
    borrows_features = True  # a teacher's features on the items pairs_for names
    keep_rule = "accuracy"
    extra: str | None = None

    def __init__(self, cfg: FreqKDConfig = FreqKDConfig(), public_set: str = "", pair_secret: bytes = b""):
        if cfg.pairs == "public" and not public_set:
            raise ValueError("transfer.freqkd.pairs: public needs a public paired set: set "
                             "data.split.public_fraction (every node of the swarm the same)")
        if cfg.pairs == "shared_ids" and len(pair_secret) < MIN_SECRET_BYTES:
            raise ValueError("transfer.freqkd.pairs: shared_ids needs the swarm's pair secret: set "
                             "swarm.pair_secret_file (or keep pair.key in node.tls.dir; crossback certs init writes it)")
        self.cfg, self.public_set, self.pair_secret = cfg, public_set, pair_secret
        self.borrow = PAIR_KINDS[cfg.pairs]
        self.needs = frozenset({self.borrow})

    def pairs_for(self, data) -> Pairs | None:
        """What to ask a teacher about for this task (None: the task has no items to pair)."""
        source = data.public if self.cfg.pairs == "public" else data.train
        if source is None or source.items is None or len(source) == 0:
            return None
        return Pairs.from_split(self.borrow, source, self.cfg.max_pairs, self.public_set, self.pair_secret)

    def _pool(self, pairs: Pairs | None, payload: dict | None) -> _Pool | None:
        if pairs is None:
            return None
        row_of_key = torch.full((len(pairs.keys),), -1, dtype=torch.long)
        if payload is not None:
            matched = payload["matched"].long()
            row_of_key[matched] = torch.arange(len(matched))
        asked = pairs.sample_key >= 0
        rows = torch.where(asked, row_of_key[pairs.sample_key.clamp_min(0)], torch.full_like(pairs.sample_key, -1))
        public = self.cfg.pairs == "public"
        keep = asked if public else rows >= 0  # shared items are own items: only their teacher terms are new
        if not bool(keep.any()):
            return None
        return _Pool(pairs.source.inputs[keep], pairs.source.labels[keep], rows[keep], public)

    def adapt(self, learner, task, data, payload, opts: AdaptOptions, generator: torch.Generator) -> dict:
        cfg = self.cfg
        pool = self._pool(self.pairs_for(data), payload)
        teacher = None if payload is None else payload["features"].float().to(learner.device)
        own = learner.task_params[task]
        width = own["head.weight"].shape[1]
        classes = own["head.weight"].shape[0]
        target = width if teacher is None else teacher.shape[1]
        learner.begin_adaptation(task, None, opts.own_weights)
        try:
            extra = _Heads.new(width, target, classes, 2 if cfg.decouple else 1, generator, learner.device)
            probe_loss = self._probe_classifiers(learner, task, extra, data.train, pool, teacher) \
                if cfg.probe_classifiers else None
            weights, _ = learner.trainable()
            optimizer = Adam([{"params": weights, "lr": opts.train.lr},
                                          {"params": extra.params(), "lr": opts.train.lr}])
            sums: dict[str, float] = {}
            steps = 0
            for batches in epoch_batches(len(data.train), opts.train.batch_size, opts.epochs, generator):
                for idx in batches:
                    terms = self._own_terms(learner, task, extra, data.train, idx)
                    if pool is not None:
                        pick = torch.randint(len(pool.labels), (min(cfg.pair_batch, len(pool.labels)),), generator=generator)
                        terms |= self._pair_terms(learner, task, extra, pool, pick, teacher)
                    loss = reduce(operator.add, self._weighted(terms).values())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    steps += 1
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
        finally:
            learner.end_adaptation()
        facts = {"steps": steps, "paired_samples": 0 if pool is None else len(pool.labels),
                 "taught_samples": 0 if pool is None else int((pool.teacher_row >= 0).sum()),
                 "projection": extra.projection is not None,
                 **({"classifier_probe_loss": round(probe_loss, 6)} if probe_loss is not None else {})}
        facts |= {f"loss_{k}": round(v / max(steps, 1), 6) for k, v in sorted(sums.items())}
        return facts

    @torch.no_grad()
    def _probe_classifiers(self, learner, task, extra: "_Heads", own: Split, pool: _Pool | None,
                           teacher: Tensor | None) -> float:
        """Fit every shared classifier from zero by a linear probe (full batch, deterministic) on the
        bands of the student's features of its items and, with a teacher, of the teacher's features of
        the paired ones, so that the shared decision boundary means something from the first step."""
        inputs, labels = [own.inputs], [own.labels]
        if pool is not None and pool.student_terms:
            inputs.append(pool.inputs)
            labels.append(pool.labels)
        f = torch.cat([features(learner, task, x) for x in inputs]).to(learner.device)
        y = torch.cat(labels).to(learner.device)
        bands = [_unit_rms(b) for b in self._bands(extra.project(f))]
        if teacher is not None and pool is not None and bool((pool.teacher_row >= 0).any()):
            taught = pool.teacher_row >= 0
            t_bands = self._bands(teacher[pool.teacher_row[taught].to(teacher.device)])
            bands = [torch.cat([b, _unit_rms(t)]) for b, t in zip(bands, t_bands)]
            y = torch.cat([y, pool.labels[taught].to(learner.device)])
        return sum(_fit_linear(phi, b, y) for phi, b in zip(extra.classifiers, bands)) / len(bands)

    def _weighted(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        weight = {"low": self.cfg.low_weight, "high": self.cfg.high_weight, "mse": self.cfg.low_weight}
        return {k: v * weight.get(k, 1.0) for k, v in terms.items()}

    def _bands(self, z: Tensor) -> list[Tensor]:
        return list(split_bands(z, self.cfg.low_fraction)) if self.cfg.decouple else [z - z.mean(-1, keepdim=True)]

    def _own_terms(self, learner, task, extra: "_Heads", split: Split, idx: Tensor) -> dict[str, Tensor]:
        x, y = split.inputs[idx].to(learner.device), split.labels[idx].to(learner.device)
        f = _features(learner, task, x)
        terms = {"task": F.cross_entropy(extra.head(learner, task, f), y)}
        for b, (band, phi) in enumerate(zip(self._bands(extra.project(f)), extra.classifiers)):
            terms[f"task_band{b}"] = F.cross_entropy(phi(_unit_rms(band)), y)
        return terms

    def _pair_terms(self, learner, task, extra: "_Heads", pool: _Pool, pick: Tensor, teacher: Tensor | None) -> dict:
        x, y = pool.inputs[pick].to(learner.device), pool.labels[pick].to(learner.device)
        rows = pool.teacher_row[pick]
        f = _features(learner, task, x)
        z = extra.project(f)
        student_bands = self._bands(z)
        terms = {}
        if pool.student_terms:
            terms["pair_task"] = F.cross_entropy(extra.head(learner, task, f), y)
            for b, (band, phi) in enumerate(zip(student_bands, extra.classifiers)):
                terms[f"pair_band{b}"] = F.cross_entropy(phi(_unit_rms(band)), y)
        taught = rows >= 0
        if teacher is None or not bool(taught.any()):
            return terms
        t = teacher[rows[taught].to(teacher.device)]
        ty = y[taught]
        s_bands = [band[taught] for band in student_bands]
        t_bands = self._bands(t)
        for b, (tb, phi) in enumerate(zip(t_bands, extra.classifiers)):  # Eq. 10, the teacher's half
            terms[f"align_teacher{b}"] = F.cross_entropy(phi(_unit_rms(tb)), ty)
        if self.cfg.decouple:  # Eq. 8 and 9
            terms["low"], terms["high"] = decoupled_losses((s_bands[0], s_bands[1]), (t_bands[0], t_bands[1]))
        else:
            terms["mse"] = (standardise(s_bands[0]) - standardise(t_bands[0])).pow(2).mean()
        return terms


def _features(learner, task: int, x: Tensor) -> Tensor:
    return learner.call(learner.net, learner.params_for(task), (x,), {"features": True})


def _fit_linear(layer: torch.nn.Linear, x: Tensor, y: Tensor) -> float:
    w, b, loss = fit_linear(x, y, layer.out_features)
    layer.weight.copy_(w)
    layer.bias.copy_(b)
    return loss


def _unit_rms(x: Tensor) -> Tensor:
    return standardise(x) * x.shape[-1] ** 0.5


@dataclass
class _Heads:
    """What only the adaptation uses: the shared band classifiers and, across widths, a projection."""

    classifiers: list[torch.nn.Linear]
    projection: Tensor | None

    @classmethod
    def new(cls, width: int, target: int, classes: int, bands: int, generator: torch.Generator, device) -> "_Heads":
        def linear(fan_in: int, fan_out: int) -> torch.nn.Linear:
            layer = torch.nn.Linear(fan_in, fan_out).to(device)
            with torch.no_grad():
                layer.weight.copy_(torch.randn(fan_out, fan_in, generator=generator) * fan_in**-0.5)
                layer.bias.zero_()
            return layer

        projection = None
        if width != target:
            projection = (torch.randn(target, width, generator=generator) * width**-0.5).to(device).requires_grad_(True)
        return cls([linear(target, classes) for _ in range(bands)], projection)

    def params(self) -> list[Tensor]:
        return [p for c in self.classifiers for p in c.parameters()] + ([self.projection] if self.projection is not None else [])

    def project(self, f: Tensor) -> Tensor:
        return f if self.projection is None else f @ self.projection.T

    @staticmethod
    def head(learner, task: int, f: Tensor) -> Tensor:
        params = learner.task_params[task]
        return f @ params["head.weight"].T + params["head.bias"]
