"""Secret material: generation, keyed digests, constant-time checks, sealing.

Why a *keyed* digest (HMAC-SHA256 under a server secret) rather than a password hash for API
keys: keys are 64 random alphanumerics (~380 bits), so a slow hash buys nothing against guessing,
and a deterministic digest lets us find the owner of a key with one indexed lookup instead of
upstream's bcrypt scan over every token. The server secret keeps a stolen database from being
useful for offline checks.

Why sealing (AES-GCM) for agent keys: HMAC handshake verification needs the key itself, so it is
kept encrypted under the server secret; a copy of the database alone cannot authenticate.
"""

from __future__ import annotations

import hmac
import os
import secrets
import string
from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALPHANUMERIC = string.ascii_letters + string.digits


def generate_key(length: int = 64) -> str:
    """A random alphanumeric key (no symbols: they broke JSON/YAML parsers upstream)."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def generate_token(nbytes: int = 32) -> str:
    """A random URL-safe token (confirmation links, nonces)."""
    return secrets.token_urlsafe(nbytes)


_PREFIXED: dict[tuple[bytes, str], Any] = {}  # (secret, purpose) -> HMAC state after the prefix


def keyed_digest(server_secret: bytes, value: str, purpose: str = "api-key") -> str:
    """HMAC-SHA256(server_secret, purpose || 0 || value) as hex; `purpose` separates domains.
    Computed from an HMAC state that has already taken the key schedule and the prefix (it is
    on every API-key request: ~1.2 µs instead of ~2.5 µs)."""
    state = _PREFIXED.get((server_secret, purpose))
    if state is None:
        state = hmac.new(server_secret, purpose.encode() + b"\0", sha256)
        if len(_PREFIXED) >= 16:  # one server secret per process, a few purposes (tests use more)
            _PREFIXED.clear()
        _PREFIXED[(server_secret, purpose)] = state
    mac = state.copy()
    mac.update(value.encode())
    return mac.hexdigest()


def equal(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality for secrets (str are compared as UTF-8)."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


def _aes_key(server_secret: bytes) -> bytes:
    return hmac.new(server_secret, b"kahuna-seal-v1", sha256).digest()


def seal(server_secret: bytes, plaintext: str, associated: str = "") -> str:
    """Encrypt `plaintext` with AES-256-GCM under a key derived from the server secret.

    `associated` (e.g. the owner's id) is authenticated, so a sealed value copied onto another
    document does not open there. Output: hex(nonce || ciphertext+tag).
    """
    nonce = os.urandom(12)
    sealed = AESGCM(_aes_key(server_secret)).encrypt(nonce, plaintext.encode(), associated.encode())
    return (nonce + sealed).hex()


def unseal(server_secret: bytes, sealed_hex: str, associated: str = "") -> str:
    """Inverse of `seal`; raises ValueError when the value was tampered with or the secret differs."""
    try:
        raw = bytes.fromhex(sealed_hex)
        plain = AESGCM(_aes_key(server_secret)).decrypt(raw[:12], raw[12:], associated.encode())
    except Exception as exc:  # InvalidTag, ValueError from fromhex: same answer to the caller
        raise ValueError("sealed value does not open with this server secret") from exc
    return plain.decode()
