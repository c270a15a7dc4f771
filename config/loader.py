"""Strict YAML -> frozen dataclasses: every unknown key, wrong type or out-of-bounds value is an error
naming its dotted path, with a suggestion or the place where that key belongs."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .bounds import field_violation
from .data import TaskSpec
from .errors import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, homes=None, moved=None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, path, homes, moved)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (inner, _ellipsis) = typing.get_args(tp)
        if inner is TaskSpec:
            if not value:
                raise ConfigError(f"{path}: expected a non-empty list of tasks")
            return tuple(_task(v, f"{path}[{i}]", homes, moved) for i, v in enumerate(value))
        return tuple(_convert(v, inner, f"{path}[{i}]", homes, moved) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, path, homes, moved)
    if tp is dict:  # a free-form section another schema checks (a scenario's node-config overrides)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return value
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


def _task(value: Any, path: str, homes=None, moved=None) -> TaskSpec:
    if isinstance(value, str):
        return TaskSpec(value)
    return from_mapping(TaskSpec, value, path, homes, moved)


def key_paths(roots: dict[str, type]) -> dict[str, list[str]]:
    """Every key of a schema by its last name -> the dotted paths where it is valid."""
    homes: dict[str, list[str]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}.{f.name}" if prefix else f.name
            homes.setdefault(f.name, []).append(path)
            inner = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if dataclasses.is_dataclass(a)]
            for sub in inner:
                walk(sub, path)

    for prefix, cls in roots.items():
        walk(cls, prefix)
    return homes


def _unknown_key(key: str, where: str, known: list[str], homes: dict[str, list[str]] | None,
                 moved: dict[str, str] | None) -> ConfigError:
    if moved and where in moved:
        return ConfigError(f"key {where!r} has moved: write it as {moved[where]!r}")
    elsewhere = [p for p in (homes or {}).get(str(key), []) if p != where]
    if elsewhere:
        return ConfigError(f"key {where!r} is misplaced: it belongs at {' or '.join(repr(p) for p in elsewhere)}")
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
    return ConfigError(f"unknown key {where!r}{hint}")


def from_mapping(cls: type, data: Any, path: str, homes: dict[str, list[str]] | None = None,
                 moved: dict[str, str] | None = None) -> Any:
    """Build ``cls`` from a mapping, strictly. ``homes`` (see ``key_paths``) lets an unknown key say where
    it belongs; ``moved`` maps old dotted keys to their new place."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise _unknown_key(key, where, list(fields), homes, moved)
        kwargs[key] = _convert(value, hints[key], where, homes, moved)
        problem = field_violation(fields[key], kwargs[key])
        if problem:
            raise ConfigError(f"{where}: {problem}")
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{path + '.' if path else ''}{missing[0]}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from exc


def read_yaml(path: Path, what: str = "config") -> Any:
    """A YAML file's content ({} when empty); unreadable files and bad YAML name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    return {} if data is None else data
