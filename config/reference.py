"""The config reference page (docs/config-reference.md), generated from the config dataclasses: every key
with its type, default, allowed values and the comment written beside it in the source.

    python -m crossback.config.reference          # rewrite docs/config-reference.md
    python -m crossback.config.reference --check  # exit 1 if the committed page is stale
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from pathlib import Path

from .bench import BenchConfig
from .bounds import BOUNDS
from .data import TaskSpec
from .node import ENV_VARS, NESTED_ENV, SECTIONS
from .run import RunConfig
from .scenario import Scenario

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
INTRO = """# Config reference

Generated from the config dataclasses (`crossback/config/`) by `python -m crossback.config.reference`; a
test fails when this page is stale. Every key is checked when a file is loaded: an unknown key, a wrong
type or a value outside the range below stops the run naming the file and the dotted key. How the
sections fit together: [config](config.md); running a node: [node](node.md).
"""


def field_comments(cls: type) -> dict[str, str]:
    """The comment lines right above a field and the comment at the end of its line, by field name
    (a field inherited from a base dataclass has the base's comment)."""
    out = {}
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        out |= _own_comments(base)
    return out


def _own_comments(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, i = [], node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            above.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        own = lines[node.end_lineno - 1]
        trailing = own.split("  # ", 1)[1].strip() if "  # " in own else ""
        out[node.target.id] = " ".join(above + ([trailing] if trailing else []))
    return out


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if args[0] is TaskSpec:
            return "list of tasks (a name, or {name, superclass} or {name, classes})"
        return f"list of {_type_name(args[0])}"
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in rest) + " or null"
    if args:
        return " or ".join(_type_name(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "section"
    return {str: "string", int: "integer", float: "number", bool: "true/false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return f"{value}"


def _allowed(f: dataclasses.Field) -> str:
    bounds = f.metadata.get(BOUNDS)
    if bounds is None:
        return ""
    if bounds.choices is not None:
        return ", ".join("null" if c is None else str(c) for c in bounds.choices)
    parts = [f"{op} {v}" for op, v in ((">=", bounds.ge), (">", bounds.gt), ("<=", bounds.le), ("<", bounds.lt))
             if v is not None]
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_rows(cls: type, prefix: str, out: list[tuple[str, type]]) -> list[str]:
    """Table rows of ``cls``'s plain keys; its sub-sections are appended to ``out`` to render after it."""
    hints, notes = typing.get_type_hints(cls), field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        sub = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if dataclasses.is_dataclass(a)]
        if sub and typing.get_origin(hints[f.name]) is not tuple:
            out.append((path, sub[0]))
            continue
        if sub and sub[0] is not TaskSpec:  # a list of sections: each entry's keys below, as path[].key
            out.append((f"{path}[]", sub[0]))
        rows.append(f"| `{path}` | {_type_name(hints[f.name])} | `{_default(f)}` | {_cell(_allowed(f))} | "
                    f"{_cell(notes.get(f.name, ''))} |")
    return rows


def render_root(title: str, root: type, prefix: str = "") -> list[str]:
    out = [f"## {title}", ""]
    pending: list[tuple[str, type]] = [(prefix, root)]
    while pending:
        path, cls = pending.pop(0)
        found: list[tuple[str, type]] = []
        rows = section_rows(cls, path, found)
        if rows:
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ and not cls.__doc__.startswith(
                cls.__name__ + "(") else ""
            out += [f"### `{path or '(top level)'}` ({cls.__name__})", ""]
            out += [doc, ""] if doc else []
            out += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|", *rows, ""]
        pending = found + pending
    return out


def render() -> str:
    lines = [INTRO, *render_root("Run config (`crossback train`, and the top of every node config)", RunConfig)]
    for name, cls in SECTIONS.items():
        lines += render_root(f"Node section `{name}:`", cls, name)
    lines += ["## Environment variables (`crossback node`)", "",
              "Precedence: command-line flags, then these variables, then the file.", "",
              "| variable | key |", "|---|---|",
              *(f"| `{var}` | `node.{NESTED_ENV.get(key, key)}` |" for key, var in ENV_VARS.items()), ""]
    lines += render_root("Benchmark config (`crossback bench transfer`)", BenchConfig)
    lines += render_root("Scenario (`crossback simulate`; docs/simulation.md)", Scenario)
    return "\n".join(lines).rstrip() + "\n"


def write_or_check(page: Path, text: str, argv: list[str] | None, how: str) -> int:
    """The command line of a generated page: write ``text`` to ``page``, or with ``--check`` exit 1 (saying
    ``how`` to regenerate it) when the committed page differs. Shared by every generated page."""
    parser = argparse.ArgumentParser(description=f"write or check {page.name}")
    parser.add_argument("--check", action="store_true")
    if parser.parse_args(argv).check:
        if not page.exists() or page.read_text(encoding="utf-8") != text:
            print(f"{page} is stale: run {how}", file=sys.stderr)
            return 1
        return 0
    page.write_text(text, encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    return write_or_check(PAGE, render(), argv, "python -m crossback.config.reference")

if __name__ == "__main__":
    sys.exit(main())
