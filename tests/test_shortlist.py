"""Cheap scores on K/V, two-stage selection (only the shortlist's backbones move) and bounded probing."""
import dataclasses

import pytest
import torch

from crossback.bench.peers import published, serve_snapshots, untrained_learner
from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig, PackNetOptions
from crossback.models.methods import learn_task
from crossback.models.perceiver import ENCODER_KV, split_kv
from crossback.config.model import TrainOptions
from crossback.orchestrator_free.candidates import ProbeHistory
from crossback.orchestrator_free.genesis import genesis_id
from crossback.orchestrator_free.scores import OWN_VIEW_BONUS, Receiver, apply_score, genesis_kv, kv_motion
from crossback.orchestrator_free.reasons import call_failed, skip
from crossback.orchestrator_free.selection import PeerAccess, TaskAtHand, Candidate, Probe, Scores
from crossback.config.selection import SelectionConfig
from crossback.orchestrator_free.shortlist import select
from crossback.node.transport import CallPolicy, ClientPool, PeerClient
from crossback.config.transfer import TransferConfig
from crossback.transfer.registry import make_strategy
from crossback.config.data import SplitSpec, TaskSpec, View
from crossback.data.tasks import build_task

from conftest import tiny_config

OPTS = TrainOptions(epochs=2, batch_size=64)
PACKNET = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))
GENESIS = 17


def _learner(seed: int) -> ContinualLearner:
    return ContinualLearner(tiny_config(), "image", "packnet", seed, genesis=GENESIS)


def test_the_genesis_kv_reads_whole_while_a_server_thread_runs_the_same_network():
    """A node's server answers peers through the learner's network while the node selects for its next
    task: reading the genesis K/V must not catch a task's tensor swapped in (seen at 64 devices)."""
    import threading

    learner = _learner(1)
    task = learner.begin_task("t", 3)
    learner.end_task()
    expected = genesis_kv(learner)
    stop, failures = threading.Event(), []

    def serve():
        x = torch.zeros(2, 1, 8, 8)
        while not stop.is_set():
            learner.logits(x, task)

    server = threading.Thread(target=serve)
    server.start()
    try:
        for _ in range(300):
            try:
                assert torch.equal(genesis_kv(learner), expected)
            except (AttributeError, AssertionError) as exc:
                failures.append(repr(exc))
    finally:
        stop.set()
        server.join(10)
    assert not failures, failures[:3]


def test_kv_motion_ranks_a_node_that_never_moved_last_and_a_like_mover_first():
    rx = _learner(1)
    origin = genesis_kv(rx)
    g = torch.Generator().manual_seed(0)
    ours = torch.randn(origin.shape, generator=g, dtype=torch.float64)
    kept = torch.ones(origin.shape, dtype=torch.bool)
    like, unlike = origin + 0.1 * ours, origin - 0.1 * ours
    assert kv_motion(split_kv(origin.float()), ours, kept, origin) == -1.0  # learned nothing
    assert kv_motion(split_kv(like), ours, kept, origin) == pytest.approx(1.0)
    assert kv_motion(split_kv(unlike), ours, kept, origin) == pytest.approx(-1.0)
    pruned = like.clone()
    pruned[0] = 0.0  # a weight the candidate pruned is not a move it learned
    assert kv_motion(split_kv(pruned), ours, kept, origin) == pytest.approx(1.0)


