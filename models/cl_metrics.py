"""Continual-learning metrics over the accuracy matrix (GEM / Avalanche conventions).

``R[i][j]`` is the test accuracy on task j after learning task i; entries with j > i are ``None``
(task-incremental: task j has no head yet). With T tasks:

- average accuracy  ACC = mean_j R[T-1][j]
- backward transfer BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])          (negative = forgetting)
- forgetting        F   = mean_{j<T-1} (max_{j<=l<T-1} R[l][j] - R[T-1][j])
- forward transfer  FWT = mean_{j>=1} (R[j][j] - S[j]), S[j] = accuracy of a model trained on task j
  alone from scratch. Task 0 is left out: it is learned from scratch by definition.
"""
from __future__ import annotations

Matrix = list[list[float | None]]


def _check(R: Matrix) -> int:
    T = len(R)
    if T == 0:
        raise ValueError("accuracy matrix is empty")
    for i, row in enumerate(R):
        if len(row) != T:
            raise ValueError(f"row {i} has {len(row)} entries, expected {T}")
        if any(row[j] is None for j in range(i + 1)):
            raise ValueError(f"row {i} lacks an accuracy for a task already learned")
    return T


def average_accuracy(R: Matrix) -> float:
    T = _check(R)
    return sum(R[T - 1]) / T


def backward_transfer(R: Matrix) -> float | None:
    T = _check(R)
    if T < 2:
        return None
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forgetting(R: Matrix) -> float | None:
    T = _check(R)
    if T < 2:
        return None
    return sum(max(R[l][j] for l in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)


def forward_transfer(R: Matrix, scratch: list[float]) -> float | None:
    T = _check(R)
    if len(scratch) != T:
        raise ValueError(f"{len(scratch)} from-scratch accuracies for {T} tasks")
    if T < 2:
        return None
    return sum(R[j][j] - scratch[j] for j in range(1, T)) / (T - 1)


def summarize(R: Matrix, scratch: list[float] | None = None) -> dict:
    return {
        "accuracy_matrix": R,
        "average_accuracy": average_accuracy(R),
        "bwt": backward_transfer(R),
        "forgetting": forgetting(R),
        "forward_transfer": forward_transfer(R, scratch) if scratch is not None else None,
        "scratch_accuracy": scratch,
    }
