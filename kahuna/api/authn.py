"""Authentication of API requests: who is calling, from the request headers.

- `X-API-Key`: the master key (`global.apiKey`, superAdmin), or a user's key found in O(1) by
  its keyed digest (`kahuna.auth.apikeys`); refused once expired, rotated or deleted, and while
  its owner's account is disabled. Agent keys authenticate on the hub, not here.
- `Authorization: Bearer <jwt>`: parsed strictly, HS256-verified, unexpired, and its session
  (`jti`) still open (logout, a password reset and an email change close sessions).
Every credential sent must be valid: a wrong one is 401 even when another one is right. The role
and teams are read from the user document on each request, so a demotion or a team change takes
effect at once, whatever the token says.

Remembered answers (bench/api.py: building the same principal from the same documents on every
read was a fifth of the API's own work per request): the principal of a key (by its digest) or
of a session (by its id) is kept with the documents it was built from, as the id cache holds
them (`CachedStore.get_shared`: the same object until a write to that id, its expiry in the
cache or its eviction replaces it). Each request still reads the token (or session) and the
user through the cache and reuses the principal only when both are the very objects it was
built from, and the key's or session's expiry is still ahead: a rotated, deleted or expired
key, a closed session, a disabled user or a team change is refused or recomputed on the next
request, exactly as without the memo. Nothing secret is kept: keys are remembered by their
keyed digest.
"""

from __future__ import annotations

import time
from datetime import timezone
from typing import Any

from kahuna.auth import apikeys, jwt
from kahuna.auth.principal import MASTER, Principal
from kahuna.auth.secrets import equal
from kahuna.resources import identity
from kahuna.resources.errors import Unauthorized, Unavailable
from kahuna.store import errors as store_errors
from kahuna.store.base import is_valid_id, read_shared

MEMO_MAX = 20_000  # remembered principals per credential type (a few hundred bytes each)
_USERS = identity.USER.collection
_SESSIONS = identity.SESSION.collection


class _Memo:
    """A principal and the documents (the cache's own objects) it was built from."""

    __slots__ = ("credential", "user", "principal", "until")

    def __init__(self, credential: dict, user: dict, principal: Principal, until: float) -> None:
        self.credential = credential  # the token or session document
        self.user = user
        self.principal = principal
        self.until = until  # the credential's end (POSIX seconds; inf: never)


def _remember(memo: dict[str, _Memo], key: str, entry: _Memo) -> None:
    memo.pop(key, None)
    if len(memo) >= MEMO_MAX:
        memo.pop(next(iter(memo)))  # the oldest
    memo[key] = entry


class HeaderAuthenticator:
    def __init__(self, master_key: str, *, resources=None, jwt_signature: str = "",
                 server_secret: str = "") -> None:
        self._master_key = master_key
        self._resources = resources
        self._jwt_signature = jwt_signature
        self._server_secret = server_secret
        self._by_key: dict[str, _Memo] = {}  # key digest -> memo
        self._by_session: dict[str, _Memo] = {}  # session id -> memo

    async def __call__(self, headers) -> Principal | None:
        key = bearer = None
        keys = bearers = 0
        # one pass over the fields (werkzeug's Headers iterate as (name, value), repeats included)
        for name, value in headers if hasattr(headers, "getlist") else headers.items():
            lower = name.lower()
            if lower == "x-api-key":
                key, keys = value, keys + 1
            elif lower == "authorization":
                bearer, bearers = value, bearers + 1
        if not keys and not bearers:
            return None
        if keys > 1 or bearers > 1:
            raise Unauthorized("send one X-API-Key or one Authorization header")
        by_key = await self._from_key(key) if keys else None
        by_jwt = await self._from_jwt(bearer) if bearers else None
        return by_key or by_jwt

    async def _shared(self, collection: str, doc_id: Any) -> dict | None:
        """The cached document itself (never mutated here), None when there is none."""
        try:
            return await read_shared(self._resources.store, collection, doc_id)
        except store_errors.Unavailable as exc:
            raise Unavailable(f"database unavailable: {exc}") from None

    async def _from_key(self, key: str) -> Principal:
        if self._master_key and equal(key, self._master_key):
            return MASTER
        if self._resources is not None and self._server_secret and apikeys.looks_like_key(key):
            wanted = apikeys.digest(self._server_secret, key)
            memo = self._by_key.get(wanted)
            if memo is not None:
                if (await self._shared(apikeys.TOKEN_KIND, memo.credential["_id"]) is memo.credential
                        and await self._shared(_USERS, memo.user["_id"]) is memo.user
                        and time.time() < memo.until):
                    return memo.principal
                self._by_key.pop(wanted, None)
            token = await apikeys.find_by_key(self._resources, self._server_secret, key, wanted=wanted)
            if token is not None and token.get("parent_type") == "user":
                user = await self._user(token.get("user_id"))
                if user is not None:
                    principal = _principal(user, via="api-key", token_id=token["_id"])
                    end = apikeys.expires_at(token)
                    _remember(self._by_key, wanted,
                              _Memo(token, user, principal, end.timestamp() if end else float("inf")))
                    return principal
        raise Unauthorized("invalid or expired API key")

    async def _from_jwt(self, header: str) -> Principal:
        if self._resources is None or not self._jwt_signature:
            raise Unauthorized("invalid credentials")
        try:
            claims = jwt.decode(jwt.bearer_token(header), self._jwt_signature)
        except jwt.InvalidToken as exc:
            raise Unauthorized(f"invalid bearer token: {exc}") from None
        session_id, user_id = claims["jti"], claims["uid"]
        memo = self._by_session.get(session_id)
        if memo is not None:
            if (memo.user["_id"] == user_id
                    and await self._shared(_SESSIONS, session_id) is memo.credential
                    and time.time() < memo.until
                    and await self._shared(_USERS, user_id) is memo.user):
                return memo.principal
            self._by_session.pop(session_id, None)
        if not await identity.session_alive(self._resources, session_id, user_id):
            raise Unauthorized("this session was closed (logged out or revoked)")
        user = await self._user(user_id)
        if user is None:
            raise Unauthorized("this session was closed (logged out or revoked)")
        principal = _principal(user, via="jwt", session_id=session_id)
        session = await self._shared(_SESSIONS, session_id)
        expires = session.get("expires_at") if session is not None else None
        if session is not None and session.get("user_id") == user_id and hasattr(expires, "timestamp"):
            if expires.tzinfo is None:  # as identity.session_alive reads it: UTC
                expires = expires.replace(tzinfo=timezone.utc)
            _remember(self._by_session, session_id, _Memo(session, user, principal, expires.timestamp()))
        return principal

    async def _user(self, user_id) -> dict | None:
        if not is_valid_id(user_id):
            return None
        user = await self._shared(_USERS, user_id)
        return user if user is not None and user.get("enabled") is True else None


def _principal(user: dict, *, via: str, session_id: str | None = None, token_id: str | None = None) -> Principal:
    role = user.get("role")
    return Principal(role=role if role in ("superAdmin", "projectAdmin") else "user", via=via,
                     user_id=user["_id"], email=user.get("email", ""),
                     team_ids=frozenset(user.get("team_ids") or ()), session_id=session_id,
                     token_id=token_id)
