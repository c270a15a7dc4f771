"""The README is an index and the docs hold: every relative link and anchor resolves, every `crossback`
command names a real subcommand and real flags, every module, script and example a page names exists,
the generated pages are current, and the README's Python example runs."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crossback.app.cli import build_parser
from test_layering import LAYERS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code(text: str) -> list[str]:
    """Inline code spans, indented code lines and fenced code lines of a page."""
    spans = re.findall(r"`([^`\n]+)`", text)
    indented = re.findall(r"^ {4}(\S.*)$", text, flags=re.M)
    fenced = [line for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)
              for line in block.splitlines()]
    return spans + indented + fenced


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} points at nothing"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: no heading for #{anchor} in {dest.name}"


def _subparsers(parser) -> dict:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def _commands(text: str) -> list[str]:
    out = []
    for code in _code(text):
        for m in re.finditer(r"(?:^|[\s(])crossback ((?:[a-z][\w-]*)(?:[^|;&#`]*))", code):
            out.append(m.group(1).strip())
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_crossback_command_named_exists_with_its_flags(page):
    root = build_parser()
    commands = _commands(page.read_text(encoding="utf-8"))
    for command in commands:
        words, parser = command.split(), root
        while words and words[0] in _subparsers(parser):
            parser = _subparsers(parser)[words.pop(0)]
        assert parser is not root, f"{page.name}: `crossback {command}` names no subcommand"
        known = {s for a in parser._actions for s in a.option_strings}
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command):
            assert flag in known, f"{page.name}: `crossback {command}`: {flag} is not a flag of it"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_module_script_and_file_a_page_names_exists(page):
    text = page.read_text(encoding="utf-8")
    for code in _code(text):
        for module in re.findall(r"python3? -m (crossback[\w.]*)", code):
            assert importlib.util.find_spec(module) is not None, f"{page.name}: no module {module}"
        for script in re.findall(r"python3? ((?:benchmarks|examples|proto|docker)/[\w/.-]+\.py)", code):
            assert (ROOT / script).is_file(), f"{page.name}: no script {script}"
    folders = "examples|benchmarks|docker|docs|tests|" + "|".join(("proto", *LAYERS))
    for path in re.findall(rf"`((?:{folders})/[\w/.-]+\.(?:yaml|yml|py|json|md|proto|sh))`", text):
        assert (ROOT / path).exists(), f"{page.name}: names {path}, which does not exist"
    packages = "|".join(LAYERS)
    for dotted in set(re.findall(rf"\bcrossback\.(?:{packages})\.[A-Za-z_][\w.]*\w", text)):
        assert _resolves(dotted), f"{page.name}: names {dotted}, which is no module or attribute"


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a module of crossback, or an attribute reached from one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        module = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj = importlib.import_module(module)
            for name in parts[cut:]:
                if not hasattr(obj, name):
                    return False
                obj = getattr(obj, name)
            return True
    return False


def test_the_readme_is_an_index_with_install_and_first_run_on_the_first_screen():
    lines = README.splitlines()
    assert len(lines) <= 250
    first_run = next(i for i, line in enumerate(lines) if "crossback demo --out" in line and "pip install" in line)
    assert first_run < 40
    for folder in ("config", "models", "data", "transfer", "orchestrator_free", "node", "bench", "app", "proto"):
        assert f"`{folder}/`" in README, f"the folder map does not list {folder}/"
    assert " -> ".join(reversed(LAYERS)) in README, "the README's layering arrow is not tests/test_layering.LAYERS"
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", README))
    assert linked == {f"docs/{p.name}" for p in PAGES[1:]}, "every docs page is linked from the README, and only those"
    assert README.count("@inproceedings") + README.count("@misc") == 4  # the four papers implemented


def test_the_readme_python_example_runs(tmp_path):
    (example,) = re.findall(r"^```python\n(.*?)^```", README[README.index("## Python API"):], flags=re.M | re.S)[:1]
    assert len(example.splitlines()) <= 16
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    accuracies = eval(out.stdout.strip().splitlines()[-1])  # a dict literal of task -> accuracy
    assert set(accuracies) == {"low", "high"} and all(0.5 < a <= 1.0 for a in accuracies.values())


def test_the_config_reference_is_generated_from_the_dataclasses():
    from crossback.config.reference import PAGE, render

    assert PAGE.read_text(encoding="utf-8") == render(), "stale: run python -m crossback.config.reference"
    text = PAGE.read_text(encoding="utf-8")
    for key in ("`selection.shortlist`", "`node.expensive.memory_mib`", "`transfer.mona.outer_batches`",
                "`CROSSBACK_NODE_ID`", "`nodes[].shots`"):
        assert key in text, key


def test_the_link_checker_catches_a_dead_link_and_a_bad_flag(tmp_path):
    assert _commands("run `crossback demo --out x` then\n\n    crossback bench transfer --quick\n") == [
        "demo --out x", "bench transfer --quick"]
    assert _slug("Measuring transfer: `crossback bench transfer`") == "measuring-transfer-crossback-bench-transfer"
    page = tmp_path / "p.md"
    page.write_text("[x](missing.md) `crossback demo --no-such-flag`\n")
    with pytest.raises(AssertionError, match="points at nothing"):
        test_every_relative_link_and_anchor_resolves(page)
    with pytest.raises(AssertionError, match="--no-such-flag is not a flag"):
        test_every_crossback_command_named_exists_with_its_flags(page)
