"""Selection when the *peer* is the liar: fake servers answer a selecting node with wrong shapes, NaN,
huge values, slow streams, or another snapshot between calls. Each is refused with a reason, the honest
peer is chosen, and selection finishes within its deadline."""
import math
import time

import pytest
import torch

from crossback.bench.peers import serve_snapshots
from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig, PackNetOptions
from crossback.models.methods import learn_task
from crossback.models.perceiver import kv_shapes
from crossback.config.model import TrainOptions
from crossback.models.persistence import save_checkpoint
from crossback.node.events import EventLog
from crossback.node.server import NodeIdentity, PeerServicer, bind, serve
from crossback.node.snapshot import Snapshot
from crossback.orchestrator_free.membership import Membership
from crossback.orchestrator_free.scores import Receiver, apply_score
from crossback.config.selection import SelectionConfig
from crossback.orchestrator_free.selection import PeerAccess, TaskAtHand, choose, probe_candidates
from crossback.node.transport import CallPolicy, ClientPool, PeerClient
from crossback.node.wire import encode, encode_all
from crossback.proto.v1 import peer_pb2 as pb

from conftest import tiny_config

OPTS = TrainOptions(epochs=1, batch_size=64)
PACKNET = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))


class Liar(PeerServicer):
    """A peer service that lies in one way (``lie``) and tells the truth otherwise."""

    def __init__(self, *args, lie: str, **kw):
        super().__init__(*args, **kw)
        self.lie = lie

    def FetchKV(self, request, context):
        snap = self.snapshot()
        if self.lie == "shapes":
            yield from encode_all({n: torch.zeros(3, 3) for n in snap.kv}, snap.version)
        elif self.lie == "huge":
            yield from encode_all({n: torch.full_like(t, 3e38) for n, t in snap.kv.items()}, snap.version)
        elif self.lie == "slow":
            time.sleep(3.0)
            yield from super().FetchKV(request, context)
        elif self.lie == "torn":  # a stream that stops half way through a tensor
            for name, t in snap.kv.items():
                yield next(encode(name, t, snap.version, chunk_bytes=1024))
        else:
            yield from super().FetchKV(request, context)

    def ProbeDDV(self, request, context):
        reply = super().ProbeDDV(request, context)
        if self.lie == "nan":
            return pb.ProbeResponse(node_id=reply.node_id, snapshot_version=reply.snapshot_version,
                                    ddv=[math.nan] * len(reply.ddv), token_dim=reply.token_dim)
        if self.lie == "moved":  # answers from another snapshot than the K/V it sent
            reply.snapshot_version += 1
        if self.lie == "short":
            del reply.ddv[1:]
        return reply


LIES = {"shapes": "shape", "huge": "not finite", "slow": "DEADLINE_EXCEEDED", "torn": "truncated",
        "nan": "finite", "moved": "snapshot", "short": "values"}


@pytest.fixture(scope="module")
def swarm(digits_tasks, tmp_path_factory):
    root = tmp_path_factory.mktemp("liars")
    donor = ContinualLearner(tiny_config(), "image", "packnet", seed=1)
    learn_task(donor, digits_tasks[0], PACKNET, OPTS)
    snap = Snapshot.from_checkpoint(save_checkpoint(root / "donor", donor, {}))
    servers, addresses, logs = [], {}, []
    for lie in LIES:
        server, port = bind("127.0.0.1:0", workers=8)
        address = f"127.0.0.1:{port}"
        identity = NodeIdentity(f"liar-{lie}", address, "image", "packnet", 32, kv_shapes(donor.cfg))
        events = EventLog(identity.node_id, root / f"{lie}.jsonl", console=None)
        serve(server, Liar(identity, lambda: snap, Membership(identity.node_id, address, [], 60.0), events, lie=lie))
        servers.append(server)
        logs.append(events)
        addresses[identity.node_id] = address
    with serve_snapshots({"honest": snap}, root / "logs") as honest:
        yield addresses | honest
    for server in servers:
        server.stop(grace=None)
    for events in logs:
        events.close()


def test_every_lie_is_refused_with_its_reason_and_the_honest_peer_is_chosen(swarm, digits_tasks):
    receiver = ContinualLearner(tiny_config(), "image", "packnet", seed=2)
    learn_task(receiver, digits_tasks[1], PACKNET, OPTS)
    pool = ClientPool(lambda a, _expected: PeerClient(a, "rx", CallPolicy(timeout=1.0, attempts=1)))
    cfg = SelectionConfig(score="ddv", deadline=10.0)
    started = time.monotonic()
    try:
        cands = probe_candidates(TaskAtHand(receiver, 0), PeerAccess("rx", sorted(swarm.items()), pool), cfg, "kv")
        apply_score("ddv", [c for c in cands if c.error is None], Receiver(receiver, 0, digits_tasks[1], cfg.euc_weight))
    finally:
        pool.close()
    assert time.monotonic() - started < cfg.deadline
    by_peer = {c.peer: c for c in cands}
    assert by_peer["honest"].error is None and by_peer["honest"].scores.rank is not None
    for lie, reason in LIES.items():
        cand = by_peer[f"liar-{lie}"]
        assert cand.error is not None and reason in cand.error, (lie, cand.error)
        assert len(cand.error) < 500
    chosen, _ = choose(cands)
    assert chosen.peer == "honest"
