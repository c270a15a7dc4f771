"""A swarm's certificates (``crossback certs``): one CA per swarm, one certificate per node whose
identity is the node id (subject CN and a DNS subject-alternative name; a second DNS name, the reserved
``SWARM_NAME``, lets a node check that a seed it knows only by address is a member), all written with the
``cryptography`` library — no openssl shell-outs. Keys are ECDSA P-256, written 0600, never overwritten.

    crossback certs init DIR [NODE_ID ...]      # DIR/ca.pem, DIR/ca.key, DIR/pair.key (+ each node's, as issue does)
    crossback certs issue DIR NODE_ID [...]     # DIR/NODE_ID.pem, DIR/NODE_ID.key, signed by DIR's CA
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from crossback.config.errors import ConfigError
from crossback.config.node import CA_CERT, CA_KEY
from crossback.orchestrator_free.identity import SWARM_NAME, node_id_problem


def _x509():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # pragma: no cover - a dependency of crossback
        raise ConfigError(f"crossback certs needs the cryptography package ({exc})") from None
    return x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID


def _write_new(path: Path, data: bytes, private: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600 if private else 0o644)
    except FileExistsError:
        raise ConfigError(f"{path} exists; certificates and keys are never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key, serialization) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(folder: Path, name: str = "crossback swarm CA", days: int = 3650) -> Path:
    """Create the swarm's CA in ``folder``; returns the CA certificate's path."""
    x509, hashes, serialization, ec, NameOID, _ = _x509()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_new(folder / CA_KEY, _key_pem(key, serialization), private=True)
    _write_new(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)
    from .pair_secret import write_pair_secret

    write_pair_secret(folder)  # the swarm's key for hashing shared item ids (node/pair_secret.py)
    return folder / CA_CERT


def issue(folder: Path, node_id: str, days: int = 825) -> tuple[Path, Path]:
    """A certificate for ``node_id`` signed by ``folder``'s CA; returns (certificate, key) paths."""
    problem = node_id_problem(node_id)
    if problem:
        raise ConfigError(problem)
    x509, hashes, serialization, ec, NameOID, EKU = _x509()
    folder = Path(folder)
    try:
        ca_key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"{folder} holds no swarm CA ({exc.filename}); run crossback certs init {folder}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_id), x509.DNSName(SWARM_NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH, EKU.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = folder / f"{node_id}.pem", folder / f"{node_id}.key"
    _write_new(key_path, _key_pem(key, serialization), private=True)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def certificate_node_id(pem: bytes) -> str:
    """The node id a certificate names (its subject CN)."""
    x509, _, _, _, NameOID, _ = _x509()
    names = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
