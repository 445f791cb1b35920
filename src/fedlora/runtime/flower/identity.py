"""Binding a client id to a SuperNode's key, and replies to the message they answer.

Every message the server sends carries a fresh ``nonce`` that the reply must echo, so a reply
from an earlier round (or another run) cannot be passed off as this one's. When the run's
config names ``federation.node_keys`` (one OpenSSH public key per client id, the keys the
SuperNodes authenticate with: ``flower-supernode --auth-supernode-private-key``), a node must
sign the nonce of the server's query with the private key of the client id it claims (node
config ``auth-key``: the path of that key), and every reply it sends is signed too: the
server verifies each against the claimed client's public key and refuses anything else.

The signature covers a digest of the reply's whole record (:func:`record_digest`): every
field, with each byte value represented by its SHA-256, so a signed reply cannot be altered
in transit without the server noticing.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedlora.errors import ConfigError

SIGNATURE = "signature"
NONCE = "nonce"


def fresh_nonce() -> str:
    """A 128-bit random nonce, as hex."""
    return secrets.token_hex(16)


def record_digest(record: Mapping[str, Any]) -> bytes:
    """SHA-256 of a record's fields (the signature itself excluded; bytes by their hash)."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"sha256": hashlib.sha256(value).hexdigest()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    fields = {k: plain(v) for k, v in record.items() if k != SIGNATURE}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).digest()


def public_key(text: str, what: str) -> ec.EllipticCurvePublicKey:
    """An OpenSSH (``ecdsa-sha2-nistp384 AAAA…``) or PEM EC public key."""
    data = text.strip().encode()
    try:
        key = (
            serialization.load_pem_public_key(data)
            if data.startswith(b"-----BEGIN")
            else serialization.load_ssh_public_key(data)
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{what} is not an OpenSSH or PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{what} is not an elliptic-curve key (SuperNode keys are ECDSA)")
    return key


def private_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The node's private key (OpenSSH or PEM, unencrypted), from its node config path."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"node config auth-key: cannot read {path}: {exc}") from None
    try:
        key = (
            serialization.load_ssh_private_key(data, None)
            if b"OPENSSH" in data[:64]
            else serialization.load_pem_private_key(data, None)
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"node config auth-key: {path} is not a private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"node config auth-key: {path} is not an elliptic-curve key")
    return key


def sign(key: ec.EllipticCurvePrivateKey, record: Mapping[str, Any]) -> bytes:
    """The node's signature of ``record``."""
    return key.sign(record_digest(record), ec.ECDSA(hashes.SHA256()))


def verify(key: ec.EllipticCurvePublicKey, record: Mapping[str, Any]) -> bool:
    """Whether ``record`` carries a valid signature by ``key``."""
    signature = record.get(SIGNATURE)
    if not isinstance(signature, bytes):
        return False
    try:
        key.verify(signature, record_digest(record), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
