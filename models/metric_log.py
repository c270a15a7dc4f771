"""A run's learning curves and continual-learning metrics under Avalanche's metric names: a CSV (one
row per value: ``metric,training_exp,epoch,value``) and, given a folder, TensorBoard event files.

Names, as Avalanche's loggers write them (a task is one experience, its task label its index):

- per epoch: ``Loss_Epoch/train_phase/train_stream/Task000``, ``Top1_Acc_Epoch/train_phase/train_stream/Task000``
  (step: epochs trained so far, over every task);
- after each task (step: the experience just trained): ``Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000``
  for every task learned so far (a column of the accuracy matrix), ``Top1_Acc_Stream/eval_phase/test_stream``
  (their mean), ``StreamForgetting``, ``StreamBWT``, ``StreamForwardTransfer`` (with from-scratch
  accuracies) and their ``Experience*`` values per earlier task (models.cl_metrics);
- a selection: ``Selection/<score>/<peer>`` per candidate and ``Transfer/Top1_Acc/<arm>`` per arm.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from crossback.config.errors import ConfigError

from .cl_metrics import summarize

HEADER = ("metric", "training_exp", "epoch", "value")
Row = tuple[str, int, "int | None", float]


def _task(j: int) -> str:
    return f"Task{j:03d}/Exp{j:03d}"


def eval_rows(matrix: list[list[float | None]], scratch: list[float] | None = None) -> list[Row]:
    """The values logged once task ``i = len(matrix) - 1`` is learned, from the accuracy matrix's rows so far."""
    i = len(matrix) - 1
    square = [[row[j] if j < len(row) else None for j in range(i + 1)] for row in matrix]
    stream = "eval_phase/test_stream"
    rows = [(f"Top1_Acc_Exp/{stream}/{_task(j)}", i, None, square[i][j]) for j in range(i + 1)]
    summary = summarize(square, scratch[: i + 1] if scratch is not None and len(scratch) > i else None)
    rows.append((f"Top1_Acc_Stream/{stream}", i, None, summary["average_accuracy"]))
    for name, key in (("StreamForgetting", "forgetting"), ("StreamBWT", "bwt"), ("StreamForwardTransfer",
                                                                                 "forward_transfer")):
        if summary.get(key) is not None:
            rows.append((f"{name}/{stream}", i, None, summary[key]))
    for j in range(i):
        rows.append((f"ExperienceForgetting/{stream}/{_task(j)}", i, None,
                     max(square[l][j] for l in range(j, i)) - square[i][j]))
        rows.append((f"ExperienceBWT/{stream}/{_task(j)}", i, None, square[i][j] - square[j][j]))
    if summary.get("forward_transfer") is not None:
        rows.append((f"ExperienceForwardTransfer/{stream}/{_task(i)}", i, None, square[i][i] - scratch[i]))
    return rows


def selection_rows(task: int, record: dict) -> list[Row]:
    """A node's ``backbone_selected`` or ``transfer_done`` event as rows: each scored candidate's scores, each arm's accuracy."""
    rows: list[Row] = []
    for cand in record.get("candidates") or []:
        for score, value in sorted((cand.get("scores") or {}).items()):
            if isinstance(value, (int, float)) and math.isfinite(value):
                rows.append((f"Selection/{score}/{cand.get('peer')}", task, None, float(value)))
    for arm, value in sorted((record.get("accuracy") or {}).items()):
        if isinstance(value, (int, float)):
            rows.append((f"Transfer/Top1_Acc/{arm}", task, None, float(value)))
    return rows


class MetricLog:
    """``history``: rows a resumed run already logged (the CSV is rewritten with them, TensorBoard
    drops what an interrupted run logged past them)."""

    def __init__(self, csv_path: Path | None, tensorboard: Path | None = None, history: list | None = None):
        self.rows: list[Row] = [tuple(r) for r in history or []]
        self.epochs = max((r[2] for r in self.rows if r[2] is not None), default=0)  # epochs so far: the step
        self._csv = None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._csv = open(csv_path, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._csv)
            self._writer.writerow(HEADER)
            self._writer.writerows(self.rows)
            self._csv.flush()
        self._tb = summary_writer(tensorboard, self.epochs + 1) if tensorboard is not None else None

    def add(self, rows: list[Row]) -> None:
        for row in rows:
            name, exp, epoch, value = row
            self.rows.append(row)
            if self._csv is not None:
                self._writer.writerow(row)
            if self._tb is not None:
                self._tb.add_scalar(name, value, epoch if epoch is not None else exp)
        if self._csv is not None:
            self._csv.flush()

    def epoch(self, task: int, loss: float, accuracy: float) -> None:
        """One training epoch of task ``task`` (models.training's progress)."""
        self.epochs += 1
        self.add([(f"Loss_Epoch/train_phase/train_stream/Task{task:03d}", task, self.epochs, loss),
                  (f"Top1_Acc_Epoch/train_phase/train_stream/Task{task:03d}", task, self.epochs, accuracy)])

    def task_done(self, matrix: list[list[float | None]], scratch: list[float] | None = None) -> None:
        self.add(eval_rows(matrix, scratch))
        if self._tb is not None:
            self._tb.add_text("accuracy_matrix", matrix_markdown(matrix), len(matrix) - 1)
            self._tb.flush()

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def matrix_markdown(matrix: list[list[float | None]]) -> str:
    """The accuracy matrix as a Markdown table (TensorBoard's text tab): row i, after learning task i."""
    width = max(len(r) for r in matrix)
    head = "| after \\ on | " + " | ".join(f"task {j}" for j in range(width)) + " |"
    lines = [head, "|" + "---|" * (width + 1)]
    for i, row in enumerate(matrix):
        cells = [f"{row[j]:.4f}" if j < len(row) and row[j] is not None else "" for j in range(width)]
        lines.append(f"| task {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_writer(folder: Path, purge_step: int = 0):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"--tensorboard {folder}: needs the tensorboard package "
                          "(pip install 'crossback[tensorboard]')") from None
    folder.mkdir(parents=True, exist_ok=True)
    # purge_step: events an interrupted run wrote past what its checkpoint kept are hidden from TensorBoard
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step if purge_step > 1 else None)
