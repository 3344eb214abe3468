"""Handshake verification without sockets: every refusal reason, and replay protection."""

from datetime import datetime, timezone

import pytest

from agent.sdk import hmac_headers, key_headers
from kahuna.hub.credentials import AgentCredential, InMemoryCredentials, parse_keys_lines
from kahuna.hub.handshake import HandshakeVerifier, Identity, NonceCache, Refusal, sign

KEY = "K" * 64
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def verifier(clock):
    creds = InMemoryCredentials([
        AgentCredential("a1", "Kaktus", KEY),
        AgentCredential("old", "Kaktus", KEY, datetime.fromtimestamp(NOW - 1, timezone.utc)),
        AgentCredential("naive", "Kiwi", KEY, datetime.fromtimestamp(NOW + 60, timezone.utc).replace(tzinfo=None)),
    ])
    return HandshakeVerifier(creds, clock_skew=300.0, nonce_cache_size=4, clock=clock)


def lower(headers):
    return [(k.lower(), v) for k, v in headers]


def refused(result, status, reason):
    assert isinstance(result, Refusal), result
    assert (result.status, result.reason) == (status, reason)
    return result


def test_sdk_signature_matches_hub_signature():
    headers = dict(hmac_headers("Kaktus", "a1", KEY, now=NOW, nonce="ab" * 16))
    assert headers[b"X-WS-Kowabunga-Signature"].decode() == sign(KEY, "a1", "Kaktus", str(int(NOW)), "ab" * 16)


def test_key_mode_accepts_and_identifies(verifier):
    ident = verifier.verify("/ws", lower(key_headers("Kaktus", "a1", KEY)))
    assert isinstance(ident, Identity)
    assert (ident.agent_id, ident.agent_type, ident.mode) == ("a1", "Kaktus", "key")


def test_hmac_mode_accepts_mixed_case_header_names(verifier):
    ident = verifier.verify("/ws?x=1", hmac_headers("Kaktus", "a1", KEY, now=NOW))
    assert isinstance(ident, Identity) and ident.mode == "hmac"


@pytest.mark.parametrize("mode", ["key", "hmac"])
def test_refusals_common_to_both_modes(verifier, mode):
    make = key_headers if mode == "key" else (lambda t, i, k: hmac_headers(t, i, k, now=NOW))
    refused(verifier.verify("/ws", make("Kaktus", "a1", "wrong")), 403,
            "bad_key" if mode == "key" else "bad_signature")
    refused(verifier.verify("/ws", make("Kiwi", "a1", KEY)), 403, "type_mismatch")
    refused(verifier.verify("/ws", make("Kpop", "a1", KEY)), 403, "unknown_type")
    refused(verifier.verify("/ws", make("Kaktus", "nobody", KEY)), 403, "unknown_agent")
    refused(verifier.verify("/ws", make("Kaktus", "old", KEY)), 403, "expired_key")
    refused(verifier.verify("/api/v1/ws", make("Kaktus", "a1", KEY)), 404, "not_found")


def test_naive_expiry_is_utc(verifier, clock):
    assert isinstance(verifier.verify("/ws", key_headers("Kiwi", "naive", KEY)), Identity)
    clock.now += 61
    refused(verifier.verify("/ws", key_headers("Kiwi", "naive", KEY)), 403, "expired_key")


def test_refusal_bodies_disclose_nothing(verifier):
    bodies = {verifier.verify("/ws", key_headers(t, i, k)).body
              for t, i, k in [("Kaktus", "a1", "x"), ("Kiwi", "a1", KEY), ("Kaktus", "zz", KEY),
                              ("Kaktus", "old", KEY), ("Kpop", "a1", KEY)]}
    assert bodies == {b"forbidden\n"}


@pytest.mark.parametrize("drop", ["X-WS-Kowabunga-Agent", "X-WS-Kowabunga-Id", "X-WS-Kowabunga-Api-Key"])
def test_missing_upstream_header_is_400(verifier, drop):
    headers = [(k, v) for k, v in key_headers("Kaktus", "a1", KEY) if k.decode() != drop]
    r = refused(verifier.verify("/ws", headers), 400, "missing_header")
    assert r.body.startswith(b"bad request")


