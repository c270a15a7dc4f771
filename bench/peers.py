"""Donors for the benchmark: published snapshots served by the node's own gRPC peer service, in-process.

The receiver selects through exactly the client, wire and servicer a node uses; only the processes
(and so their timing) are gone: every donor's snapshot is fixed before any receiver starts.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from crossback.config.node import PAYLOAD_KINDS
from crossback.models.learner import ContinualLearner
from crossback.models.perceiver import kv_shapes
from crossback.models.persistence import latest_intact_checkpoint, save_checkpoint
from crossback.node.events import EventLog
from crossback.node.server import NodeIdentity, PeerServicer, bind, serve
from crossback.node.snapshot import Snapshot
from crossback.orchestrator_free.genesis import genesis_id
from crossback.orchestrator_free.membership import Membership


def published(folder: Path, tasks: int, build: Callable[[], ContinualLearner]) -> Snapshot:
    """The snapshot peers see of the learner ``build`` makes, checkpointed under ``folder``; a checkpoint
    already there with ``tasks`` finished tasks is reused (a resumed run)."""
    intact = latest_intact_checkpoint(folder)  # a corrupt one is moved aside and rebuilt
    if intact is not None:
        snap = Snapshot.from_checkpoint(intact[0])
        if snap.version == tasks:
            return snap
    return Snapshot.from_checkpoint(save_checkpoint(folder, build(), {}))


def untrained_learner(control: ContinualLearner) -> ContinualLearner:
    """Turn a fresh learner into a control donor that never learned anything: one task, zero steps
    (it can be served like any snapshot; its K/V is its random initialisation)."""
    control.begin_task("untrained", 2)
    control.end_task()
    return control


# the benchmark's stand-in peers and its students hash shared item ids under this key: they are one
# process on loopback, not a swarm with outsiders (a node reads its secret from swarm.pair_secret_file)
BENCH_PAIR_SECRET = b"crossback benchmark pair secret"


@contextmanager
def serve_snapshots(snapshots: dict[str, Snapshot], log_dir: Path, public_sets: dict[str, str] | None = None,
                    pair_secret: bytes = BENCH_PAIR_SECRET, servicers: dict[str, type] | None = None):
    """Serve each ``name -> snapshot`` on its own loopback port; yields ``name -> address``.
    ``public_sets``: the public paired set each one holds out (by name; default none). ``servicers``: a
    PeerServicer subclass to serve some of them with (by name: a peer that misbehaves, in tests)."""
    servers, logs, addresses = [], [], {}
    try:
        for name, snap in snapshots.items():
            server, port = bind("127.0.0.1:0", workers=4)
            address = f"127.0.0.1:{port}"
            learner = snap.learner
            identity = NodeIdentity(name, address, learner.modality, learner.method, learner.cfg.token_dim,
                                    kv_shapes(learner.cfg), PAYLOAD_KINDS, genesis_id(learner.genesis, learner.cfg),
                                    (public_sets or {}).get(name, ""))
            events = EventLog(name, log_dir / f"{name}.jsonl", console=None)
            logs.append(events)
            servicer = (servicers or {}).get(name, PeerServicer)
            serve(server, servicer(identity, lambda s=snap: s, Membership(name, address, [], 60.0), events,
                                   pair_secret=pair_secret))
            servers.append(server)
            addresses[name] = address
        yield addresses
    finally:
        for server in servers:
            server.stop(grace=None)
        for events in logs:
            events.close()
