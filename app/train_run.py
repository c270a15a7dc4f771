"""`crossback train`: one device's task sequence, in-process, resumable from its checkpoints."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from crossback.config.errors import ConfigError
from crossback.config.run import RunConfig, config_to_dict, parse_config
from crossback.data.prepare import prepare_tasks
from crossback.data.tasks import data_warnings
from crossback.models.cl_metrics import summarize
from crossback.models.learner import ContinualLearner, new_learner
from crossback.models.methods import learn_task
from crossback.models.metric_log import MetricLog
from crossback.models.persistence import (
    clean_leftovers,
    latest_checkpoint,
    latest_intact_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from crossback.models.task_data import TaskData
from crossback.models.training import evaluate
from crossback.node.devices import resolve_device

CONFIG_FILE, METRICS_FILE, METRICS_CSV, CHECKPOINTS = "config.json", "metrics.json", "metrics.csv", "checkpoints"


def _check_resume(out: Path, cfg: RunConfig) -> None:
    """A run folder resumes only the run that made it: same settings, same leading tasks. A folder
    without a finished checkpoint (a first run interrupted early) holds nothing to protect."""
    path = out / CONFIG_FILE
    if not path.exists() or latest_checkpoint(out / CHECKPOINTS) is None:
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    new = config_to_dict(cfg)
    changed = sorted(k for k in set(old) | set(new) if k != "tasks" and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(f"{out} was started with different settings ({', '.join(changed)}); use a new --out")
    shared = min(len(old["tasks"]), len(new["tasks"]))
    if old["tasks"][:shared] != new["tasks"][:shared]:
        raise ConfigError(f"{out} was started with tasks {[t['name'] for t in old['tasks']]}; "
                          "the config may only append tasks")


def _progress_bar(task: str, index: int, total_tasks: int, enabled: bool, log: MetricLog):
    bar = tqdm(desc=f"task {index + 1}/{total_tasks} {task}", unit="ep", file=sys.stderr,
               disable=not enabled, leave=True, dynamic_ncols=True)

    def update(phase: str, epoch: int, epochs: int, loss: float, accuracy: float) -> None:
        log.epoch(index, loss, accuracy)
        bar.set_postfix_str(f"{phase} {epoch}/{epochs} loss {loss:.3f}")
        bar.update(1)

    return bar, update


def scratch_accuracy(cfg: RunConfig, data: TaskData) -> float:
    """Test accuracy of the same method and seed trained on this task alone."""
    learner = new_learner(cfg)
    learn_task(learner, data, cfg.method, cfg.train)
    return evaluate(learner, 0, data.test, cfg.train.eval_batch_size)


def metrics_payload(cfg: RunConfig, learner: ContinualLearner, infos: list[dict], rows: list[list[float]],
                    scratch: list[float] | None, seconds: float) -> dict:
    T = len(cfg.tasks)
    done = len(rows)
    matrix = [row + [None] * (T - len(row)) for row in rows]
    summary = summarize([r[:done] for r in matrix], scratch[:done] if scratch is not None else None) if done else {}
    payload = {
        "method": cfg.method.name,
        "modality": cfg.data.modality,
        "source": cfg.data.source,
        "seed": cfg.seed,
        "tasks": [{"name": i["name"], "num_classes": len(i["classes"]), "classes": i["classes"],
                   "dropped_classes": i["dropped_classes"], "samples": i["samples"]} for i in infos],
        "finished_tasks": done,
        "accuracy_matrix": matrix,
        "chance": [1.0 / len(i["classes"]) for i in infos],
        "majority": [i["majority"] for i in infos],
        "warnings": data_warnings(infos),
        "average_accuracy": summary.get("average_accuracy"),
        "bwt": summary.get("bwt"),
        "forgetting": summary.get("forgetting"),
        "forward_transfer": summary.get("forward_transfer"),
        "scratch_accuracy": scratch,
        "task_events": [t.events for t in learner.tasks],
        "parameters": {"shared": sum(l.weight.numel() for l in learner.layers.values()),
                       "free_fraction": learner.free_fraction()},
        "seconds": seconds,
    }
    return payload


def writer_gone(pid: int) -> bool:
    """Whether the process that wrote a temporary checkpoint folder is gone (or is this one: a container
    restarted under the same pid)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def run_training(cfg: RunConfig, out: Path, progress: bool = True, log=print, device: str = "cpu",
                 tensorboard: Path | None = None) -> dict:
    """Learn the config's tasks into ``out`` (resuming what it holds): checkpoints, metrics.json and
    metrics.csv (Avalanche's metric names, models.metric_log), and with ``tensorboard`` event files there."""
    out = Path(out)
    target = resolve_device(device, "--device")
    _check_resume(out, cfg)
    tasks, infos = prepare_tasks(cfg)
    for warning in data_warnings(infos):
        log(f"warning: {warning}")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / CONFIG_FILE, config_to_dict(cfg))
    ckpt_root = out / CHECKPOINTS
    for done in clean_leftovers(ckpt_root, writer_gone):
        log(f"{done} (left by a killed run)")
    intact = latest_intact_checkpoint(ckpt_root, lambda exc, moved: log(f"warning: {exc}; moved to {moved}"))
    if intact is not None:
        latest, learner, state = intact
        learner.to(target)
        rows, scratch, seconds = state["accuracy_matrix"], state.get("scratch_accuracy"), state["seconds"]
        history = state.get("metric_rows", [])
        log(f"resuming from {latest} ({len(learner.tasks)} finished task(s))")
    else:
        learner, rows, scratch, seconds = new_learner(cfg).to(target), [], ([] if cfg.eval.scratch_baseline else None), 0.0
        history = []
    metrics = metrics_payload(cfg, learner, infos, rows, scratch, seconds)
    curves = MetricLog(out / METRICS_CSV, tensorboard, history)
    try:
        for i in range(len(learner.tasks), len(tasks)):
            started = time.perf_counter()
            data = tasks[i]
            bar, update = _progress_bar(data.name, i, len(tasks), progress, curves)
            learn_task(learner, data, cfg.method, cfg.train, update)
            bar.total = bar.n
            bar.close()
            rows.append([evaluate(learner, j, tasks[j].test, cfg.train.eval_batch_size) for j in range(i + 1)])
            if scratch is not None:
                scratch.append(scratch_accuracy(cfg, data))
            seconds += time.perf_counter() - started
            curves.task_done(rows, scratch)
            save_checkpoint(ckpt_root, learner, {"accuracy_matrix": rows, "scratch_accuracy": scratch, "seconds": seconds,
                                                 "metric_rows": curves.rows})
            metrics = metrics_payload(cfg, learner, infos, rows, scratch, seconds)
            write_json_atomic(out / METRICS_FILE, metrics)
            log(f"task {i + 1}/{len(tasks)} {data.name!r}: " + ", ".join(f"{a:.3f}" for a in rows[-1]))
    finally:
        curves.close()
    return metrics


