"""Token buckets with a controlled clock: burst, refill, Retry-After, bounded memory."""

from kahuna.metadata.throttle import Buckets


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_burst_then_refill_and_retry_after():
    clock = Clock()
    b = Buckets(rate=2.0, burst=3.0, clock=clock)
    assert [b.take("k") for _ in range(3)] == [0, 0, 0]
    assert b.take("k") == 1 and b.retry_after("k") == 1
    clock.now += 0.5  # one token back
    assert b.take("k") == 0 and b.take("k") == 1
    clock.now += 100  # never more than the burst
    assert [b.take("k") for _ in range(4)] == [0, 0, 0, 1]
    assert b.take("other") == 0  # keys are independent


def test_slow_refill_retry_after_rounds_up():
    clock = Clock()
    b = Buckets(rate=0.1, burst=1.0, clock=clock)
    assert b.take("k") == 0 and b.take("k") == 10


def test_memory_is_bounded():
    b = Buckets(rate=1.0, burst=1.0, max_keys=100, clock=Clock())
    for i in range(1000):
        b.take(f"k{i}")
    assert len(b) <= 100
