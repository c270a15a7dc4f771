"""`crossback node`: one device as one OS process.

It serves peers (from its published snapshot), keeps membership by gossip, and runs its own task
sequence, checkpointing and re-publishing after every finished task. Killed at any point, it restarts
from its state dir with every finished task intact.
"""
from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from pathlib import Path

import torch

from crossback.config.errors import ConfigError
from crossback.config.node import NodeConfig
from crossback.config.run import config_to_dict
from crossback.data.prepare import prepare_public, prepare_tasks
from crossback.data.public_set import public_set_for
from crossback.data.tasks import data_warnings
from crossback.models.learner import new_learner
from crossback.models.methods import learn_task
from crossback.models.metric_log import MetricLog, selection_rows
from crossback.models.parallel import DataParallel
from crossback.models.perceiver import kv_shapes
from crossback.models.persistence import (
    FORMAT,
    CheckpointError,
    CheckpointWriteError,
    clean_leftovers,
    is_legacy,
    latest_intact_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from crossback.models.training import evaluate
from crossback.node.gossip import GossipLoop
from crossback.node.limits import CallLimiter
from crossback.node.outer_grad import OuterGradService
from crossback.node.server import NodeIdentity, PeerServicer, bind, peer_entries, serve, software_version
from crossback.node.tls import load_tls
from crossback.node.transport import CallPolicy, ClientPool, PeerClient
from crossback.orchestrator_free.backbone import ArmPlan, PeerAccess, transfer_step
from crossback.orchestrator_free.selection import TaskAtHand
from crossback.orchestrator_free.candidates import ProbeHistory
from crossback.orchestrator_free.genesis import genesis_id
from crossback.orchestrator_free.membership import Membership, ViewSettings
from crossback.transfer.base import AdaptOptions
from crossback.transfer.registry import make_strategy

from .addresses import advertise_address
from .classify import ClassifyService
from .devices import device_name, resolve_device
from .distributed import Rank, broadcast_learner, join_group, leave_group, rank_device, ranks_agree
from .events import EventLog
from .metrics import NodeMetrics
from .metrics_http import serve_metrics
from .snapshot import Snapshot
from .state_lock import StateLock

CHECKPOINT_RETRY_FIRST, CHECKPOINT_RETRY_MAX = 0.5, 30.0  # seconds between tries of a failed checkpoint write


class Interrupted(Exception):
    """Raised inside the task loop when the node is asked to stop; the task in progress is dropped."""


class Node:
    def __init__(self, cfg: NodeConfig, console=None, rank: Rank | None = None):
        """``rank``: this process is one rank of a node trained by several (node.distributed); rank 0
        is the node, the others only train and keep no log, state or port of their own."""
        self.cfg, self.settings, self.run_cfg = cfg, cfg.node, cfg.run
        self.genesis = genesis_id(cfg.swarm.genesis, cfg.run.model)  # "" without a swarm genesis
        self.public_set = public_set_for(cfg.run.data.source, cfg.run.data.split)  # the public paired set held out
        s = self.settings
        self.rank = rank
        self.state_dir, self.log_dir = Path(s.state_dir), Path(s.log_dir)
        serves = rank is None or rank.serves
        # Prometheus metrics (node.metrics): fed by every event the log gets, so the two cannot disagree
        self.metrics = NodeMetrics(s.node_id, cfg.run.data.modality, cfg.run.method.name, software_version()) \
            if serves and s.metrics.enabled else None
        self._curves: MetricLog | None = None  # this node's curves and selections (models.metric_log), rank 0
        self._learning = -1  # the task being learned
        listeners = ((self.metrics.observe,) if self.metrics else ()) + (self._log_selection,)
        self.events = EventLog(s.node_id, self.log_dir / f"{s.node_id}.jsonl", console=console,
                               listeners=listeners) if serves else None
        self._snapshot: Snapshot | None = None
        self._metrics_http = None
        self._public = None  # the public paired set in this node's view, when it serves public_features
        self._stop = threading.Event()
        self._origin = s.arrival_origin or time.time()  # what node.task_arrivals count from
        self.device = resolve_device(s.device)
        if rank is not None:
            self.device = rank_device(self.device, rank)
        self._parallel: DataParallel | None = None
        if s.threads > 0:
            torch.set_num_threads(s.threads)

    # ------------------------------------------------------------ snapshot

    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def publish(self, folder: Path, data=None) -> bool:
        """Serve the checkpoint in ``folder``; ``data``: its last task's labelled training items (they stay
        here: only gradients or features computed on them may leave, and only when node.serve lists
        outer_grad or features). The public paired set's items are served from when it lists public_features."""
        serve = self.settings.serve
        keep = "outer_grad" in serve or "features" in serve
        public = self._public if "public_features" in serve else None
        try:  # a fresh copy read back from disk and verified, never trained
            snap = Snapshot.from_checkpoint(folder, data if keep else None, public)
        except CheckpointError as exc:  # what does not verify is never served; the last snapshot stays
            self.events.emit("publish_refused", checkpoint=str(folder), error=str(exc)[:1000],
                             serving=self._snapshot.version if self._snapshot else 0)
            return False
        self._snapshot = snap
        self.events.emit("snapshot_published", version=snap.version, tasks=snap.finished_tasks)
        return True

    # ------------------------------------------------------------ lifecycle

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def _check_stop(self, *_progress) -> None:
        if self._stopping():
            raise Interrupted()

    def _epoch_done(self, phase: str, epoch: int, epochs: int, loss: float, accuracy: float) -> None:
        """After every training epoch (models.training's progress): the metrics, then whether to stop."""
        if self.metrics is not None:
            self.metrics.progress(phase, epoch, epochs, loss, accuracy)
        if self._curves is not None:
            self._curves.epoch(self._learning, loss, accuracy)
        self._check_stop()

    def _log_selection(self, record: dict) -> None:
        """An event-log listener: a selection's scores and arms' accuracies into the curves."""
        if self._curves is not None and record["event"] in ("backbone_selected", "transfer_done"):
            self._curves.add(selection_rows(record.get("index", self._learning), record))

    def _stopping(self) -> bool:
        """Whether to stop; the ranks of one node decide together, or one would wait on the others forever."""
        stop = self._stop.is_set()
        return self._parallel.any(stop) if self._parallel is not None else stop

    def run(self) -> int:
        s, run = self.settings, self.run_cfg
        tls = load_tls(s.tls, s.node_id)  # bad certificates and bad data fail before the node binds a port
        tasks, infos = prepare_tasks(run)
        if self.rank is not None and not self.rank.serves:
            self._parallel = join_group(self.rank, self.device)
            self._follow(tasks)
            leave_group(self._parallel)
            return 0
        lock = StateLock(self.state_dir).acquire()  # one node per state folder: a second one exits here
        try:
            if self.rank is not None:
                self._parallel = join_group(self.rank, self.device)
            return self._serve(tasks, infos, tls)
        finally:
            lock.release()

    def _serve(self, tasks, infos, tls) -> int:
        s = self.settings
        self._public = prepare_public(self.run_cfg) if "public_features" in s.serve else None
        server, servicer, health, address = self._start_server(tls, infos)
        gossip, gossip_clients = self._start_gossip(servicer, tls)
        call_policy = CallPolicy(timeout=s.rpc_timeout, attempts=s.rpc_attempts)
        self._probe_history = ProbeHistory(self.run_cfg.seed)
        fetched = self.metrics.fetched if self.metrics else None
        self._peer_clients = ClientPool(lambda a, expected: PeerClient(a, s.node_id, call_policy, servicer.payloads,
                                                                       tls, expected, fetched))
        try:
            self._learn(tasks)
            if self._parallel is not None:
                leave_group(self._parallel)  # the other ranks are done once the tasks are; rank 0 serves on alone
                self._parallel = None
            if not s.exit_when_done and not self._stop.is_set():
                self.events.emit("serving", address=address, snapshot_version=self._snapshot.version if self._snapshot else 0)
                while not self._stop.wait(0.2):
                    pass
        finally:
            # the server stops taking calls and lets in-flight ones finish (or cancels them) before the
            # clients their handlers may still use (ProbePeer relays) are closed
            health.enter_graceful_shutdown()
            gossip.stop()
            server.stop(grace=1.0).wait(5)
            gossip_clients.close()
            self._peer_clients.close()
            server.admission.close()
            if self._metrics_http is not None:
                self._metrics_http.close()
            servicer.payloads.flush()
            self.events.emit("node_stopped")
            self.events.close()
            leave_group()
        return 0

    def _start_server(self, tls, infos):
        """Bind, serve peers from the published snapshot and announce it: (server, servicer, health, address)."""
        s, run = self.settings, self.run_cfg
        # expensive calls get expensive.threads workers of their own: Health and gossip have theirs (admission.py)
        server, port = bind(s.listen, workers=s.expensive.threads, max_message_bytes=s.max_message_bytes,
                            events=self.events, tls=tls, metrics=self.metrics)
        address, advertised_from = advertise_address(s.listen, port, s.advertise, s.seed_peers)
        identity = NodeIdentity(s.node_id, address, run.data.modality, run.method.name, run.model.token_dim,
                                kv_shapes(run.model), tuple(s.serve), self.genesis, self.public_set)
        view = ViewSettings(max_peers=s.max_peers, dead_ttl=max(s.dead_peer_ttl, 2 * s.failure_timeout),
                            allow=tls.allow if tls else frozenset(), fanout=s.gossip_fanout or None)
        self._membership = Membership(s.node_id, address, list(s.seed_peers), s.failure_timeout, self.events.emit, view)
        servicer = PeerServicer(identity, self.snapshot, self._membership, self.events,
                                OuterGradService(s.outer_grad_batches, s.outer_grad_batch_size),
                                CallLimiter(s.expensive), s.probe_budget, gossip_entries=s.gossip_entries,
                                pair_secret=self.cfg.pair_secret,
                                classifier=ClassifyService(run.view(), self.device) if "classify" in s.serve else None,
                                metrics=self.metrics)
        metrics_address = self._serve_metrics(servicer)
        health = serve(server, servicer)
        self._announce(address, advertised_from, f"{s.listen.rpartition(':')[0]}:{port}", tls, infos, metrics_address)
        return server, servicer, health, address

    def _serve_metrics(self, servicer: PeerServicer) -> str | None:
        """Start /metrics (node.metrics.listen) reading this node's membership, snapshot and pools; its address."""
        if self.metrics is None:
            return None
        self.metrics.watch(self._membership, self.snapshot, servicer.limiter, self.device)
        self._metrics_http, address = serve_metrics(self.settings.metrics.listen, self.metrics.registry)
        return address

    def _announce(self, address: str, advertised_from: str, listen: str, tls, infos, metrics: str | None) -> None:
        s, run = self.settings, self.run_cfg
        self.events.emit("node_started", address=address, advertised_from=advertised_from, listen=listen,
                         pid=os.getpid(), **({"metrics": f"http://{metrics}/metrics"} if metrics else {}),
                         modality=run.data.modality, method=run.method.name, device=str(self.device),
                         device_name=device_name(self.device),
                         software=software_version(), seeds=list(s.seed_peers))
        if self.rank is not None:
            self.events.emit("distributed", world_size=self.rank.world, backend=self._parallel.backend,
                             threads_per_rank=torch.get_num_threads())
        if tls:
            self.events.emit("tls", identity=tls.node_id, ca=str(s.tls.paths(s.node_id)["ca"]),
                             allow=sorted(tls.allow) or "every holder of a swarm certificate")
        else:
            self.events.emit("unauthenticated", warning="plaintext gRPC without TLS: any process that reaches "
                             f"{address} can call this node and claim any node id; run it only on a network you "
                             "trust, or set node.tls (crossback certs)")
        for warning in data_warnings(infos):
            self.events.emit("data_warning", warning=warning)

    def _start_gossip(self, servicer: PeerServicer, tls) -> tuple[GossipLoop, ClientPool]:
        s = self.settings
        on_payload = servicer.payloads  # gossip requests are tallied per interval like gossip replies
        policy = CallPolicy(timeout=min(s.rpc_timeout, max(0.5, s.heartbeat_interval)), attempts=2,
                            backoff_max=s.heartbeat_interval / 4)
        fetched = self.metrics.fetched if self.metrics else None
        clients = ClientPool(lambda a, expected: PeerClient(a, s.node_id, policy, on_payload, tls, expected, fetched))
        gossip = GossipLoop(self._membership, clients, servicer.self_entry, lambda: peer_entries(self._membership),
                            s.heartbeat_interval, entries=s.gossip_entries, indirect=s.indirect_probes,
                            seed=self.run_cfg.seed)
        servicer.probe_peer = gossip.probe_for
        gossip.start()
        return gossip, clients

    def _follow(self, tasks) -> None:
        """A rank other than 0: train every task together with rank 0, then take the learner it ended
        the task with (what it borrowed and adapted included), so the next task starts from the same one."""
        parallel = self._parallel
        learner = broadcast_learner(parallel, None, self.device)
        for i in range(len(learner.tasks), len(tasks)):
            if self._stopping():
                return
            try:
                learn_task(learner, tasks[i], self.run_cfg.method, self.run_cfg.train, self._check_stop, parallel)
            except Interrupted:
                return
            ranks_agree(parallel, learner)
            learner = broadcast_learner(parallel, None, self.device)
            ranks_agree(parallel, learner)

    def _learn(self, tasks) -> None:
        ckpt_root = self.state_dir / "checkpoints"
        self.state_dir.mkdir(parents=True, exist_ok=True)  # config.json beside the checkpoints: crossback evaluate
        write_json_atomic(self.state_dir / "config.json", config_to_dict(self.run_cfg))
        learner, rows, history = self._resume(ckpt_root, tasks)
        if self._parallel is not None:
            broadcast_learner(self._parallel, learner, self.device)
        s = self.settings
        self._curves = MetricLog(self.log_dir / f"{s.node_id}.metrics.csv",
                                 Path(s.tensorboard) if s.tensorboard else None, history)
        try:
            for i in range(len(learner.tasks), len(tasks)):
                if self._stopping() or not self._await_arrival(i, tasks[i].name) \
                        or not self._learn_task(learner, i, tasks, rows, ckpt_root):
                    return
        finally:
            self._curves.close()
            self._curves = None
        self.events.emit("tasks_done", finished=len(learner.tasks))

    def _await_arrival(self, i: int, name: str) -> bool:
        """Wait until task ``i`` arrives (node.task_arrivals), serving peers meanwhile; False if stopped."""
        arrivals = self.settings.task_arrivals
        if i >= len(arrivals):
            return True
        due = self._origin + arrivals[i]
        wait = due - time.time()
        if wait > 0:
            self.events.emit("task_waiting", task=name, index=i, arrives_in=round(wait, 3))
            if self._stop.wait(wait):  # other ranks of a distributed node wait in their next collective
                return False
        self.events.emit("task_arrived", task=name, index=i, due=round(due, 3), late=round(time.time() - due, 3))
        return True

    def _resume(self, ckpt_root: Path, tasks) -> tuple:
        """(learner, accuracy rows, metric-log rows) from the newest intact checkpoint (publishing it), or a
        new learner."""
        def corrupt(exc, moved):
            self.events.emit("checkpoint_corrupt", file=str(exc.path), expected_sha256=exc.expected,
                             actual_sha256=exc.actual, moved_to=str(moved), error=str(exc)[:1000])

        for done in clean_leftovers(ckpt_root):  # under the state lock: every other writer is dead
            self.events.emit("checkpoint_leftover", action=done)
        intact = latest_intact_checkpoint(ckpt_root, corrupt)
        if intact is None:
            return new_learner(self.run_cfg, self.cfg.swarm.genesis).to(self.device), [], []
        latest, learner, state = intact
        if is_legacy(latest):  # written before digests: adopt it as it is now, so later damage is caught
            latest = save_checkpoint(ckpt_root, learner, state)
            self.events.emit("checkpoint_upgraded", checkpoint=str(latest), format=FORMAT)
        learner.to(self.device)
        genesis = self.cfg.swarm.genesis
        if learner.genesis != genesis:
            raise ConfigError(f"{self.state_dir} was initialised from swarm.genesis {learner.genesis}, not "
                              f"{genesis}: it belongs to another swarm; use a new state dir")
        names = [t.name for t in learner.tasks]
        if names != [t.name for t in tasks[: len(names)]]:
            raise ConfigError(f"{self.state_dir} holds tasks {names}, which the config's tasks do not start with")
        self.publish(latest, tasks[len(names) - 1].train)
        self.events.emit("resumed", checkpoint=str(latest), finished_tasks=names)
        return learner, state.get("accuracy_matrix", []), state.get("metric_rows", [])

    def _learn_task(self, learner, i: int, tasks, rows: list, ckpt_root: Path) -> bool:
        """Task ``i``: learn it locally, borrow (selection on), checkpoint and publish; False if stopped."""
        data, parallel = tasks[i], self._parallel
        self._learning = i
        self.events.emit("task_started", task=data.name, index=i, classes=len(data.classes))
        started = time.perf_counter()
        try:
            learn_task(learner, data, self.run_cfg.method, self.run_cfg.train, self._epoch_done, parallel)
        except Interrupted:
            self.events.emit("task_interrupted", task=data.name, index=i)
            return False
        ranks = {}
        if parallel is not None:  # DDP keeps the ranks' learners bit-identical; this checks it did
            ranks = {"world_size": parallel.world, "in_step": ranks_agree(parallel, learner)}
        if self.cfg.selection.enabled:
            peers = [(p.node_id, p.address) for p in self._membership.alive()]
            access = PeerAccess(self.settings.node_id, peers, self._peer_clients, self.genesis, self._probe_history)
            plan = ArmPlan(make_strategy(self.cfg.transfer, self.public_set, self.cfg.pair_secret),
                           AdaptOptions.from_config(self.cfg.adaptation, self.run_cfg.train), self.run_cfg.seed)
            transfer_step(TaskAtHand(learner, i, data), access, self.cfg.selection, plan, self.events.emit,
                          self.cfg.experiment)
        if parallel is not None:
            broadcast_learner(parallel, learner, self.device)
            ranks["synced"] = ranks_agree(parallel, learner)
        rows.append([evaluate(learner, j, tasks[j].test) for j in range(i + 1)])
        self._curves.task_done(rows)
        folder = self._checkpoint(ckpt_root, learner, {"accuracy_matrix": rows, "metric_rows": self._curves.rows})
        if folder is None:  # asked to stop before the disk took it: the task is relearned next start
            self.events.emit("task_interrupted", task=data.name, index=i, reason="checkpoint not written")
            return False
        self.events.emit("task_finished", task=data.name, index=i, accuracy=rows[-1][-1],
                         accuracies=rows[-1], seconds=round(time.perf_counter() - started, 3),
                         **({"ranks": ranks} if ranks else {}))
        self.publish(folder, data.train)
        return True

    def _checkpoint(self, root: Path, learner, state: dict) -> Path | None:
        """Write the finished task's checkpoint, retrying with backoff while the disk refuses (a full
        disk): the node keeps serving its last snapshot meanwhile. None if asked to stop first."""
        wait = CHECKPOINT_RETRY_FIRST
        for attempt in itertools.count(1):
            try:
                return save_checkpoint(root, learner, state)
            except CheckpointWriteError as exc:
                self.events.emit("checkpoint_failed", attempt=attempt, error=str(exc)[:1000], retry_in=wait,
                                 serving=self._snapshot.version if self._snapshot else 0)
            if self._stop.wait(wait):
                return None
            wait = min(2 * wait, CHECKPOINT_RETRY_MAX)


def install_signal_handlers(node: Node) -> None:
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
