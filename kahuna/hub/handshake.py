"""Agent authentication on the upgrade request (sans-I/O): headers in, identity or refusal out.

Two modes, decided before the WebSocket upgrade so a refused agent costs one HTTP answer:

* upstream's headers: `X-WS-Kowabunga-Agent`, `-Id`, `-Api-Key` (the key crosses the wire; TLS at
  the proxy protects it). Unlike upstream we also require the type header to match the agent's
  stored type, since method names are prefixed with it.
* HMAC: `-Agent`, `-Id`, `-Timestamp` (unix seconds), `-Nonce` (32 hex), `-Signature` =
  hex(HMAC-SHA256(key, "<id>\\n<type>\\n<timestamp>\\n<nonce>")). The key never crosses the wire;
  a captured handshake is useless after `clock_skew` seconds, and within them its nonce is
  remembered so it cannot be replayed.

Verification costs one dict lookup and at most one HMAC (microseconds): no database, no slow hash,
so a reconnect storm is absorbed. Refusals disclose nothing beyond "bad request" (400, naming the
faulty header, which the client sent itself) or "forbidden" (403, whatever the cause); the precise
reason goes to counters and logs only.
"""

from __future__ import annotations

import hmac
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from hashlib import sha256

from kahuna.auth.secrets import equal

from .credentials import AGENT_TYPES, AgentCredential, CredentialSource

HDR_TYPE = "X-WS-Kowabunga-Agent"
HDR_ID = "X-WS-Kowabunga-Id"
HDR_KEY = "X-WS-Kowabunga-Api-Key"
HDR_TIMESTAMP = "X-WS-Kowabunga-Timestamp"
HDR_NONCE = "X-WS-Kowabunga-Nonce"
HDR_SIGNATURE = "X-WS-Kowabunga-Signature"

_WANTED = {h.lower().encode(): h for h in
           (HDR_TYPE, HDR_ID, HDR_KEY, HDR_TIMESTAMP, HDR_NONCE, HDR_SIGNATURE)}

