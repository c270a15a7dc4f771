"""The README's two set-up commands are what users and CI actually run."""
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def readme_commands() -> list[str]:
    """The venv commands of the README's set-up section (later sections have their own, e.g. Jetson)."""
    text = (ROOT / "README.md").read_text()
    setup = text[text.index("## Set up"):]
    setup = setup[: setup.index("\n## ", 1)]
    return re.findall(r"^    (python3 -m venv .+)$", setup, flags=re.M)


def test_readme_opens_with_two_setup_commands_that_install_torch_first():
    commands = readme_commands()
    assert len(commands) == 2
    for cmd in commands:
        installs = [m.start() for m in re.finditer(r"pip install", cmd)]
        assert cmd.find("pip install torch==2.13.0") == installs[0]
    assert "crossback demo --out" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_examples_exist():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for config in re.findall(r"`(\w+\.yaml)`", page.read_text()):
            if config not in ("node.yaml",):
                assert (ROOT / "examples" / config).is_file(), f"{page.name}: {config}"


def test_benchmarks_worth_section_is_rendered_from_the_committed_bench_results():
    from crossback.bench.readme import BEGIN, END, PAGE, render

    text = PAGE.read_text()
    block = text[text.index(BEGIN) + len(BEGIN) + 1 : text.index(END)]
    assert block == render()
    assert (ROOT / "benchmarks" / "results" / "starved.json").is_file()
