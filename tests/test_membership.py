import pytest

from crossback.orchestrator_free.identity import address_problem, node_id_problem
from crossback.orchestrator_free.membership import Membership, ViewSettings


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(**kw):
    clock, events = Clock(), []
    m = Membership("a", "h:1", ["h:2", "h:1"], failure_timeout=3.0,
                   on_event=lambda name, **f: events.append((name, f.get("peer"))), view=ViewSettings(clock=clock, **kw))
    return m, clock, events


def test_seeds_are_contacted_until_known_and_self_is_skipped():
    m, _, _ = make()
    assert m.targets() == ["h:2"]
    m.heard_from("b", "h:2")
    m.learn("c", "h:3")
    m.learn("a", "h:1")  # itself, from someone's gossip
    assert m.targets() == ["h:2", "h:3"] and [p.node_id for p in m.peers()] == ["b"]
    m.heard_from("a", "h:7")  # an address that turned out to be this node is never dialled again
    m.learn("x", "h:7")
    assert "h:7" not in m.targets()


def test_a_claim_is_only_a_candidate_until_the_address_answers_with_the_id():
    m, _, events = make()
    m.learn("c", "h:3")
    assert m.alive() == [] and m.peers() == [] and m.candidates() == ["h:3"] and events == []
    m.heard_from("c", "h:3")
    assert [p.node_id for p in m.alive()] == ["c"] and events == [("peer_joined", "c")] and m.candidates() == []
    m.learn("c", "h:66")  # someone claims c moved: a candidate to dial, c's address stays until proven
    assert m.peers()[0].address == "h:3" and "h:66" in m.targets()
    m.heard_from("c", "h:66")  # the new address answered as c
    assert m.peers()[0].address == "h:66"


def test_a_peer_is_dead_after_failure_timeout_of_failed_probes_returns_on_contact_forgotten_after_the_ttl():
    m, clock, events = make(dead_ttl=30.0)
    m.heard_from("b", "h:2")
    clock.now += 50  # silence alone kills nobody: only failed probes do
    assert m.check_failures() == [] and m.alive()
    assert not m.probe_failed("b")  # a suspect from now on
    clock.now += 2.9
    assert not m.probe_failed("b") and m.alive()
    clock.now += 0.2
    assert m.probe_failed("b") and not m.peers()[0].alive
    assert not m.probe_failed("b")  # reported once
    m.heard_from("b", "h:9", snapshot_version=4)  # back, on a new port
    assert events == [("peer_joined", "b"), ("peer_dead", "b"), ("peer_returned", "b")]
    assert m.peers()[0].address == "h:9" and m.peers()[0].snapshot_version == 4
    assert not m.probe_failed("b")  # suspicion starts afresh after contact
    m.heard_indirectly("b", 5)  # a helper reached it: no longer a suspect
    clock.now += 3.1
    assert not m.probe_failed("b") and m.alive()
    clock.now += 3.1
    assert m.probe_failed("b")
    clock.now += 31
    assert m.check_failures() == ["b"] and m.peers() == [] and events[-1] == ("peer_evicted", "b")


def test_fanout_probes_a_few_peers_per_round_in_rotation_suspects_and_rumours_first():
    m, clock, _ = make(fanout=2)
    m.seeds = []
    for i in range(6):
        m.heard_from(f"p{i}", f"h:{10 + i}")
    seen = []
    for _ in range(3):  # 6 peers, 2 a round: each exactly once in 3 rounds
        round_ = m.targets()
        assert len(round_) == 2
        seen += round_
        clock.now += 1
    assert sorted(seen) == [f"h:{10 + i}" for i in range(6)]
    m.probe_failed("p0")  # a suspect is probed every round until it answers or dies
    m.rumour("p5")  # someone says p5 is dead: we look ourselves, next round
    m.rumour("nobody")  # not a peer of ours: ignored
    round_ = m.targets()
    assert {"h:10", "h:15"} <= set(round_) and len(round_) == 4
    clock.now += 1
    assert {"h:10", "h:15"} <= set(m.targets())  # both urgent until they answer
    m.heard_from("p5", "h:15")  # p5 answered: the rumour was false
    clock.now += 1
    round_ = m.targets()
    assert "h:10" in round_ and "h:15" not in round_ and len(round_) == 3
    assert len(m.alive()) == 6  # hearsay killed nobody
    m.rumour("p3")  # a rumour our own failed probe (and our helpers') agrees with kills at once
    assert m.probe_failed("p3") and "p3" not in {p.node_id for p in m.alive()}
    assert m.peer_at("h:12") == "p2" and m.peer_at("h:2") is None


def test_the_view_is_bounded_and_unanswered_candidates_expire():
    m, clock, _ = make(max_peers=3)
    for i in range(10):
        m.learn(f"n{i}", f"h:{100 + i}")
    assert len(m.candidates()) == 3
    for i in range(5):
        m.heard_from(f"n{i}", f"h:{100 + i}")
    assert [p.node_id for p in m.peers()] == ["n0", "n1", "n2"]  # full: no dead peer to make room
    clock.now += 10  # past candidate_ttl (3 x failure_timeout) and failure_timeout
    m.check_failures()
    assert m.candidates() == []
    m.probe_failed("n0")
    clock.now += 3.5
    m.probe_failed("n0")  # dead now
    m.heard_from("n9", "h:109")  # a proven newcomer replaces the peer dead the longest
    assert len(m.peers()) == 3 and "n9" in [p.node_id for p in m.peers()]


