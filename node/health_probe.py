"""A gRPC health check (grpc.health.v1.Health/Check) spoken with the standard library alone.

`crossback health` is what Docker, Swarm mode and Kubernetes run inside a node's container every few
seconds, sharing the container's CPU quota with training. Importing grpcio costs 0.6-0.8 s there; this
probe opens one plaintext HTTP/2 connection (prior knowledge, as grpcio's insecure channels do), sends
one request and reads the one response message, and needs nothing but ``socket`` and ``struct``.
The node side is grpcio's standard health service, unchanged. A node that serves mutual TLS is
checked over the standard library's ``ssl`` (ALPN h2, the swarm CA, a node certificate: ``tls_context``).
"""
from __future__ import annotations

import socket
import ssl
import struct
import time
from pathlib import Path

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
MAX_FRAME = 1 << 16  # a health reply is a few bytes; anything bigger is not a gRPC health service


class ProbeError(Exception):
    """The check got no health status; ``code`` is the gRPC status name it amounts to."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


def split_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ProbeError("INVALID_ARGUMENT", f"target {target!r} is not host:port")
    return host.strip("[]"), int(port)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (RFC 7541, 6.2.2)."""
    def string(raw: bytes) -> bytes:
        assert len(raw) < 127
        return bytes([len(raw)]) + raw
    return b"\x00" + string(name) + string(value)


SWARM_NAME = "crossback-swarm"  # = orchestrator_free.identity.SWARM_NAME (not imported: it loads nothing)


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A client context for a node that serves mutual TLS: verify it against the swarm CA, present ``cert``."""
    try:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ProbeError("INVALID_ARGUMENT", f"TLS files {ca}, {cert}, {key}: {exc}") from None
    context.set_alpn_protocols(["h2"])
    return context


def request_headers(authority: str, https: bool = False) -> bytes:
    # 0x83 = :method POST, 0x86/0x87 = :scheme http/https (HPACK static table entries 3, 6 and 7)
    return (b"\x83\x87" if https else b"\x83\x86") + b"".join(literal(n, v) for n, v in (
        (b":path", b"/grpc.health.v1.Health/Check"), (b":authority", authority.encode("ascii", "replace")[:100]),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")))


def encode_request(service: str) -> bytes:
    """A length-prefixed gRPC message holding HealthCheckRequest{service} (field 1, a string)."""
    raw = service.encode()
    body = (b"\x0a" + bytes([len(raw)]) + raw) if raw else b""
    assert len(raw) < 128
    return b"\x00" + struct.pack(">I", len(body)) + body


def decode_status(message: bytes) -> int:
    """HealthCheckResponse.status (field 1, a varint) from its serialised bytes; 0 (UNKNOWN) if absent."""
    i, status = 0, 0
    while i < len(message):
        key = message[i]
        i += 1
        if key == 0x08:
            value, shift = 0, 0
            while i < len(message):
                byte = message[i]
                i += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            status = value
        else:
            raise ProbeError("INTERNAL", f"unexpected field in the health reply (key 0x{key:02x})")
    return status


def read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ProbeError("UNAVAILABLE", "connection closed by the node")
        chunks += chunk
    return chunks


def check(target: str, service: str, timeout: float, tls: ssl.SSLContext | None = None) -> str:
    """The serving status name of ``service`` at ``target``; ProbeError when there is none to report.
    With ``tls`` the connection is TLS, the node's certificate checked as a swarm member's."""
    host, port = split_target(target)
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=SWARM_NAME)
    except socket.timeout:
        raise ProbeError("DEADLINE_EXCEEDED", f"no connection within {timeout} s") from None
    except ssl.SSLError as exc:
        raise ProbeError("UNAVAILABLE", f"TLS handshake failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise ProbeError("UNAVAILABLE", f"cannot connect: {exc.strerror or exc}") from None
    with sock:
        try:
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0)
                         + frame(HEADERS, END_HEADERS, 1, request_headers(target, tls is not None))
                         + frame(DATA, END_STREAM, 1, encode_request(service)))
            message = b""
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                header = read_exact(sock, 9)
                length, kind, flags, stream = int.from_bytes(header[:3], "big"), header[3], header[4], \
                    struct.unpack(">I", header[5:])[0] & 0x7FFFFFFF
                if length > MAX_FRAME:
                    raise ProbeError("INTERNAL", f"a {length}-byte frame: not a gRPC health service")
                payload = read_exact(sock, length)
                if kind == SETTINGS and not flags & ACK:
                    sock.sendall(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    sock.sendall(frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    raise ProbeError("UNAVAILABLE", "the node closed the connection (GOAWAY)")
                elif stream == 1 and kind == RST_STREAM:
                    raise ProbeError("UNAVAILABLE", "the node reset the request")
                elif stream == 1 and kind == DATA:
                    message += payload
                    if len(message) > MAX_FRAME:
                        raise ProbeError("INTERNAL", "health reply too long")
                if stream == 1 and flags & END_STREAM:
                    break
        except socket.timeout:
            raise ProbeError("DEADLINE_EXCEEDED", f"no health reply within {timeout} s") from None
        except OSError as exc:
            raise ProbeError("UNAVAILABLE", f"connection failed: {exc.strerror or exc}") from None
    if len(message) < 5:
        # a trailers-only reply: the node answered with an error status and no message
        raise ProbeError("UNKNOWN", f"no health status for {service!r} (an error status instead)")
    size = struct.unpack(">I", message[1:5])[0]
    if message[0] != 0 or len(message) < 5 + size:
        raise ProbeError("INTERNAL", "malformed health reply")
    status = decode_status(message[5:5 + size])
    if status == 0:
        # grpcio answers an unregistered service with an empty message and NOT_FOUND in the trailers (which
        # this probe does not decode); an empty message is also how a registered UNKNOWN status looks
        raise ProbeError("UNKNOWN", f"no health status for {service!r} (the node does not know it, or it is UNKNOWN)")
    return STATUS_NAMES.get(status, f"STATUS_{status}")
