"""A node's TLS settings (``node.tls``), the checks its certificate files must pass before the node
binds a port, and the server-side rule that every claimed node id is the caller's certificate's.

    node:
      tls: {dir: certs}                                  # what `crossback certs` wrote: ca.pem, <id>.pem, <id>.key
      tls: {ca: ca.pem, cert: img-0.pem, key: img-0.key, allow: [img-0, txt-0]}   # or each file by name

With ``node.tls`` set (or ``CROSSBACK_TLS_DIR`` / ``--tls-dir``) the node serves and dials mutual TLS
only. Relative paths are taken from the working directory, as ``state_dir`` is.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc

from crossback.config.errors import ConfigError
from crossback.config.node import TlsSettings
from crossback.node.tls_material import TlsMaterial
from crossback.orchestrator_free.identity import SWARM_NAME, node_id_problem

from .rpc_guard import wrap_handler


def check_tls(settings: TlsSettings, node_id: str) -> None:
    """The TLS section's rules that need the node id."""
    for i, allowed in enumerate(settings.allow):
        if node_id_problem(allowed):
            raise ConfigError(f"node.tls.allow[{i}]: {node_id_problem(allowed)}")
    if settings.enabled:
        settings.paths(node_id)


def _read(path: Path, key: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        hint = "; create it with crossback certs" if isinstance(exc, FileNotFoundError) else ""
        raise ConfigError(f"node.tls.{key}: cannot read {path}: {exc.strerror or exc}{hint}") from None
    if len(data) > 1 << 20:
        raise ConfigError(f"node.tls.{key}: {path} is over 1 MiB: not a PEM file")
    return data


def load_tls(settings: TlsSettings, node_id: str) -> TlsMaterial | None:
    """The node's TLS material, every file checked (None when TLS is not configured). Errors name the
    key and the file: unreadable, not PEM, not a CA, not signed by it, expired, naming another node,
    or a key that does not belong to the certificate."""
    if not settings.enabled:
        return None
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    paths = settings.paths(node_id)
    raw = {name: _read(path, name) for name, path in paths.items()}
    try:
        ca = x509.load_pem_x509_certificate(raw["ca"])
    except ValueError as exc:
        raise ConfigError(f"node.tls.ca: {paths['ca']} is not a PEM certificate ({exc})") from None
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigError(f"node.tls.ca: {paths['ca']} is not a CA certificate")
    try:
        cert = x509.load_pem_x509_certificate(raw["cert"])
    except ValueError as exc:
        raise ConfigError(f"node.tls.cert: {paths['cert']} is not a PEM certificate ({exc})") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ConfigError(f"node.tls.cert: {paths['cert']} is not signed by the CA in {paths['ca']} "
                          f"({type(exc).__name__})") from None
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(f"node.tls.cert: {paths['cert']} is valid from {cert.not_valid_before_utc:%Y-%m-%d} "
                          f"to {cert.not_valid_after_utc:%Y-%m-%d}, not now")
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [node_id]:
        raise ConfigError(f"node.tls.cert: {paths['cert']} is the certificate of {names or 'no node'}, "
                          f"not of this node {node_id!r}; issue one with crossback certs issue DIR {node_id}")
    try:
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if node_id not in dns or SWARM_NAME not in dns:
        raise ConfigError(f"node.tls.cert: {paths['cert']} must name {node_id!r} and {SWARM_NAME!r} as DNS "
                          f"subject-alternative names (it names {dns}); issue it with crossback certs issue")
    try:
        key = serialization.load_pem_private_key(raw["key"], password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"node.tls.key: {paths['key']} is not an unencrypted PEM private key ({exc})") from None
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ConfigError(f"node.tls.key: {paths['key']} is not the key of the certificate {paths['cert']}")
    allow = frozenset(settings.allow) | {node_id} if settings.allow else frozenset()
    return TlsMaterial(node_id, raw["ca"], raw["cert"], raw["key"], allow)


def claimed_id(request) -> str | None:
    """The node id a request claims to come from: its ``caller_id`` (an empty one claims to be nobody,
    which is refused), or a gossip message's sender (an empty sender asks for the view and offers
    nothing, so it claims nothing); None for messages without either (health checks)."""
    fields = request.DESCRIPTOR.fields_by_name
    if "caller_id" in fields:
        return request.caller_id
    if "sender" in fields and request.HasField("sender") and request.sender.node_id:
        return request.sender.node_id
    return None


class PeerAuth(grpc.ServerInterceptor):
    """With mTLS: the caller's certificate must name an admitted node id, and every node id the request
    claims must be that one, or the call ends PERMISSION_DENIED before its handler runs."""

    def __init__(self, tls: TlsMaterial, on_refused=None):
        """``on_refused(by, reason)``: told of each refusal (the node's metrics)."""
        self.tls, self.on_refused = tls, on_refused

    def refusal(self, request, context) -> tuple[str, str] | None:
        """(reason kind, message) when the call is refused, else None."""
        names = context.auth_context().get("x509_common_name") or []
        if len(names) != 1:
            return "no_certificate", "the caller presented no certificate with one node id"
        cert_id = names[0].decode("utf-8", "replace")[:64]
        if not self.tls.permits(cert_id):
            return "not_allowed", f"node {cert_id!r} is not on {self.tls.node_id}'s allow-list"
        claimed = claimed_id(request)
        if claimed is not None and claimed != cert_id:
            return "claims_other_id", (f"the request claims node id {claimed[:64]!r} but the caller's certificate "
                                       f"is {cert_id!r}")
        return None

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming:  # every crossback RPC takes one request message
            return handler

        def check(request, context):
            problem = self.refusal(request, context)
            if problem:
                if self.on_refused is not None:
                    self.on_refused("peer_auth", problem[0])
                context.abort(grpc.StatusCode.PERMISSION_DENIED, problem[1])
        return wrap_handler(handler, check)
