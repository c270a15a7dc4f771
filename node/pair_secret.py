"""The swarm's pair secret: the key under which nodes hash item ids to find the items they both hold
(payload kind ``features``; crossback.transfer.pairs). A caller without it cannot form one
matching hash, so FetchSharedFeatures tells an outsider nothing about which items a node trained on.

Where it comes from: ``swarm.pair_secret_file`` (relative to the working directory, as state_dir), else
``pair.key`` in ``node.tls.dir`` when that file exists (``crossback certs init`` writes one beside the CA).
The file holds hex (at least 32 digits) or at least 16 raw bytes. Keep it with the CA key: every node
of the swarm needs the same one, and nobody outside the swarm may have it.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from crossback.config.errors import ConfigError
from crossback.transfer.pairs import MIN_SECRET_BYTES

PAIR_KEY = "pair.key"


def parse_secret(data: bytes) -> bytes:
    text = data.strip()
    try:
        decoded = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        decoded = text
    return decoded


def load_pair_secret(pair_secret_file: str, tls_dir: str) -> tuple[bytes, str]:
    """(secret, where it came from); (b"", "") when the swarm has none."""
    if pair_secret_file:
        path, key = Path(pair_secret_file), "swarm.pair_secret_file"
    elif tls_dir and (Path(tls_dir) / PAIR_KEY).is_file():
        path, key = Path(tls_dir) / PAIR_KEY, "node.tls.dir"
    else:
        return b"", ""
    try:
        data = path.read_bytes()[: 1 << 16]
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    secret = parse_secret(data)
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"{key}: {path} holds {len(secret)} bytes; a pair secret needs at least "
                          f"{MIN_SECRET_BYTES} (write one with: crossback certs init, or "
                          f"python -c 'import secrets; print(secrets.token_hex(32))' > {path})")
    return secret, str(path)


def write_pair_secret(folder: Path) -> Path:
    """A fresh pair secret in ``folder/pair.key`` (0600), never overwriting one."""
    path = Path(folder) / PAIR_KEY
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; a pair secret is never overwritten") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path
