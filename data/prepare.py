"""A run config's tasks as tensors, built up front so bad data fails before any training."""
from __future__ import annotations

from typing import TYPE_CHECKING

from crossback.models.task_data import TaskData

from .sources import load_catalog
from .tasks import build_task, public_items

if TYPE_CHECKING:
    from crossback.config.run import RunConfig


def prepare_tasks(cfg: RunConfig) -> tuple[list[TaskData], list[dict]]:
    """Build every task's splits up front, so bad data fails before any training or checkpoint."""
    catalog = load_catalog(cfg.data.source, cfg.data.root)
    split_seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
    built = [build_task(catalog, spec, cfg.data.split, cfg.view(), split_seed, cfg.data.shots,
                        cfg.data.partition) for spec in cfg.tasks]
    return [d for d, _ in built], [info for _, info in built]


def prepare_public(cfg: RunConfig):
    """Every item of the public paired set in this node's view (None: the split holds none out)."""
    if cfg.data.split.public_fraction <= 0:
        return None
    return public_items(load_catalog(cfg.data.source, cfg.data.root), cfg.data.split, cfg.view())