def test_kv_motion_view_ranks_our_view_first_and_by_kv_motion_within_each_view(digits_tasks):
    rx = _learner(1)
    learn_task(rx, digits_tasks[0], PACKNET, OPTS)
    receiver = Receiver(rx, 0, digits_tasks[0], 0.5)
    ours, _ = receiver.own_motion
    origin = receiver.origin
    noise = torch.randn(origin.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = float(ours.norm() / noise.norm())

    def cand(peer: str, modality: str, moved: torch.Tensor) -> Candidate:
        return Candidate(peer, f"h:{peer}", probe=Probe(modality=modality, kv=split_kv((origin + moved).float())))

    cands = [cand("text-like-us", "text", ours),  # moved exactly as we did, but in another view
             cand("image-near", "image", ours + 0.5 * scale * noise),
             cand("image-far", "image", ours + 3.0 * scale * noise),
             cand("image-still", "image", torch.zeros_like(ours))]  # learned nothing
    apply_score("kv_motion_view", cands, receiver)
    motion = {c.peer: c.scores.by_name["kv_motion"] for c in cands}
    view = {c.peer: c.scores.by_name["kv_motion_view"] for c in cands}
    assert motion["text-like-us"] == pytest.approx(1.0) and motion["image-still"] == -1.0
    assert max(motion, key=motion.get) == "text-like-us"  # kv_motion alone: the other view first
    # our view first, by kv_motion within; a node that learned nothing stays last whatever its view
    assert sorted(view, key=view.get, reverse=True) == ["image-near", "image-far", "text-like-us", "image-still"]
    assert view["image-still"] == -1.0
    assert view["image-near"] == pytest.approx(motion["image-near"] + OWN_VIEW_BONUS)
    assert view["text-like-us"] == motion["text-like-us"]
    assert all(c.scores.rank == view[c.peer] for c in cands)


def test_every_task_starts_from_the_genesis_values_of_its_free_weights(digits_tasks):
    learner = _learner(3)
    for data in digits_tasks[:2]:
        learn_task(learner, data, PACKNET, OPTS)
    layer = learner.layers[ENCODER_KV]
    start = learner.kv_starts[1]
    origin = genesis_kv(learner).float()
    claimed = layer.owner == 2  # what task 1 claimed: freed by task 0's pruning
    assert bool(claimed.any()) and torch.equal(start[claimed], origin[claimed])


@pytest.fixture(scope="module")
def donors(tmp_path_factory, digits_tasks):
    root = tmp_path_factory.mktemp("shortlist")
    snaps = {}
    for i, name in enumerate(("d-0", "d-1", "d-2")):
        snaps[name] = published(root / name, 1, lambda i=i: _learned(10 + i, digits_tasks[i % 2]))
    snaps["untrained"] = published(root / "untrained", 1, lambda: untrained_learner(_learner(99)))
    with serve_snapshots(snaps, root / "logs") as addresses:
        yield addresses


def _learned(seed, data):
    learner = _learner(seed)
    learn_task(learner, data, PACKNET, OPTS)
    return learner


def _select(cfg: SelectionConfig, addresses, digits_tasks, history=None):
    rx = _learner(1)
    learn_task(rx, digits_tasks[0], PACKNET, OPTS)
    strategy = make_strategy(TransferConfig(borrow="backbone"))
    clients = ClientPool(lambda a, _e: PeerClient(a, "rx", CallPolicy(timeout=30.0, attempts=1)))
    try:
        return select(TaskAtHand(rx, 0, digits_tasks[0]),
                      PeerAccess("rx", sorted(addresses.items()), clients, genesis_id(GENESIS, rx.cfg), history), cfg,
                      strategy)
    finally:
        clients.close()


@pytest.mark.parametrize("k", [0, 1, 2, "all"])
def test_a_shortlist_moves_only_its_backbones_and_the_winner_is_among_them(k, donors, digits_tasks):
    sel = _select(SelectionConfig(score="kv_motion", shortlist=k), donors, digits_tasks)
    fetched = [c for c in sel.candidates if c.payload.bytes]
    assert len(sel.candidates) == 4 and all(c.probe.bytes > 0 for c in sel.candidates)
    assert len(fetched) == (len(sel.candidates) if k == "all" else max(k, 1))
    assert sel.chosen in fetched and sel.chosen.payload.parts is not None
    assert sel.chosen.peer != "untrained"  # kv_motion puts a node that learned nothing last
    assert sel.stages["payload"]["bytes"] == sum(c.payload.bytes for c in fetched)
    backbone = fetched[0].payload.bytes
    assert all(c.probe.bytes < 0.2 * backbone for c in sel.candidates)
    if k == 0:
        assert sel.score_name == "kv_motion"
    else:
        assert sel.score_name == "logme" and all("logme" in c.scores.by_name for c in fetched)
        best = max(fetched, key=lambda c: (c.scores.by_name["logme"], c.peer))
        assert sel.chosen is best


def test_a_payload_score_alone_fetches_every_backbone(donors, digits_tasks):
    sel = _select(SelectionConfig(score="logme"), donors, digits_tasks)
    assert all(c.payload.bytes > 0 for c in sel.candidates) and sel.score_name == "logme"


def test_max_candidates_bounds_the_peers_probed_and_rotates_through_the_swarm(donors, digits_tasks):
    history = ProbeHistory(seed=0)
    cfg = SelectionConfig(score="kv_motion", shortlist=0, max_candidates=2)
    seen = []
    for _ in range(2):
        sel = _select(cfg, donors, digits_tasks, history)
        assert len(sel.candidates) + len(sel.skipped) == 2
        seen.append({c.peer for c in sel.candidates})
    chosen = sel.chosen.peer
    assert chosen in seen[1] and len(seen[0] | seen[1]) >= 3  # the winner stays, the other slot rotates


def test_the_probe_order_is_the_documented_rule():
    history = ProbeHistory(seed=4)
    peers = [(f"p{i}", f"h:{i}") for i in range(6)]
    first = history.pick(peers, 3, task=0)
    assert first == history.pick(list(reversed(peers)), 3, task=0)  # a seeded draw, not the input order
    probed = [Candidate(p, a) for p, a in first]
    probed[1].failure = skip("other_genesis", "genesis 1:x is not ours")
    history.record(probed, chosen=first[0][0])
    second = history.pick(peers, 6, task=1)
    assert second[0] == first[0]  # last winner first
    assert {p for p, _ in second[1:4]} == {p for p, _ in peers} - {p for p, _ in first}  # never probed next
    assert second[-1] == first[1]  # the unfit one last
    assert len(history.pick(peers, 0, task=2)) == 6


def _cand(peer: str, **scores) -> Candidate:
    return Candidate(peer, f"h:{peer}", scores=Scores(by_name=dict(scores), rank=scores.get("kv_motion")))


def test_the_decision_rule_in_each_mode():
    from crossback.orchestrator_free.shortlist import decide, shortlist_of

    cfg = SelectionConfig(score="kv_motion", shortlist=2)
    a, b, c = _cand("a", kv_motion=0.9, logme=-0.5), _cand("b", kv_motion=0.5, logme=-0.1), _cand("c", kv_motion=0.1, logme=0.9)
    short, mode = shortlist_of([a, b, c], cfg)
    assert (short, mode) == ([a, b], "confirm")
    assert decide([a, b, c], short, mode, cfg)[0] is b  # the best LogME of the top 2, not c outside them
    short, mode = shortlist_of([a, b, c], dataclasses.replace(cfg, shortlist=0))
    assert (short, mode) == ([], "cheap") and decide([a, b, c], short, mode, cfg)[0] is a
    short, mode = shortlist_of([a, b, c], dataclasses.replace(cfg, shortlist="all"))
    assert len(short) == 3 and decide([a, b, c], short, mode, cfg)[0] is c
    # no genesis: nobody has kv_motion, so every candidate is confirmed
    x, y = Candidate("x", "h:x", scores=Scores({"logme": 0.1})), Candidate("y", "h:y", scores=Scores({"logme": 0.2}))
    short, mode = shortlist_of([x, y], cfg)
    assert mode == "unranked" and decide([x, y], short, mode, cfg)[:1] == (y,)
    # a shortlist the confirming score cannot judge (another model size): the cheap score decides
    p, q = _cand("p", kv_motion=0.3), _cand("q", kv_motion=0.7)
    short, mode = shortlist_of([p, q], cfg)
    chosen, reason, name = decide([p, q], short, mode, cfg)
    assert chosen is q and name == "kv_motion" and "no shortlisted candidate has logme" in reason
    # nobody there, or nobody answered: the reason says so, not that anyone was confirmed
    short, mode = shortlist_of([], cfg)
    assert decide([], short, mode, cfg)[:2] == (None, "no eligible peer")
    down = Candidate("z", "h:z", failure=call_failed("UNAVAILABLE", "connection refused"))
    short, mode = shortlist_of([], cfg)
    assert decide([down], short, mode, cfg)[:2] == (None, "no candidate answered")


class PayloadLiar:
    """A peer that serves an honest snapshot's K/V (so it ranks like it in stage 1) but lies about its
    backbone in stage 2."""

    @staticmethod
    def servicer(lie: str):
        import time as _time

        from crossback.node.server import PeerServicer
        from crossback.node.wire import encode_all

        class Liar(PeerServicer):
            def FetchPayload(self, request, context):
                snap = self.snapshot()
                if lie == "slow":
                    _time.sleep(4.0)
                    yield from super().FetchPayload(request, context)
                elif lie == "moved":
                    for chunk in super().FetchPayload(request, context):
                        chunk.snapshot_version += 1
                        yield chunk
                elif lie == "shapes":
                    yield from encode_all({"core.latents": torch.zeros(3, 3)}, snap.version)

        return Liar


@pytest.fixture(scope="module")
def liars(tmp_path_factory, digits_tasks):
    from crossback.models.perceiver import kv_shapes
    from crossback.node.events import EventLog
    from crossback.config.node import PAYLOAD_KINDS
    from crossback.node.server import NodeIdentity, bind, serve
    from crossback.orchestrator_free.membership import Membership

    root = tmp_path_factory.mktemp("payload-liars")
    snap = published(root / "honest", 1, lambda: _learned(20, digits_tasks[0]))
    servers, logs, addresses = [], [], {}
    for lie in ("slow", "moved", "shapes"):
        server, port = bind("127.0.0.1:0", workers=4)
        name, address = f"a-liar-{lie}", f"127.0.0.1:{port}"  # sorts before "honest": liars win stage-1 ties
        learner = snap.learner
        identity = NodeIdentity(name, address, "image", "packnet", learner.cfg.token_dim, kv_shapes(learner.cfg),
                                PAYLOAD_KINDS, genesis_id(GENESIS, learner.cfg))
        logs.append(EventLog(name, root / f"{lie}.jsonl", console=None))
        serve(server, PayloadLiar.servicer(lie)(identity, lambda: snap, Membership(name, address, [], 60.0), logs[-1]))
        servers.append(server)
        addresses[name] = address
    with serve_snapshots({"honest": snap}, root / "logs") as honest:
        yield addresses | honest
    for server in servers:
        server.stop(grace=None)
    for log in logs:
        log.close()


@pytest.mark.parametrize("k", [1, "all"])
def test_a_peer_that_wins_stage_one_and_lies_in_stage_two_does_not_deny_the_selection(k, liars, digits_tasks):
    import time as _time

    started = _time.monotonic()
    sel = _select(SelectionConfig(score="kv_motion", shortlist=k, deadline=2.0), liars, digits_tasks)
    assert _time.monotonic() - started < 20  # each stage within its deadline
    assert sel.chosen is not None and sel.chosen.peer == "honest"
    errors = {c.peer: c.error for c in sel.candidates if c.error}
    if k == "all":
        assert "deadline" in errors["a-liar-slow"] and "snapshot" in errors["a-liar-moved"]
        assert "lacks" in errors["a-liar-shapes"]


@pytest.mark.parametrize("k", [2, "all"])
def test_combine_average_adapts_on_the_mean_of_the_fetched_payloads_and_names_no_origin(k, donors, digits_tasks):
    from crossback.models.borrowed import BORROWED_EVENT, average_parts
    from crossback.config.selection import ExperimentConfig
    from crossback.orchestrator_free.backbone import ArmPlan, PeerAccess, arm_seed, run_arm, transfer_step
    from crossback.orchestrator_free.selection import TaskAtHand
    from crossback.transfer.base import AdaptOptions

    cfg = SelectionConfig(score="kv_motion", shortlist=k, combine="average")
    strategy = make_strategy(TransferConfig(borrow="backbone"))
    opts = AdaptOptions(epochs=1, train=OPTS)
    rx = _learner(1)
    learn_task(rx, digits_tasks[0], PACKNET, OPTS)
    base = rx.task_state(0)
    events = []
    clients = ClientPool(lambda a, _e: PeerClient(a, "rx", CallPolicy(timeout=30.0, attempts=1)))
    try:
        access = PeerAccess("rx", sorted(donors.items()), clients, genesis_id(GENESIS, rx.cfg))
        out = transfer_step(TaskAtHand(rx, 0, digits_tasks[0]), access, cfg, ArmPlan(strategy, opts, 5),
                            lambda event, **f: events.append({"event": event, **f}), ExperimentConfig(random=False))
    finally:
        clients.close()
    selected = next(e for e in events if e["event"] == "backbone_selected")
    fetched = sorted(c.peer for c in out["candidates"] if c.payload.parts is not None)
    assert selected["combine"] == "average" and selected["averaged"] == fetched
    assert len(fetched) == (2 if k == 2 else len(donors))  # what stage 2 fetched, no more
    arm = out["arms"]["selected"]
    assert arm["averaged"] == fetched and arm["peer"] is None
    # exactly the arm of the uniform mean of those payloads, from the same state, seed and budget
    members = [c for c in out["candidates"] if c.peer in fetched]
    direct = run_arm(TaskAtHand(rx, 0, digits_tasks[0]), ArmPlan(strategy, opts, arm_seed(5, 0), base),
                     average_parts([c.payload.parts for c in members]))
    assert (direct.val, direct.test) == (arm["val"], arm["test"])
    if out["kept"] == "selected":  # an averaged model is no peer's: it names no origin when re-served
        (borrowed,) = [e for e in rx.tasks[0].events if e["event"] == BORROWED_EVENT]
        assert borrowed["combine"] == "average" and borrowed["averaged"] == fetched and borrowed["origins"] == {}


def test_combine_average_is_refused_for_a_strategy_without_parts_to_average():
    from crossback.orchestrator_free.selection import check_combine

    check_combine(SelectionConfig(combine="average"), make_strategy(TransferConfig(borrow="backbone")))
    with pytest.raises(ValueError, match="combine: average.*'mergenet'"):
        check_combine(SelectionConfig(combine="average"), make_strategy(TransferConfig(strategy="mergenet")))
    from crossback.config.errors import ConfigError
    from crossback.config.loader import from_mapping

    with pytest.raises(ConfigError, match="selection.combine"):
        from_mapping(SelectionConfig, {"combine": "median"}, "selection")


def test_a_peer_that_publishes_between_the_stages_is_probed_once_more_and_kept(tmp_path, digits_tasks):
    import threading

    from crossback.config.node import PAYLOAD_KINDS
    from crossback.models.perceiver import kv_shapes
    from crossback.node.events import EventLog
    from crossback.node.server import NodeIdentity, PeerServicer, bind, serve
    from crossback.orchestrator_free.membership import Membership

    learner = _learned(30, digits_tasks[0])
    first = published(tmp_path / "v1", 1, lambda: learner)
    learn_task(learner, digits_tasks[1], PACKNET, OPTS)
    second = published(tmp_path / "v2", 2, lambda: learner)
    moved, calls = threading.Event(), []

    class Mover(PeerServicer):  # publishes snapshot 2 the moment stage 2 asks for its backbone
        def FetchKV(self, request, context):
            calls.append("kv")
            yield from super().FetchKV(request, context)

        def FetchPayload(self, request, context):
            moved.set()
            yield from super().FetchPayload(request, context)

    server, port = bind("127.0.0.1:0", workers=4)
    address = f"127.0.0.1:{port}"
    identity = NodeIdentity("mover", address, "image", "packnet", learner.cfg.token_dim, kv_shapes(learner.cfg),
                            PAYLOAD_KINDS, genesis_id(GENESIS, learner.cfg))
    log = EventLog("mover", tmp_path / "mover.jsonl", console=None)
    serve(server, Mover(identity, lambda: second if moved.is_set() else first, Membership("mover", address, [], 60.0),
                        log))
    try:
        sel = _select(SelectionConfig(score="kv_motion", shortlist="all"), {"mover": address}, digits_tasks)
    finally:
        server.stop(grace=None)
        log.close()
    (cand,) = sel.candidates
    assert cand.error is None and cand.probe.reprobed and cand.snapshot_version == 2 and calls == ["kv", "kv"]
    assert sel.chosen is cand and cand.payload.parts is not None and cand.probe.cos is not None


EMOJI_A = ("event", "sport", "animal-mammal", "drink", "clothing")
EMOJI_B = ("game", "animal-bird", "country-flag", "food-prepared", "household")


def test_a_receiver_whose_earlier_task_another_view_learned_ranks_its_own_view_donor_of_this_task_first(
        tmp_path, emoji_catalog):
    """Issue 39's failure, end to end: the receiver (images) learned A, then B; a text donor learned A, an
    image donor learned B. The default cheap score ranks the image donor of B first, read from what the
    peers answer (their view from GetInfo, their K/V), and only its backbone moves."""
    image, text = View("image", image_size=16, channels=3), View("text", text_max_length=40)
    task = lambda view, name, classes: build_task(emoji_catalog, TaskSpec(name, classes=classes), SplitSpec(), view,
                                                  seed=0)[0]
    learner = lambda modality, seed: ContinualLearner(tiny_config(3, 4), modality, "packnet", seed, genesis=GENESIS)
    rx = learner("image", 1)
    rx_tasks = [task(image, "a", EMOJI_A), task(image, "b", EMOJI_B)]
    for data in rx_tasks:
        learn_task(rx, data, PACKNET, OPTS)

    def donor(modality, seed, data):
        d = learner(modality, seed)
        learn_task(d, data, PACKNET, OPTS)
        return d

    snaps = {"txt-a": published(tmp_path / "txt-a", 1, lambda: donor("text", 11, task(text, "a", EMOJI_A))),
             "img-b": published(tmp_path / "img-b", 1, lambda: donor("image", 12, task(image, "b", EMOJI_B)))}
    strategy = make_strategy(TransferConfig(borrow="backbone"))
    cfg = SelectionConfig(shortlist=0)
    assert cfg.score == "kv_motion_view"
    with serve_snapshots(snaps, tmp_path / "logs") as addresses:
        clients = ClientPool(lambda a, _e: PeerClient(a, "rx", CallPolicy(timeout=30.0, attempts=1)))
        try:
            sel = select(TaskAtHand(rx, 1, rx_tasks[1]),
                         PeerAccess("rx", sorted(addresses.items()), clients, genesis_id(GENESIS, rx.cfg)), cfg, strategy)
        finally:
            clients.close()
    by_peer = {c.peer: c for c in sel.candidates}
    assert {p: c.probe.modality for p, c in by_peer.items()} == {"txt-a": "text", "img-b": "image"}
    scores = {p: c.scores.by_name for p, c in by_peer.items()}
    assert scores["img-b"]["kv_motion_view"] == pytest.approx(scores["img-b"]["kv_motion"] + OWN_VIEW_BONUS)
    assert scores["txt-a"]["kv_motion_view"] == scores["txt-a"]["kv_motion"]
    assert sel.chosen is not None and sel.chosen.peer == "img-b"
    assert by_peer["img-b"].payload.bytes > 0 and by_peer["txt-a"].payload.bytes == 0  # one backbone moved
