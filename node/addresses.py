"""The address a node tells its peers to dial.

A node listening on a wildcard (``0.0.0.0:50061``) cannot advertise that: peers would dial themselves.
Without an explicit ``advertise`` it takes the local address of the interface that routes to its
first resolvable seed (a UDP ``connect`` picks the route and sends nothing), else its host name's
address, else loopback.
"""
from __future__ import annotations

import socket

WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def route_source(target: str) -> str | None:
    """The local IP this machine would use to reach ``target`` (host:port), or None if it cannot tell."""
    try:
        host, port = split_host_port(target)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, ValueError, UnicodeError):
        return None
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.connect(sockaddr)
                return probe.getsockname()[0]
        except OSError:
            continue
    return None


def _host_name_address() -> str | None:
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return None
    return None if address.startswith("127.") else address


def advertise_address(listen: str, port: int, advertise: str | None, seeds: list[str] | tuple[str, ...]) -> tuple[str, str]:
    """(address peers should dial, how it was chosen)."""
    if advertise:
        return advertise, "configured"
    host = listen.rpartition(":")[0]
    if host not in WILDCARD_HOSTS:
        return join_host_port(host.strip("[]"), port), "listen address"
    for seed in seeds:
        local = route_source(seed)
        if local:
            return join_host_port(local, port), f"route to seed {seed}"
    local = _host_name_address()
    if local:
        return join_host_port(local, port), "host name"
    return join_host_port("127.0.0.1", port), "loopback (no seed or host name resolves)"
