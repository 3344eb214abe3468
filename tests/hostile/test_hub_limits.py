"""Issue 12 §3: unfinished agent handshakes are bounded in total and per source address, and the
bookkeeping leaves no high-water mark behind."""

from __future__ import annotations

from kahuna.hub.handshake import HandshakeSlots


def test_per_address_and_total_caps_and_release():
    slots = HandshakeSlots(total=5, per_address=2, exempt={"10.0.0.9"})
    assert slots.acquire("192.0.2.1") and slots.acquire("192.0.2.1")
    assert not slots.acquire("192.0.2.1")          # a third half-open upgrade from one address
    assert slots.acquire("192.0.2.2")              # another address still gets in
    assert slots.acquire("10.0.0.9") and slots.acquire("127.0.0.1")  # proxy/loopback: total only
    assert not slots.acquire("198.51.100.7")       # the total is full
    for address in ("192.0.2.1", "192.0.2.1", "192.0.2.2", "10.0.0.9", "127.0.0.1"):
        slots.release(address)
    assert slots.pending == 0 and slots.tracked_addresses == 0
    assert slots.acquire("192.0.2.1")
