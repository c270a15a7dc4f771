"""`crossback health`, `peers` and `status` are container health checks on busy devices: they must not
import torch (2+ s on an idle host, past Docker's 5 s timeout on a loaded 1-CPU container)."""
import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crossback.app.cli import main
from crossback.node.health_probe import ProbeError, check

PROBE = """
import sys
from crossback.app.cli import main
rc = main([{args}])
heavy = sorted(m for m in ("torch", "numpy", "transformers", "safetensors", "scipy") if m in sys.modules)
heavy += ["grpc"] * (sys.argv[1] == "health" and "grpc" in sys.modules)  # health speaks HTTP/2 itself
print(rc, heavy)
"""


@pytest.mark.parametrize("command", ["health", "peers", "status"])
def test_probe_commands_import_nothing_heavy(command):
    args = ", ".join(repr(a) for a in (command, "--target", "127.0.0.1:1", "--timeout", "0.5"))
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args), command], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    rc, heavy = proc.stdout.strip().split(" ", 1)
    assert rc == "3" and "UNAVAILABLE" in proc.stderr  # it really dialled (nothing listens on port 1)
    assert heavy == "[]", f"{command} imported {heavy}"


@pytest.fixture()
def health_server():
    """grpcio's standard health service, as a node runs it, on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_probe_reads_every_status_of_the_standard_health_service(health_server, capsys):
    servicer, target = health_server
    service = "crossback.v1.PeerService"
    for status in ("SERVING", "NOT_SERVING", "SERVING"):
        servicer.set(service, health_pb2.HealthCheckResponse.ServingStatus.Value(status))
        assert check(target, service, timeout=5) == status
    servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(["health", "--target", target]) == 1
    servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    assert main(["health", "--target", target]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{target}: NOT_SERVING", f"{target}: SERVING"]


def test_probe_errors_say_what_happened(health_server):
    _, target = health_server
    with pytest.raises(ProbeError) as unknown:  # the standard service answers NOT_FOUND, in trailers only
        check(target, "no.such.Service", timeout=5)
    assert unknown.value.code == "UNKNOWN" and "no.such.Service" in unknown.value.detail
    with pytest.raises(ProbeError) as bad:
        check("localhost", "x", timeout=1)
    assert bad.value.code == "INVALID_ARGUMENT"
    silent = socket_that_never_answers()
    with silent, pytest.raises(ProbeError) as late:
        check(f"127.0.0.1:{silent.getsockname()[1]}", "x", timeout=0.3)
    assert late.value.code == "DEADLINE_EXCEEDED"


def socket_that_never_answers():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # the kernel completes the handshake; nobody ever reads or writes
    return listener
