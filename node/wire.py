"""Tensors on the wire: raw little-endian bytes + dtype + shape + sha256, in chunks of <= 1 MiB.

The receiver checks everything before a single value is used: dtype allow-list, shape against the
byte count (and against the shapes it expects), chunk order and size, total size limit, checksum,
and finiteness. Nothing is pickled or ``torch.load``-ed.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator

import torch

from crossback.config.errors import WireError
from crossback.proto.v1 import peer_pb2 as pb

CHUNK_BYTES = 1 << 20
MAX_TENSOR_NAME, MAX_RANK = 256, 8
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encode(name: str, tensor: torch.Tensor, snapshot_version: int = 0,
           chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.TensorChunk]:
    if tensor.dtype not in DTYPE_NAMES:
        raise WireError(f"tensor {name!r}: dtype {tensor.dtype} cannot travel; allowed: {list(DTYPES)}")
    data = tensor_bytes(tensor)
    digest = hashlib.sha256(data).digest()
    for offset in range(0, max(len(data), 1), chunk_bytes):
        yield pb.TensorChunk(name=name, dtype=DTYPE_NAMES[tensor.dtype], shape=list(tensor.shape), sha256=digest,
                             total_bytes=len(data), offset=offset, data=data[offset : offset + chunk_bytes],
                             snapshot_version=snapshot_version)


def encode_all(tensors: dict[str, torch.Tensor], snapshot_version: int = 0) -> list[pb.TensorChunk]:
    return [c for name, t in tensors.items() for c in encode(name, t, snapshot_version)]


def decode(chunks: Iterable[pb.TensorChunk], expected: dict[str, tuple[int, ...]] | None = None,
           max_total_bytes: int = 64 << 20) -> dict[str, torch.Tensor]:
    """Reassemble and verify a stream of chunks into named tensors."""
    parts: dict[str, dict] = {}
    received_total = 0
    for chunk in chunks:
        name = chunk.name[:MAX_TENSOR_NAME]
        if len(chunk.data) > CHUNK_BYTES:
            raise WireError(f"tensor {name!r}: chunk of {len(chunk.data)} bytes exceeds {CHUNK_BYTES}", "RESOURCE_EXHAUSTED")
        received_total += len(chunk.data)
        if received_total > max_total_bytes:
            raise WireError(f"payload exceeds {max_total_bytes} bytes", "RESOURCE_EXHAUSTED")
        part = parts.get(name)
        if part is None:
            part = parts[name] = _start(chunk, expected, max_total_bytes)
        elif (chunk.dtype, tuple(chunk.shape), chunk.sha256, chunk.total_bytes) != part["meta"]:
            raise WireError(f"tensor {name!r}: chunk metadata changed mid-stream")
        if part["done"]:
            raise WireError(f"tensor {name!r}: data after the tensor was complete")
        if chunk.offset != len(part["buf"]):
            raise WireError(f"tensor {name!r}: chunk at offset {chunk.offset}, expected {len(part['buf'])}")
        part["buf"] += chunk.data
        if len(part["buf"]) > chunk.total_bytes:
            raise WireError(f"tensor {name!r}: more bytes than the announced {chunk.total_bytes}")
        part["done"] = len(part["buf"]) == chunk.total_bytes
    if expected is not None and set(parts) != set(expected):
        raise WireError(f"expected tensors {sorted(expected)}, got {sorted(parts)}")
    return {name: _finish(name, part) for name, part in parts.items()}


def _start(chunk: pb.TensorChunk, expected, max_total_bytes: int) -> dict:
    name, shape = chunk.name, tuple(chunk.shape)
    if not name:
        raise WireError("tensor chunk without a name")
    if len(name) > MAX_TENSOR_NAME:  # before the name is used in any message
        raise WireError(f"tensor name {name[:64]!r}... is longer than {MAX_TENSOR_NAME} characters")
    if len(shape) > MAX_RANK:
        raise WireError(f"tensor {name!r}: {len(shape)} dimensions, at most {MAX_RANK}")
    if expected is not None and name not in expected:
        raise WireError(f"unexpected tensor {name!r}; expected {sorted(expected)}")
    if chunk.dtype not in DTYPES:
        raise WireError(f"tensor {name!r}: dtype {chunk.dtype!r} not allowed; allowed: {list(DTYPES)}")
    if any(d <= 0 for d in shape) or not shape:
        raise WireError(f"tensor {name!r}: bad shape {list(shape)}")
    if expected is not None and shape != tuple(expected[name]):
        raise WireError(f"tensor {name!r}: shape {list(shape)}, expected {list(expected[name])}")
    itemsize = torch.empty((), dtype=DTYPES[chunk.dtype]).element_size()
    if math.prod(shape) * itemsize != chunk.total_bytes:
        raise WireError(f"tensor {name!r}: shape {list(shape)} of {chunk.dtype} needs "
                        f"{math.prod(shape) * itemsize} bytes, announced {chunk.total_bytes}")
    if chunk.total_bytes > max_total_bytes:
        raise WireError(f"tensor {name!r}: {chunk.total_bytes} bytes exceeds {max_total_bytes}", "RESOURCE_EXHAUSTED")
    if len(chunk.sha256) != 32:
        raise WireError(f"tensor {name!r}: sha256 must be 32 bytes")
    return {"meta": (chunk.dtype, shape, chunk.sha256, chunk.total_bytes), "buf": bytearray(), "done": False}


def _finish(name: str, part: dict) -> torch.Tensor:
    dtype, shape, digest, total = part["meta"]
    if not part["done"]:
        raise WireError(f"tensor {name!r}: stream truncated at {len(part['buf'])} of {total} bytes")
    if hashlib.sha256(part["buf"]).digest() != digest:
        raise WireError(f"tensor {name!r}: sha256 mismatch")
    tensor = torch.frombuffer(part["buf"], dtype=DTYPES[dtype]).reshape(shape).clone()
    if not bool(torch.isfinite(tensor).all()):
        raise WireError(f"tensor {name!r}: contains NaN or Inf")
    return tensor
