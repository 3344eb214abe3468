"""API keys of users and agents (upstream collection `token`), found in O(1) by a keyed digest.

A token document belongs to a user *or* an agent:
    {name, description, parent_type: "user"|"agent", user_id | agent_id, expire, expiration_date,
     key_digest, [sealed_key (agents only)]}
- `key_digest` = HMAC-SHA256 under the server secret (`secrets.keyed_digest`), indexed, so the
  owner of a presented key is one indexed lookup away (upstream bcrypt-compared every token);
- `sealed_key` (agents only) is the key itself, AES-GCM-sealed under the server secret with the
  agent id as associated data: the HMAC hub handshake needs the key, not a digest of it;
- the plaintext key is returned once by `issue_key` for the caller to mail it; it is never stored
  in clear nor logged.

Expiry is a date (`YYYY-MM-DD`, UTC): the key works through that whole day and is refused from
the next one (`expires_at`).

Other features call: `issue_key`, `find_by_key`, `revoke_for`, `token_of`, `expires_at`,
`is_expired`, `agent_key`, `parse_expiration`.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from kahuna.auth.secrets import equal, generate_key, keyed_digest, seal, unseal
from kahuna.resources.errors import Invalid, Missing
from kahuna.store.base import read_shared

KEY_LENGTH = 64
TOKEN_KIND = "token"
PARENT_FIELDS = {"user": "user_id", "agent": "agent_id"}


def digest(server_secret: str, key: str) -> str:
    return keyed_digest(server_secret.encode(), key, "api-key")


def looks_like_key(value: str) -> bool:
    """64 characters of [A-Za-z0-9] (str.isalnum of an ASCII string is exactly that)."""
    return len(value) == KEY_LENGTH and value.isascii() and value.isalnum()


def parse_expiration(expire: Any, expiration_date: Any, *, today: date | None = None,
                     allow_past: bool = False) -> str | None:
    """Validate an (expire, expiration_date) pair; answers the date to store (None: never).

    `expire` true needs a date (422 when absent); a date with `expire` false is a contradiction
    (400); a date already past is refused unless `allow_past` (a key born expired is useless).
    """
    if not isinstance(expire, bool):
        raise Invalid("expire: expected true or false")
    if not expire:
        if expiration_date not in (None, ""):
            raise Invalid("expirationDate: given while expire is false")
        return None
    if expiration_date in (None, ""):
        raise Missing("expirationDate: required when expire is true")
    value = parse_date(expiration_date, "expirationDate")
    if not allow_past and value < (today or datetime.now(timezone.utc).date()):
        raise Invalid(f"expirationDate: {value.isoformat()} is already past")
    return value.isoformat()


def parse_date(value: Any, path: str) -> date:
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        raise Invalid(f"{path}: expected a date (YYYY-MM-DD)")
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{path}: {value!r} is not a date (YYYY-MM-DD)") from None


def expires_at(doc: dict[str, Any]) -> datetime | None:
    """The instant the key stops working (the start of the day after its expiration date)."""
    if not doc.get("expire") or not doc.get("expiration_date"):
        return None
    try:
        day = parse_date(doc["expiration_date"], "expiration_date")
    except Invalid:
        return datetime.min.replace(tzinfo=timezone.utc)  # unreadable: treat as expired
    return datetime.combine(day + timedelta(days=1), time.min, tzinfo=timezone.utc)


def is_expired(doc: dict[str, Any], now: datetime | None = None) -> bool:
    end = expires_at(doc)
    return end is not None and (now or datetime.now(timezone.utc)) >= end


async def token_of(resources, parent_type: str, parent_id: str) -> dict[str, Any] | None:
    docs = await resources.list(TOKEN_KIND, **{PARENT_FIELDS[parent_type]: parent_id})
    return docs[0] if docs else None


async def issue_key(resources, server_secret: str, parent_type: str, parent_id: str, name: str,
                    expire: bool, expiration_date: str | None) -> tuple[dict[str, Any], str]:
    """Create or rotate the API key of a user or an agent: answers (token document, plaintext key).

    Any previous key of that parent stops working at once. The token document keeps its id across
    rotations (references to it stay valid); a parent never has more than one token.
    """
    field = PARENT_FIELDS[parent_type]
    key = generate_key(KEY_LENGTH)
    server = {"parent_type": parent_type, field: parent_id, "key_digest": digest(server_secret, key),
              "expire": bool(expire), "expiration_date": expiration_date if expire else None}
    if parent_type == "agent":
        server["sealed_key"] = seal(server_secret.encode(), key, associated=parent_id)
    async with resources.locks.hold(("api-key-of", parent_type, parent_id)):
        existing = await resources.list(TOKEN_KIND, **{field: parent_id})
        if existing:
            doc = await resources.set_fields(TOKEN_KIND, existing[0]["_id"], {"name": name, **server})
            for extra in existing[1:]:
                await resources.delete(TOKEN_KIND, extra["_id"])
        else:
            payload = {"name": name, "description": f"API key of {parent_type} {parent_id}",
                       "expire": bool(expire)}
            if expire:
                payload["expiration_date"] = expiration_date
            doc = await resources.create(TOKEN_KIND, payload, server_fields=server)
    return doc, key


KNOWN_KEYS_MAX = 20_000  # digest -> token id entries kept (~200 bytes each)


async def find_by_key(resources, server_secret: str, key: str, *, wanted: str | None = None) -> dict[str, Any] | None:
    """The token document of a presented key, if it is one of ours and has not expired. The
    answer is the id cache's own object (`CachedStore.get_shared`): never mutate it. `wanted`:
    the key's digest, when the caller has it already.

    A key seen before is found by its token's id (a read the store's id cache answers, no query
    per request): measured in bench/api.py, the indexed query was the API-key read's cost on the
    embedded store, and on a server that scans instead of using the index (nx-27017) it grew
    with the number of keys. The id is only a hint: the document read must still carry the
    presented key's digest (a rotation changes it on the same id, a deletion removes the
    document, both invalidate the cached copy), else the hint is dropped and the query decides.
    A write made by another process is seen once the cached copy expires, as for the user
    document this same check reads (`cache.expirationMinutes`).
    """
    if not isinstance(key, str) or not looks_like_key(key):
        return None
    if wanted is None:
        wanted = digest(server_secret, key)
    known: dict[str, str] = resources.extras.setdefault("api_key_ids", {})
    token_id = known.get(wanted)
    if token_id is not None:
        doc = await read_shared(resources.store, TOKEN_KIND, token_id)
        if doc is not None and equal(doc.get("key_digest") or "", wanted):
            return None if is_expired(doc) else doc
        known.pop(wanted, None)
    docs = await resources.store.find(TOKEN_KIND, {"key_digest": wanted}, limit=2)
    if len(docs) != 1 or not equal(docs[0].get("key_digest") or "", wanted):
        return None
    if len(known) >= KNOWN_KEYS_MAX:
        known.pop(next(iter(known)))  # the oldest hint
    known[wanted] = docs[0]["_id"]
    doc = await read_shared(resources.store, TOKEN_KIND, docs[0]["_id"])  # the cached object, for the caller's memo
    if doc is None or not equal(doc.get("key_digest") or "", wanted):
        return None  # deleted or rotated meanwhile
    return None if is_expired(doc) else doc


async def revoke_for(resources, parent_type: str, parent_id: str) -> int:
    """Delete every key of this user or agent; answers how many there were."""
    field = PARENT_FIELDS[parent_type]
    async with resources.locks.hold(("api-key-of", parent_type, parent_id)):
        docs = await resources.list(TOKEN_KIND, **{field: parent_id})
        for doc in docs:
            await resources.delete(TOKEN_KIND, doc["_id"])
    return len(docs)


def agent_key(server_secret: str, doc: dict[str, Any]) -> str:
    """The plaintext key of an agent's token (ValueError if it does not open)."""
    if doc.get("parent_type") != "agent" or not doc.get("sealed_key"):
        raise ValueError("not an agent token with a sealed key")
    return unseal(server_secret.encode(), doc["sealed_key"], associated=doc["agent_id"])
