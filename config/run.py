"""A run config (``crossback train``, and the run part of a node's config): tasks, data, model, method,
training. Relative ``data.root`` resolves against the config file's folder."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bounds import bounded
from .data import DataConfig, TaskSpec, View
from .errors import ConfigError
from .loader import from_mapping, key_paths, read_yaml
from .model import MethodConfig, PerceiverConfig, TrainOptions


@dataclass(frozen=True)
class EvalConfig:
    scratch_baseline: bool = False  # train each task alone too, for forward transfer


@dataclass(frozen=True)
class RunConfig:
    tasks: tuple[TaskSpec, ...]
    seed: int = bounded(0, ge=0, lt=2**31)
    data: DataConfig = field(default_factory=DataConfig)
    model: PerceiverConfig = field(default_factory=PerceiverConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def view(self) -> View:
        return self.data.view_for(self.model)


def _check(cfg: RunConfig) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    need(cfg.data.image_size >= cfg.model.image.patch_size, "data.image_size", "must be at least model.image.patch_size")
    names = [t.name for t in cfg.tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    need(not dup, "tasks", f"task names must be unique, repeated: {dup}")
    for i, t in enumerate(cfg.tasks):
        need(not (t.superclass and t.classes), f"tasks[{i}]", "give either superclass or classes, not both")


RUN_SECTIONS = {"": RunConfig}


def parse_config(data: Any, source: str = "config", base_dir: Path | None = None,
                 homes: dict[str, list[str]] | None = None) -> RunConfig:
    """Validate a run config. A relative ``data.root`` is resolved against ``base_dir`` (the config
    file's folder), so a config means the same wherever it is run from."""
    try:
        cfg = from_mapping(RunConfig, data, "", homes if homes is not None else key_paths(RUN_SECTIONS))
        _check(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if cfg.data.root is not None:
        root = Path(cfg.data.root).expanduser()
        if not root.is_absolute() and base_dir is not None:
            root = (base_dir / root).resolve()
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)))
    return cfg


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    return parse_config(read_yaml(path), str(path), path.parent)


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain JSON-able form; ``parse_config(config_to_dict(c)) == c``."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    out = plain(cfg)
    out["tasks"] = [{k: v for k, v in t.items() if v is not None} for t in out["tasks"]]
    return out
