"""`crossback swarm --compare`: the same swarm run once per kept arm and seed, so claims rest on seeds.

Each run is a full demo swarm whose nodes keep one arm (none / random / selected / oracle) for every
task; the table reports the mean ± std over seeds of the swarm's final average accuracy (mean over
nodes of their last accuracy-matrix row).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import ConfigError, from_mapping
from .demo import run_demo

ARMS = ("none", "random", "selected", "oracle")


@dataclass(frozen=True)
class SwarmConfig:
    nodes: int = 4
    epochs: int = 30
    adapt_epochs: int = 8
    timeout: float = 280.0


def load_swarm_config(path: Path) -> SwarmConfig:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read swarm config: {exc}") from exc
    try:
        cfg = from_mapping(SwarmConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if cfg.nodes < 2:
        raise ConfigError(f"{path}: nodes: a swarm needs at least 2")
    return cfg


def compare(cfg: SwarmConfig, arms: list[str], seeds: list[int], out: Path, log=print) -> dict:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"--compare: unknown arm(s) {unknown}; choose from {list(ARMS)}")
    runs = []
    for seed in seeds:
        for arm in arms:
            run_dir = Path(out) / f"seed-{seed}" / f"keep-{arm}"
            summary = run_demo(run_dir, seed=seed, nodes=cfg.nodes, epochs=cfg.epochs, adapt_epochs=cfg.adapt_epochs,
                               timeout=cfg.timeout, log=lambda m: None, keep=arm)
            runs.append({"seed": seed, "arm": arm, "average_accuracy": summary["average_accuracy"],
                         "run_dir": str(run_dir)})
            log(f"seed {seed} keep {arm}: average accuracy {summary['average_accuracy']:.3f}")
    table = {}
    for arm in arms:
        values = [r["average_accuracy"] for r in runs if r["arm"] == arm]
        table[arm] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "seeds": len(values)}
    result = {"config": vars(cfg), "seeds": seeds, "runs": runs, "table": table}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def render(result: dict) -> str:
    lines = [f"{'arm':<10} {'mean':>7} {'std':>7} seeds", "-" * 32]
    for arm, row in result["table"].items():
        lines.append(f"{arm:<10} {row['mean']:>7.3f} {row['std']:>7.3f} {row['seeds']:>5}")
    return "\n".join(lines)