def run_config(out: Path) -> RunConfig:
    """The resolved config of a run folder (``crossback train --out``) or a node's state folder."""
    path = Path(out) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{out} holds no {CONFIG_FILE}: give a crossback train --out folder or a node's state_dir")
    return parse_config(json.loads(path.read_text(encoding="utf-8")), str(path))


def load_run(out: Path) -> tuple[RunConfig, Path, ContinualLearner, dict]:
    """(config, latest checkpoint folder, its learner verified against its digests, its run state)."""
    cfg = run_config(out)
    latest = latest_checkpoint(Path(out) / CHECKPOINTS)
    if latest is None:
        raise FileNotFoundError(f"{Path(out) / CHECKPOINTS} holds no finished checkpoint")
    learner, state = load_checkpoint(latest)
    return cfg, latest, learner, state


def evaluate_run(out: Path) -> tuple[list[float], list[float]]:
    """Reload the latest checkpoint of a run folder (``crossback train --out``) or of a node's state
    folder (``node.state_dir``: the same layout) and re-score every task on its test split.

    Returns (recomputed, reported) test accuracies of the last finished row.
    """
    cfg, _, learner, state = load_run(out)
    tasks, _ = prepare_tasks(cfg)
    recomputed = [evaluate(learner, j, tasks[j].test, cfg.train.eval_batch_size) for j in range(len(learner.tasks))]
    return recomputed, state["accuracy_matrix"][-1]
