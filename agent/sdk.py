"""Agent SDK: connect to Kahuna's hub, authenticate, serve `Type.Method` calls, reconnect forever.

Roles are upstream's, inverted from the usual: the agent is the WebSocket *client* and the RPC
*server*. Kahuna sends `{"id", "method", "params"}` in binary frames; we answer
`{"id", "result", "error"}`, each request in its own task (a slow handler never holds up the
others, nor the pongs that trio-websocket sends from its reader).

    agent = Agent("Kaktus", agent_id, key, "wss://kahuna.example.com")
    agent.register("NodeCapabilities", node_caps)       # fn(params: dict) -> result, sync or async
    await agent.run()                                   # until agent.stop()

Auth defaults to HMAC (the key never crosses the wire); `auth="key"` sends upstream's
`X-WS-Kowabunga-Api-Key` header for hubs that only speak that. Reconnection uses jittered
exponential backoff (0.5 s doubling to 30 s, each delay drawn in [d/2, d]), reset once a session
has stayed up for a minute, so a fleet that lost its hub does not come back as one wave.
A hub that goes silent (its VIP moved, a partition) is noticed by the agent's own pings within
`ping_interval + pong_timeout`; the transport is then cut at once -- no close handshake with a
peer that no longer answers -- and the agent dials the same address again, landing on whichever
hub holds it now (tests/sim/test_failover.py).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import random
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

log = logging.getLogger("agent")

Handler = Callable[[dict], Any]
AGENT_TYPES = ("Kaktus", "Kiwi", "Kontroller")
VERSIONS = {"Kaktus": "1.0", "Kiwi": "1.1", "Kontroller": "1.0"}   # what upstream's agents report
MiB = 1024 * 1024


def normalize_endpoint(endpoint: str) -> str:
    """Turn a configured endpoint into the hub's WebSocket URL.

    Accepts upstream's forms: `ws[s]://host[:port]/ws`, or the public URL `http[s]://host[:port]`
    (as upstream's `ws.Dial`, the path becomes `/ws`). A bare host means `wss://host/ws`.
    """
    if "://" not in endpoint:
        endpoint = "wss://" + endpoint
    parts = urlsplit(endpoint)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"unsupported endpoint scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"endpoint {endpoint!r} has no host")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def hmac_headers(agent_type: str, agent_id: str, key: str, *, now: float | None = None,
                 nonce: str | None = None) -> list[tuple[bytes, bytes]]:
    """The HMAC-mode handshake headers (computed here, independently of the hub's code)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    message = f"{agent_id}\n{agent_type}\n{timestamp}\n{nonce}".encode()
    signature = hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
    return [(b"X-WS-Kowabunga-Agent", agent_type.encode()), (b"X-WS-Kowabunga-Id", agent_id.encode()),
            (b"X-WS-Kowabunga-Timestamp", timestamp.encode()), (b"X-WS-Kowabunga-Nonce", nonce.encode()),
            (b"X-WS-Kowabunga-Signature", signature.encode())]


def key_headers(agent_type: str, agent_id: str, key: str) -> list[tuple[bytes, bytes]]:
    """Upstream's handshake headers (the key itself is sent)."""
    return [(b"X-WS-Kowabunga-Agent", agent_type.encode()), (b"X-WS-Kowabunga-Id", agent_id.encode()),
            (b"X-WS-Kowabunga-Api-Key", key.encode())]


@dataclass
class Backoff:
    """Jittered exponential backoff: delays in [d/2, d] with d = initial * 2^k, capped at maximum."""

    initial: float = 0.5
    maximum: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class _Method:
    __slots__ = ("fn", "is_async")

    def __init__(self, fn: Handler) -> None:
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None))


