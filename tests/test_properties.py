"""Property-based tests (hypothesis) of what peers feed a node: the wire decoder and the membership merge."""
import string

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossback.orchestrator_free.identity import address_problem, node_id_problem
from crossback.orchestrator_free.membership import Membership, ViewSettings
from crossback.node.wire import DTYPES, decode, encode_all
from crossback.config.errors import WireError
from crossback.proto.v1 import peer_pb2 as pb

names = st.text(min_size=0, max_size=300)
chunks = st.builds(
    pb.TensorChunk, name=names, dtype=st.sampled_from([*DTYPES, "int64", "", "float64"]),
    shape=st.lists(st.integers(-3, 70), max_size=10), sha256=st.binary(max_size=40),
    total_bytes=st.integers(-10, 5000), offset=st.integers(-10, 5000), data=st.binary(max_size=600),
    snapshot_version=st.integers(0, 5))


@settings(max_examples=300, deadline=None)
@given(st.lists(chunks, max_size=6))
def test_any_chunk_stream_decodes_or_raises_wire_error(stream):
    try:
        tensors = decode(stream, max_total_bytes=4096)
    except WireError as exc:
        assert len(str(exc)) < 400  # short, whatever the peer sent
        return
    for name, t in tensors.items():
        assert 0 < len(name) <= 256 and bool(torch.isfinite(t).all())


shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(string.ascii_letters + ".", min_size=1, max_size=20), shapes, max_size=4),
       st.sampled_from(list(DTYPES.values())), st.integers(0, 2**31))
def test_encode_then_decode_is_the_identity(spec, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    tensors = {n: torch.randn(*s, generator=gen).to(dtype) for n, s in spec.items()}
    back = decode(encode_all(tensors, 3), {n: tuple(t.shape) for n, t in tensors.items()})
    assert set(back) == set(tensors) and all(torch.equal(back[n], tensors[n]) for n in tensors)


ids = st.one_of(st.text(max_size=80), st.sampled_from(["a", "b", "c-1", "node.2", "self"]))
addresses = st.one_of(st.text(max_size=80), st.sampled_from(["h:1", "h:2", "10.0.0.1:5", "[::1]:9", "unix:/x", "h:0"]))
actions = st.lists(st.tuples(st.sampled_from(["learn", "heard", "tick"]), ids, addresses, st.floats(0, 50)),
                   max_size=60)


@settings(max_examples=200, deadline=None)
@given(actions)
def test_the_membership_view_stays_bounded_and_valid_whatever_peers_say(steps):
    now = [0.0]
    m = Membership("self", "h:1", ["h:2"], failure_timeout=3.0, view=ViewSettings(clock=lambda: now[0], max_peers=5))
    for kind, node_id, address, dt in steps:
        if kind == "learn":
            m.learn(node_id, address)
        elif kind == "heard":
            m.heard_from(node_id, address)
        else:
            now[0] += dt
            m.check_failures()
        peers, candidates = m.peers(), m.candidates()
        assert len(peers) <= 5 and len(candidates) <= 5
        assert all(node_id_problem(p.node_id) is None and address_problem(p.address) is None for p in peers)
        assert all(address_problem(a) is None for a in candidates)
        assert "self" not in [p.node_id for p in peers] and "h:1" not in m.targets()
