"""A standalone hub for benchmarks and demos, with gohub's control contract.

    python -m kahuna.hub --listen 127.0.0.1:8080 --ctl 127.0.0.1:8081 [--keys agents.txt]

Without --keys every agent id is accepted with the benchmark key rule
key = hex(sha256("key:" + id)) (the rule of shared/peers' loadgen); with --keys only the listed
`id key [type]` lines are. The control port (plain HTTP, loopback) answers:
  GET  /stats[?wait=N&timeout_s=T]       counters, registered, rss_kib (waits for N registered)
  POST /fanout?method=Kaktus.Echo[&timeout_ms=30000][&payload=32]
  POST /rpcload?method=Kaktus.Echo&seconds=3&concurrency=1000[&payload=32]
so `HUB_CMD="python -m kahuna.hub" IMPL=pyhub ./bench.sh` measures it like gohub. On start it
prints one JSON line with the bound addresses. SIGTERM/SIGINT close every session with 1001.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import resource
import signal
import sys
import time
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from .credentials import AGENT_TYPES, AgentCredential, InMemoryCredentials, parse_keys_lines
from .errors import HubError
from .hub import Hub
from .settings import HubSettings

log = logging.getLogger("kahuna.hub.bench")


class DerivedCredentials:
    """Benchmark credentials: any id, key = hex(sha256("key:" + id)), one agent type."""

    def __init__(self, agent_type: str = "Kaktus") -> None:
        self.agent_type = agent_type

    def lookup(self, agent_id: str) -> AgentCredential | None:
        key = hashlib.sha256(b"key:" + agent_id.encode()).hexdigest()
        return AgentCredential(agent_id, self.agent_type, key)


def _proc_status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class _GcClock:
    """Seconds the cyclic collector ran, by generation (the bench's evidence: a full collection
    walks every live session's objects)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            generation = info.get("generation", 2)
            self.seconds[generation] += time.perf_counter() - self._t0
            self.runs[generation] += 1


class Control:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.started = time.time()
        self.seq = 0
        self.gc = _GcClock()

    def _params(self, method: str, payload: int) -> tuple[Any, Any]:
        if not method.endswith(".Echo"):
            return {}, None
        self.seq += 1
        params = {"Seq": self.seq, "Data": "x" * payload}
        return params, params

    async def stats(self, q: dict[str, str]) -> dict[str, Any]:
        want = int(q.get("wait", 0))
        if want > 0:
            with trio.move_on_after(float(q.get("timeout_s", 60))):
                while len(self.hub.registry) < want:
                    await trio.sleep(0.005)
        out = self.hub.stats_snapshot()
        out.update(impl="pyhub", pid=os.getpid(), rss_kib=_proc_status_kib("VmRSS"),
                   rss_hwm_kib=_proc_status_kib("VmHWM"), uptime_s=time.time() - self.started,
                   gc_seconds=[round(x, 3) for x in self.gc.seconds], gc_runs=self.gc.runs,
                   cpu_s=round(sum(os.times()[:2]), 3))
        return out

    async def fanout(self, q: dict[str, str]) -> dict[str, Any]:
        method = q.get("method", "Kaktus.Echo")
        timeout = int(q.get("timeout_ms", 30000)) / 1000
        params, expected = self._params(method, int(q.get("payload", 32)))
        ids = self.hub.connected_ids()
        counts = {"replies": 0, "mismatches": 0}
        errors: dict[str, int] = {}
        start = time.perf_counter()
        results = await self.hub.call_many(ids, method, params, timeout)   # one loop, one wait
        elapsed = time.perf_counter() - start
        for result in results.values():
            if isinstance(result, HubError):
                key = type(result).__name__
                errors[key] = errors.get(key, 0) + 1
            else:
                counts["replies" if expected is None or result == expected else "mismatches"] += 1
        return {"method": method, "agents": len(ids), **counts, "errors": errors,
                "elapsed_ms": round(elapsed * 1000, 3)}

    async def rpcload(self, q: dict[str, str]) -> dict[str, Any]:
        method = q.get("method", "Kaktus.Echo")
        seconds = float(q.get("seconds", 3))
        payload = int(q.get("payload", 32))
        ids = self.hub.connected_ids()
        conc = min(int(q.get("concurrency", 1000)), len(ids))
        if conc <= 0:
            return {"error": "no agents"}
        latencies: list[float] = []
        errors = 0
        stop = trio.current_time() + seconds

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while trio.current_time() < stop:
                if i >= len(ids):
                    i = w
                params, expected = self._params(method, payload)
                t0 = time.perf_counter()
                try:
                    result = await self.hub.call(ids[i], method, params, 10.0)
                    if expected is not None and result != expected:
                        errors += 1
                    else:
                        latencies.append(time.perf_counter() - t0)
                except HubError:
                    errors += 1
                i += conc

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(conc):
                nursery.start_soon(worker, w)
        elapsed = time.perf_counter() - start
        latencies.sort()

        def pct(p: float) -> float:
            return round(latencies[int(p * (len(latencies) - 1))] * 1000, 3) if latencies else 0.0
        return {"method": method, "agents": len(ids), "concurrency": conc,
                "calls": len(latencies), "errors": errors, "elapsed_s": elapsed,
                "rps": len(latencies) / elapsed, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(600):
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
                verb, target = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
                url = urlsplit(target)
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                routes = {("GET", "/stats"): self.stats, ("POST", "/fanout"): self.fanout,
                          ("POST", "/rpcload"): self.rpcload}
                route = routes.get((verb, url.path))
                if route is None:
                    status, body = "404 Not Found", {"error": "not found"}
                else:
                    status, body = "200 OK", await route(q)
                raw = json.dumps(body).encode() + b"\n"
                await stream.send_all(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n".encode() + raw)
        except (trio.BrokenResourceError, ValueError, IndexError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def amain(args: argparse.Namespace) -> None:
    settings = HubSettings(ping_interval=args.ping, pong_timeout=args.pong_wait,
                           capabilities_timeout=args.caps_timeout,
                           max_message_size=args.read_limit)
    if args.keys:
        with open(args.keys, encoding="utf-8") as f:
            credentials: Any = InMemoryCredentials(parse_keys_lines(f, args.type))
    else:
        credentials = DerivedCredentials(args.type)
    hub = Hub(settings, credentials)
    control = Control(hub)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            host, port = _split(args.listen)
            bound = await nursery.start(hub.serve, host, port)
            ctl_addr = None
            if args.ctl:
                chost, cport = _split(args.ctl)
                listeners = await nursery.start(partial(trio.serve_tcp, control.handle, cport, host=chost))
                ctl_addr = listeners[0].socket.getsockname()[:2]
            print(json.dumps({"event": "listening", "pid": os.getpid(), "hub": list(bound),
                              "ctl": list(ctl_addr) if ctl_addr else None}), flush=True)
            if args.gc_freeze:
                nursery.start_soon(_freeze_after_waves, hub)
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                break
            await hub.shutdown()
            nursery.cancel_scope.cancel()


async def _freeze_after_waves(hub: Hub) -> None:
    """gc.freeze() once a connect wave has settled, so long-lived sessions leave the GC's scans.

    Not for production: a frozen session that ends leaves ~65 objects of cyclic garbage that
    the collector no longer sees (measured), so reconnecting agents would leak memory.
    """
    seen = 0
    while True:
        await trio.sleep(2.0)
        now = hub.stats.registrations
        if now != seen and now - seen < 50:
            gc.collect()
            gc.freeze()
        seen = now


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kahuna.hub", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.add_argument("--ctl", default="127.0.0.1:8081", help="control address ('' to disable)")
    p.add_argument("--keys", help="file of 'id key [type]' lines (default: benchmark key rule)")
    p.add_argument("--type", choices=sorted(AGENT_TYPES), default="Kaktus")
    p.add_argument("--ping", type=float, default=9.0)
    p.add_argument("--pong-wait", type=float, default=10.0)
    p.add_argument("--caps-timeout", type=float, default=10.0)
    p.add_argument("--read-limit", type=int, default=16 * 1024 * 1024)
    p.add_argument("--nofile", type=int, default=0, help="set RLIMIT_NOFILE (soft) to this")
    p.add_argument("--gc-freeze", action="store_true",
                   help="gc.freeze() after connect waves (benchmarks only: the cyclic garbage "
                        "of sessions that end later is never collected, ~10 KiB each)")
    p.add_argument("-d", "--debug", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.nofile or hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    except (ValueError, OSError) as exc:
        print(f"cannot set RLIMIT_NOFILE: {exc}", file=sys.stderr)
    trio.run(amain, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
