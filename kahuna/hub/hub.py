"""The agent hub: listener, handshake, session registry and the call API the rest of Kahuna uses.

    serve()                          reports the bound (host, port) through task_status
    +-- accept loops                 one per listening socket; EMFILE & co. are survived
    +-- heartbeat scheduler          one for all sessions: sends each session's ping when due
    +-- deadlines                    one timer for every call's and pong's deadline
    +-- poller                       one reader for every session socket (poller.py)
    +-- connection tasks             one per TCP connection:
        +-- handshake                HTTP upgrade read and parsed (upgrade.py), headers
        |                            verified -> refused (400/403/404/503) or accepted (101)
        +-- nursery: Session.run()   the session's task tree (see session.py)

Calls (`call`, `call_many`, `pick_agent`, `status`, `disconnect`) are made from the caller's own
task; the hub keeps no task per call and no queue between callers and sessions.

The WebSocket layer is our own (wsframe.py, upgrade.py: RFC 6455 without extensions, the
subset agents use) over the accepted socket in non-blocking mode, not trio-websocket: its event
layers, its per-frame lock and awaited send cost more CPU per call than the rest of the hub
(reference/hub-performance-probe.md). The wire is unchanged: same upgrade, same binary frames.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import trio

from kahuna.logs import get_logger

from .codec import request_parts
from .credentials import AGENT_TYPES, CredentialSource
from .deadlines import Deadlines
from .errors import AgentDisconnected, AgentError, AgentNotConnected, CallTimeout, NoEligibleAgent
from .handshake import HandshakeSlots, HandshakeVerifier, Identity, Refusal
from .pending import CallGroup
from .poller import Poller
from .registry import Registry
from .session import CLOSE_CREDENTIALS, CLOSE_GOING_AWAY, CLOSE_REPLACED, ConnectHook, Session
from .settings import HubSettings
from .stats import DISCONNECTED, ERROR, OK, TIMEOUT, HubStats
from .upgrade import MAX_HEAD, BadUpgrade, accept_response, head_end, parse_request, reject_response

log = get_logger("kahuna.hub")

# accept() errors that mean "the process or system is out of something", not "the listener broke"
_CAPACITY_ERRNOS = {errno.EMFILE: "accept_too_many_files", errno.ENFILE: "accept_too_many_files",
                    errno.ENOBUFS: "accept_no_buffers", errno.ENOMEM: "accept_no_memory"}
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n")
_SHED_BATCH = 64
_ACCEPT_BATCH = 256
_SLOTS_PAUSE = 0.1     # seconds the accept loop waits for a free handshake slot before refusing
# accept() errors about one connection (it died while queued): skip it, keep accepting
_TRANSIENT_ACCEPT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                            errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                            errno.EOPNOTSUPP, errno.ENETUNREACH}
_CAPS_CACHE_MAX = 256


def _raise_gc_thresholds(gen0: int | None, gen1: int | None) -> None:
    """Raise (never lower) the collector's gen-0 and gen-1 thresholds; None leaves one alone."""
    current = list(gc.get_threshold())
    for i, wanted in ((0, gen0), (1, gen1)):
        if wanted is not None and current[i] < wanted:
            current[i] = wanted
    gc.set_threshold(*current)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _agent_id_header(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-ws-kowabunga-id":
            return value.decode("latin-1").strip()
    return ""


class _OfflineRecord:
    __slots__ = ("agent_type", "version", "methods", "connected_since", "last_seen",
                 "remote_address", "disconnected_at")

    def __init__(self, session: Session) -> None:
        self.agent_type = session.agent_type
        self.version = session.version
        self.methods = session.methods
        self.connected_since = session.connected_since
        self.last_seen = session.last_seen
        self.remote_address = session.remote_address
        self.disconnected_at = time.time()


class Hub:
    def __init__(self, settings: HubSettings | None = None,
                 credentials: CredentialSource | None = None, *,
                 rng: random.Random | None = None) -> None:
        if credentials is None:
            from .credentials import InMemoryCredentials
            credentials = InMemoryCredentials()
        self.settings = settings or HubSettings()
        self.credentials = credentials
        self.stats = HubStats()
        self.registry = Registry()
        self.verifier = HandshakeVerifier(credentials, path=self.settings.path,
                                          clock_skew=self.settings.clock_skew,
                                          nonce_cache_size=self.settings.nonce_cache_size)
        self.deadlines = Deadlines()
        self.poller = Poller()
        self._port = _SessionPort(self)
        self._rng = rng or random.Random()
        self._hooks: dict[str, list[ConnectHook]] = {}
        self._live: set[Session] = set()          # every upgraded session, registered or not
        self._offline: dict[str, _OfflineRecord] = {}
        self._caps_cache: dict[tuple[str, tuple[str, ...]], tuple[str, frozenset[str]]] = {}
        # (due, session) in due order: every session waits the same interval, so appending
        # keeps the queue sorted and the scheduler only ever looks at its head
        self._pings: deque[tuple[float, Session]] = deque()
        self._serve_scope: trio.CancelScope | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._stopped: trio.Event | None = None
        self._shutting_down = False
        self._reserve_fd: int | None = None
        self._last_accept_log = 0.0
        self.address: tuple[str, int] | None = None
        # admission hook (kahuna.ha): False refuses agents with 503 before the upgrade
        self.admission: Callable[[], bool] | None = None
        self._handshake_slots = HandshakeSlots(exempt=self.settings.trusted_proxies)

    # ================================================================= public API

    async def serve(self, host: str | None, port: int, *,
                    listeners: list[trio.SocketListener] | None = None,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port until cancelled or `shutdown()`; reports the bound (host, port).
        `listeners`: already listening (bound early by the daemon, kahuna/listeners.py), used
        instead of binding host:port; taken over (closed when serving ends)."""
        if self._serve_scope is not None:
            raise RuntimeError("this hub is already serving")
        if listeners is None:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=self.settings.backlog)
        _raise_gc_thresholds(self.settings.gc_threshold, self.settings.gc_threshold_gen1)
        self._shutting_down = False
        self._stopped = trio.Event()
        self._reserve_fd = self._open_reserve()
        try:
            with trio.CancelScope() as self._serve_scope:
                async with trio.open_nursery() as connections:
                    connections.start_soon(self._heartbeats)
                    connections.start_soon(self.deadlines.run)
                    connections.start_soon(self.poller.run)
                    async with trio.open_nursery() as acceptors:
                        self._accept_scope = acceptors.cancel_scope
                        for listener in listeners:
                            acceptors.start_soon(self._accept_loop, listener, connections)
                        sockname = listeners[0].socket.getsockname()
                        self.address = (sockname[0], sockname[1])
                        log.debug("hub listening", address=f"{sockname[0]}:{sockname[1]}",
                                  path=self.settings.path)
                        task_status.started(self.address)
                    # accept loops end only on shutdown(); stop listening while sessions close,
                    # then shutdown() cancels what is left (the scheduler, stray handshakes)
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(listener)
            if self._reserve_fd is not None:
                os.close(self._reserve_fd)
                self._reserve_fd = None
            self._serve_scope = self._accept_scope = None
            self._pings.clear()
            self._stopped.set()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, close every session with 1001, and wait (bounded) for `serve` to end."""
        if self._serve_scope is None or self._stopped is None:
            return
        self._shutting_down = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for session in list(self._live):
            session.close(CLOSE_GOING_AWAY, "server shutting down")
        wait = self.settings.close_timeout + 1.0 if timeout is None else timeout
        with trio.move_on_after(wait):
            while self._live:
                await next(iter(self._live)).wait_ended()
        if self._serve_scope is not None:
            self._serve_scope.cancel()   # handshakes still in progress
        with trio.move_on_after(self.settings.close_timeout):
            await self._stopped.wait()

    async def call(self, agent_id: str, method: str, params: Any = None,
                   timeout: float | None = None) -> Any:
        """Call `method` on the agent's current session and return its result.

        `method` is "Name" (prefixed with the agent's type) or "<Type>.Name". Raises
        AgentNotConnected, AgentDisconnected, CallTimeout, AgentError (MalformedReply).
        """
        session = self.registry.get(agent_id)
        if session is None:
            raise AgentNotConnected(agent_id)
        if "." not in method:
            method = f"{session.agent_type}.{method}"
        return await session.call(method, {} if params is None else params,
                                   self.settings.call_timeout if timeout is None else timeout)

    async def call_many(self, agent_ids: Iterable[str], method: str, params: Any = None,
                        timeout: float | None = None) -> dict[str, Any]:
        """Call `method` with the same `params` on many agents at once; answers, per agent id,
        its result or the HubError it got (AgentNotConnected, AgentDisconnected, CallTimeout,
        AgentError). One deadline for the whole round; cancelling the caller abandons it all.

        One loop writes every request (params encoded once) and the caller waits once for the
        last reply: no task and no deadline per agent (reference/hub-performance-probe.md).
        """
        stats = self.stats
        timeout = self.settings.call_timeout if timeout is None else timeout
        params = {} if params is None else params
        started = time.perf_counter()
        group = CallGroup()
        members: list[tuple[str, Session, Any]] = []
        out: dict[str, Any] = {}
        parts: dict[str, tuple[str, bytes, bytes]] = {}    # by agent type
        body = None
        for agent_id in agent_ids:
            session = self.registry.get(agent_id)
            if session is None:
                out[agent_id] = AgentNotConnected(agent_id)
                continue
            full = parts.get(session.agent_type)
            if full is None:
                name = method if "." in method else f"{session.agent_type}.{method}"
                head, body = request_parts(name, params) if body is None else \
                    (request_parts(name, None)[0], body)
                full = parts[session.agent_type] = (name, head, body)
            call = session.send_member(full[0], full[1], full[2], group)
            if call is None:
                out[agent_id] = AgentDisconnected(agent_id, session.end_reason)
                stats.call_done(full[0], DISCONNECTED, 0.0)
                continue
            members.append((agent_id, session, call))
        try:
            with trio.move_on_after(timeout):
                await group.wait()
        finally:
            elapsed = time.perf_counter() - started
            for agent_id, session, call in members:
                name = call.method
                if not call.done:
                    session.pending.discard(call.id)
                    stats.call_timeouts += 1
                    stats.call_done(name, TIMEOUT, elapsed)
                    out[agent_id] = CallTimeout(agent_id, name, timeout)
                elif call.exc is not None:
                    stats.call_done(name, DISCONNECTED if isinstance(call.exc, AgentDisconnected)
                                    else ERROR, elapsed)
                    out[agent_id] = call.exc
                elif call.error is not None:
                    stats.call_errors += 1
                    stats.call_done(name, ERROR, elapsed)
                    out[agent_id] = AgentError(call.error, agent_id=agent_id, method=name)
                else:
                    stats.call_done(name, OK, elapsed)
                    out[agent_id] = call.result
        return out

    def pick_agent(self, agent_ids: Iterable[str], method: str) -> str:
        """Uniformly random among the connected `agent_ids` that advertise `method`."""
        chosen = self.registry.pick(agent_ids, method, self._rng)
        if chosen is None:
            raise NoEligibleAgent()
        return chosen

    def eligible_agents(self, agent_ids: Iterable[str], method: str) -> list[str]:
        return self.registry.eligible(agent_ids, method)

    def advertises(self, agent_id: str, method: str) -> bool:
        """Is the agent connected now with `method` ("Name" or "<Type>.Name") advertised?
        (What a connect hook asks before calling: a dict lookup, not a `status` document.)"""
        session = self.registry.get(agent_id)
        return session is not None and session.supports(method)

    def is_connected(self, agent_id: str) -> bool:
        return agent_id in self.registry

    def connected_ids(self) -> list[str]:
        return self.registry.ids()

    def status(self, agent_id: str) -> dict[str, Any] | None:
        """What we know of an agent: live session details, or its last session's; None if never seen."""
        session = self.registry.get(agent_id)
        if session is not None:
            return {"connected": True, "agent_type": session.agent_type,
                    "version": session.version, "methods": sorted(session.methods),
                    "connected_since": _utc(session.connected_since),
                    "last_seen": _utc(session.last_seen),
                    "remote_address": session.remote_address}
        record = self._offline.get(agent_id)
        if record is None:
            return None
        return {"connected": False, "agent_type": record.agent_type, "version": record.version,
                "methods": sorted(record.methods), "connected_since": _utc(record.connected_since),
                "last_seen": _utc(record.last_seen), "remote_address": record.remote_address,
                "disconnected_at": _utc(record.disconnected_at)}

    def forget(self, agent_id: str) -> None:
        """Drop what is remembered of an agent's last session (e.g. the agent was deleted)."""
        self._offline.pop(agent_id, None)

    async def disconnect(self, agent_id: str, code: int = CLOSE_REPLACED,
                         reason: str = "disconnected by server") -> bool:
        """Close every session of the agent (e.g. its key was rotated); True if there was one.

        The registry entry goes at once, so no call is routed to the closing session; sessions
        still in their Capabilities call are closed too.
        """
        victims = [s for s in self._live if s.agent_id == agent_id]
        for session in victims:
            session.close(code, reason)
            self.stats.disconnects += 1
        with trio.move_on_after(self.settings.close_timeout + 1.0):
            for session in victims:
                await session.wait_ended()
        return bool(victims)

    def on_connect(self, agent_type: str, hook: ConnectHook) -> Callable[[], None]:
        """Run `await hook(agent_id)` in every new session of `agent_type` once it is registered.

        Hooks run inside the session's task tree (cancelled when it ends); an exception is logged
        and counted, never fatal. Returns a function that removes the hook.
        """
        if agent_type not in AGENT_TYPES:
            raise ValueError(f"unknown agent type {agent_type!r}")
        hooks = self._hooks.setdefault(agent_type, [])
        hooks.append(hook)

        def remove() -> None:
            if hook in hooks:
                hooks.remove(hook)
        return remove

    def stats_snapshot(self) -> dict[str, Any]:
        out = self.stats.snapshot()
        out["registered"] = len(self.registry)
        out["nonces"] = len(self.verifier.nonces)
        return out

    # ================================================================= heartbeats

    async def _heartbeats(self) -> None:
        """Send every session's ping when it is due (pings due within 5 ms go together)."""
        queue, interval = self._pings, self.settings.ping_interval
        while True:
            now = trio.current_time()
            while queue and queue[0][0] <= now:
                queue.popleft()[1].send_ping()
            if queue:
                await trio.sleep_until(max(queue[0][0], now + 0.005))
            else:
                await trio.sleep(interval)

    # ================================================================= connections

    def _open_reserve(self) -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return None

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept every waiting connection per readiness (a storm comes in bursts), as plain
        non-blocking sockets (see session.py): no trio stream is built for what only reads
        and writes bytes."""
        lsock = socket.socket(fileno=os.dup(listener.socket.fileno()))  # the same listener
        lsock.setblocking(False)
        wait, accept = trio.lowlevel.wait_readable, lsock.accept
        slots = self._handshake_slots
        tcp = lsock.family in (socket.AF_INET, socket.AF_INET6)   # once: .family builds an enum
        try:
            while True:
                await wait(lsock)
                for _ in range(_ACCEPT_BATCH):
                    if slots.pending >= slots.total:
                        # every handshake slot taken (a reconnect storm, or a flood): leave the
                        # next connections in the kernel's backlog a moment instead of answering
                        # them 503 at once; past the pause they are refused as before
                        with trio.move_on_after(_SLOTS_PAUSE):
                            while slots.pending >= slots.total:
                                await trio.sleep(0.002)
                    try:
                        sock, peer = accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        reason = _CAPACITY_ERRNOS.get(exc.errno)
                        if reason is None:
                            if exc.errno in _TRANSIENT_ACCEPT_ERRNOS:
                                continue       # that connection died in the queue
                            raise
                        self.stats.reject(reason)
                        shed = await self._shed(listener)
                        now = time.monotonic()
                        if now - self._last_accept_log >= 5.0:
                            self._last_accept_log = now
                            log.error("hub accept failed", error=os.strerror(exc.errno),
                                      refused_503=shed, retry_in=self.settings.accept_retry_delay)
                        await trio.sleep(self.settings.accept_retry_delay)
                        break
                    sock.setblocking(False)
                    if tcp:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    nursery.start_soon(self._handle_connection, sock, peer)
        finally:
            trio.lowlevel.notify_closing(lsock)
            lsock.close()

    async def _shed(self, listener: trio.SocketListener) -> int:
        """Out of descriptors: answer waiting connections with 503 instead of leaving them hanging.

        A descriptor is kept in reserve for this: release it, accept one connection, answer,
        close, take the reserve back (the classic libev/nginx trick).
        """
        shed = 0
        while shed < _SHED_BATCH and self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
            sock = None
            try:
                with trio.move_on_after(0.005):
                    sock, _ = await listener.socket.accept()
                if sock is None:
                    break
                # read the request first: closing with unread bytes sends an RST that can
                # destroy the answer before the client reads it
                with trio.move_on_after(0.01):
                    await sock.recv(65536)
                with trio.move_on_after(0.05):
                    await sock.send(_BUSY_RESPONSE)
                shed += 1
                self.stats.reject("refused_busy")
            except OSError:
                break
            finally:
                if sock is not None:
                    sock.close()
                self._reserve_fd = self._open_reserve()
        return shed

    def _remote_address(self, peer: Any, headers: list[tuple[bytes, bytes]]) -> str:
        host, port = peer[0], peer[1]
        if host in self.settings.trusted_proxies:
            for name, value in headers:
                if name == b"x-forwarded-for":
                    forwarded = value.decode("latin-1").split(",")[-1].strip()
                    if forwarded:
                        return forwarded
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @staticmethod
    def _recv_now(sock: socket.socket, buf: bytes) -> bytes | None:
        """`buf` plus what the socket holds now (never waits); None when the peer left."""
        try:
            data = sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return buf
        except OSError:
            return None
        return buf + data if data else None

    async def _read_head(self, sock: socket.socket, buf: bytes = b"") -> bytes | None:
        """The upgrade request's bytes, through the blank line and whatever followed it;
        None when the peer left first. Raises BadUpgrade for an oversized head."""
        wait = trio.lowlevel.wait_readable
        while head_end(buf) < 0:
            if len(buf) > MAX_HEAD:
                raise BadUpgrade(431, "request_head_too_large", b"request head too large\n")
            await wait(sock)
            buf = self._recv_now(sock, buf)
            if buf is None:
                return None
        return buf

    def _answer(self, sock: socket.socket, reason: str, status: int, body: bytes,
                extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.stats.reject(reason)
        try:
            sock.send(reject_response(status, body, extra))
        except OSError:
            pass

    def _needs_prepare(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The agent id to `prepare` (the credential source may read the store on a miss) when
        its credential is not in memory; None when nothing has to be awaited."""
        if getattr(self.credentials, "prepare", None) is None:
            return None
        agent_id = _agent_id_header(headers)
        return agent_id if self.credentials.lookup(agent_id) is None else None

    async def _handshake(self, sock: socket.socket,
                         peer: Any) -> tuple[Identity, str, bytes, bytes] | None:
        """Read the upgrade request and decide: (identity, remote address, bytes that came after
        the request, the 101 answer to send) when accepted, else None (refused: answered and
        counted).

        Usually the whole request is in the socket when it is accepted and the agent's key is
        in memory: then nothing here waits and the answer is decided at once (no deadline
        needed: no await). Otherwise (bytes still to come, a credential miss to read) every
        wait is under `handshake_timeout`."""
        settings, stats = self.settings, self.stats
        request = None
        try:
            data = self._recv_now(sock, b"")
            if data is not None and head_end(data) >= 0:
                request = parse_request(data[:head_end(data)])
                if self._needs_prepare(request.headers) is None:
                    return self._decide(sock, peer, data, request)
        except BadUpgrade as exc:
            self._answer(sock, exc.reason, exc.status, exc.body, exc.extra)
            return None
        if data is None:
            stats.reject("closed_during_handshake")
            return None
        with trio.move_on_after(settings.handshake_timeout):
            if request is None:
                try:
                    data = await self._read_head(sock, data)
                    if data is None:
                        stats.reject("closed_during_handshake")
                        return None
                    request = parse_request(data[:head_end(data)])
                except BadUpgrade as exc:
                    self._answer(sock, exc.reason, exc.status, exc.body, exc.extra)
                    return None
            if not self._admitted(sock):
                return None
            agent_id = self._needs_prepare(request.headers)
            if agent_id is not None:
                await self.credentials.prepare(agent_id)  # type: ignore[attr-defined]
            return self._decide(sock, peer, data, request)
        stats.reject("handshake_timeout")
        return None

    def _admitted(self, sock: socket.socket) -> bool:
        if self.admission is not None and not self.admission():
            self._answer(sock, "standby", 503, b"standby: this Kahuna is not the active node\n")
            return False
        return True

    def _decide(self, sock: socket.socket, peer: Any, data: bytes,
                request: Any) -> tuple[Identity, str, bytes, bytes] | None:
        if not self._admitted(sock):
            return None
        verdict = self.verifier.verify(request.target, request.headers)
        if isinstance(verdict, Refusal):
            log.debug("agent handshake refused", status=verdict.status, reason=verdict.reason)
            self._answer(sock, verdict.reason, verdict.status, verdict.body)
            return None
        if self._shutting_down:
            self._answer(sock, "shutting_down", 503, b"shutting down\n")
            return None
        # the 101 leaves with the session's first frame (its Capabilities request): one
        # send and one wake-up of the agent per connect instead of two (see Session._write)
        return (verdict, self._remote_address(peer, request.headers), data[head_end(data):],
                accept_response(request.key))

    async def _handle_connection(self, sock: socket.socket, peer: Any = None) -> None:
        """One accepted connection (`peer`: the address accept() answered)."""
        stats = self.stats
        stats.connections += 1
        try:
            if not peer:
                try:
                    peer = sock.getpeername()
                except OSError:
                    return
            if not self._handshake_slots.acquire(peer[0]):  # unfinished handshakes are bounded
                stats.reject("too_many_handshakes")
                try:
                    sock.send(_BUSY_RESPONSE)
                except OSError:
                    pass
                return
            try:
                accepted = await self._handshake(sock, peer)
            finally:
                self._handshake_slots.release(peer[0])
            if accepted is None:
                return
            identity, remote, early, greeting = accepted
            session = Session(self._port, sock, identity, remote, early, greeting)
            sock = None                      # the session closes it
            self._live.add(session)
            stats.sessions += 1
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await session.run(nursery)
                    finally:
                        self._live.discard(session)
                    nursery.cancel_scope.cancel()
            finally:
                stats.sessions -= 1
        except Exception:
            # A bug or an unexpected input must cost one connection, never the hub.
            stats.reject("internal_error")
            log.exception("agent connection failed")
        finally:
            stats.connections -= 1
            if sock is not None:
                trio.lowlevel.notify_closing(sock)
                sock.close()


class _SessionPort:
    """The hub as its sessions see it (session.SessionHost): settings, counters, the timer and
    the callbacks of a session's life -- not the hub's own methods."""

    __slots__ = ("_hub", "settings", "stats", "deadlines", "poller")

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.settings = hub.settings
        self.stats = hub.stats
        self.deadlines = hub.deadlines
        self.poller = hub.poller

    def hooks(self, agent_type: str) -> list[ConnectHook]:
        return list(self._hub._hooks.get(agent_type, ()))

    def capabilities(self, caps: Any) -> tuple[str, frozenset[str]]:
        """Validate a Capabilities reply; identical replies share one frozenset (memory per session)."""
        if type(caps) is not dict:
            raise ValueError("Capabilities reply is not an object")
        version, methods = caps.get("Version"), caps.get("Methods")
        if methods is None:
            methods = []
        if type(version) is not str or len(version) > 64:
            raise ValueError("Capabilities Version is not a short string")
        if (type(methods) is not list or len(methods) > self.settings.max_methods
                or not all(type(m) is str and 0 < len(m) <= 128 for m in methods)):
            raise ValueError("Capabilities Methods is not a list of method names")
        key = (version, tuple(sorted(set(methods))))
        cache = self._hub._caps_cache
        cached = cache.get(key)
        if cached is None:
            cached = (sys.intern(version), frozenset(sys.intern(m) for m in key[1]))
            if len(cache) < _CAPS_CACHE_MAX:
                cache[key] = cached
        return cached

    def ready(self, session: Session) -> bool:
        """Capabilities passed: make it the agent's session (closing any older one)."""
        hub, stats = self._hub, self.stats
        if session.ended or session.closing:     # e.g. disconnect() during its Capabilities
            return False
        if hub._shutting_down:
            session.close(CLOSE_GOING_AWAY, "server shutting down")
            return False
        if hub.credentials.lookup(session.agent_id) != session.credential:
            stats.reject("credential_changed")
            session.close(CLOSE_CREDENTIALS, "credentials changed")
            return False
        old = hub.registry.register(session)
        session.registered = True
        stats.registrations += 1
        stats.accepted()
        stats.sessions_by_type[session.agent_type] += 1
        hub._offline.pop(session.agent_id, None)
        if old is not None:
            stats.replaced += 1
            old.close(CLOSE_REPLACED, "replaced by a new session")
            log.info("agent session replaced", agent_id=session.agent_id,
                     agent_type=session.agent_type, remote=session.remote_address,
                     old_remote=old.remote_address)
        else:
            log.info("agent registered", agent_id=session.agent_id, agent_type=session.agent_type,
                     remote=session.remote_address, version=session.version,
                     methods=len(session.methods))
        return True

    def schedule_ping(self, session: Session) -> None:
        self._hub._pings.append((trio.current_time() + self.settings.ping_interval, session))

    def leave(self, session: Session) -> None:
        self._hub.registry.unregister(session)

    def ended(self, session: Session) -> None:
        hub = self._hub
        hub.registry.unregister(session)
        if session.registered:
            self.stats.sessions_by_type[session.agent_type] -= 1
            if session.agent_id not in hub.registry:      # not replaced: remember it
                hub._offline[session.agent_id] = _OfflineRecord(session)
            log.info("agent disconnected", agent_id=session.agent_id, agent_type=session.agent_type,
                     remote=session.remote_address, reason=session.end_reason)
