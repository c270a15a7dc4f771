import hashlib

import pytest
import torch

from crossback.node.wire import CHUNK_BYTES, decode, encode, encode_all
from crossback.config.errors import WireError

SHAPES = {"k": (700, 600)}


def chunks_of(t=None, name="k"):
    t = torch.randn(*SHAPES[name], generator=torch.Generator().manual_seed(0)) if t is None else t
    return list(encode(name, t)), t


def test_round_trip_is_bit_exact_and_chunked():
    chunks, t = chunks_of()
    assert len(chunks) == 2 and all(len(c.data) <= CHUNK_BYTES for c in chunks)  # 1.68 MB
    assert chunks[0].sha256 == hashlib.sha256(t.numpy().tobytes()).digest()
    out = decode(chunks, SHAPES)
    assert torch.equal(out["k"], t)
    half = torch.randn(3, 5).to(torch.bfloat16)
    assert torch.equal(decode(encode_all({"h": half}))["h"], half)


@pytest.mark.parametrize("mutate, needle, status", [
    (lambda c: setattr(c[0], "dtype", "float64"), "dtype 'float64' not allowed", "INVALID_ARGUMENT"),
    (lambda c: [x.ClearField("shape") or x.shape.extend([600, 700]) for x in c], r"expected \[700, 600\]", "INVALID_ARGUMENT"),
    (lambda c: [setattr(x, "sha256", b"\0" * 32) for x in c], "sha256 mismatch", "INVALID_ARGUMENT"),
    (lambda c: c.pop(), "truncated", "INVALID_ARGUMENT"),
    (lambda c: c.reverse(), "offset", "INVALID_ARGUMENT"),
    (lambda c: setattr(c[1], "name", "v"), "unexpected tensor 'v'", "INVALID_ARGUMENT"),
])
def test_malformed_streams_are_rejected(mutate, needle, status):
    chunks, _ = chunks_of()
    mutate(chunks)
    with pytest.raises(WireError, match=needle) as info:
        decode(chunks, SHAPES)
    assert info.value.status == status


def test_shape_must_match_the_byte_count():
    chunks, _ = chunks_of()
    for c in chunks:
        c.ClearField("shape")
        c.shape.extend([700, 601])
    with pytest.raises(WireError, match="needs"):
        decode(chunks)


def test_non_finite_values_are_rejected():
    t = torch.zeros(700, 600)
    t[3, 4] = float("inf")
    with pytest.raises(WireError, match="NaN or Inf"):
        decode(encode("k", t), SHAPES)


def test_oversized_payload_is_resource_exhausted():
    chunks, _ = chunks_of()
    with pytest.raises(WireError) as info:
        decode(chunks, SHAPES, max_total_bytes=1 << 20)
    assert info.value.status == "RESOURCE_EXHAUSTED"


def test_missing_tensor_is_rejected():
    chunks, _ = chunks_of()
    with pytest.raises(WireError, match="expected tensors"):
        decode(chunks, {**SHAPES, "v": (700, 600)})