@pytest.mark.parametrize("node_id,address", [
    ("x" * 65, "h:5"), ("", "h:5"), ("bad id", "h:5"), ("-x", "h:5"), ("é", "h:5"),
    ("ok", "unix:/tmp/sock"), ("ok", "dns:h:5"), ("ok", "xds:///svc"), ("ok", "h:0"), ("ok", "h:70000"),
    ("ok", "hé.example:5"), ("ok", "h"), ("ok", ":5"), ("ok", "[not-ipv6]:5"), ("ok", "a_b:5"), ("ok", "h:5" * 200)])
def test_invalid_ids_and_addresses_are_never_stored(node_id, address):
    m, _, events = make()
    m.learn(node_id, address)
    m.heard_from(node_id, address)
    assert m.peers() == [] and m.candidates() == [] and events == []
    assert node_id_problem(node_id) or address_problem(address)


def test_valid_addresses():
    for address in ("127.0.0.1:50051", "[::1]:1", "node-a.swarm.local:65535", "img-0:50051", "h:1"):
        assert address_problem(address) is None, address


def test_a_flood_of_candidates_is_dialled_a_few_per_round_and_dropped_unanswered():
    from crossback.orchestrator_free.membership import CANDIDATE_ATTEMPTS, CANDIDATES_PER_ROUND

    m, clock, _ = make(max_peers=100)
    m.heard_from("b", "h:2")
    for i in range(100):
        m.learn(f"n{i}", f"h:{1000 + i}")
    dialled = []
    for _ in range(100 * CANDIDATE_ATTEMPTS // CANDIDATES_PER_ROUND + 1):
        round_ = m.targets()
        assert "h:2" in round_ and len(round_) <= CANDIDATES_PER_ROUND + 1  # the proven peer every round
        dialled += [a for a in round_ if a != "h:2"]
        clock.now += 0.01
        m.check_failures()
    assert len(set(dialled)) == 100 and m.candidates() == []  # each tried, none answered: all dropped
    assert max(dialled.count(a) for a in set(dialled)) == CANDIDATE_ATTEMPTS


def test_one_source_holds_a_bounded_share_and_a_direct_contact_is_dialled_before_any_hearsay():
    from crossback.orchestrator_free.membership import CANDIDATES_PER_ROUND, PER_SOURCE

    m, _, _ = make(max_peers=256)
    for i in range(1000):  # one flooder's junk, low-sorting addresses
        m.learn(f"j{i}", f"a{i:04d}:1", source="id:mallory")
    assert len(m.candidates()) == PER_SOURCE
    for i in range(8):
        m.learn(f"h{i}", f"h{i}:1", source="id:honest")  # another sender still has room
    m.learn("joiner", "z-joiner:1", source="id:joiner", direct=True)
    assert m.direct_candidates() == ["z-joiner:1"]
    first = m.targets()
    assert "z-joiner:1" in first and len(set(first) - {"h:2"}) <= CANDIDATES_PER_ROUND  # h:2: the seed
    # fair order among hearsay: not the flooder's low-sorting addresses every round
    assert any(a.startswith("h") for a in first + m.targets())


def test_a_source_keeps_only_its_newest_direct_contacts_and_a_full_table_makes_room_for_one():
    from crossback.orchestrator_free.membership import DIRECT_PER_SOURCE

    m, clock, _ = make(max_peers=4)
    for i in range(10):
        clock.now += 1
        m.learn(f"s{i}", f"s{i}:1", source="ip:10.0.0.9", direct=True)  # one caller claiming new senders
    assert m.direct_candidates() == [f"s{i}:1" for i in range(10 - DIRECT_PER_SOURCE, 10)]
    for i in range(4):
        m.learn(f"j{i}", f"j{i}:1", source="ip:10.0.0.8")
    assert len(m.candidates()) == 4  # full
    m.learn("b", "b:1", source="id:b", direct=True)
    assert "b:1" in m.direct_candidates() and len(m.candidates()) == 4  # hearsay made room


@pytest.mark.parametrize("gone", [5.0, 60.0, 600.0])
def test_a_peer_that_calls_after_any_absence_is_dialled_the_next_round(gone):
    """Dead for a while (still remembered, last in a rotation of 40 peers at fanout 2) or forgotten:
    the announce of a returning peer gets it dialled in the very next round."""
    m, clock, events = make(fanout=2, dead_ttl=30.0)
    for i in range(40):
        m.heard_from(f"p{i:02d}", f"h:{100 + i}")
    m.heard_from("b", "h:2")
    assert not m.probe_failed("b")
    clock.now += 3.1
    assert m.probe_failed("b")
    m.targets()  # the round that noticed it
    clock.now += gone
    m.check_failures()
    forgotten = gone > 30.0
    assert ("b" in [p.node_id for p in m.peers()]) is not forgotten
    m.learn("x", "h:2", source="ip:h")  # hearsay of its address first (it spends no dial of the announce)
    for _ in range(3):
        m.targets()
    m.learn("b", "h:2", source="ip:h", direct=True)  # its own announce: ExchangePeers with itself as sender
    assert "h:2" in m.targets()
    m.heard_from("b", "h:2")
    assert "b" in [p.node_id for p in m.alive()]
    assert events[-1] == (("peer_joined" if forgotten else "peer_returned"), "b")


def test_suspicion_counts_from_when_the_failed_probe_was_sent():
    """A probe to a frozen peer hangs until its deadline: the failure_timeout runs from the moment the
    probe went out, not from when its deadline (and the helpers' probes) ran out."""
    m, clock, events = make()
    m.heard_from("b", "h:2")
    sent = clock.now
    clock.now += 2.5  # the call and the indirect probes hung this long
    assert not m.probe_failed("b", sent_at=sent)
    clock.now += 0.6  # 3.1 s since the first failed probe went out: past failure_timeout
    assert m.probe_failed("b", sent_at=clock.now - 2.5) and events[-1] == ("peer_dead", "b")
