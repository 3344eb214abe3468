"""The SDK through a moving VIP (an HA drill): the address the agents dial stays the same while
the hub behind it changes. A silent old hub (partition, VIP moved away) is noticed by the
heartbeat and the agent lands on the new hub; a hard cut is noticed at once."""

import random

import trio

from agent.sdk import Agent
from tests.hub.conftest import FAST, KAKTUS, KEY, wait_until


class MovingVip:
    """A TCP forwarder standing for a virtual IP: `move(port)` points new connections at
    another hub and blackholes (silently) or cuts the existing ones."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.connections: list[dict] = []

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, client) -> None:
        conn = {"blackhole": False, "scope": trio.CancelScope()}
        self.connections.append(conn)
        with conn["scope"]:
            async with client, await trio.open_tcp_stream("127.0.0.1", self.target) as upstream:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, conn)
                    nursery.start_soon(self._pump, upstream, client, conn)

    @staticmethod
    async def _pump(src, dst, conn) -> None:
        try:
            while chunk := await src.receive_some(65536):
                if not conn["blackhole"]:
                    await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        conn["scope"].cancel()

    def move(self, target: int, *, silently: bool) -> None:
        self.target = target
        for conn in self.connections:
            if silently:
                conn["blackhole"] = True
            else:
                conn["scope"].cancel()


def agent_for(port: int) -> Agent:
    agent = Agent("Kaktus", KAKTUS, KEY, f"ws://127.0.0.1:{port}/ws", ping_interval=0.2,
                  pong_timeout=0.4, close_timeout=5.0, backoff_initial=0.05, backoff_max=0.5,
                  rng=random.Random(7), handlers={"Echo": lambda p: p})
    return agent


async def drill(start_hub, nursery, *, silently: bool) -> float:
    first, second = await start_hub(FAST), await start_hub(FAST)
    vip = MovingVip(first.port)
    await nursery.start(vip.serve)
    agent = agent_for(vip.port)
    nursery.start_soon(agent.run)
    await wait_until(lambda: first.hub.is_connected(KAKTUS))
    assert await first.hub.call(KAKTUS, "Kaktus.Echo", {"n": 1}) == {"n": 1}
    began = trio.current_time()
    vip.move(second.port, silently=silently)
    await wait_until(lambda: second.hub.is_connected(KAKTUS), timeout=5)
    took = trio.current_time() - began
    assert await second.hub.call(KAKTUS, "Kaktus.Echo", {"n": 2}) == {"n": 2}
    assert agent.sessions == 2
    agent.stop()
    return took


async def test_agent_follows_a_vip_that_moved_away_silently(start_hub, nursery):
    took = await drill(start_hub, nursery, silently=True)
    # heartbeat period + pong timeout + backoff; no 5 s close handshake with the silent hub
    assert took < 2.5, took


async def test_agent_follows_a_vip_whose_old_hub_died(start_hub, nursery):
    took = await drill(start_hub, nursery, silently=False)
    assert took < 1.5, took
