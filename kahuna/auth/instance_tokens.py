"""Per-instance metadata tokens: `instance_token` / `verify`.

Here, below the orchestrator (which writes the token into the ISO) and the metadata endpoint
(which checks it), so neither imports the other.

Why a derived HMAC rather than a stored random token: the token must be checkable on every
metadata read without a database lookup of the token itself (the instance document is still read
for its current `metadata_generation`), and it must be rotatable per instance — bumping the
generation (and re-rendering the instance's cloud-init ISO, which then carries the new token)
changes it, and every older token stops verifying. Nothing bumps it on its own yet: a running
instance keeps reading its ISO's token until it reboots on the new one. The HMAC key is derived
from the server secret for this purpose only, so a metadata token can never be confused with an
API-key digest, a seal key or any other use of the same secret; a stolen database (without the
server secret) does not yield tokens.
"""

from __future__ import annotations

import base64
import hmac
from hashlib import sha256

_PURPOSE = b"kahuna-metadata-token-v1"


def _key(server_secret: str | bytes) -> bytes:
    secret = server_secret.encode() if isinstance(server_secret, str) else server_secret
    return hmac.new(secret, _PURPOSE, sha256).digest()


def instance_token(server_secret: str | bytes, instance_id: str, generation: int) -> str:
    """The token of `instance_id` at `generation`: URL-safe base64 (no padding), 43 characters."""
    message = f"{instance_id}\0{int(generation)}".encode()
    mac = hmac.new(_key(server_secret), message, sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(server_secret: str | bytes, instance_id: str, generation: int, token: str) -> bool:
    """Whether `token` is the current token of the instance (constant-time comparison)."""
    if not isinstance(token, str) or not token or len(token) > 256:
        return False
    expected = instance_token(server_secret, instance_id, generation)
    return hmac.compare_digest(expected.encode("ascii"), token.encode("utf-8", "replace"))
