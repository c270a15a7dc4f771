"""What a node id and a peer address may be, checked before either is stored, dialled or logged.

- node id: 1-64 characters of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit;
- address: ``host:port`` only, no URI scheme (``unix:``, ``dns:``, ``xds:`` ... are refused): an IPv4
  address, a bracketed IPv6 address or an ASCII host name (RFC 1123 labels, at most 253 characters)
  that is not the name of a gRPC resolver scheme, and a port in 1-65535.

A channel is never opened on a peer's string as given: ``dial_target`` rebuilds it from the validated
host and port with an explicit scheme (``ipv4:``, ``ipv6:``, ``dns:///``), so no resolver or transport
(unix sockets, abstract sockets, xDS, vsock) ever interprets what a peer wrote.

``SWARM_NAME`` is reserved: every node certificate names it beside the node id (``crossback certs``), so
a node can dial a seed whose id it does not know yet and still check that a swarm member answers.
"""
from __future__ import annotations

import ipaddress
import re

MAX_NODE_ID = 64
MAX_ADDRESS = 262  # a 253-character host name, brackets, a colon, five digits
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SWARM_NAME = "crossback-swarm"  # reserved: not a node id
LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# gRPC target schemes: ``unix:50084`` reads as host "unix" and port 50084 but would dial a socket file
GRPC_SCHEMES = frozenset({"dns", "unix", "unix-abstract", "ipv4", "ipv6", "xds", "vsock", "google-c2p",
                          "passthrough", "c2p", "grpclb"})


def node_id_problem(node_id: str) -> str | None:
    """Why ``node_id`` is not a valid node id (None: it is)."""
    if not NODE_ID.fullmatch(node_id or ""):
        shown = (node_id or "")[:MAX_NODE_ID]
        return (f"node id {shown!r}{'...' if len(node_id or '') > MAX_NODE_ID else ''} is not 1-{MAX_NODE_ID} "
                "characters of letters, digits, '.', '_' or '-' starting with a letter or digit")
    if node_id == SWARM_NAME:
        return f"node id {SWARM_NAME!r} is reserved (every node certificate names it)"
    return None


def _host_ok(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    if not host or len(host) > 253 or not host.isascii():
        return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    if host.lower() in GRPC_SCHEMES:
        return False
    return all(LABEL.fullmatch(label) for label in host.rstrip(".").split("."))


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a dialable ``host:port`` (None: it is)."""
    shown = (address or "")[:80]
    if not address or len(address) > MAX_ADDRESS:
        return f"address {shown!r} is empty or longer than {MAX_ADDRESS} characters"
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return f"address {shown!r} is not host:port with a port in 1-65535"
    if not _host_ok(host):
        if host.lower() in GRPC_SCHEMES:
            return f"address {shown!r}: {host!r} is a gRPC scheme, not a host; give host:port"
        return f"address {shown!r}: {host[:64]!r} is not an IPv4 address, a [bracketed] IPv6 address or a host name"
    return None


def dial_target(address: str) -> str:
    """The gRPC target for a validated ``host:port``, its scheme explicit: ``ipv4:1.2.3.4:5``,
    ``ipv6:[::1]:5`` or ``dns:///name:5``. ValueError for anything ``address_problem`` refuses."""
    problem = address_problem(address)
    if problem:
        raise ValueError(problem)
    host, _, port = address.rpartition(":")
    if host.startswith("["):
        return f"ipv6:{host}:{port}"
    try:
        ipaddress.IPv4Address(host)
        return f"ipv4:{host}:{port}"
    except ValueError:
        return f"dns:///{host}:{port}"


def valid_peer(node_id: str, address: str) -> bool:
    return node_id_problem(node_id) is None and address_problem(address) is None
