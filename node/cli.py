"""The `crossback` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crossback.data.catalog import DataError

from .checkpoint import CheckpointError
from .config import ConfigError, load_config


def _train(args: argparse.Namespace) -> int:
    from .train_run import run_training

    cfg = load_config(args.config)
    metrics = run_training(cfg, args.out, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    print(f"average accuracy {metrics['average_accuracy']:.3f}  bwt {_fmt(metrics['bwt'])}  "
          f"forgetting {_fmt(metrics['forgetting'])}  ({metrics['seconds']:.1f}s)")
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .train_run import evaluate_run

    recomputed, reported = evaluate_run(args.run_dir)
    for j, (a, b) in enumerate(zip(recomputed, reported)):
        print(f"task {j}: reloaded {a:.6f}  reported {b:.6f}  {'ok' if a == b else 'MISMATCH'}")
    return 0 if recomputed == reported else 1


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossback", description="Decentralized cross-modal continual learning")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="learn one device's task sequence in-process")
    train.add_argument("--config", required=True, type=Path, help="YAML run config (see examples/)")
    train.add_argument("--out", required=True, type=Path, help="run folder; re-running resumes it")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=_train)
    ev = sub.add_parser("evaluate", help="reload a run's latest checkpoint and re-score its tasks")
    ev.add_argument("run_dir", type=Path)
    ev.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as exc:
        print(f"crossback {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last finished task's checkpoint is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
