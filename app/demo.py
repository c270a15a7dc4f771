"""`crossback demo`: a local swarm of real node processes on loopback, on the bundled emoji data, in
the regime where borrowing pays (see benchmarks/results/starved_genesis-backbone.md).

Half the nodes are data-rich *donors* (every item of three Unicode groups), half data-starved
*receivers* (the same groups from ``shots`` items per class), images and the same emoji's names
alternating. All start from one swarm genesis, serve K/V, DDV answers, their backbone and their finished
tasks, and borrow a backbone (``borrow: backbone``: the demo shows the selection; the default would take
the donor's very task, since a receiver learns the donors' groups), ranked by ``kv_motion_view`` and
confirmed by LogME. Donors start first (devices that joined the swarm earlier); receivers join once the
donors serve. Every node reports none / random / selected accuracies per task, and the
summary the paired gain of the receivers' selected arm over none with its bootstrap CI. Writes
DIR/summary.json, DIR/summary.png, DIR/logs/, DIR/state/, DIR/configs/.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from crossback.app.selections import selection_rows
from crossback.config.node import write_node_config
from crossback.models.metric_log import HEADER
from crossback.node.events import read_events
from crossback.node.launch import die_with_parent

GROUPS = ["Smileys & Emotion", "Travel & Places", "Objects"]
DEMO_MODEL = {"token_dim": 64, "num_latents": 24, "latent_dim": 64, "depth": 2, "cross_dim_head": 64,
              "latent_heads": 4, "latent_dim_head": 16, "queries_dim": 64}
SHOTS = 5  # items per class a receiver has, in train and in val


def node_plan(n: int) -> list[dict]:
    """The first n // 2 nodes are donors, the rest receivers; modalities alternate image / text within
    each role, and ids count per modality (4 nodes: donors img-0, txt-0; receivers img-1, txt-1)."""
    donors, count, plan = max(1, n // 2), {"image": 0, "text": 0}, []
    for i in range(n):
        role, j = ("donor", i) if i < donors else ("receiver", i - donors)
        modality = "image" if j % 2 == 0 else "text"
        plan.append({"node_id": f"{'img' if modality == 'image' else 'txt'}-{count[modality]}", "modality": modality,
                     "role": role, "tasks": list(GROUPS)})
        count[modality] += 1
    return plan


EXTRA_SERVE = {"mona": ["encoder", "outer_grad"], "freqkd": ["public_features"]}


def node_config(entry: dict, seed: int, epochs: int, adapt_epochs: int, keep: str = "selected",
                oracle: bool = False, adapt_own_weights: bool = True, genesis: int = 0, pretrained: bool = False,
                strategy: str = "crossback") -> dict:
    """One node's config. ``genesis`` and the item split are swarm-wide; ``seed`` is the node's own.
    ``pretrained``: frozen MiniLM / EfficientNet-Lite0 front ends (crossback[pretrained]). ``strategy``:
    every node's transfer strategy (mona: the nodes also lend their body's outer-loss gradient; freqkd: the
    swarm holds a public paired set out of its tasks and the nodes lend their features on it)."""
    receiver = entry.get("role") == "receiver"
    front = {"text": {"max_length": 16, "encoder": "minilm"}, "image": {"encoder": "efficientnet"}} if pretrained \
        else {"text": {"max_length": 48}}
    return {
        "seed": seed,
        "data": {"source": "emoji", "modality": entry["modality"], "split_seed": genesis,
                 **({"shots": SHOTS} if receiver else {}),
                 **({"split": {"public_fraction": 0.2}} if strategy == "freqkd" else {})},
        "tasks": entry["tasks"],
        "model": {**DEMO_MODEL, **front},
        "method": {"name": "packnet", "packnet": {"prune_ratio": 0.5, "retrain_epochs": 3}},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.002},
        "node": {"node_id": entry["node_id"], "heartbeat_interval": 0.5, "failure_timeout": 5.0, "threads": 1,
                 "serve": ["kv", "ddv", "backbone", "task"] + EXTRA_SERVE.get(strategy, [])},
        "swarm": {"genesis": genesis},
        "selection": {"scope": "cross", "score": "kv_motion_view", "shortlist": 2, "probe": {"seed": 0, "pair_count": 256, "token_count": 16}},
        "transfer": {"strategy": strategy, "borrow": "backbone"},
        "adaptation": {"epochs": adapt_epochs, "own_weights": adapt_own_weights},
        "experiment": {"keep": keep, "oracle": oracle or keep == "oracle"},
    }


def launch_node(cfg_path: Path, out: Path, node_id: str, listen: str, seeds: list[str],
                console=subprocess.DEVNULL) -> tuple[subprocess.Popen, Path]:
    """Start one `crossback node` process with its state and log under OUT; (process, its event log).

    ``console`` receives the node's console (None: this terminal). The node gets its own session, so a
    Ctrl-C reaches only us and we stop the nodes in order.
    """
    args = [sys.executable, "-m", "crossback.app.cli", "node", "--config", str(cfg_path), "--listen", listen,
            "--state-dir", str(out / "state" / node_id), "--log-dir", str(out / "logs")]
    if seeds:
        args += ["--seed-peers", ",".join(seeds)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=console, start_new_session=True,
                            preexec_fn=functools.partial(die_with_parent, os.getpid()))
    return proc, out / "logs" / f"{node_id}.jsonl"


def wait_for_event(proc: subprocess.Popen, log: Path, event: str, deadline: float) -> dict:
    while time.monotonic() < deadline:
        hits = [e for e in read_events(log) if e["event"] == event]
        if hits:
            return hits[-1]
        if proc.poll() is not None:
            raise ChildProcessError(f"node process {log.stem} exited with {proc.returncode} before {event}; see {log}")
        time.sleep(0.2)
    raise TimeoutError(f"no {event} in {log} in time")


def stop_nodes(procs) -> None:
    """SIGTERM every node (they stop at the next epoch boundary), SIGKILL what is still up after 20 s."""
    procs = [p for p, _ in procs]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(out: Path, seed: int = 0, nodes: int = 4, epochs: int = 30, adapt_epochs: int = 8,
             timeout: float = 280.0, log=print, keep: str = "selected", oracle: bool = False,
             adapt_own_weights: bool = True, pretrained: bool = False, strategy: str = "crossback",
             tensorboard: Path | None = None) -> dict:
    """The swarm demo into ``out``: configs, logs, state, summary.json and .png, and metrics.csv (every
    node's curves and selections, models.metric_log); ``tensorboard``: event files, one folder per node."""
    if nodes < 2:
        raise ValueError("a swarm needs at least 2 nodes")
    out = Path(out)
    started = time.monotonic()
    deadline = started + timeout
    plan = node_plan(nodes)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    procs, addresses = {}, []
    try:
        for role in ("donor", "receiver"):  # receivers join once the donors serve their last task
            joined = []
            for entry in (e for e in plan if e["role"] == role):
                cfg_path = out / "configs" / f"{entry['node_id']}.yaml"
                cfg = node_config(entry, seed + len(procs), epochs, adapt_epochs, keep, oracle, adapt_own_weights,
                                  genesis=seed, pretrained=pretrained, strategy=strategy)
                if tensorboard is not None:
                    cfg["node"]["tensorboard"] = str(Path(tensorboard) / entry["node_id"])
                write_node_config(cfg_path, cfg)
                with open(out / "logs" / f"{entry['node_id']}.stderr", "w") as console:
                    procs[entry["node_id"]] = launch_node(cfg_path, out, entry["node_id"], "127.0.0.1:0", addresses,
                                                          console)
                addresses.append(wait_for_event(*procs[entry["node_id"]], "node_started", deadline)["address"])
                joined.append(entry["node_id"])
                items = f"{SHOTS} items per class" if role == "receiver" else "all items"
                log(f"started {role} {entry['node_id']} ({entry['modality']}, {items}) at {addresses[-1]}: "
                    f"{', '.join(entry['tasks'])}")
            for node_id in joined:
                done = wait_for_event(*procs[node_id], "tasks_done", deadline)
                log(f"{node_id} finished {done['finished']} task(s)")
    finally:
        stop_nodes(procs.values())
    summary = summarize(out, plan, time.monotonic() - started)
    summary["examples"] = example_predictions(out, plan)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_summary(summary, out / "summary.png")
    combine_curves(out / "logs", [e["node_id"] for e in plan], out / "metrics.csv")
    return summary


def combine_curves(logs: Path, nodes: list[str], path: Path) -> None:
    """Every node's ``<node_id>.metrics.csv`` as one CSV with a ``node`` column first."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(("node", *HEADER))
        for node in nodes:
            source = logs / f"{node}.metrics.csv"
            if source.exists():
                with open(source, newline="", encoding="utf-8") as f:
                    writer.writerows((node, *row) for row in list(csv.reader(f))[1:])


def example_predictions(out: Path, plan: list[dict]) -> list[dict]:
    """Per receiver: the first test item of its last finished task, predicted from its state folder as
    `crossback predict` would (the folded model of the verified checkpoint)."""
    from crossback.app.predict import encode, load_task_model
    from crossback.app.train_run import CONFIG_FILE, run_config
    from crossback.data.sources import load_catalog
    from crossback.data.tasks import task_items, text_inputs
    from crossback.models.inference import classify

    examples = []
    for entry in (e for e in plan if e.get("role") == "receiver"):
        state = out / "state" / entry["node_id"]
        if not (state / CONFIG_FILE).exists():
            continue
        cfg = run_config(state)
        finished = [e for e in read_events(out / "logs" / f"{entry['node_id']}.jsonl") if e["event"] == "task_finished"]
        if not finished:
            continue
        spec = cfg.tasks[finished[-1]["index"]]
        view, catalog = cfg.view(), load_catalog(cfg.data.source, cfg.data.root)
        seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
        classes, parts = task_items(catalog, spec, cfg.data.split, view, seed, cfg.data.shots)
        items, labels = parts["test"]
        if not items:
            continue
        item = items[0]
        tm = load_task_model(state, spec.name)
        if view.modality == "text":
            shown, inputs = item.texts[0], text_inputs([item.texts[0]], view)
        else:
            ref = item.images[0]
            shown = item.item_id if not isinstance(ref, Path) else str(ref)
            inputs = encode([str(ref)], view) if isinstance(ref, Path) else _array_inputs(ref, view)
        (prediction,) = classify(tm, inputs, top=3)
        examples.append({"node": entry["node_id"], "task": spec.name, "input": shown, "truth": classes[labels[0]],
                         "label": prediction.label, "top": [[c, round(p, 4)] for c, p in prediction.top]})
    return examples


def _array_inputs(array, view):
    from crossback.data.tasks import image_inputs, load_image

    return image_inputs([load_image(array, view)], view)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def receiver_gain(rows: list[dict], receivers: set[str], resamples: int = 10_000) -> dict:
    """Paired test-accuracy differences to ``none`` over the receivers' tasks, with 95 % bootstrap CIs:
    of the selected arm, and of what each task kept."""
    from crossback.bench.stats import summary as paired

    units = [r for r in rows if r["node"] in receivers and r["selected"] is not None]
    kept = [r[r["kept"]] if r.get(r["kept"]) is not None else r["none"] for r in units]
    return {"units": len(units),
            "selected": paired([r["selected"] - r["none"] for r in units], resamples, 0.95),
            "kept": paired([k - r["none"] for k, r in zip(kept, units)], resamples, 0.95)}


def summarize(out: Path, plan: list[dict], seconds: float) -> dict:
    rows = selection_rows(out)
    payloads: dict[str, int] = defaultdict(int)
    for path in sorted((out / "logs").glob("*.jsonl")):
        for e in read_events(path):
            if e["event"] in ("payload_sent", "payload_summary"):  # gossip is logged as per-interval sums
                payloads[e["kind"]] += int(e["bytes"])
    compared = [r for r in rows if r["selected"] is not None]
    final = {}
    for path in sorted((out / "logs").glob("*.jsonl")):
        finished = [e for e in read_events(path) if e["event"] == "task_finished"]
        if finished:
            final[finished[-1]["node"]] = finished[-1]["accuracies"]
    return {
        "nodes": plan,
        "oracle": _mean([r["oracle"] for r in compared if r["oracle"] is not None]),
        "selections": [{"node": r["node"], "task": r["task"], "chosen": r["chosen"], "chosen_origin": r["chosen_origin"],
                        "chosen_modality": r["chosen_modality"], "score": r["score"], "margin": r["margin"],
                        "candidates": [{"peer": c["peer"], "modality": c["modality"], "score": c["score"],
                                        "cos": c["cos"], "euc": c["euc"], "error": c["error"]} for c in r["candidates"]]}
                       for r in rows],
        # a random draw whose payload could not be fetched has no arm: the mean is over the tasks that have one
        "accuracy": {arm: _mean([r[arm] for r in compared if r[arm] is not None]) for arm in ("none", "random", "selected")},
        "compared_tasks": len(compared),
        "receiver_gain": receiver_gain(rows, {e["node_id"] for e in plan if e.get("role") == "receiver"}),
        "per_task": [{k: r[k] for k in ("node", "task", "index", "chosen", "none", "random", "selected")} for r in rows],
        "final_accuracy": final,  # per node: test accuracy of every task after its last one
        "average_accuracy": _mean([sum(a) / len(a) for a in final.values()]),
        "payloads": dict(sorted(payloads.items())),
        "seconds": round(seconds, 2),
    }


def plot_summary(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["per_task"] if r["selected"] is not None]
    nodes = [n["node_id"] for n in summary["nodes"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.27
    for k, arm in enumerate(("none", "random", "selected")):
        left.bar([i + (k - 1) * width for i in range(len(rows))], [r[arm] if r[arm] is not None else float("nan") for r in rows], width, label=arm)
    left.set_xticks(range(len(rows)), [f"{r['node']}\n{r['task'][:14]}" for r in rows], fontsize=7)
    left.set_ylabel("test accuracy")
    left.set_title("accuracy per arm, per node and task")
    left.legend()
    counts = [[0] * len(nodes) for _ in nodes]
    for s in summary["selections"]:  # whose knowledge: the original learner, followed through re-serving
        source = s.get("chosen_origin") or s["chosen"]
        if source in nodes:
            counts[nodes.index(s["node"])][nodes.index(source)] += 1
    right.imshow(counts, cmap="Blues")
    right.set_xticks(range(len(nodes)), nodes, rotation=45)
    right.set_yticks(range(len(nodes)), nodes)
    right.set_xlabel("whose parts were borrowed (origin)")
    right.set_ylabel("selecting node")
    right.set_title("who selected whom")
    for i, row in enumerate(counts):
        for j, c in enumerate(row):
            right.text(j, i, str(c), ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
