"""A transfer benchmark's numbers as a CSV beside results.json (one row per value) and, with a folder,
TensorBoard event files (one run per receiver, shots and seed; step: the receiver's task index), under
the names models.metric_log uses: each arm's test accuracy, each candidate's selection scores."""
from __future__ import annotations

import csv
from pathlib import Path

from crossback.models.metric_log import selection_rows, summary_writer

from .report import unit_arms

HEADER = ("seed", "receiver", "shots", "task", "index", "metric", "value")


def unit_rows(record: dict) -> list[tuple[str, float]]:
    """(metric, value) of one unit: every arm's accuracy, every candidate's scores and adapted accuracy."""
    rows = [(f"Top1_Acc_Exp/eval_phase/test_stream/{arm}", value) for arm, value in unit_arms(record).items()
            if isinstance(value, (int, float))]
    rows += [(name, value) for name, _, _, value in selection_rows(record["index"], record)
             if name.startswith("Selection/")]
    rows += [(f"Transfer/Top1_Acc/{c['peer']}", c["test"]) for c in record["candidates"]
             if c.get("error") is None and isinstance(c.get("test"), (int, float))]
    return rows


def write_curves(records: list[dict], out: Path, tensorboard: Path | None = None) -> None:
    writers = {}
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        table = csv.writer(f)
        table.writerow(HEADER)
        for r in sorted(records, key=lambda r: (r["receiver"], r["shots"], r["seed"], r["index"])):
            run = f"{r['receiver']}-{r['shots']}shots/seed{r['seed']}"
            if tensorboard is not None and run not in writers:
                writers[run] = summary_writer(Path(tensorboard) / run)
            for metric, value in unit_rows(r):
                table.writerow((r["seed"], r["receiver"], r["shots"], r["task"], r["index"], metric, value))
                if run in writers:
                    writers[run].add_scalar(metric, value, r["index"])
    for writer in writers.values():
        writer.close()
