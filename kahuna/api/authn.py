"""Authentication of API requests: who is calling, from the request headers.

- `X-API-Key`: the master key (`global.apiKey`, superAdmin), or a user's key found in O(1) by
  its keyed digest (`kahuna.auth.apikeys`); refused once expired, rotated or deleted, and while
  its owner's account is disabled. Agent keys authenticate on the hub, not here.
- `Authorization: Bearer <jwt>`: parsed strictly, HS256-verified, unexpired, and its session
  (`jti`) still open (logout, a password reset and an email change close sessions).
Every credential sent must be valid: a wrong one is 401 even when another one is right. The role
and teams are read from the user document on each request, so a demotion or a team change takes
effect at once, whatever the token says.
"""

from __future__ import annotations

from kahuna.auth import apikeys, jwt
from kahuna.auth.principal import MASTER, Principal
from kahuna.auth.secrets import equal
from kahuna.resources import identity
from kahuna.resources.errors import NotFoundError, Unauthorized


class HeaderAuthenticator:
    def __init__(self, master_key: str, *, resources=None, jwt_signature: str = "",
                 server_secret: str = "") -> None:
        self._master_key = master_key
        self._resources = resources
        self._jwt_signature = jwt_signature
        self._server_secret = server_secret

    async def __call__(self, headers) -> Principal | None:
        keys = headers.getlist("X-API-Key") if hasattr(headers, "getlist") else [headers.get("X-API-Key")]
        bearers = headers.getlist("Authorization") if hasattr(headers, "getlist") else [headers.get("Authorization")]
        keys = [k for k in keys if k is not None]
        bearers = [b for b in bearers if b is not None]
        if not keys and not bearers:
            return None
        if len(keys) > 1 or len(bearers) > 1:
            raise Unauthorized("send one X-API-Key or one Authorization header")
        by_key = await self._from_key(keys[0]) if keys else None
        by_jwt = await self._from_jwt(bearers[0]) if bearers else None
        return by_key or by_jwt

    async def _from_key(self, key: str) -> Principal:
        if self._master_key and equal(key, self._master_key):
            return MASTER
        if self._resources is not None and self._server_secret:
            token = await apikeys.find_by_key(self._resources, self._server_secret, key)
            if token is not None and token.get("parent_type") == "user":
                user = await self._user(token.get("user_id"))
                if user is not None:
                    return _principal(user, via="api-key", token_id=token["_id"])
        raise Unauthorized("invalid or expired API key")

    async def _from_jwt(self, header: str) -> Principal:
        if self._resources is None or not self._jwt_signature:
            raise Unauthorized("invalid credentials")
        try:
            claims = jwt.decode(jwt.bearer_token(header), self._jwt_signature)
        except jwt.InvalidToken as exc:
            raise Unauthorized(f"invalid bearer token: {exc}") from None
        if not await identity.session_alive(self._resources, claims["jti"], claims["uid"]):
            raise Unauthorized("this session was closed (logged out or revoked)")
        user = await self._user(claims["uid"])
        if user is None:
            raise Unauthorized("this session was closed (logged out or revoked)")
        return _principal(user, via="jwt", session_id=claims["jti"])

    async def _user(self, user_id) -> dict | None:
        if not isinstance(user_id, str):
            return None
        try:
            user = await self._resources.get(identity.USER, user_id)
        except NotFoundError:
            return None
        return user if user.get("enabled") is True else None


def _principal(user: dict, *, via: str, session_id: str | None = None, token_id: str | None = None) -> Principal:
    role = user.get("role")
    return Principal(role=role if role in ("superAdmin", "projectAdmin") else "user", via=via,
                     user_id=user["_id"], email=user.get("email", ""),
                     team_ids=frozenset(user.get("team_ids") or ()), session_id=session_id,
                     token_id=token_id)
