"""The node's event log stays bounded: it rotates past its size cap and tallies gossip payloads."""
from crossback.node.events import OTHER_PEERS, EventLog, PayloadTally, read_events


def test_the_log_rotates_past_its_cap_keeping_one_old_file(tmp_path):
    path = tmp_path / "n.jsonl"
    log = EventLog("n", path, console=None, max_bytes=2000)
    for i in range(200):
        log.emit("tick", i=i, pad="x" * 50)
    log.close()
    old = tmp_path / "n.jsonl.1"
    assert path.stat().st_size <= 2000 and old.stat().st_size <= 2000
    assert sorted(tmp_path.iterdir()) == [path, old]  # never more than two files
    ticks = [e["i"] for e in read_events(old) + read_events(path)]
    assert ticks == list(range(ticks[0], 200))  # the newest events, in order, none torn


def test_gossip_payloads_are_tallied_per_interval_and_others_logged_each(tmp_path):
    now = [0.0]
    out = []
    tally = PayloadTally(lambda event, **f: out.append((event, f)), interval=60.0, clock=lambda: now[0])
    for _ in range(100):
        tally("membership", "peer-a", 120)
        now[0] += 1.0
    tally("kv", "peer-a", 4096)
    summaries = [f for e, f in out if e == "payload_summary"]
    assert [(f["count"], f["bytes"]) for f in summaries] == [(61, 61 * 120)]  # one line for the first minute
    assert [f for e, f in out if e == "payload_sent"] == [{"kind": "kv", "peer": "peer-a", "bytes": 4096}]
    tally.flush()
    assert sum(f["count"] for e, f in out if e == "payload_summary") == 100  # nothing lost at shutdown
    tally("membership", "x" * 5000, 1)
    tally.flush()
    assert len(out[-1][1]["peer"]) == 256  # a caller's claimed id is cut before it is logged


def test_a_flood_of_invented_peer_ids_shares_one_tally_line_past_the_bound():
    out = []
    tally = PayloadTally(lambda event, **f: out.append(f), interval=60.0, clock=lambda: 0.0, max_peers=100)
    tally("membership", "real-peer", 10)
    for i in range(5000):
        tally("membership", f"invented-{i}", 10)
    tally("membership", "real-peer", 10)  # a peer tallied before the flood keeps its own line
    tally.flush()
    assert len(out) == 101 and sum(f["count"] for f in out) == 5002 and sum(f["bytes"] for f in out) == 50_020
    lines = {f["peer"]: f["count"] for f in out}
    assert lines["real-peer"] == 2 and lines[OTHER_PEERS] == 5000 - 99