@pytest.mark.parametrize("drop", ["X-WS-Kowabunga-Timestamp", "X-WS-Kowabunga-Nonce"])
def test_missing_hmac_header_is_400(verifier, drop):
    headers = [(k, v) for k, v in hmac_headers("Kaktus", "a1", KEY, now=NOW) if k.decode() != drop]
    refused(verifier.verify("/ws", headers), 400, "missing_header")


def test_both_modes_at_once_is_400(verifier):
    headers = hmac_headers("Kaktus", "a1", KEY, now=NOW) + [(b"X-WS-Kowabunga-Api-Key", KEY.encode())]
    refused(verifier.verify("/ws", headers), 400, "both_auth_modes")


@pytest.mark.parametrize("name,value", [
    ("X-WS-Kowabunga-Timestamp", b"12.5"), ("X-WS-Kowabunga-Timestamp", b"-5"),
    ("X-WS-Kowabunga-Nonce", b"abc"), ("X-WS-Kowabunga-Nonce", b"g" * 32),
    ("X-WS-Kowabunga-Signature", b"00"), ("X-WS-Kowabunga-Id", b"a 1"),
])
def test_malformed_hmac_headers_are_400(verifier, name, value):
    headers = [(k, value if k.decode() == name else v) for k, v in hmac_headers("Kaktus", "a1", KEY, now=NOW)]
    refused(verifier.verify("/ws", headers), 400, "bad_header")


def test_duplicate_and_non_ascii_headers_are_400(verifier):
    headers = key_headers("Kaktus", "a1", KEY)
    refused(verifier.verify("/ws", headers + [headers[1]]), 400, "duplicate_header")
    bad = [(k, "é".encode() if k == b"X-WS-Kowabunga-Id" else v) for k, v in headers]
    refused(verifier.verify("/ws", bad), 400, "bad_header")


def test_clock_skew_both_ways(verifier, clock):
    for offset in (-301, 301):
        refused(verifier.verify("/ws", hmac_headers("Kaktus", "a1", KEY, now=NOW + offset)), 403, "clock_skew")
    for offset in (-299, 299):
        assert isinstance(verifier.verify("/ws", hmac_headers("Kaktus", "a1", KEY, now=NOW + offset)), Identity)


def test_replayed_nonce_refused_then_forgotten_after_the_window(verifier, clock):
    headers = hmac_headers("Kaktus", "a1", KEY, now=NOW)
    assert isinstance(verifier.verify("/ws", headers), Identity)
    refused(verifier.verify("/ws", headers), 403, "replayed_nonce")
    clock.now += 601          # kept 2 x skew; by then the timestamp alone refuses the replay
    refused(verifier.verify("/ws", headers), 403, "clock_skew")
    assert len(verifier.nonces) == 0


def test_bad_signatures_do_not_consume_nonces(verifier):
    nonce = "cd" * 16
    refused(verifier.verify("/ws", hmac_headers("Kaktus", "a1", "wrong", now=NOW, nonce=nonce)), 403, "bad_signature")
    assert isinstance(verifier.verify("/ws", hmac_headers("Kaktus", "a1", KEY, now=NOW, nonce=nonce)), Identity)


def test_nonce_cache_is_bounded(verifier):
    for _ in range(4):
        assert isinstance(verifier.verify("/ws", hmac_headers("Kaktus", "a1", KEY, now=NOW)), Identity)
    r = refused(verifier.verify("/ws", hmac_headers("Kaktus", "a1", KEY, now=NOW)), 503, "nonce_cache_full")
    assert r.body == b"busy, retry later\n"


def test_nonce_cache_expires_in_order():
    cache = NonceCache(skew=10, max_entries=100)
    assert cache.add("a", "n1", 0) is True
    assert cache.add("a", "N1", 5) is False          # case does not make a new nonce
    assert cache.add("b", "n1", 5) is True           # per agent
    assert cache.add("a", "n2", 19) is True
    cache.purge(20.5)
    assert len(cache) == 2 and cache.add("a", "n1", 20.5) is True


def test_keys_file_lines():
    creds = parse_keys_lines(["# comment", "id1 key1", "id2 key2 Kiwi  # trailing", ""])
    assert [(c.agent_id, c.agent_type, c.key) for c in creds] == [("id1", "Kaktus", "key1"), ("id2", "Kiwi", "key2")]
    with pytest.raises(ValueError):
        parse_keys_lines(["id1 key1 Kpop"])
