"""kahuna.auth.jwt remembers verified tokens (bench/api.py: the per-request HMAC and JSON); a
remembered token still expires, and nothing unverified is ever remembered."""

import pytest

from kahuna.auth import jwt

KEY = "k" * 64


def test_a_remembered_token_still_expires_and_forgeries_are_not_remembered():
    token, claims = jwt.issue(key=KEY, user_id="u" * 24, email="a@b.test", role="user", session_id="s" * 24,
                              lifetime_seconds=60, now=1_000_000)
    assert jwt.decode(token, KEY, now=1_000_001) == claims
    got = jwt.decode(token, KEY, now=1_000_002)  # from the cache: a copy, not the cached dict
    got["role"] = "superAdmin"
    assert jwt.decode(token, KEY, now=1_000_003)["role"] == "user"
    with pytest.raises(jwt.InvalidToken, match="expired"):
        jwt.decode(token, KEY, now=1_000_060)
    with pytest.raises(jwt.InvalidToken, match="signature"):
        jwt.decode(token, "other" + KEY[5:], now=1_000_001)  # same text, another key: verified again
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for _ in range(2):
        with pytest.raises(jwt.InvalidToken):
            jwt.decode(forged, KEY, now=1_000_001)
