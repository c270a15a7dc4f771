"""`crossback swarm --compare`: the demo swarm once per seed, arms compared per task, paired.

Every node already runs every arm (none / random / selected, and oracle with it) from the same M_loc
with the same seed and budget for each of its tasks, so the comparison is made *inside* each task:
the difference of an arm to ``none`` per (node, task, seed), with a bootstrap CI over those units.
(Separate whole-swarm runs per arm would compare different candidates, since who has finished what
depends on timing.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from crossback.app.demo import run_demo
from crossback.app.selections import selection_rows
from crossback.bench.stats import summary as paired_summary
from crossback.config.bounds import bounded
from crossback.config.errors import ConfigError
from crossback.config.loader import from_mapping, read_yaml

ARMS = ("none", "random", "selected", "oracle")


@dataclass(frozen=True)
class SwarmConfig:
    nodes: int = bounded(4, ge=2, le=64)
    epochs: int = bounded(30, ge=1, le=100_000)
    adapt_epochs: int = bounded(8, ge=0, le=100_000)
    timeout: float = bounded(280.0, gt=0.0, le=86_400.0)
    resamples: int = bounded(10_000, ge=100, le=1_000_000)  # bootstrap resamples of the paired CIs


def load_swarm_config(path: Path) -> SwarmConfig:
    data = read_yaml(path, "swarm config")
    try:
        return from_mapping(SwarmConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def compare(cfg: SwarmConfig, arms: list[str], seeds: list[int], out: Path, log=print) -> dict:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"--compare: unknown arm(s) {unknown}; choose from {list(ARMS)}")
    units = []
    for seed in seeds:
        run_dir = Path(out) / f"seed-{seed}"
        summary = run_demo(run_dir, seed=seed, nodes=cfg.nodes, epochs=cfg.epochs, adapt_epochs=cfg.adapt_epochs,
                           timeout=cfg.timeout, log=lambda m: None, oracle="oracle" in arms)
        rows = [r for r in selection_rows(run_dir) if r["none"] is not None]
        units += [{"seed": seed, "node": r["node"], "task": r["task"], **{a: r[a] for a in ARMS if r.get(a) is not None}}
                  for r in rows]
        log(f"seed {seed}: {len(rows)} task(s) compared, swarm average accuracy {summary['average_accuracy']:.3f}")
    table = {}
    for arm in arms:
        pairs = [(u[arm], u["none"]) for u in units if arm in u]
        table[arm] = {"accuracy": sum(a for a, _ in pairs) / len(pairs) if pairs else None,
                      "vs_none": paired_summary([a - b for a, b in pairs], cfg.resamples, 0.95) if arm != "none" else None,
                      "units": len(pairs)}
    result = {"config": vars(cfg), "seeds": seeds, "units": units, "table": table}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def render(result: dict) -> str:
    lines = [f"{'arm':<10} {'accuracy':>8}  {'paired diff to none [95% CI]':<30} {'win/loss':>8} units",
             "-" * 66]
    for arm, row in result["table"].items():
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        d = row["vs_none"]
        diff = "-" if not d or not d["n"] else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        wl = "-" if not d or not d["n"] else f"{d['wins']}/{d['losses']}"
        lines.append(f"{arm:<10} {acc:>8}  {diff:<30} {wl:>8} {row['units']:>5}")
    return "\n".join(lines)
