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
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from crossback.config.node import PAYLOAD_KINDS
from crossback.orchestrator_free.skip_reasons import skip_kind

from .rpc_metrics import OTHER

# what a node sends or fetches besides the payload kinds it serves: replies and the small requests
REPLY_KINDS = ("info", "membership", "task_match")
REQUEST_KINDS = tuple(f"{k}_request" for k in ("info", *PAYLOAD_KINDS)) + ("probe_spec", "probe_spec+kv")
TRAFFIC_KINDS = frozenset((*PAYLOAD_KINDS, *REPLY_KINDS, *REQUEST_KINDS))

# every event a node's log can hold (tests/test_node_metrics.py keeps it equal to what the code emits)
EVENTS = frozenset({
    "node_started", "node_stopped", "serving", "distributed", "tls", "unauthenticated", "data_warning",
    "task_started", "task_finished", "task_interrupted", "tasks_done", "resumed",
    "snapshot_published", "publish_refused", "checkpoint_failed", "checkpoint_corrupt", "checkpoint_upgraded",
    "task_matched", "backbone_selected", "transfer_done", "rpc_failed", "payload_sent", "payload_summary",
    "peer_joined", "peer_returned", "peer_dead", "peer_evicted"})
ARMS = ("none", "selected", "random", "oracle")
PHASES = ("train", "retrain", "grow", "compact")
REFUSERS = {"admission": ("health", "control", "bulk", "watch", "watch_streams"),
            "expensive_work": ("busy", "too_large"),
            "peer_auth": ("no_certificate", "not_allowed", "claims_other_id")}
PEER_STATES = ("alive", "suspect", "dead")

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SELECTION_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def label(value, allowed) -> str:
    """``value`` if it is one of ``allowed``, else ``other``: the only way a label value is made."""
    return value if isinstance(value, str) and value in allowed else OTHER


class NodeMetrics:
    def __init__(self, node_id: str, modality: str = "", method: str = "", software: str = "", process: bool = True):
        self.registry = r = CollectorRegistry(auto_describe=True)
        if process:  # resident memory, CPU seconds, open files (Linux /proc): process_* as every exporter names them
            ProcessCollector(registry=r)
        Gauge("crossback_node_info", "This node (value 1)", ["node_id", "modality", "method", "software"],
              registry=r).labels(node_id, modality, method, software).set(1)
        self.events = Counter("crossback_events", "Events written to the node's log, by name", ["event"], registry=r)
        self._task_metrics(r)
        self._selection_metrics(r)
        self.payload_bytes_sent = Counter("crossback_payload_bytes_sent", "Bytes of payloads and requests this node "
                                          "sent to peers (as its payload log counts them)", ["kind"], registry=r)
        self.payloads_sent = Counter("crossback_payloads_sent", "Payloads and requests sent to peers", ["kind"],
                                     registry=r)
        self.payload_bytes_fetched = Counter("crossback_payload_bytes_fetched", "Serialized bytes of the replies "
                                             "this node received from peers", ["kind"], registry=r)
        self.rpcs = Counter("crossback_grpc_server_handled", "RPCs this node answered, by method and status code",
                            ["grpc_method", "grpc_code"], registry=r)
        self.rpc_seconds = Histogram("crossback_grpc_server_handling_seconds", "Time from admission to the last "
                                     "reply message, by method", ["grpc_method"], buckets=SECONDS, registry=r)
        self.refusals = Counter("crossback_requests_refused", "Requests turned away before their work: by the "
                                "admission classes, the expensive-work pool or PeerAuth (mutual TLS)",
                                ["by", "reason"], registry=r)
        self._sources = _ScrapeTime()
        r.register(self._sources)

    def _task_metrics(self, r) -> None:
        self.tasks_finished = Counter("crossback_tasks_finished", "Tasks learned, checkpointed and published",
                                      registry=r)
        self.task_index = Gauge("crossback_task_index", "Index of the task being learned (-1: none)", registry=r)
        self.task_index.set(-1)
        self.epoch = Gauge("crossback_train_epoch", "Epoch just finished in the current training phase", registry=r)
        self.loss = Gauge("crossback_train_loss", "Training loss of the last epoch", registry=r)
        self.epochs = Counter("crossback_train_epochs", "Training epochs run, by phase", ["phase"], registry=r)
        self.task_accuracy = Gauge("crossback_task_accuracy", "Test accuracy of the last finished task, "
                                   "right after it was learned", registry=r)
        self.average_accuracy = Gauge("crossback_average_accuracy", "Mean test accuracy over every task learned "
                                      "so far (the last row of the accuracy matrix)", registry=r)

    def _selection_metrics(self, r) -> None:
        self.selections = Counter("crossback_selections", "Peer selections run, by whether a peer was chosen",
                                  ["result"], registry=r)
        self.selection_seconds = Histogram("crossback_selection_seconds", "Time a selection took (probe, "
                                           "scores, stage-2 fetch)", buckets=SELECTION_SECONDS, registry=r)
        self.probed = Counter("crossback_candidates_probed", "Peers probed as candidates", registry=r)
        self.scored = Counter("crossback_candidates_scored", "Candidates that answered and were scored", registry=r)
        self.skipped = Counter("crossback_candidates_skipped", "Candidates not scored, by the kind of reason "
                               "(refused: the peer turned the call away)", ["reason"], registry=r)
        self.kept = Counter("crossback_transfers", "Tasks that ran the transfer arms, by the arm kept", ["kept"],
                            registry=r)
        self.selection_bytes = Counter("crossback_selection_bytes", "Bytes selections fetched from candidates",
                                       registry=r)

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

    def progress(self, phase: str, epoch: int, _total: int, loss: float) -> None:
        """An epoch finished (models.training's progress callback)."""
        self.epoch.set(epoch)
        self.loss.set(loss)
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
        return sum(len(m.samples) for m in self.registry.collect())


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
        m.skipped.labels(skip_kind(entry.get("reason") if isinstance(entry, dict) else None)).inc()
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
    """The gauges read when Prometheus scrapes (a custom collector: one pass over membership)."""

    membership = snapshot = limiter = device = None

    def describe(self):
        return []

    def collect(self):
        peers = GaugeMetricFamily("crossback_peers", "Known peers by membership state", labels=["state"])
        counts = dict.fromkeys(PEER_STATES, 0)
        if self.membership is not None:
            for p in self.membership.peers():
                counts["dead" if not p.alive else "suspect" if p.suspect_since is not None else "alive"] += 1
        for state, n in counts.items():
            peers.add_metric([state], n)
        yield peers
        snap = self.snapshot() if self.snapshot is not None else None
        yield GaugeMetricFamily("crossback_snapshot_version", "Version of the snapshot served to peers (0: none)",
                                value=snap.version if snap is not None else 0)
        if self.limiter is not None:
            yield GaugeMetricFamily("crossback_expensive_calls_in_flight", "Expensive calls running or waiting",
                                    value=self.limiter.in_flight())
            yield GaugeMetricFamily("crossback_expensive_memory_reserved_bytes", "Memory the running expensive "
                                    "calls reserved from node.expensive.memory_mib", value=self.limiter.reserved())
        yield from _gpu_memory(self.device)


def _gpu_memory(device):
    if device is None or getattr(device, "type", None) != "cuda":
        return
    import torch

    yield GaugeMetricFamily("crossback_gpu_memory_allocated_bytes", "GPU memory held by tensors (torch)",
                            value=torch.cuda.memory_allocated(device))
    yield GaugeMetricFamily("crossback_gpu_memory_reserved_bytes", "GPU memory torch's caching allocator holds",
                            value=torch.cuda.memory_reserved(device))