_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
_KEY_RE = re.compile(r"[\x21-\x7e]{1,512}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_NONCE_RE = re.compile(r"[0-9a-fA-F]{32}")
_SIGNATURE_RE = re.compile(r"[0-9a-fA-F]{64}")

_DUMMY_KEY = b"\0" * 32


def signing_string(agent_id: str, agent_type: str, timestamp: str, nonce: str) -> bytes:
    return f"{agent_id}\n{agent_type}\n{timestamp}\n{nonce}".encode()


def sign(key: str, agent_id: str, agent_type: str, timestamp: str, nonce: str) -> str:
    """The HMAC mode's signature header value (lowercase hex)."""
    message = signing_string(agent_id, agent_type, timestamp, nonce)
    return hmac.new(key.encode(), message, sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated agent: who it is, and the credential it proved (for later re-checks)."""

    agent_id: str
    agent_type: str
    credential: AgentCredential
    mode: str  # "key" or "hmac"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A handshake answered with `status` before the upgrade; `reason` names the counter."""

    status: int
    reason: str
    body: bytes


_FORBIDDEN = b"forbidden\n"


def _bad_request(reason: str, detail: str) -> Refusal:
    return Refusal(400, reason, f"bad request: {detail}\n".encode())


def _forbidden(reason: str) -> Refusal:
    return Refusal(403, reason, _FORBIDDEN)


NOT_FOUND = Refusal(404, "not_found", b"not found\n")


class NonceCache:
    """Nonces seen within the replay window, with memory bounded by time and by count.

    A nonce is kept for 2 x skew from first sight: its timestamp was within `skew` of our clock
    then, so past that the timestamp check alone refuses a replay. Entries expire in insertion
    order (one deque), so purging is O(expired).
    """

    __slots__ = ("ttl", "max_entries", "_seen", "_order")

    def __init__(self, skew: float, max_entries: int) -> None:
        self.ttl = 2.0 * skew
        self.max_entries = max_entries
        self._seen: set[str] = set()
        self._order: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def purge(self, now: float) -> None:
        order, seen = self._order, self._seen
        while order and order[0][0] <= now:
            seen.discard(order.popleft()[1])

    def add(self, agent_id: str, nonce: str, now: float) -> bool | None:
        """Record a nonce: True if new, False if replayed, None if the cache is full."""
        self.purge(now)
        entry = f"{agent_id}\n{nonce.lower()}"
        if entry in self._seen:
            return False
        if len(self._seen) >= self.max_entries:
            return None
        self._seen.add(entry)
        self._order.append((now + self.ttl, entry))
        return True


class HandshakeVerifier:
    def __init__(self, credentials: CredentialSource, *, path: str = "/ws", clock_skew: float = 300.0,
                 nonce_cache_size: int = 200_000, clock: Callable[[], float] = time.time) -> None:
        self.credentials = credentials
        self.path = path
        self.clock_skew = clock_skew
        self.clock = clock
        self.nonces = NonceCache(clock_skew, nonce_cache_size)

    def verify(self, target: str, headers: Iterable[tuple[bytes, bytes]]) -> Identity | Refusal:
        """Decide on one upgrade request (`target` is the request path, query included)."""
        if target.split("?", 1)[0] != self.path:
            return NOT_FOUND
        found: dict[str, str] = {}
        for raw_name, raw_value in headers:
            name = _WANTED.get(raw_name.lower())
            if name is None:
                continue
            if name in found:
                return _bad_request("duplicate_header", f"duplicate header {name}")
            try:
                found[name] = raw_value.decode("ascii").strip()
            except UnicodeDecodeError:
                return _bad_request("bad_header", f"header {name} is not ASCII")

        for name in (HDR_TYPE, HDR_ID):
            if not found.get(name):
                return _bad_request("missing_header", f"missing header {name}")
        key, signature = found.get(HDR_KEY), found.get(HDR_SIGNATURE)
        if key and signature:
            return _bad_request("both_auth_modes",
                                f"send either {HDR_KEY} or {HDR_SIGNATURE}, not both")
        if not key and not signature:
            return _bad_request("missing_header", f"missing header {HDR_KEY} or {HDR_SIGNATURE}")
        agent_type, agent_id = found[HDR_TYPE], found[HDR_ID]
        if not _ID_RE.fullmatch(agent_id):
            return _bad_request("bad_header", f"malformed header {HDR_ID}")
        if signature:
            timestamp, nonce = found.get(HDR_TIMESTAMP), found.get(HDR_NONCE)
            for name, value in ((HDR_TIMESTAMP, timestamp), (HDR_NONCE, nonce)):
                if not value:
                    return _bad_request("missing_header", f"missing header {name}")
            assert timestamp is not None and nonce is not None
            for name, value, pattern in ((HDR_TIMESTAMP, timestamp, _TIMESTAMP_RE),
                                         (HDR_NONCE, nonce, _NONCE_RE),
                                         (HDR_SIGNATURE, signature, _SIGNATURE_RE)):
                if not pattern.fullmatch(value):
                    return _bad_request("bad_header", f"malformed header {name}")
        elif not _KEY_RE.fullmatch(key or ""):
            return _bad_request("bad_header", f"malformed header {HDR_KEY}")

        if agent_type not in AGENT_TYPES:
            return _forbidden("unknown_type")
        cred = self.credentials.lookup(agent_id)
        if cred is None:
            # Same work as a real check, so timing does not tell which agent ids exist.
            if signature:
                equal(hmac.new(_DUMMY_KEY, signing_string(agent_id, agent_type, timestamp, nonce),
                               sha256).hexdigest(), signature.lower())
            else:
                equal(_DUMMY_KEY.hex(), key or "")
            return _forbidden("unknown_agent")
        now = self.clock()
        self.nonces.purge(now)
        if cred.agent_type != agent_type:
            return _forbidden("type_mismatch")
        if cred.expired(now):
            return _forbidden("expired_key")
        if not signature:
            if not equal(key or "", cred.key):
                return _forbidden("bad_key")
            return Identity(agent_id, agent_type, cred, "key")

        expected = sign(cred.key, agent_id, agent_type, timestamp, nonce)
        if not equal(expected, signature.lower()):
            return _forbidden("bad_signature")
        if abs(now - int(timestamp)) > self.clock_skew:
            return _forbidden("clock_skew")
        fresh = self.nonces.add(agent_id, nonce, now)
        if fresh is False:
            return _forbidden("replayed_nonce")
        if fresh is None:
            return Refusal(503, "nonce_cache_full", b"busy, retry later\n")
        return Identity(agent_id, agent_type, cred, "hmac")


MAX_PENDING_HANDSHAKES = 512
MAX_PENDING_PER_ADDRESS = 16


class HandshakeSlots:
    """Bounds concurrent unfinished handshakes, in total and per source address, so a slowloris
    of half-open upgrades cannot take the descriptors good agents and the REST listener need
    (each handshake also holds ~17 KiB until it ends). Loopback and trusted-proxy addresses are
    only counted in the total: behind Caddy every agent comes from the proxy."""

    def __init__(self, total: int = MAX_PENDING_HANDSHAKES, per_address: int = MAX_PENDING_PER_ADDRESS,
                 exempt: Iterable[str] = ()) -> None:
        self.total, self.per_address = total, per_address
        self.exempt = frozenset(exempt)
        self.pending = 0
        self._by_address: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        if self.pending >= self.total:
            return False
        counted = address not in self.exempt and not address.startswith(("127.", "::1", "::ffff:127."))
        if counted and self._by_address.get(address, 0) >= self.per_address:
            return False
        self.pending += 1
        if counted:
            self._by_address[address] = self._by_address.get(address, 0) + 1
        return True

    @property
    def tracked_addresses(self) -> int:
        return len(self._by_address)

    def release(self, address: str) -> None:
        self.pending -= 1
        n = self._by_address.get(address)
        if n is not None:
            if n <= 1:
                del self._by_address[address]  # no high-water mark left behind
            else:
                self._by_address[address] = n - 1
