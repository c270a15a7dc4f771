"""Run configuration: YAML validated strictly into frozen dataclasses.

Every unknown key is an error naming its dotted path (with a suggestion); every value is type-checked.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossback.data.sources import SOURCES
from crossback.data.tasks import SplitSpec, TaskSpec, View
from crossback.models.learner import METHODS
from crossback.models.methods import MethodConfig
from crossback.models.perceiver import PerceiverConfig
from crossback.models.training import TrainOptions

MODALITIES = ("image", "text")


class ConfigError(ValueError):
    """A config problem; the message names the file and the dotted key."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "emoji"
    root: str | None = None
    modality: str = "image"
    image_size: int = 32
    split: SplitSpec = field(default_factory=SplitSpec)


@dataclass(frozen=True)
class EvalConfig:
    scratch_baseline: bool = False  # train each task alone too, for forward transfer


@dataclass(frozen=True)
class RunConfig:
    tasks: tuple[TaskSpec, ...]
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: PerceiverConfig = field(default_factory=PerceiverConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def view(self) -> View:
        return View(self.data.modality, self.data.image_size, self.model.image.channels, self.model.text.max_length)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (inner, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, path)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")


def _task(value: Any, path: str) -> TaskSpec:
    if isinstance(value, str):
        return TaskSpec(value)
    return from_mapping(TaskSpec, value, path)


def from_mapping(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(fields)})"
            raise ConfigError(f"unknown key {where!r}{hint}")
        if cls is RunConfig and key == "tasks":
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{where}: expected a non-empty list of tasks")
            kwargs[key] = tuple(_task(v, f"{where}[{i}]") for i, v in enumerate(value))
        else:
            kwargs[key] = _convert(value, hints[key], where)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{path + '.' if path else ''}{missing[0]}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from exc


def _check(cfg: RunConfig) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    need(cfg.data.source in SOURCES, "data.source", f"{cfg.data.source!r} is not one of {list(SOURCES)}")
    need(cfg.data.modality in MODALITIES, "data.modality", f"{cfg.data.modality!r} is not one of {list(MODALITIES)}")
    need(cfg.data.image_size >= cfg.model.image.patch_size, "data.image_size", "must be at least model.image.patch_size")
    need(cfg.method.name in METHODS, "method.name", f"{cfg.method.name!r} is not one of {list(METHODS)}")
    need(0.0 <= cfg.method.packnet.prune_ratio < 1.0, "method.packnet.prune_ratio", "must lie in [0, 1)")
    need(0.0 <= cfg.method.cpg.max_sparsity < 1.0, "method.cpg.max_sparsity", "must lie in [0, 1)")
    goal = cfg.method.cpg.accuracy_goal
    need(goal is None or 0.0 < goal <= 1.0, "method.cpg.accuracy_goal", "must lie in (0, 1]")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        need(getattr(cfg.train, key) >= 1, f"train.{key}", "must be at least 1")
    for key in ("lr", "mask_lr"):
        need(getattr(cfg.train, key) > 0, f"train.{key}", "must be positive")
    for key in ("token_dim", "num_latents", "latent_dim", "depth", "cross_heads", "cross_dim_head",
                "latent_heads", "latent_dim_head", "queries_dim"):
        need(getattr(cfg.model, key) >= 1, f"model.{key}", "must be at least 1")
    names = [t.name for t in cfg.tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    need(not dup, "tasks", f"task names must be unique, repeated: {dup}")
    for i, t in enumerate(cfg.tasks):
        need(not (t.superclass and t.classes), f"tasks[{i}]", "give either superclass or classes, not both")


def parse_config(data: Any, source: str = "config") -> RunConfig:
    try:
        cfg = from_mapping(RunConfig, data, "")
        _check(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    return parse_config(data if data is not None else {}, str(path))


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
