"""Mutual TLS between swarm nodes: what a node holds (its swarm's CA, its certificate and key, an optional
allow-list) and the channels it dials with it.

A node's certificate names its node id (``crossback certs``). Dialling a peer whose id we expect, the
channel checks the server's certificate against that id (``grpc.ssl_target_name_override``), so a
successful call *proves* the id; a seed known only by its address is dialled under the reserved
``SWARM_NAME`` every member's certificate carries, which proves membership but not which member.
There is no plaintext fallback: a channel built from TlsMaterial is TLS or fails.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from crossback.orchestrator_free.identity import SWARM_NAME, dial_target


@dataclass(frozen=True)
class TlsMaterial:
    node_id: str  # the identity in ``cert``
    ca: bytes = field(repr=False)  # PEM of the swarm's CA certificate
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    allow: frozenset[str] = frozenset()  # node ids admitted; empty: every holder of a swarm certificate

    def permits(self, node_id: str) -> bool:
        return not self.allow or node_id in self.allow

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def server_credentials(self) -> grpc.ServerCredentials:
        # require_client_auth: a caller without a certificate from this CA never gets past the handshake
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)


def open_channel(address: str, options: list, tls: TlsMaterial | None, expected_id: str | None) -> grpc.Channel:
    """A plaintext channel without ``tls``; with it, an mTLS channel whose handshake fails unless the
    server's certificate names ``expected_id`` (or, for None, is any member's). ``address`` is a
    host:port (ValueError otherwise), dialled through an explicit scheme (``identity.dial_target``)."""
    target = dial_target(address)
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    name = expected_id or SWARM_NAME
    return grpc.secure_channel(target, tls.channel_credentials(),
                               options=[*options, ("grpc.ssl_target_name_override", name)])
