"""kahuna.api.authn remembers the principal of a key or a session (bench/api.py: rebuilding it on
every read): every write that changes the answer is seen on the very next request, and the
session's end is checked each time. Over a real embedded store behind the id cache, and without
the cache (nothing remembered, same answers)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import trio
from werkzeug.datastructures import Headers

from kahuna.api.authn import HeaderAuthenticator
from kahuna.auth import apikeys, jwt
from kahuna.auth.secrets import generate_key
from kahuna.resources import catalog, identity
from kahuna.resources.errors import Unauthorized
from kahuna.resources.service import Resources
from kahuna.store.base import new_id
from kahuna.store.cache import CachedStore
from kahuna.store.embedded import EmbeddedStore

SECRET = "server-secret-" + "s" * 50
SIGNATURE = "jwt-signature-" + "j" * 50


@pytest.fixture(params=["cached", "bare"])
async def world(request, tmp_path):
    catalog.load()
    store = EmbeddedStore(tmp_path / "s.sqlite3")
    if request.param == "cached":
        store = CachedStore(store, max_entries=100, ttl_seconds=60)
    await store.open()
    try:
        uid, key = new_id(), generate_key(apikeys.KEY_LENGTH)
        await store.insert("user", {"_id": uid, "name": "u", "email": "u@acme.test", "role": "user",
                                    "enabled": True, "team_ids": ["t1"]})
        token_id = new_id()
        await store.insert(apikeys.TOKEN_KIND, {"_id": token_id, "name": "k", "parent_type": "user",
                                                "user_id": uid, "key_digest": apikeys.digest(SECRET, key),
                                                "expire": False, "expiration_date": None})
        res = Resources(store)
        auth = HeaderAuthenticator("master-" + "m" * 57, resources=res, jwt_signature=SIGNATURE,
                                   server_secret=SECRET)
        yield {"store": store, "res": res, "auth": auth, "uid": uid, "key": key, "token_id": token_id,
               "cached": request.param == "cached"}
    finally:
        await store.close()


async def by_key(w, key=None):
    return await w["auth"](Headers([("Host", "x"), ("X-Api-Key", key or w["key"])]))


async def session(w, seconds: float) -> str:
    sid = new_id()
    now = datetime.now(timezone.utc)
    await w["store"].insert(identity.SESSION.collection, {"_id": sid, "user_id": w["uid"],
                                                          "expires_at": now + timedelta(seconds=seconds)})
    token, _ = jwt.issue(key=SIGNATURE, user_id=w["uid"], email="u@acme.test", role="user", session_id=sid,
                         lifetime_seconds=3600)
    return token


async def by_jwt(w, token):
    return await w["auth"](Headers([("Host", "x"), ("Authorization", f"Bearer {token}")]))


async def test_a_key_is_remembered_until_a_write_changes_the_answer(world):
    w = world
    first = await by_key(w)
    assert (first.user_id, first.team_ids, first.via) == (w["uid"], frozenset({"t1"}), "api-key")
    again = await by_key(w)
    assert again == first and (again is first) == w["cached"]  # remembered only behind the cache

    await w["store"].update_fields("user", w["uid"], {"team_ids": ["t2"], "role": "projectAdmin"})
    moved = await by_key(w)
    assert moved.team_ids == frozenset({"t2"}) and moved.role == "projectAdmin"

    await w["store"].update_fields("user", w["uid"], {"enabled": False})
    with pytest.raises(Unauthorized):
        await by_key(w)
    await w["store"].update_fields("user", w["uid"], {"enabled": True})
    assert (await by_key(w)).user_id == w["uid"]

    rotated = generate_key(apikeys.KEY_LENGTH)
    await w["store"].update_fields(apikeys.TOKEN_KIND, w["token_id"], {"key_digest": apikeys.digest(SECRET, rotated)})
    with pytest.raises(Unauthorized):
        await by_key(w)
    assert (await by_key(w, rotated)).user_id == w["uid"]

    yesterday = (datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat()
    await w["store"].update_fields(apikeys.TOKEN_KIND, w["token_id"], {"expire": True, "expiration_date": yesterday})
    with pytest.raises(Unauthorized):
        await by_key(w, rotated)
    await w["store"].update_fields(apikeys.TOKEN_KIND, w["token_id"], {"expire": False, "expiration_date": None})
    assert (await by_key(w, rotated)).user_id == w["uid"]

    await w["store"].delete(apikeys.TOKEN_KIND, w["token_id"])
    with pytest.raises(Unauthorized):
        await by_key(w, rotated)


async def test_a_session_is_remembered_until_closed_or_past_its_end(world):
    w = world
    token = await session(w, 2.0)
    first = await by_jwt(w, token)
    assert (first.user_id, first.via) == (w["uid"], "jwt")
    assert ((await by_jwt(w, token)) is first) == w["cached"]
    await w["store"].update_fields("user", w["uid"], {"team_ids": []})
    assert (await by_jwt(w, token)).team_ids == frozenset()
    await trio.sleep(2.1)  # the session's end, with no write in between: refused all the same
    with pytest.raises(Unauthorized, match="closed"):
        await by_jwt(w, token)

    other = await session(w, 3600)
    assert (await by_jwt(w, other)).user_id == w["uid"]
    await identity.close_session(w["res"], jwt.decode(other, SIGNATURE)["jti"])  # logout
    with pytest.raises(Unauthorized, match="closed"):
        await by_jwt(w, other)

    third = await session(w, 3600)
    await by_jwt(w, third)
    await w["store"].update_fields("user", w["uid"], {"enabled": False})
    with pytest.raises(Unauthorized):
        await by_jwt(w, third)


def test_the_digest_is_the_keyed_digest():
    from kahuna.auth.secrets import keyed_digest

    for key in (generate_key(64), "a" * 64):
        for secret in (SECRET, "another"):
            assert apikeys.digest(secret, key) == keyed_digest(secret.encode(), key, "api-key")
    assert apikeys.looks_like_key("aZ09" * 16)
    for bad in ("a" * 63, "a" * 65, "é" * 64, "a" * 63 + "_", "a" * 63 + "²", "a" * 63 + " "):
        assert not apikeys.looks_like_key(bad), bad
