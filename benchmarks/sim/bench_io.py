"""What the simulation benchmarks share: one report per seed (or the ones a folder already holds), and the
result printed as its markdown and written as JSON."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from crossback.sim.simulate import simulate


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seeded_reports(scenario: Path, out: Path, seeds: int, reuse: bool) -> list[dict]:
    """``scenario`` run once per seed into OUT/seed-N (with ``reuse``: the reports already there)."""
    reports = []
    for seed in range(seeds):
        folder = out / f"seed-{seed}"
        if reuse:
            reports.append(json.loads((folder / "report.json").read_text()))
        else:
            reports.append(simulate(scenario, folder, seed=seed, log=log))
    return reports


def emit(result: dict, path: Path | None) -> int:
    """Print the result's markdown; write the whole result to ``path`` as JSON when given."""
    print(result["markdown"])
    if path:
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0
