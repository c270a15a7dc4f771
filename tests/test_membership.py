from crossback.orchestrator_free.membership import Membership


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make():
    clock, events = Clock(), []
    m = Membership("a", "h:1", ["h:2", "h:1"], failure_timeout=3.0,
                   on_event=lambda name, **f: events.append((name, f.get("peer"))), clock=clock)
    return m, clock, events


def test_seeds_are_contacted_until_known_and_self_is_skipped():
    m, _, _ = make()
    assert m.targets() == ["h:2"]
    m.heard_from("b", "h:2")
    m.learn("c", "h:3")
    m.learn("a", "h:1")  # itself, from someone's gossip
    assert m.targets() == ["h:2", "h:3"] and [p.node_id for p in m.peers()] == ["b", "c"]


def test_gossiped_peers_are_not_alive_until_heard_from():
    m, _, events = make()
    m.learn("c", "h:3")
    assert m.alive() == [] and events == []
    m.heard_from("c", "h:3")
    assert [p.node_id for p in m.alive()] == ["c"] and events == [("peer_joined", "c")]


def test_dead_after_timeout_and_returned_on_contact():
    m, clock, events = make()
    m.heard_from("b", "h:2")
    clock.now += 2.9
    assert m.check_failures() == []
    clock.now += 0.2
    assert m.check_failures() == ["b"] and not m.peers()[0].alive
    assert m.check_failures() == []  # reported once
    m.heard_from("b", "h:9", snapshot_version=4)  # back, on a new port
    assert events == [("peer_joined", "b"), ("peer_dead", "b"), ("peer_returned", "b")]
    assert m.peers()[0].address == "h:9" and m.peers()[0].snapshot_version == 4
