"""Prometheus metrics of one node (``node.metrics.listen``, ``crossback node --metrics``).

Every node has a registry of its own (several nodes may share a process in tests), fed from four places:
the node's event log (``observe``: each record the JSON log gets, so a counter and the log cannot
disagree), its payload accounting (``sent``, ``fetched``), its gRPC server (``node.rpc_metrics``) and
its refusals (``refused``); membership, the published snapshot, the expensive-work pool and GPU memory
are read when scraped. Every label value comes from a fixed list in this module: a peer-supplied
string (a caller id, a peer id, a payload kind, a method name) is never a label, so however many
distinct ones arrive, the number of series stays bounded.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

from crossback.config.node import PAYLOAD_KINDS
from crossback.orchestrator_free.reasons import KINDS

from .prom import Family, Registry, gauge, process_families
from .rpc_metrics import OTHER

# what a node sends or fetches besides the payload kinds it serves: replies and the small requests
REPLY_KINDS = ("info", "membership", "task_match")
REQUEST_KINDS = tuple(f"{k}_request" for k in ("info", *PAYLOAD_KINDS)) + ("probe_spec", "probe_spec+kv")
TRAFFIC_KINDS = frozenset((*PAYLOAD_KINDS, *REPLY_KINDS, *REQUEST_KINDS))

# every event a node's log can hold (tests/test_node_metrics.py keeps it equal to what the code emits)
EVENTS = frozenset({
    "node_started", "node_stopped", "serving", "distributed", "tls", "unauthenticated", "data_warning",
    "task_started", "task_finished", "task_interrupted", "tasks_done", "resumed", "task_waiting", "task_arrived",
    "snapshot_published", "publish_refused", "checkpoint_failed", "checkpoint_corrupt", "checkpoint_upgraded",
    "checkpoint_leftover",
    "task_matched", "backbone_selected", "transfer_done", "rpc_failed", "payload_sent", "payload_summary",
    "peer_joined", "peer_returned", "peer_dead", "peer_evicted"})
ARMS = ("none", "selected", "random", "oracle")
PHASES = ("train", "retrain", "grow", "compact")
REFUSERS = {"admission": ("health", "control", "bulk", "watch", "watch_streams"),
            "expensive_work": ("busy", "too_large", "over_budget", "caller_gone"),
            "peer_auth": ("no_certificate", "not_allowed", "claims_other_id")}
PEER_STATES = ("alive", "suspect", "dead")

# histogram buckets: every bucket is a series per method, and what a scrape costs grows with the series
SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)
SELECTION_SECONDS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def label(value, allowed) -> str:
    """``value`` if it is one of ``allowed``, else ``other``: the only way a label value is made."""
    return value if isinstance(value, str) and value in allowed else OTHER


class NodeMetrics:
    def __init__(self, node_id: str, modality: str = "", method: str = "", software: str = "", process: bool = True):
        self.registry = r = Registry()
        if process:  # resident memory, CPU seconds, open files (Linux /proc), named as every exporter names them
            r.add_collector(process_families)
        r.gauge("crossback_node_info", "This node (value 1)", ("node_id", "modality", "method", "software")).labels(
            node_id, modality, method, software).set(1)
        self.events = r.counter("crossback_events_total", "Events written to the node's log, by name", ("event",))
        self._task_metrics(r)
        self._selection_metrics(r)
        self.payload_bytes_sent = r.counter("crossback_payload_bytes_sent_total", "Bytes of payloads and requests "
                                            "this node sent to peers (as its payload log counts them)", ("kind",))
        self.payloads_sent = r.counter("crossback_payloads_sent_total", "Payloads and requests sent to peers", ("kind",))
        self.payload_bytes_fetched = r.counter("crossback_payload_bytes_fetched_total", "Serialized bytes of the "
                                               "replies this node received from peers", ("kind",))
        self.rpcs = r.counter("crossback_grpc_server_handled_total", "RPCs this node answered, by method and status "
                              "code", ("grpc_method", "grpc_code"))
        self.rpc_seconds = r.histogram("crossback_grpc_server_handling_seconds", "Time from admission to the last "
                                       "reply message, by method", SECONDS, ("grpc_method",))
        self.refusals = r.counter("crossback_requests_refused_total", "Requests turned away before their work: by "
                                  "the admission classes, the expensive-work pool or PeerAuth (mutual TLS)",
                                  ("by", "reason"))
        self._sources = _ScrapeTime()
        r.add_collector(self._sources.collect)

    def _task_metrics(self, r: Registry) -> None:
        self.tasks_finished = r.counter("crossback_tasks_finished_total", "Tasks learned, checkpointed and published")
        self.task_index = r.gauge("crossback_task_index", "Index of the task being learned (-1: none)")
        self.task_index.set(-1)
        self.epoch = r.gauge("crossback_train_epoch", "Epoch just finished in the current training phase")
        self.loss = r.gauge("crossback_train_loss", "Training loss of the last epoch")
        self.train_accuracy = r.gauge("crossback_train_accuracy", "Accuracy on the training batches of the last epoch")
        self.epochs = r.counter("crossback_train_epochs_total", "Training epochs run, by phase", ("phase",))
        self.task_accuracy = r.gauge("crossback_task_accuracy", "Test accuracy of the last finished task, right "
                                     "after it was learned")
        self.average_accuracy = r.gauge("crossback_average_accuracy", "Mean test accuracy over every task learned "
                                        "so far (the last row of the accuracy matrix)")

    def _selection_metrics(self, r: Registry) -> None:
        self.selections = r.counter("crossback_selections_total", "Peer selections run, by whether a peer was chosen",
                                    ("result",))
        self.selection_seconds = r.histogram("crossback_selection_seconds", "Time a selection took (probe, scores, "
                                             "stage-2 fetch)", SELECTION_SECONDS)
        self.probed = r.counter("crossback_candidates_probed_total", "Peers probed as candidates")
        self.scored = r.counter("crossback_candidates_scored_total", "Candidates that answered and were scored")
        self.skipped = r.counter("crossback_candidates_skipped_total", "Candidates not scored, by the kind of reason "
                                 "(refused: the peer turned the call away)", ("reason",))
        self.kept = r.counter("crossback_transfers_total", "Tasks that ran the transfer arms, by the arm kept",
                              ("kept",))
        self.selection_bytes = r.counter("crossback_selection_bytes_total", "Bytes selections fetched from candidates")

    # ------------------------------------------------------------ what feeds it

    def watch(self, membership=None, snapshot: Callable[[], object] | None = None, limiter=None,
              device=None) -> None:
        """Read these when scraped: membership (peers by state), the published snapshot (its version), the
        expensive-work pool (calls in flight, memory reserved) and, on CUDA, the device's memory."""
        self._sources.membership, self._sources.snapshot = membership, snapshot
        self._sources.limiter, self._sources.device = limiter, device

    def observe(self, record: dict) -> None:
        """One event-log record (EventLog listener)."""
        event = record.get("event")
        self.events.labels(label(event, EVENTS)).inc()
        handler = _ON_EVENT.get(event)
        if handler is not None:
            handler(self, record)

    def progress(self, phase: str, epoch: int, _total: int, loss: float, accuracy: float = float("nan")) -> None:
        """An epoch finished (models.training's progress callback)."""
        self.epoch.set(epoch)
        self.loss.set(loss)
        self.train_accuracy.set(accuracy)
        self.epochs.labels(label(re.sub(r"\d+$", "", phase), PHASES)).inc()

    def sent(self, kind: str, nbytes: int) -> None:
        name = label(kind, TRAFFIC_KINDS)
        self.payload_bytes_sent.labels(name).inc(nbytes)
        self.payloads_sent.labels(name).inc()

    def fetched(self, kind: str, nbytes: int) -> None:
        self.payload_bytes_fetched.labels(label(kind, TRAFFIC_KINDS)).inc(nbytes)

    def refused(self, by: str, reason: str) -> None:
        self.refusals.labels(label(by, REFUSERS), label(reason, REFUSERS.get(by, ()))).inc()

    def handled(self, method: str, code: str, seconds: float) -> None:
        """One RPC answered; ``method`` and ``code`` already bounded (rpc_metrics.RpcMetrics)."""
        self.rpcs.labels(method, code).inc()
        self.rpc_seconds.labels(method).observe(seconds)

    def series(self) -> int:
        """How many samples a scrape returns now (the cardinality the flood tests bound)."""
        return len(self.registry.samples())


