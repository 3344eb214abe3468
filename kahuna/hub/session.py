"""One agent session: synchronous sends, reads by the hub's poller, and what it does on demand.

    connection nursery           (one per TCP connection, opened by the hub; its scope is the
    |                            session's: abort cancels it, a close exchange gives it a deadline)
    +-- Session.run()            the connection's own task: runs `_start` (<Type>.Capabilities,
    |                            then registration, then the last connect hook), then parked
    |                            until the session ends (the hub's poller calls `on_readable`:
    |                            frames -> replies resolve their call by id; pings answered;
    |                            the agent's close, which also cancels a `_start` still running)
    +-- hooks                    but the last, each in its own task; failures are logged,
    |                            never fatal
    +-- _flush                   only while the agent reads slower than we write (backpressure)
    calls                        run in the caller's task: the frame is written at once (no
                                 lock, no await), then the caller parks until its reply, its
                                 deadline (the hub's one timer, deadlines.py) or its own
                                 cancellation wakes it

Writes never block: a frame the socket does not take whole leaves its remainder in the session's
send buffer, drained by `_flush`; past `send_buffer_limit` buffered bytes the agent is not
keeping up and the session ends (abort, every pending call fails) -- never unbounded memory.
Heartbeats are not tasks either: the hub's scheduler sends each session's ping when due and arms
its pong deadline on the timer (the session is that timer entry: `lane`, `expire`).

Whatever ends the session (peer close, protocol error or oversized message, heartbeat loss,
replacement, disconnect, shutdown), the `finally` of `run` fails every pending call at once,
leaves the registry (only if still the agent's current session), sends the close frame unless
aborting, and closes the socket.

The session talks to the hub only through `SessionHost` (settings, counters, the timer, the
poller and six callbacks), never through the hub's own methods.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from kahuna.logs import get_logger

from .codec import FrameError, decode_reply, encode_request, request_frame
from .deadlines import Deadlines
from .errors import AgentDisconnected, AgentError, AgentUnavailable, CallTimeout, HubError, MalformedReply
from .handshake import Identity
from .poller import Poller
from .pending import CallGroup, PendingCall, PendingCalls, Resolution
from .settings import HubSettings
from .stats import DISCONNECTED, ERROR, OK, TIMEOUT, HubStats
from .wsframe import (CLOSE_NO_STATUS, CLOSE_NORMAL, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT,
                      FrameParser, ProtocolError, binary_frame, close_frame, frame, parse_close)

log = get_logger("kahuna.hub")

# Close codes we send (4000-4999 are private-use; upstream has none of its own).
CLOSE_GOING_AWAY = 1001        # server shutdown
CLOSE_POLICY = 1008            # Capabilities failed
CLOSE_INTERNAL = 1011          # heartbeat lost, send buffer full
CLOSE_REPLACED = 4000          # a newer session of the same agent took over; also disconnect()
CLOSE_CREDENTIALS = 4001       # the credential changed while the session was starting
CLOSE_ABNORMAL = 1006          # reported (never sent): the connection ended without a close frame

_WARN_TEXT, _WARN_MALFORMED, _WARN_UNKNOWN = 1, 2, 4
_ping_payload = struct.Struct("!I").pack

ConnectHook = Callable[[str], Awaitable[Any]]


class SessionHost(Protocol):
    """What a session needs from the hub: no more."""

    settings: HubSettings
    stats: HubStats
    deadlines: Deadlines
    poller: Poller

    def capabilities(self, caps: Any) -> tuple[str, frozenset[str]]:
        """Validate (and intern) a Capabilities reply; ValueError when it is not one."""
    def ready(self, session: Session) -> bool:
        """Capabilities passed: register the session; False when it must not be."""
    def hooks(self, agent_type: str) -> list[ConnectHook]:
        """The connect hooks to run for a newly registered session of this type."""
    def schedule_ping(self, session: Session) -> None:
        """Ping the session one ping_interval from now (see `send_ping`)."""
    def leave(self, session: Session) -> None:
        """The session is closing: route no new call to it."""
    def ended(self, session: Session) -> None:
        """The session is over (pending calls failed)."""


class _Closed(Exception):
    """The socket is gone (reset, or closed by us)."""


class Session:
    __slots__ = ("host", "sock", "agent_id", "agent_type", "credential", "remote_address", "pending",
                 "version", "methods", "connected_since", "last_seen", "registered",
                 "peer_close_code", "lane", "_parser", "_early", "_out", "_flushing", "_nursery",
                 "_scope", "_close_code", "_close_reason", "_abort", "_close_sent", "_discard",
                 "_ping_seq", "_done", "_finished", "_ended", "_warned", "_reader", "_reading_done",
                 "_greeting", "_starting")

    def __init__(self, host: SessionHost, sock: socket.socket, identity: Identity,
                 remote_address: str, early: bytes = b"", greeting: bytes = b"") -> None:
        self.host = host
        self.sock = sock                    # non-blocking; this session owns and closes it
        self.agent_id = identity.agent_id
        self.agent_type = identity.agent_type
        self.credential = identity.credential
        self.remote_address = remote_address
        self.pending = PendingCalls()
        self.version: str | None = None
        self.methods: frozenset[str] = frozenset()
        self.connected_since = self.last_seen = time.time()
        self.registered = False
        self.peer_close_code: int | None = None   # the agent's close code, once it sent one
        self.lane: Any = None               # armed on the hub's timer while a pong is awaited
        self._parser = FrameParser(host.settings.max_message_size)
        self._early = early                 # bytes that came with the upgrade request
        self._greeting = greeting           # the 101 answer, sent with the first frame
        self._out: bytearray | None = None  # what the socket did not take yet
        self._flushing: trio.Event | None = None   # set when _flush has emptied _out (or gave up)
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._close_code: int | None = None
        self._close_reason: str | None = None
        self._abort = False
        self._close_sent = False
        self._discard = False               # after a protocol error: read nothing more
        self._ping_seq = 0
        self._done = False          # no more calls: pending ones failed, registry left
        self._finished = False      # and the close frame is sent: the connection can go
        self._ended: trio.Event | None = None
        self._warned = 0
        self._reader: trio.lowlevel.Task | None = None   # run(), parked until the session ends
        self._reading_done = False
        self._starting = False      # run() is in _start (Capabilities, registration, hooks)

    def __repr__(self) -> str:
        return f"<Session {self.agent_type} {self.agent_id} from {self.remote_address}>"

    # ------------------------------------------------------------------ queries

    def supports(self, method: str) -> bool:
        """True if Capabilities advertised `method` ("Name" or "<Type>.Name" of our type)."""
        prefix, dot, name = method.rpartition(".")
        if dot and prefix != self.agent_type:
            return False
        return name in self.methods

    @property
    def ended(self) -> bool:
        return self._done

    @property
    def closing(self) -> bool:
        """Its end was requested (it may still be exchanging close frames)."""
        return self._close_code is not None

    @property
    def send_buffered(self) -> int:
        """Bytes written by the hub that the agent has not taken yet."""
        return len(self._out) if self._out else 0

    # ------------------------------------------------------------------ writing

    def _write(self, data: bytes) -> None:
        """Send now what the socket takes; buffer the rest (bounded). Raises _Closed."""
        if self._greeting:                  # the upgrade's 101 still waits for company
            data, self._greeting = self._greeting + data, b""
        out = self._out
        if out is not None:
            out += data
        else:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                raise _Closed() from None
            if sent == len(data):
                return
            self._out = out = bytearray(memoryview(data)[sent:])
            self.host.stats.backpressure_events += 1
            if self._nursery is not None and self._flushing is None:
                self._flushing = trio.Event()
                self._nursery.start_soon(self._flush)
        if len(out) > self.host.settings.send_buffer_limit:
            self.host.stats.send_buffer_overflows += 1
            log.warning("agent not reading: send buffer full", **self._fields(), buffered=len(out))
            self.close(CLOSE_INTERNAL, "send buffer full", abort=True)
            raise _Closed()

    async def _flush(self) -> None:
        """Drain the send buffer as the agent reads; ends when it is empty or the socket broke."""
        sock, wait = self.sock, trio.lowlevel.wait_writable
        try:
            while self._out:
                await wait(sock)
                try:
                    sent = sock.send(self._out)
                except BlockingIOError:
                    continue
                except OSError:
                    self._out = None
                    self.close(CLOSE_INTERNAL, "connection broken", abort=True)
                    return
                del self._out[:sent]
            self._out = None
        finally:
            flushing, self._flushing = self._flushing, None
            if flushing is not None:
                flushing.set()

    # ------------------------------------------------------------------ control

    def close(self, code: int, reason: str, *, abort: bool = False) -> None:
        """Ask the session to end (idempotent: the first code and reason win).

        Normally the close frame is sent at once and the agent's answer awaited (close_timeout);
        `abort` skips that (a peer that stopped answering or reading) and just drops the socket.
        """
        if self._close_code is None:
            self._close_code, self._close_reason, self._abort = code, reason, abort
            self.host.leave(self)           # no new call is routed to a closing session
        elif not abort or self._abort:
            return
        if self._scope is None or self._done:
            return                          # run() acts on it when it starts / already ending
        if abort:
            self._abort = True
            self._scope.cancel()
        elif not self._close_sent:
            self._send_close(code, reason)
            self._scope.deadline = min(self._scope.deadline,
                                       trio.current_time() + self.host.settings.close_timeout)

    def _send_close(self, code: int, reason: str) -> None:
        self._close_sent = True
        try:
            self._write(close_frame(code, reason))
        except _Closed:
            pass

    async def wait_ended(self) -> None:
        """Wait until the session is over, close frame exchanged (bounded by close_timeout)."""
        if self._finished:
            await trio.lowlevel.checkpoint()
            return
        if self._ended is None:
            self._ended = trio.Event()
        await self._ended.wait()

    # ------------------------------------------------------------------ calls

    async def call(self, method: str, params: Any, timeout: float) -> Any:
        """Send one request and wait for its reply; raises the errors of `kahuna.hub.errors`."""
        host = self.host
        stats = host.stats
        started = time.perf_counter()
        outcome = TIMEOUT           # also a caller cancelled while it waited (its own deadline)
        try:
            if self._close_code is not None:
                raise AgentDisconnected(self.agent_id, self._end_reason())
            call = self.pending.open(method)
        except AgentDisconnected:
            stats.call_done(method, DISCONNECTED, 0.0)
            raise
        try:
            data = binary_frame(encode_request(call.id, method, params))
            stats.calls += 1
            try:
                self._write(data)
            except _Closed:
                outcome = DISCONNECTED
                raise AgentDisconnected(self.agent_id, self._end_reason()) from None
            del data
            stats.frames_out += 1
            host.deadlines.add(call, timeout)
            await call.wait()
            if call.timed_out:
                stats.call_timeouts += 1
                raise CallTimeout(self.agent_id, method, timeout)
            exc = call.exc
            if exc is not None:
                outcome = DISCONNECTED if isinstance(exc, AgentDisconnected) else ERROR
                raise exc
            if call.error is not None:
                outcome = ERROR
                stats.call_errors += 1
                raise AgentError(call.error, agent_id=self.agent_id, method=method)
            outcome = OK
            result, call.result = call.result, None   # the timer's lane may hold the call a while
            return result
        finally:
            if not call.done:
                self.pending.discard(call.id)     # cancelled: a later reply is stale
            call.table = None
            stats.call_done(method, outcome, time.perf_counter() - started)

    def send_member(self, method: str, head: bytes, body: bytes, group: CallGroup) -> PendingCall | None:
        """A fan-out's request to this session (see `Hub.call_many`): the call joins `group`;
        None when the session cannot take it (closing, socket gone)."""
        if self._close_code is not None or self.pending.closed:
            return None
        call = self.pending.open(method)
        try:
            self._write(binary_frame(request_frame(call.id, head, body)))
        except _Closed:
            self.pending.discard(call.id)
            return None
        self.host.stats.calls += 1
        self.host.stats.frames_out += 1
        group.add(call)
        return call

    # ------------------------------------------------------------------ task tree

    async def run(self, nursery: trio.Nursery) -> None:
        """The session's whole life in the connection's nursery (opened for it alone); returns
        when it is over, or raises Cancelled into that nursery when the session was cut.

        The socket is read by the hub's poller (`on_readable`); this task only waits for the
        end: the agent's close or EOF wakes it, an abort or the close deadline cancels it.
        """
        # the nursery's own scope is the session's: cancelling it (abort) or giving it a deadline
        # (the close exchange) ends the session and whatever it was doing, at once
        self._nursery, self._scope = nursery, nursery.cancel_scope
        poller = self.host.poller
        fd = self.sock.fileno()
        try:
            if self._close_code is not None:          # closed before it started
                code, reason, abort = self._close_code, self._close_reason, self._abort
                self._close_code = None
                self.close(code, reason or "", abort=abort)
            self.host.schedule_ping(self)
            early, self._early = self._early, b""
            if early:
                self._on_data(early)
            if not self._reading_done:
                poller.add(fd, self)
                # _start in this task (a task fewer per connect): the agent's close or EOF
                # meanwhile cancels it (see _stop_reading), as it ends the session later
                self._starting = True
                try:
                    await self._start()
                finally:
                    self._starting = False
            if not self._reading_done:
                self._reader = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
        finally:
            self._reader = None
            poller.remove(fd)
            self._done = True
            reason = self._end_reason()
            self.pending.fail_all(lambda: AgentDisconnected(self.agent_id, reason))
            Deadlines.settle(self)
            self.host.ended(self)
            try:
                if not self._abort:
                    if not self._close_sent:
                        code = self.peer_close_code
                        self._send_close(CLOSE_GOING_AWAY if code is None else
                                         CLOSE_NORMAL if code == CLOSE_NO_STATUS else code,
                                         "server shutting down" if code is None else "")
                    if self._flushing is not None:
                        with trio.CancelScope(shield=True) as flushing:
                            flushing.deadline = trio.current_time() + min(
                                1.0, self.host.settings.close_timeout)
                            await self._flushing.wait()
            finally:
                self._out = None
                sock, self.sock = self.sock, None
                if sock is not None:
                    trio.lowlevel.notify_closing(sock)
                    sock.close()
                self._finished = True
                if self._ended is not None:
                    self._ended.set()

    def _abort_wait(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self._reader = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _stop_reading(self) -> None:
        """The agent closed or went away: nothing more to read; wake `run` to end."""
        if self._reading_done:
            return
        self._reading_done = True
        task, self._reader = self._reader, None
        if task is not None:
            self.host.poller.remove(self.sock.fileno())
            trio.lowlevel.reschedule(task)
        elif self._starting and self._scope is not None:
            self.host.poller.remove(self.sock.fileno())
            self._scope.cancel()            # run() is in _start: the session is over

    @property
    def end_reason(self) -> str:
        return self._end_reason()

    def _end_reason(self) -> str:
        if self._close_reason is not None:
            return self._close_reason
        if self.peer_close_code is not None:
            return f"connection closed ({self.peer_close_code})"
        return "session ended"

    def on_readable(self) -> None:
        """The hub's poller saw data (or the end) on the socket: read it, never blocking."""
        if self._reading_done or self.sock is None:
            return
        try:
            data = self.sock.recv(self.host.settings.receive_buffer_size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.peer_close_code = self.peer_close_code or CLOSE_ABNORMAL
            self._stop_reading()
            return
        if not self._discard:
            self._on_data(data)

    def on_reader_error(self, exc: BaseException) -> None:
        self.close(CLOSE_INTERNAL, "internal error", abort=True)

    def _on_data(self, data: bytes) -> None:
        try:
            events = self._parser.feed(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        for opcode, payload in events:
            if opcode == OP_BINARY:
                if not self._close_sent:
                    self._on_message(payload)
            elif opcode == OP_PING:
                self._control(frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                self._on_pong(payload)
            elif opcode == OP_CLOSE:
                if self._on_close(payload):
                    self._stop_reading()
                    return
            elif opcode == OP_TEXT:
                self._on_text()

    def _control(self, data: bytes) -> None:
        try:
            self._write(data)
        except _Closed:
            pass

    def _protocol_error(self, exc: ProtocolError) -> None:
        """The agent broke the protocol (oversized message included): close with its code and
        read nothing more; wait (bounded) for the agent to go."""
        self._discard = True
        log.info("agent protocol error", **self._fields(), code=exc.code, reason=exc.reason)
        self.close(exc.code, exc.reason)

    def _on_close(self, payload: bytes) -> bool:
        """The agent's close frame: answer it (if we did not start the close); True = over."""
        try:
            code, reason = parse_close(payload)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return False
        self.peer_close_code = code
        if not self._close_sent:
            self._close_code = self._close_code or code
            self._close_reason = self._close_reason or f"connection closed ({code})"
            self.host.leave(self)
            self._send_close(CLOSE_NORMAL if code == CLOSE_NO_STATUS else code, "")
        return True

    def _on_text(self) -> None:
        self.host.stats.frames_in += 1
        self.host.stats.text_frames += 1
        self._warn_once(_WARN_TEXT, "agent text frame ignored")

    def _on_message(self, message: bytes) -> None:
        self.last_seen = time.time()
        stats = self.host.stats
        stats.frames_in += 1
        try:
            reply = decode_reply(message)
        except FrameError as exc:
            stats.malformed_frames += 1
            if exc.call_id is not None:
                self.pending.fail(exc.call_id, MalformedReply(
                    f"malformed reply: {exc.reason}", agent_id=self.agent_id))
            self._warn_once(_WARN_MALFORMED, "agent frame malformed", reason=exc.reason)
            return
        outcome = self.pending.resolve(reply.id, reply.result, reply.error)
        if outcome is Resolution.STALE:
            stats.stale_replies += 1
            log.debug("agent late reply dropped", **self._fields(), call_id=reply.id)
        elif outcome is Resolution.UNKNOWN:
            stats.unknown_replies += 1
            self._warn_once(_WARN_UNKNOWN, "agent reply to unknown call", call_id=reply.id)

    def _fields(self) -> dict[str, str]:
        return {"agent_id": self.agent_id, "agent_type": self.agent_type,
                "remote": self.remote_address}

    def _warn_once(self, bit: int, event: str, **fields: object) -> None:
        """Warn on the first occurrence per session; the counters keep the totals."""
        if self._warned & bit:
            log.debug(event, **self._fields(), **fields)
        else:
            self._warned |= bit
            log.warning(event, **self._fields(), **fields)

    # ------------------------------------------------------------------ heartbeat

    def send_ping(self) -> bool:
        """Called by the hub's heartbeat scheduler: ping now, arm the pong deadline on the
        hub's timer. False once the session is ending."""
        if self._done or self._close_code is not None or self._scope is None:
            return False
        self._ping_seq = seq = (self._ping_seq + 1) & 0xFFFFFFFF
        try:
            self._write(frame(OP_PING, _ping_payload(seq)))
        except _Closed:
            return False
        self.host.deadlines.add(self, self.host.settings.pong_timeout)
        return True

    def _on_pong(self, payload: bytes) -> None:
        if self.lane is None or payload != _ping_payload(self._ping_seq):
            return                          # unsolicited, or an answer to an older ping
        Deadlines.settle(self)
        self.last_seen = time.time()
        self.host.schedule_ping(self)

    def expire(self) -> None:
        """The pong deadline passed (the hub's timer calls this)."""
        if self._done:
            return
        self.host.stats.heartbeat_timeouts += 1
        log.info("agent heartbeat lost", **self._fields(),
                 pong_timeout=self.host.settings.pong_timeout)
        self.close(CLOSE_INTERNAL, "heartbeat timeout", abort=True)

    # ------------------------------------------------------------------ start

    async def _start(self) -> None:
        host = self.host
        try:
            caps = await self.call(f"{self.agent_type}.Capabilities", {},
                                   host.settings.capabilities_timeout)
            self.version, self.methods = host.capabilities(caps)
        except AgentDisconnected:
            return
        except (HubError, ValueError) as exc:
            host.stats.reject("capabilities_failed")
            log.warning("agent capabilities failed", **self._fields(), error=str(exc))
            self.close(CLOSE_POLICY, "capabilities failed")
            return
        del caps
        if not host.ready(self):
            return
        assert self._nursery is not None
        hooks = host.hooks(self.agent_type)
        if hooks:
            for hook in hooks[:-1]:
                self._nursery.start_soon(self._run_hook, hook)
            await self._run_hook(hooks[-1])   # in this task: one task fewer per connect

    async def _run_hook(self, hook: ConnectHook) -> None:
        try:
            await hook(self.agent_id)
        except AgentUnavailable as exc:
            # the agent went away while its hook ran: an ordinary event, not an error
            self.host.stats.hook_failures += 1
            log.warning("agent left during its connect hook", **self._fields(),
                        hook=getattr(hook, "__qualname__", repr(hook)), error=str(exc))
        except Exception:
            self.host.stats.hook_failures += 1
            log.exception("agent connect hook failed", **self._fields(),
                          hook=getattr(hook, "__qualname__", repr(hook)))
