"""`crossback bench transfer`: every arm of every receiver task, from the same M_loc, over seeds.

Per seed: donors learn their tasks on all their training items and are published as snapshots served
by the node's own peer service (in-process, loopback); an untrained control donor per modality is
served beside them. Each receiver (and each of its ``shots``) then learns its tasks one by one, exactly
as a node does: local learning (M_loc), selection through ``probe_candidates`` and the scoring
functions, and every candidate adapted from M_loc with ``run_arm`` under the same seed and budget as
``none``; the task keeps what the node would keep (``decide_keep``). One JSON file per (seed,
receiver, shots) makes the run resumable.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from crossback.config.bench import BenchConfig, BenchNode
from crossback.config.errors import ConfigError
from crossback.data.public_set import public_set_for
from crossback.data.sources import DataError, load_catalog
from crossback.data.tasks import build_task, data_warnings, public_items, resolve_classes
from crossback.models.borrowed import average_parts
from crossback.models.learner import ContinualLearner
from crossback.models.methods import learn_task
from crossback.models.persistence import write_json_atomic
from crossback.node.transport import CallPolicy, ClientPool, PeerClient
from crossback.orchestrator_free.backbone import (
    Arm,
    ArmPlan,
    arm_seed,
    averaged_members,
    candidate_arms,
    decide_keep,
    run_arm,
)
from crossback.orchestrator_free.genesis import genesis_id
from crossback.orchestrator_free.same_task import find_same_task
from crossback.orchestrator_free.scores import Receiver, apply_score
from crossback.orchestrator_free.selection import (
    Candidate,
    PeerAccess,
    TaskAtHand,
    Want,
    can_average,
    ddv_score,
    fetch_all,
    probe_candidates,
)
from crossback.orchestrator_free.shortlist import select
from crossback.transfer.base import AdaptOptions
from crossback.transfer.registry import make_strategy

from .peers import BENCH_PAIR_SECRET, published, serve_snapshots, untrained_learner

CONTROL = "untrained"
CONFIG_FILE = "config.json"


def node_seed(seed: int, index: int) -> int:
    return seed * 1000 + index


def _genesis(cfg: BenchConfig, seed: int) -> int | None:
    """With ``genesis: true`` every node of one seed starts from one swarm genesis (the seed's own)."""
    return node_seed(seed, 0) if cfg.genesis else None


def _train_opts(cfg: BenchConfig, node: BenchNode, receiving: bool):
    epochs = cfg.receiver_epochs if receiving and cfg.receiver_epochs else cfg.train.epochs
    return dataclasses.replace(cfg.train, epochs=epochs)


def _learner(cfg: BenchConfig, node: BenchNode, seed: int, index: int) -> ContinualLearner:
    return ContinualLearner(node.model, node.modality, cfg.method.name, node_seed(seed, index), cfg.method.piggyback,
                            _genesis(cfg, seed))


def _catalog(node: BenchNode, catalogs: dict):
    key = (node.source, node.root)
    if key not in catalogs:
        catalogs[key] = load_catalog(node.source, node.root)
    return catalogs[key]


def _tasks(cfg: BenchConfig, node: BenchNode, seed: int, shots: int | None, catalogs: dict):
    return [build_task(_catalog(node, catalogs), spec, cfg.split, node.view(), seed, shots) for spec in node.tasks]


def _donors(cfg: BenchConfig, seed: int, root: Path, catalogs: dict) -> dict:
    """name -> published snapshot of every serving node, plus one untrained control per receiver modality."""
    def learned(index: int, node: BenchNode) -> ContinualLearner:
        learner = _learner(cfg, node, seed, index)
        for data, _ in _tasks(cfg, node, seed, None, catalogs):
            learn_task(learner, data, cfg.method, _train_opts(cfg, node, receiving=False))
        return learner

    # a donor's own labelled items of its published task stay with its snapshot (mona's outer gradient,
    # freqkd's shared items), and so do the public paired set's items in its view (freqkd's public set)
    items = {node.name: _tasks(cfg, node, seed, None, catalogs)[-1][0].train for node in cfg.nodes if node.serves}
    snaps = {node.name: dataclasses.replace(published(root / "donors" / node.name, len(node.tasks),
                                          lambda i=i, n=node: learned(i, n)), data=items[node.name],
                                          public=_public(cfg, node, catalogs))
             for i, node in enumerate(cfg.nodes) if node.serves}
    if cfg.control:
        for node in cfg.nodes:
            name = f"{CONTROL}-{node.modality}"
            if node.receives and name not in snaps:
                snap = published(root / "donors" / name, 1, lambda n=node: untrained_learner(_learner(cfg, n, seed, 999)))
                snaps[name] = dataclasses.replace(snap, data=_control_items(cfg, node, items),
                                                  public=_public(cfg, node, catalogs))
    return snaps


def _public(cfg: BenchConfig, node: BenchNode, catalogs: dict):
    return public_items(_catalog(node, catalogs), cfg.split, node.view())


def _control_items(cfg: BenchConfig, node: BenchNode, items: dict):
    """The untrained control's labelled items: those of the first donor whose data and model the control
    shares, so that it differs from that donor only in never having learned (None: no such donor)."""
    for donor in cfg.nodes:
        if donor.serves and (donor.source, donor.view(), donor.model) == (node.source, node.view(), node.model):
            return items[donor.name]
    return None


def _label_set(node: BenchNode, spec) -> tuple:
    return (node.source, tuple(sorted(spec.classes)) if spec.classes else ("superclass", spec.group))


def same_task_donors(cfg: BenchConfig, receiver: BenchNode, spec) -> set[str]:
    """The serving nodes with a task of exactly this receiver task's label set (a PackNet donor's last
    backbone holds every task it learned; ``borrow: task`` can borrow any of them)."""
    want = _label_set(receiver, spec)
    return {n.name for n in cfg.nodes if n.serves and n.name != receiver.name
            and any(_label_set(n, t) == want for t in n.tasks)}


RECORDED = ("cos", "euc", "latency", "bytes", "kv_bytes", "payload_bytes", "payload_seconds", "score_seconds")


def _parts(cands: list[Candidate]) -> list[dict[str, Tensor]]:
    return [c.payload.parts for c in cands if c.payload.parts is not None]


def _candidate_record(public: dict, control: bool, same_task: bool) -> dict:
    """What a unit record keeps of a probed candidate (its log entry, ``Candidate.public``)."""
    return ({"peer": public["peer"], "modality": public["modality"], "control": control, "same_task": same_task,
             "error": public["error"], "error_kind": public["error_kind"], "scores": public["scores"]}
            | {k: public[k] for k in RECORDED} | ({"extra": public["extra"]} if public["extra"] else {}))


def _arm_record(arm: Arm | None) -> dict:
    return {"val": arm.val, "val_loss": arm.val_loss, "test": arm.test, "facts": arm.facts,
            "seconds": arm.seconds} if arm else {}


def run_receiver(cfg: BenchConfig, index: int, shots: int | None, seed: int, addresses: dict[str, str],
                 catalogs: dict) -> list[dict]:
    """One receiver's task sequence with every arm; one record per task."""
    node = cfg.nodes[index]
    unit = ReceiverUnits(cfg, node, _learner(cfg, node, seed, index), shots, seed, addresses)
    try:
        return [unit.task(i, data, info) for i, (data, info) in enumerate(_tasks(cfg, node, seed, shots, catalogs))]
    finally:
        unit.clients.close()


@dataclass
class UnitOutcome:
    """What one unit measured: the ``none`` arm, every candidate probed and its arm, the node's choice and
    what the task kept (and why)."""
    none: Arm
    probed: list[Candidate]
    arms: dict[str, Arm]
    chosen: Candidate | None
    kept: str = "none"
    why: str = ""
    kept_arm: Arm | None = None


class ReceiverUnits:
    """One receiver of one seed and shot count: learns each task, then runs every arm of it (one unit)."""

    def __init__(self, cfg: BenchConfig, node, learner, shots: int | None, seed: int, addresses: dict[str, str]):
        self.cfg, self.node, self.learner, self.shots, self.seed = cfg, node, learner, shots, seed
        self.genesis = genesis_id(_genesis(cfg, seed), node.model)
        self.train = _train_opts(cfg, node, receiving=True)
        self.opts = AdaptOptions.from_config(cfg.adaptation, self.train)
        self.strategy = make_strategy(cfg.transfer, public_set_for(node.source, cfg.split), BENCH_PAIR_SECRET)
        self.control = f"{CONTROL}-{node.modality}"
        self.peers = [(name, addr) for name, addr in addresses.items()
                      if name != node.name and (not name.startswith(CONTROL + "-") or name == self.control)]
        self.donors = [p for p in self.peers if p[0] != self.control]  # what a node of the swarm would see
        self.control_peers = [p for p in self.peers if p[0] == self.control]
        self.clients = ClientPool(lambda a, _expected: PeerClient(a, node.name, CallPolicy(timeout=60.0, attempts=2)))

    def task(self, i: int, data, info) -> dict:
        cfg, node, learner, strategy = self.cfg, self.node, self.learner, self.strategy
        learn_task(learner, data, cfg.method, self.train)
        same = same_task_donors(cfg, node, node.tasks[i])
        if strategy.matches_tasks:
            done = self._same_task(i, data)
            if done is not None:
                outcome, limit = done
                decision = {"none": outcome.none} | ({"selected": outcome.arms[outcome.chosen.peer]}
                                                     if outcome.chosen else {})
                outcome.kept, outcome.why = decide_keep(decision, "selected", strategy.keep_rule)
                learner.set_task_state(i, decision[outcome.kept].state)
                return self._record(i, info, outcome, same) | {"path": "task", "limit": limit}
        return self._borrow(i, data, info, same, strategy.fallback if strategy.matches_tasks else strategy)

    def _borrow(self, i: int, data, info, same, unit_strategy) -> dict:
        """What a node's selection chooses and keeps (its own code, on the donors), then the experiment
        around it: every answered candidate's payload, score and arm, the control's, and the averages."""
        cfg, learner, opts = self.cfg, self.learner, self.opts
        want = Want.of(unit_strategy, data)
        at = TaskAtHand(learner, i, data)
        sel = select(at, PeerAccess(self.node.name, self.donors, self.clients, self.genesis), cfg.selection,
                     unit_strategy)
        chosen = sel.chosen
        control = probe_candidates(at, PeerAccess(self.node.name, self.control_peers, self.clients, self.genesis),
                                   cfg.selection, want)
        fetch_all(learner, i, sel.pool, self.clients, cfg.selection, want)  # what stage 2 did not fetch
        probed = sorted(sel.candidates + sel.skipped + control, key=lambda c: c.peer)
        usable = [c for c in probed if c.error is None and c.payload.parts is not None]
        apply_score(cfg.selection.score, usable, Receiver(learner, i, data, cfg.selection.euc_weight), every=True)
        _stability_scores(cfg, learner, i, usable, self.clients)
        plan = ArmPlan(unit_strategy, opts, arm_seed(self.seed, i), learner.task_state(i))
        none = run_arm(at, plan, None)
        arms = candidate_arms(at, plan, usable, self.clients)
        trained = [c for c in usable if c.peer != self.control and c.peer in arms]
        extra: dict[str, Any] = {"path": "fallback"} if unit_strategy is not self.strategy else {}
        averages = can_average(unit_strategy)
        if averages and cfg.average and (avg := average_parts(_parts(trained))):
            extra["average"] = _arm_record(run_arm(at, plan, avg)) | {
                "peers": len(trained), "tensors": len(avg)}
        # the soup of what the node's selection fetched anyway: its shortlist's payloads, averaged
        shortlist = [c for c in sel.pool if c.scores.shortlisted and c.payload.parts is not None]
        soup = None
        soup_wanted = cfg.average or cfg.selection.combine == "average"
        if averages and soup_wanted and (avg := average_parts(_parts(shortlist))):
            soup = run_arm(at, plan, avg)
            extra["shortlist_average"] = _arm_record(soup) | {"peers": sorted(c.peer for c in shortlist),
                                                              "tensors": len(avg)}
        # the arm the node keeps or drops: the average of what it fetched where it averages
        # (averaged_members, the node's own rule), else the chosen candidate's
        averaged = averaged_members(sel, cfg.selection, unit_strategy)
        preferred = soup if averaged and soup is not None else (arms.get(chosen.peer) if chosen else None)
        decision = {"none": none} | ({"selected": preferred} if preferred is not None else {})
        kept, why = decide_keep(decision, "selected", unit_strategy.keep_rule)
        learner.set_task_state(i, decision[kept].state)
        outcome = UnitOutcome(none, probed, arms, chosen, kept, why, decision[kept])
        return self._record(i, info, outcome, same) | extra

    def _same_task(self, i: int, data) -> tuple[UnitOutcome, dict | None] | None:
        """A task some peer learned (``borrow: task``): the match a node's selection chooses (its own code),
        every matched task's arm (MatchTask + FetchTask, each confirmed as a node confirms), the untrained
        control's arm borrowed the fallback way, and the limit:
        the best same-view donor's own model on this receiver's test split (its task as borrowed, unadapted,
        adapter included). None when no peer matched (the unit borrows the fallback way)."""
        cfg, node, learner, clients, strategy, opts = (self.cfg, self.node, self.learner, self.clients, self.strategy,
                                                       self.opts)
        donors = self.donors

        def as_borrowed(parts):
            return strategy.as_borrowed(learner, i, data, parts, opts)

        at, access = TaskAtHand(learner, i, data), PeerAccess(node.name, donors, clients)
        decided = find_same_task(at, access, cfg.selection, as_borrowed)  # a node's choice
        if decided.chosen is None:
            return None
        every = dataclasses.replace(cfg.selection, shortlist="all")  # and every matched task, for its arm
        sel = decided if cfg.selection.shortlist == "all" else find_same_task(at, access, every, as_borrowed)
        chosen = next((c for c in sel.candidates if c.peer == decided.chosen.peer), decided.chosen)
        plan = ArmPlan(strategy, opts, arm_seed(self.seed, i), learner.task_state(i))
        none = run_arm(at, plan, None)
        fetched = [c for c in sel.candidates if c.error is None and c.payload.parts is not None]
        arms = candidate_arms(at, plan, fetched, clients)
        learner.set_task_state(i, plan.base)
        limits = [(strategy.as_borrowed(learner, i, data, parts, opts, data.test)[0], c.peer)
                  for c in fetched if (parts := c.payload.parts) and any(n.startswith("adapter.") for n in parts)]
        fallback = strategy.fallback
        assert fallback is not None  # a same-task strategy declares how to borrow where no task matches
        ctrl = probe_candidates(at, PeerAccess(node.name, self.control_peers, clients, self.genesis), cfg.selection,
                                Want.of(fallback))
        arms |= candidate_arms(at, dataclasses.replace(plan, strategy=fallback),
                               [c for c in ctrl if c.error is None and c.payload.parts], clients)
        limit = max(limits) if limits else None
        return (UnitOutcome(none, sel.candidates + ctrl, arms, chosen),
                {"accuracy": limit[0], "donor": limit[1]} if limit else None)

    def _record(self, i: int, info, outcome: UnitOutcome, same: set[str]) -> dict:
        cfg, o = self.cfg, outcome
        warnings = data_warnings([info], cfg.min_test_items)
        return {
            "seed": self.seed, "receiver": self.node.name, "modality": self.node.modality, "shots": self.shots,
            "task": info["name"], "index": i, "classes": len(info["classes"]), "samples": info["samples"],
            "warnings": warnings, "kind": "same-task" if same else "new-task",
            "none": _arm_record(o.none),
            "candidates": [_candidate_record(c.public(), control=c.peer == self.control, same_task=c.peer in same)
                           | _arm_record(o.arms.get(c.peer)) for c in o.probed],
            "chosen": o.chosen.peer if o.chosen else None, "kept": o.kept, "keep_reason": o.why,
            "kept_test": (o.kept_arm or (o.arms[o.chosen.peer] if o.kept == "selected" else o.none)).test,
        }

def _stability_scores(cfg: BenchConfig, learner, task: int, cands: list[Candidate], clients) -> None:
    """``ddv@<seed>``: the DDV score under another probe seed, to measure how stable its ranking is."""
    for seed in cfg.stability_seeds:
        spec = dataclasses.replace(cfg.selection.probe, seed=seed)
        for c in cands:
            if c.probe.kv is not None and "ddv" in c.scores.by_name:
                (_, _, score), _ = ddv_score(clients.get(c.address, c.peer), TaskAtHand(learner, task), c.probe.kv,
                                             spec, cfg.selection.euc_weight)
                c.scores.by_name[f"ddv@{seed}"] = score


def unit_path(out: Path, seed: int, node: BenchNode, shots: int | None) -> Path:
    return out / f"seed-{seed}" / "units" / f"{node.name}-k{shots if shots is not None else 'all'}.json"


def _check_resume(out: Path, cfg: BenchConfig) -> None:
    """A folder resumes only the config that made it (the seed count may grow)."""
    mine = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(cfg), default=str)).items() if k != "seeds"}
    path = out / CONFIG_FILE
    if path.exists() and any(out.glob("seed-*/units/*.json")):
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
        if changed:
            raise ConfigError(f"{out} holds results of a different bench config ({', '.join(changed)}); use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, mine)


def check_tasks(cfg: BenchConfig, catalogs: dict) -> None:
    """Every node's data and tasks resolve (its source loads, every class or superclass exists and is
    big enough), before anything trains: a misspelt receiver task must not wait for the donors. Raises
    ConfigError naming ``nodes[i]``."""
    for i, node in enumerate(cfg.nodes):
        where = f"nodes[{i}] ({node.name})"
        try:
            catalog = _catalog(node, catalogs)
            for spec in node.tasks:
                resolve_classes(catalog, spec, cfg.split, node.view())
        except DataError as exc:  # a bench node's data root is its ``root`` key, not a node's data.root
            raise ConfigError(f"{where}: {str(exc).replace('data.root', 'root')}") from None


def run_bench(cfg: BenchConfig, out: Path, seeds: int, progress: bool = True, only: set[int] | None = None) -> list[dict]:
    """Run (or resume) every unit (``only``: of these seeds); returns every task record found."""
    out = Path(out)
    catalogs: dict = {}
    check_tasks(cfg, catalogs)
    _check_resume(out, cfg)
    groups = [(i, k) for i, n in enumerate(cfg.nodes) if n.receives for k in (n.shots or (None,))]
    torch.set_num_threads(cfg.threads)
    bar = tqdm(total=seeds * len(groups), desc="bench transfer", unit="run", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    try:
        for seed in range(seeds):
            if only is not None and seed not in only:
                continue
            todo = [(i, k) for i, k in groups if not unit_path(out, seed, cfg.nodes[i], k).exists()]
            bar.update(len(groups) - len(todo))
            if not todo:
                continue
            bar.set_postfix_str(f"seed {seed}: donors")
            snaps = _donors(cfg, seed, out / f"seed-{seed}", catalogs)
            public_sets = {n.name: public_set_for(n.source, cfg.split) for n in cfg.nodes} | {
                f"{CONTROL}-{n.modality}": public_set_for(n.source, cfg.split) for n in cfg.nodes if n.receives}
            with serve_snapshots(snaps, out / f"seed-{seed}" / "logs", public_sets) as addresses:
                for i, k in todo:
                    bar.set_postfix_str(f"seed {seed}: {cfg.nodes[i].name} k={k if k is not None else 'all'}")
                    records = run_receiver(cfg, i, k, seed, addresses, catalogs)
                    path = unit_path(out, seed, cfg.nodes[i], k)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_json_atomic(path, records)
                    bar.update(1)
    finally:
        bar.close()
    return load_records(out, seeds, cfg)


def load_records(out: Path, seeds: int, cfg: BenchConfig) -> list[dict]:
    records = []
    for seed in range(seeds):
        for i, node in enumerate(cfg.nodes):
            for k in (node.shots or (None,)) if node.receives else ():
                path = unit_path(out, seed, node, k)
                if path.exists():
                    records.extend(json.loads(path.read_text(encoding="utf-8")))
    return records