def _task_started(m: NodeMetrics, rec: dict) -> None:
    m.task_index.set(_int(rec.get("index"), -1))


def _task_finished(m: NodeMetrics, rec: dict) -> None:
    m.tasks_finished.inc()
    m.task_index.set(-1)
    accuracies = [a for a in rec.get("accuracies") or () if isinstance(a, (int, float))]
    if isinstance(rec.get("accuracy"), (int, float)):
        m.task_accuracy.set(rec["accuracy"])
    if accuracies:
        m.average_accuracy.set(sum(accuracies) / len(accuracies))


def _task_interrupted(m: NodeMetrics, _rec: dict) -> None:
    m.task_index.set(-1)


def _backbone_selected(m: NodeMetrics, rec: dict) -> None:
    m.selections.labels("chosen" if rec.get("chosen") is not None else "none").inc()
    candidates, skipped = rec.get("candidates") or [], rec.get("skipped") or []
    m.probed.inc(len(candidates) + len(skipped))
    m.scored.inc(len(candidates))
    for entry in skipped:
        m.skipped.labels(label(entry.get("kind") if isinstance(entry, dict) else None, KINDS)).inc()
    if isinstance(rec.get("seconds"), (int, float)):
        m.selection_seconds.observe(rec["seconds"])
    m.selection_bytes.inc(max(0, _int(rec.get("bytes"), 0)))