class Agent:
    """One agent identity: its RPC methods and its (re)connection loop."""

    def __init__(self, agent_type: str, agent_id: str, key: str, endpoint: str, *,
                 auth: str = "hmac", version: str | None = None,
                 handlers: dict[str, Handler] | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 max_message_size: int = 16 * MiB, connect_timeout: float = 10.0,
                 close_timeout: float = 5.0, ping_interval: float | None = 9.0,
                 pong_timeout: float = 10.0, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, healthy_after: float = 60.0,
                 connect_limiter: trio.CapacityLimiter | None = None,
                 rng: random.Random | None = None) -> None:
        if agent_type not in AGENT_TYPES:
            raise ValueError(f"unknown agent type {agent_type!r}")
        if auth not in ("hmac", "key"):
            raise ValueError("auth must be 'hmac' or 'key'")
        self.agent_type = agent_type
        self.agent_id = agent_id
        self.key = key
        self.url = normalize_endpoint(endpoint)
        self.auth = auth
        self.version = version or VERSIONS[agent_type]
        self.ssl_context = ssl_context
        self.max_message_size = max_message_size
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.healthy_after = healthy_after
        self.backoff = Backoff(backoff_initial, backoff_max, rng or random.Random())
        self.connect_limiter = connect_limiter
        self._methods: dict[str, _Method] = {}
        self._stop = trio.Event()
        self._ws: WebSocketConnection | None = None
        self._attempt: trio.CancelScope | None = None
        self._session: trio.CancelScope | None = None
        # observable state (tests, fleet reports)
        self.connected = False
        self.sessions = 0           # sessions opened so far
        self.last_close: int | None = None
        self.last_error: str | None = None
        self.registered = False     # this session's Capabilities call was answered
        for name, fn in (handlers or {}).items():
            self.register(name, fn)

    # ------------------------------------------------------------------ methods

    def register(self, name: str, fn: Handler) -> None:
        """Serve `<Type>.<name>`; `fn(params)` returns the result or raises (-> error string)."""
        if not name or "." in name:
            raise ValueError(f"bad method name {name!r}")
        if name == "Capabilities":
            raise ValueError("Capabilities is answered by the SDK")
        self._methods[name] = _Method(fn)

    def method(self, name: str | None = None) -> Callable[[Handler], Handler]:
        """Decorator form of `register`."""
        def decorate(fn: Handler) -> Handler:
            self.register(name or fn.__name__, fn)
            return fn
        return decorate

    def capabilities(self) -> dict[str, Any]:
        return {"Version": self.version, "Methods": sorted([*self._methods, "Capabilities"])}

    async def dispatch(self, method: str, params: Any) -> Any:
        """Run one request's handler; raises what the handler raises (or a lookup error)."""
        service, dot, name = method.rpartition(".")
        if not dot or service != self.agent_type:
            raise LookupError(f"rpc: can't find service {method}")
        if name == "Capabilities":
            self.registered = True
            return self.capabilities()
        entry = self._methods.get(name)
        if entry is None:
            raise LookupError(f"rpc: can't find method {method}")
        if isinstance(params, list) and len(params) == 1:   # net/rpc/jsonrpc style [params]
            params = params[0]
        if params is None:
            params = {}
        result = entry.fn(params)
        if entry.is_async or inspect.isawaitable(result):
            result = await result
        return {} if result is None else result

    async def handle_frame(self, frame: bytes) -> bytes | None:
        """One request frame in, its reply frame out (None when the frame is no request)."""
        try:
            request = json.loads(frame)
            call_id, method = request["id"], request["method"]
            if type(call_id) is not int or type(method) is not str:
                raise TypeError("bad id or method")
        except (ValueError, KeyError, TypeError):
            log.warning("%s: ignoring a malformed request frame", self.agent_id)
            return None
        try:
            result, error = await self.dispatch(method, request.get("params")), None
        except Exception as exc:
            result, error = None, str(exc) or type(exc).__name__
            log.debug("%s: %s failed: %s", self.agent_id, method, error)
        try:
            return json.dumps({"id": call_id, "result": result, "error": error},
                              separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            return json.dumps({"id": call_id, "result": None,
                               "error": f"unserializable result: {exc}"}).encode()

    # ------------------------------------------------------------------ connection

    def handshake_headers(self) -> list[tuple[bytes, bytes]]:
        if self.auth == "key":
            return key_headers(self.agent_type, self.agent_id, self.key)
        return hmac_headers(self.agent_type, self.agent_id, self.key)

    def stop(self) -> None:
        """Ask `run` to end: the live session is closed with 1000, no reconnection follows."""
        self._stop.set()
        if not self.connected and self._attempt is not None:
            self._attempt.cancel()   # still dialing or in the handshake: just give up

    async def drop_connection(self) -> None:
        """Cut the live session without a close handshake, as a crash or a network cut would
        (fault injection); the run loop then reconnects after its backoff as usual."""
        ws, scope = self._ws, self._session
        if ws is None or scope is None:
            return
        self.last_error = "connection dropped"
        await _abort_transport(ws)
        scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, and reconnect with backoff until `stop()`."""
        task_status.started()
        while not self._stop.is_set():
            up_since = await self.run_once()
            if self._stop.is_set():
                break
            if up_since is not None and trio.current_time() - up_since >= self.healthy_after:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            log.info("%s %s: reconnecting in %.2f s (%s)", self.agent_type, self.agent_id, delay,
                     self.last_error or f"closed {self.last_close}")
            with trio.move_on_after(delay):
                await self._stop.wait()

    async def run_once(self) -> float | None:
        """One connection attempt and, if it succeeds, the session; returns when it ends.

        Returns the trio time the session came up (None if it never did). Never raises for
        network or protocol trouble: that is recorded in `last_error` (kept until the next
        successful connection) and `last_close`.
        """
        up_since: float | None = None
        limiter, holding = self.connect_limiter, False
        try:
            with trio.CancelScope() as self._attempt:
                if self._stop.is_set():
                    return None
                if limiter is not None:
                    await limiter.acquire()
                    holding = True
                async with open_websocket_url(
                        self.url, self.ssl_context, extra_headers=self.handshake_headers(),
                        max_message_size=self.max_message_size,
                        connect_timeout=self.connect_timeout,
                        disconnect_timeout=self.close_timeout) as ws:
                    self.connected = True   # from here on stop() closes gracefully instead
                    self.last_error = None
                    if holding:
                        limiter.release()   # type: ignore[union-attr]
                        holding = False
                    up_since = trio.current_time()
                    await self._serve(ws)
        except ConnectionRejected as exc:
            body = (exc.body or b"").decode("utf-8", "replace").strip()
            self.last_error = f"refused {exc.status_code} {body}".strip()
        except ConnectionClosed as exc:
            self.last_close = exc.reason.code if exc.reason else None
        except Exception as exc:   # network trouble of any kind: log, back off, retry
            self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            if holding:
                limiter.release()   # type: ignore[union-attr]
            self.connected = False
            self.registered = False
            self._attempt = None
            self._ws = None
            self._session = None
        return up_since

    async def _serve(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self.connected = True
        self.sessions += 1
        log.info("%s %s: connected to %s", self.agent_type, self.agent_id, self.url)
        async with trio.open_nursery() as nursery:
            self._session = nursery.cancel_scope
            nursery.start_soon(self._close_on_stop, ws)
            if self.ping_interval:
                nursery.start_soon(self._heartbeat, ws, nursery.cancel_scope)
            while True:
                try:
                    frame = await ws.get_message()
                except ConnectionClosed as exc:
                    self.last_close = exc.reason.code if exc.reason else None
                    break
                if type(frame) is str:
                    log.debug("%s: text frame ignored", self.agent_id)
                    continue
                nursery.start_soon(self._answer, ws, frame)
            nursery.cancel_scope.cancel()
        log.info("%s %s: disconnected (%s)", self.agent_type, self.agent_id, self.last_close)

    async def _answer(self, ws: WebSocketConnection, frame: bytes) -> None:
        reply = await self.handle_frame(frame)
        if reply is not None:
            try:
                await ws.send_message(reply)
            except ConnectionClosed:
                pass

    async def _close_on_stop(self, ws: WebSocketConnection) -> None:
        await self._stop.wait()
        with trio.move_on_after(self.close_timeout):
            await ws.aclose(1000, "agent stopping")

    async def _heartbeat(self, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        """Upstream agents ping too: it is how an agent notices a hub that vanished silently."""
        assert self.ping_interval
        while True:
            await trio.sleep(self.ping_interval)
            with trio.move_on_after(self.pong_timeout) as waiting:
                try:
                    await ws.ping()
                except ConnectionClosed:
                    return
            if waiting.cancelled_caught:
                log.warning("%s: hub silent for %g s, reconnecting", self.agent_id, self.pong_timeout)
                self.last_error = "hub heartbeat timeout"
                # no close handshake with a peer that stopped answering (a VIP that moved, a
                # partition): waiting for its close frame would only delay the reconnection
                await _abort_transport(ws)
                scope.cancel()
                return


async def _abort_transport(ws: WebSocketConnection) -> None:
    """Close the TCP (or TLS) stream under the WebSocket, skipping the close handshake."""
    stream = getattr(ws, "_stream", None)      # trio-websocket's transport (version pinned)
    if stream is None:
        return
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def run_until_signalled(agents: Iterable[Agent]) -> None:
    """Run agents until SIGTERM or SIGINT, then stop them (close 1000, bounded) and return."""
    agents = list(agents)
    grace = max((a.close_timeout for a in agents), default=0.0) + 1.0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            async def run_all() -> None:
                async with trio.open_nursery() as inner:
                    for agent in agents:
                        inner.start_soon(agent.run)
                nursery.cancel_scope.cancel()   # every agent has ended

            nursery.start_soon(run_all)
            async for signum in signals:
                log.info("%s: stopping %d agent(s)", signal.Signals(signum).name, len(agents))
                for agent in agents:
                    agent.stop()
                nursery.cancel_scope.deadline = trio.current_time() + grace
                break
