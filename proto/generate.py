"""Regenerate the Python code for proto/v1/peer.proto (run after editing the .proto).

    python proto/generate.py            # writes proto/v1/peer_pb2.py, peer_pb2_grpc.py, peer_pb2.pyi

The generated modules import each other as ``crossback.proto.v1``; the .proto itself is plain
``package crossback.v1`` and compiles as-is for any other language. tests/test_proto.py fails when the
committed files are stale.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
SOURCE = PROTO_DIR / "v1" / "peer.proto"
OUTPUTS = ("peer_pb2.py", "peer_pb2_grpc.py", "peer_pb2.pyi")


def generate(out_dir: Path) -> dict[str, bytes]:
    """Compile peer.proto into ``out_dir``; returns {file name: contents}."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as stage:
        staged = Path(stage) / "crossback" / "proto" / "v1"
        staged.mkdir(parents=True)
        shutil.copy(SOURCE, staged / "peer.proto")
        include = Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{stage}", f"-I{include}", f"--python_out={stage}", f"--pyi_out={stage}",
                f"--grpc_python_out={stage}", "crossback/proto/v1/peer.proto"]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {SOURCE}")
        out_dir.mkdir(parents=True, exist_ok=True)
        result = {}
        for name in OUTPUTS:
            data = (staged / name).read_bytes()
            (out_dir / name).write_bytes(data)
            result[name] = data
        return result


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR / "v1")
    print(f"generated {', '.join(OUTPUTS)} from {SOURCE}")
