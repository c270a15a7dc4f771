"""The committed generated code matches peer.proto, and peer.proto compiles on its own."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PROTO = ROOT / "proto" / "v1" / "peer.proto"


def test_generated_code_is_not_stale(tmp_path):
    pytest.importorskip("grpc_tools")
    sys.path.insert(0, str(ROOT / "proto"))
    try:
        from generate import OUTPUTS, generate
    finally:
        sys.path.pop(0)
    fresh = generate(tmp_path)
    for name in OUTPUTS:
        committed = (ROOT / "proto" / "v1" / name).read_bytes()
        assert committed == fresh[name], f"proto/v1/{name} is stale: run python proto/generate.py"


def test_proto_compiles_standalone_for_other_languages(tmp_path):
    """Any language's toolchain takes the .proto as-is: no Python-specific imports or options."""
    pytest.importorskip("grpc_tools")
    out = tmp_path / "descriptor.pb"
    proc = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
                           f"--descriptor_set_out={out}", PROTO.name], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (f,) = files.file
    assert f.package == "crossback.v1" and not f.dependency
    assert [m.name for m in f.service[0].method] == ["GetInfo", "ExchangePeers", "FetchKV", "ProbeDDV", "FetchPayload",
                                                 "FetchOuterGrad", "FetchPublicFeatures", "FetchSharedFeatures",
                                                 "ProbePeer", "MatchTask", "FetchTask", "Classify"]
    assert "option" not in PROTO.read_text().split("package", 1)[1]


def test_service_path_is_the_versioned_package():
    from crossback.proto.v1 import peer_pb2

    assert peer_pb2.DESCRIPTOR.services_by_name["PeerService"].full_name == "crossback.v1.PeerService"