def _transfer_done(m: NodeMetrics, rec: dict) -> None:
    m.kept.labels(label(rec.get("kept"), ARMS)).inc()


_ON_EVENT = {"task_started": _task_started, "task_finished": _task_finished, "task_interrupted": _task_interrupted,
             "backbone_selected": _backbone_selected, "transfer_done": _transfer_done}


def _int(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class _ScrapeTime:
    """The gauges read when Prometheus scrapes (one pass over membership)."""

    membership = snapshot = limiter = device = None

    def collect(self) -> Iterable[Family]:
        peers = Family("crossback_peers", "Known peers by membership state", "gauge", ("state",))
        counts = dict.fromkeys(PEER_STATES, 0)
        if self.membership is not None:
            for p in self.membership.peers():
                counts["dead" if not p.alive else "suspect" if p.suspect_since is not None else "alive"] += 1
        for state, n in counts.items():
            peers.labels(state).set(n)
        yield peers
        snap = self.snapshot() if self.snapshot is not None else None
        yield gauge("crossback_snapshot_version", "Version of the snapshot served to peers (0: none)",
                    snap.version if snap is not None else 0)
        if self.limiter is not None:
            yield gauge("crossback_expensive_calls_in_flight", "Expensive calls running or waiting",
                        self.limiter.in_flight())
            yield gauge("crossback_expensive_memory_reserved_bytes", "Memory the running expensive calls reserved "
                        "from node.expensive.memory_mib", self.limiter.reserved())
        yield from _gpu_memory(self.device)


def _gpu_memory(device) -> Iterable[Family]:
    if device is None or getattr(device, "type", None) != "cuda":
        return
    import torch

    yield gauge("crossback_gpu_memory_allocated_bytes", "GPU memory held by tensors (torch)",
                torch.cuda.memory_allocated(device))
    yield gauge("crossback_gpu_memory_reserved_bytes", "GPU memory torch's caching allocator holds",
                torch.cuda.memory_reserved(device))
