"""Masked training step vs an unmasked step of the same model, and a finished task's inference folded
into plain weights vs the plain model (and vs running it through the learner's masks).

    python benchmarks/perf/masked_step.py                 # the compose swarm's image model, batch 32
    python benchmarks/perf/masked_step.py --json out.json --steps 40 --threads 1

For each method the learner has finished one task (so the second task's step sees owners, older
weights and, for piggyback/cpg, pick scores) and is learning a second. Each repetition times one
masked step and one plain step on the same batch, alternating, so drift on a shared machine hits
both; the ratio is of medians. Ratios are the result; absolute times are labelled with the machine.
Goals (issue 16): masked step <= 1.10x unmasked, folded inference <= 1.02x plain.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from crossback.models.fold import fold
from crossback.models.learner import ContinualLearner
from crossback.models.masks import magnitude_prune
from crossback.models.perceiver import PerceiverClassifier
from crossback.config.model import PerceiverConfig

# the model of examples/swarm/img-0.yaml (the compose swarm's image nodes), 32x32 RGB emoji
MODEL = dict(token_dim=64, num_latents=24, latent_dim=64, depth=2, cross_dim_head=64, latent_heads=4,
             latent_dim_head=16, queries_dim=64)
METHODS = ("packnet", "piggyback", "cpg")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def learner_with_one_task(method: str, cfg: PerceiverConfig, classes: int, seed: int) -> ContinualLearner:
    """A learner that finished one task (pruned to half its weights, as PackNet and CPG leave room for
    the next) and is learning a second."""
    learner = ContinualLearner(cfg, "image", method, seed=seed)
    learner.begin_task("first", classes)
    if method != "piggyback":
        for layer in learner.layers.values():
            magnitude_prune(layer, 1, layer.weight.numel() // 2)
    learner.end_task()
    learner.begin_task("second", classes)
    return learner


def step_pair(method: str, cfg: PerceiverConfig, x, y, steps: int, seed: int) -> dict:
    learner = learner_with_one_task(method, cfg, int(y.max()) + 1, seed)
    params, scores = learner.trainable()
    groups = [{"params": params, "lr": 1e-3}] + ([{"params": scores, "lr": 1e-3}] if scores else [])
    masked_opt = torch.optim.Adam(groups)
    torch.manual_seed(seed)
    plain = PerceiverClassifier(cfg, "image")
    plain.head = torch.nn.Linear(cfg.queries_dim, int(y.max()) + 1)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def masked():
        loss = F.cross_entropy(learner.logits(x, 1), y)
        masked_opt.zero_grad(set_to_none=True)
        loss.backward()
        masked_opt.step()

    def unmasked():
        loss = F.cross_entropy(plain(x), y)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    for _ in range(3):  # warm-up: allocator, Adam state
        masked(), unmasked()
    a, b = [], []
    for _ in range(steps):
        a.append(_timed(masked))
        b.append(_timed(unmasked))
    return {"masked_ms": 1000 * statistics.median(a), "plain_ms": 1000 * statistics.median(b),
            "ratio": statistics.median(a) / statistics.median(b)}


@torch.no_grad()
def inference_triple(method: str, cfg: PerceiverConfig, x, classes: int, steps: int, seed: int) -> dict:
    learner = learner_with_one_task(method, cfg, classes, seed)
    learner.end_task()
    folded = fold(learner, 0)
    torch.manual_seed(seed)
    plain = PerceiverClassifier(cfg, "image").eval()
    plain.head = torch.nn.Linear(cfg.queries_dim, classes)
    runs = {"masked": lambda: learner.logits(x, 0), "folded": lambda: folded(x), "plain": lambda: plain(x)}
    for fn in runs.values():
        fn()
    times = {k: [] for k in runs}
    for _ in range(steps):
        for k, fn in runs.items():
            times[k].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"masked_ms": 1000 * med["masked"], "folded_ms": 1000 * med["folded"], "plain_ms": 1000 * med["plain"],
            "folded_ratio": med["folded"] / med["plain"], "masked_ratio": med["masked"] / med["plain"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = PerceiverConfig(**MODEL)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=gen)
    y = torch.randint(0, 8, (args.batch,), generator=gen)
    result = {"machine": machine(), "model": MODEL, "batch": args.batch, "steps": args.steps, "methods": {}}
    print(f"{machine()}; batch {args.batch} of 3x{args.image_size}x{args.image_size}, median of {args.steps}")
    print(f"{'method':<10} {'train step: masked':>19} {'plain':>9} {'ratio':>7}   "
          f"{'inference: masked':>18} {'folded':>8} {'plain':>8} {'folded/plain':>13} {'masked/plain':>13}")
    for method in METHODS:
        step = step_pair(method, cfg, x, y, args.steps, args.seed)
        inf = inference_triple(method, cfg, x, 8, args.steps, args.seed)
        result["methods"][method] = {"train_step": step, "inference": inf}
        print(f"{method:<10} {step['masked_ms']:>16.2f} ms {step['plain_ms']:>6.2f} ms {step['ratio']:>6.2f}x   "
              f"{inf['masked_ms']:>15.2f} ms {inf['folded_ms']:>5.2f} ms {inf['plain_ms']:>5.2f} ms "
              f"{inf['folded_ratio']:>12.2f}x {inf['masked_ratio']:>12.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
