"""A learner as plain tensors and JSON metadata, and back: what checkpoints (``.persistence``) and the
ranks of one node (``crossback.node.distributed``) exchange. Nothing is pickled."""
from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from crossback.config.model import PickOptions

from .learner import ContinualLearner, TaskRecord, config_from_dict


def learner_metadata(learner: ContinualLearner) -> dict:
    return {
        "model": dataclasses.asdict(learner.cfg),
        "modality": learner.modality,
        "method": learner.method,
        "seed": learner.seed,
        "genesis": learner.genesis,
        "pick": dataclasses.asdict(learner.pick),
        "tasks": [dataclasses.asdict(t) for t in learner.tasks],
    }


def shared_tensors(learner: ContinualLearner) -> dict[str, Tensor]:
    out = {}
    for n, layer in learner.layers.items():
        out[n] = layer.weight.detach().cpu().contiguous()
        out[f"{n}::owner"] = layer.owner.cpu().contiguous()
    return out


def task_tensors(learner: ContinualLearner, task: int) -> dict[str, Tensor]:
    out = {n: t.detach().cpu().contiguous() for n, t in learner.task_params[task].items()}
    out |= {f"pick::{n}": m.cpu().contiguous() for n, m in learner.pick_masks[task].items()}
    out |= {f"borrowed::{n}": w.cpu().contiguous() for n, w in learner.borrowed.get(task, {}).items()}
    out |= {f"bmask::{n}": m.cpu().contiguous() for n, m in learner.borrow_masks.get(task, {}).items()}
    return out


def learner_from_tensors(meta: dict, shared: dict[str, Tensor], per_task: list[dict[str, Tensor]]) -> ContinualLearner:
    learner = ContinualLearner(config_from_dict(meta["model"]), meta["modality"], meta["method"], meta["seed"],
                  PickOptions(**meta["pick"]), meta.get("genesis"))
    for n, layer in learner.layers.items():
        if n not in shared or f"{n}::owner" not in shared:
            raise KeyError(f"checkpoint lacks shared weight {n!r}")
        layer.weight = nn.Parameter(shared[n].clone(), requires_grad=False)
        layer.owner = shared[f"{n}::owner"].clone()
    if len(per_task) != len(meta["tasks"]):
        raise ValueError(f"checkpoint lists {len(meta['tasks'])} tasks but holds tensors for {len(per_task)}")
    for record, tensors in zip(meta["tasks"], per_task):
        learner.tasks.append(TaskRecord(**record))
        params, picks = {}, {}
        for n, t in tensors.items():
            if n.startswith("pick::"):
                picks[n.removeprefix("pick::")] = t.clone()
            elif n.startswith("borrowed::"):
                learner.borrowed.setdefault(len(learner.tasks) - 1, {})[n.removeprefix("borrowed::")] = t.clone()
            elif n.startswith(("bmask::", "kvmask::")):  # kvmask: checkpoints from before block/backbone
                name = n.split("::", 1)[1]
                learner.borrow_masks.setdefault(len(learner.tasks) - 1, {})[name] = t.clone()
            else:
                params[n] = t.clone()
        learner.task_params.append(params)
        learner.pick_masks.append(picks)
    return learner
