"""One agent session: a small task tree that only moves bytes and waits.

    connection nursery           (one per TCP connection, opened by the hub)
    +-- trio-websocket reader    wsproto bytes -> messages; answers pings; hands each message
    |                            straight to Session._on_message (see _DirectDelivery), which
    |                            never blocks, so pings are answered under load, and resolves
    |                            calls by id
    +-- Session.run()            the connection's own task: waits for the connection to end
    +-- _start                   <Type>.Capabilities, then registration, then the connect hooks
    |   +-- hooks                each in its own task; failures are logged, never fatal
    +-- _ping                    one WebSocket ping, started every ping_interval by the hub's
    |                            heartbeat scheduler; no pong within pong_timeout ends the session
    +-- _closer                  when we end the session: the close frame and its answer
    calls                        run in the caller's task: send the frame, park until the reply
                                 (or the caller's deadline) wakes it

An idle session owns no task of its own besides the two readers: its heartbeat is an entry in
the hub's ping queue, so thousands of idle agents cost little memory.

Whatever ends the session (peer close, oversized frame, heartbeat loss, replacement, disconnect,
shutdown), the `finally` of `run` fails every pending call at once, leaves the registry (only if
still the agent's current session) and sees the close frame sent.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from kahuna.logs import get_logger

from .codec import FrameError, decode_reply, encode_request
from .errors import AgentDisconnected, AgentError, AgentUnavailable, CallTimeout, HubError, MalformedReply
from .handshake import Identity
from .pending import PendingCalls, Resolution
from .stats import DISCONNECTED, ERROR, OK, TIMEOUT

if TYPE_CHECKING:
    from .hub import Hub

log = get_logger("kahuna.hub")

# Close codes we send (4000-4999 are private-use; upstream has none of its own).
CLOSE_GOING_AWAY = 1001        # server shutdown
CLOSE_POLICY = 1008            # Capabilities failed
CLOSE_INTERNAL = 1011          # heartbeat lost, send timed out
CLOSE_REPLACED = 4000          # a newer session of the same agent took over; also disconnect()
CLOSE_CREDENTIALS = 4001       # the credential changed while the session was starting

_WARN_TEXT, _WARN_MALFORMED, _WARN_UNKNOWN = 1, 2, 4


class _DirectDelivery:
    """Stands in for trio-websocket's message queue (its `_send_channel`): the library's reader
    task hands each complete message straight to `Session._on_message`, which never blocks.

    Through the queue every reply cost two extra task switches (the library's reader yields
    after each `send`, and our reader task wakes up to take the message): that was about a
    fifth of the hub's CPU per call. The library's own semantics are kept: messages that arrive
    once the connection is closing (`_close_reason` set: our close, the peer's, an oversized
    frame) are discarded, as the library discards its queue then. The original channel stays
    open until the library's reader ends, so `get_message()` still reports the end.
    """

    __slots__ = ("_ws", "_deliver", "_original")

    def __init__(self, ws: WebSocketConnection, deliver: Callable[[bytes | str], None]) -> None:
        self._ws = ws
        self._deliver = deliver
        self._original = ws._send_channel

    async def send(self, message: bytes | str) -> None:
        if self._ws._close_reason is None:
            self._deliver(message)

    # The library closes "its queue" when the connection closes (`_close_web_socket`) and holds it
    # as a context manager in its reader: both reach the original channel, so `get_message()`
    # still wakes with ConnectionClosed.
    async def aclose(self) -> None:
        await self._original.aclose()

    async def __aenter__(self) -> "_DirectDelivery":
        return self

    async def __aexit__(self, *exc) -> None:
        await self._original.aclose()


def _install_direct_delivery(ws: WebSocketConnection,
                             deliver: Callable[[bytes | str], None]) -> bool:
    """Private attributes of trio-websocket 0.12 (pinned): if its layout changes this does
    nothing (messages then go through the queue and `Session._read_loop`), and
    tests/hub/test_session.py notices."""
    if (type(getattr(ws, "_send_channel", None)) is not trio.MemorySendChannel
            or not hasattr(ws, "_close_reason") or not hasattr(ws, "_recv_channel")):
        return False
    ws._send_channel = _DirectDelivery(ws, deliver)  # type: ignore[assignment]
    return True


class Session:
    __slots__ = ("hub", "ws", "agent_id", "agent_type", "credential", "remote_address", "pending",
                 "version", "methods", "connected_since", "last_seen", "registered",
                 "_nursery", "_close_code", "_close_reason", "_abort", "_closing", "_done",
                 "_finished", "_ended", "_warned")

    def __init__(self, hub: Hub, ws: WebSocketConnection, identity: Identity,
                 remote_address: str) -> None:
        self.hub = hub
        self.ws = ws
        self.agent_id = identity.agent_id
        self.agent_type = identity.agent_type
        self.credential = identity.credential
        self.remote_address = remote_address
        self.pending = PendingCalls()
        self.version: str | None = None
        self.methods: frozenset[str] = frozenset()
        self.connected_since = self.last_seen = time.time()
        self.registered = False
        self._nursery: trio.Nursery | None = None
        self._close_code: int | None = None
        self._close_reason: str | None = None
        self._abort = False
        self._closing: trio.Event | None = None   # set once our close exchange is over
        self._done = False          # no more calls: pending ones failed, registry left
        self._finished = False      # and the close frame is sent: the connection can go
        self._ended: trio.Event | None = None
        self._warned = 0
        _install_direct_delivery(ws, self._on_message)

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

    # ------------------------------------------------------------------ control

    def close(self, code: int, reason: str, *, abort: bool = False) -> None:
        """Ask the session to end (idempotent: the first code and reason win).

        Normally the close frame is sent and its answer awaited (close_timeout); `abort` skips
        that (a peer that stopped answering, or a frame cut in half) and just drops the stream.
        """
        if self._close_code is None:
            self._close_code, self._close_reason, self._abort = code, reason, abort
            self.hub.registry.unregister(self)      # no new call is routed to a closing session
        elif not abort or self._abort:
            return
        if self._nursery is None:
            return                     # run() acts on the request when it starts
        if self._done:
            return                     # already ending on its own
        if abort:
            self._abort = True
            self._nursery.cancel_scope.cancel()
        elif self._closing is None:
            self._closing = trio.Event()
            try:
                self._nursery.start_soon(self._closer)
            except RuntimeError:       # the connection's nursery is already closing
                self._closing.set()

    async def wait_ended(self) -> None:
        """Wait until the session is over, close frame exchanged (bounded by close_timeout)."""
        if self._finished:
            return
        if self._ended is None:
            self._ended = trio.Event()
        await self._ended.wait()

    # ------------------------------------------------------------------ calls

    async def call(self, method: str, params: Any, timeout: float) -> Any:
        """Send one request and wait for its reply; raises the errors of `kahuna.hub.errors`."""
        stats = self.hub.stats
        started = time.perf_counter()
        try:
            call = self.pending.open(method)
        except AgentDisconnected:
            stats.call_done(method, DISCONNECTED, 0.0)
            raise
        sent = False
        outcome = TIMEOUT           # also a caller cancelled while it waited (its own deadline)
        try:
            frame = encode_request(call.id, method, params)
            stats.calls += 1
            # One scope with the call's deadline for both halves. Shielded while sending: a
            # caller cancelled half-way through a frame would leave the stream corrupt for
            # every other call. Then unshielded while waiting for the reply.
            with trio.CancelScope(shield=True,
                                  deadline=trio.current_time() + timeout) as scope:
                try:
                    await self.ws.send_message(frame)
                    stats.frames_out += 1
                except ConnectionClosed:
                    outcome = DISCONNECTED
                    raise AgentDisconnected(self.agent_id, self._end_reason()) from None
                del frame
                sent = True
                scope.shield = False
                await call.wait()
            if not call.done:
                outcome = TIMEOUT
                stats.call_timeouts += 1
                if not sent:
                    self.close(CLOSE_INTERNAL, "send timed out", abort=True)
                raise CallTimeout(self.agent_id, method, timeout)
            outcome = ERROR if call.exc is not None or call.error is not None else OK
            if isinstance(call.exc, AgentDisconnected):
                outcome = DISCONNECTED
        finally:
            self.pending.discard(call.id)
            stats.call_done(method, outcome, time.perf_counter() - started)
        if call.exc is not None:
            raise call.exc
        if call.error is not None:
            stats.call_errors += 1
            raise AgentError(call.error, agent_id=self.agent_id, method=method)
        return call.result

    # ------------------------------------------------------------------ task tree

    async def run(self, nursery: trio.Nursery) -> None:
        """The session's whole life in the connection's nursery; returns when it is over."""
        self._nursery = nursery
        try:
            if self._close_code is not None:          # closed before it started
                code, reason, abort = self._close_code, self._close_reason, self._abort
                self._close_code = None
                self.close(code, reason or "", abort=abort)
            self.hub._schedule_ping(self)
            nursery.start_soon(self._start)
            await self._read_loop()
        finally:
            self._done = True
            reason = self._end_reason()
            self.pending.fail_all(lambda: AgentDisconnected(self.agent_id, reason))
            self.hub._session_ended(self)
            try:
                if self._closing is not None:
                    await self._closing.wait()         # bounded by close_timeout in _closer
                elif not self._abort and self.ws.closed is None:
                    await self._send_close_now()
            finally:
                self._finished = True
                if self._ended is not None:
                    self._ended.set()

    def _end_reason(self) -> str:
        if self._close_reason is not None:
            return self._close_reason
        closed = self.ws.closed
        if closed is not None:
            return f"connection closed ({closed.code})"
        return "session ended"

    async def _closer(self) -> None:
        """Our side ends the session: close frame, wait (bounded) for the peer's answer."""
        assert self._closing is not None
        try:
            with trio.move_on_after(self.hub.settings.close_timeout):
                await self.ws.aclose(self._close_code or CLOSE_GOING_AWAY, self._close_reason)
        except Exception as exc:   # the stream is torn down by the hub either way
            log.debug("agent close failed", **self._fields(), error=repr(exc))
        finally:
            self._closing.set()

    async def _send_close_now(self) -> None:
        """Cancelled from outside (the hub's nursery is going away): the library's reader is
        cancelled too, so send the close frame without waiting for the answer."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 0.05):
            try:
                await self.ws.aclose(CLOSE_GOING_AWAY, "server shutting down")
            except Exception:
                pass

    async def _read_loop(self) -> None:
        """Waits for the connection's end; with direct delivery installed (see
        `_DirectDelivery`) the only messages seen here are those queued before it was."""
        ws = self.ws
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return
            self._on_message(message)
            del message      # an idle session must not keep its last frame alive

    def _on_message(self, message: bytes | str) -> None:
        self.last_seen = time.time()
        stats = self.hub.stats
        stats.frames_in += 1
        if type(message) is str:
            stats.text_frames += 1
            self._warn_once(_WARN_TEXT, "agent text frame ignored")
            return
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

    def start_ping(self) -> bool:
        """Called by the hub's heartbeat scheduler; False once the session is ending."""
        if self._done or self._close_code is not None or self._nursery is None:
            return False
        try:
            self._nursery.start_soon(self._ping)
        except RuntimeError:            # the nursery is closing
            return False
        return True

    async def _ping(self) -> None:
        settings = self.hub.settings
        with trio.move_on_after(settings.pong_timeout) as waiting:
            try:
                await self.ws.ping()
            except ConnectionClosed:
                return
        if waiting.cancelled_caught:
            self.hub.stats.heartbeat_timeouts += 1
            log.info("agent heartbeat lost", **self._fields(), pong_timeout=settings.pong_timeout)
            self.close(CLOSE_INTERNAL, "heartbeat timeout", abort=True)
            return
        self.last_seen = time.time()
        self.hub._schedule_ping(self)

    async def _start(self) -> None:
        hub = self.hub
        try:
            caps = await self.call(f"{self.agent_type}.Capabilities", {},
                                   hub.settings.capabilities_timeout)
            self.version, self.methods = hub._intern_capabilities(caps)
        except AgentDisconnected:
            return
        except (HubError, ValueError) as exc:
            hub.stats.reject("capabilities_failed")
            log.warning("agent capabilities failed", **self._fields(), error=str(exc))
            self.close(CLOSE_POLICY, "capabilities failed")
            return
        del caps
        if not hub._session_ready(self):
            return
        assert self._nursery is not None
        for hook in hub._hooks_for(self.agent_type):
            self._nursery.start_soon(self._run_hook, hook)

    async def _run_hook(self, hook: Callable[[str], Awaitable[Any]]) -> None:
        try:
            await hook(self.agent_id)
        except AgentUnavailable as exc:
            # the agent went away while its hook ran: an ordinary event, not an error
            self.hub.stats.hook_failures += 1
            log.warning("agent left during its connect hook", **self._fields(),
                        hook=getattr(hook, "__qualname__", repr(hook)), error=str(exc))
        except Exception:
            self.hub.stats.hook_failures += 1
            log.exception("agent connect hook failed", **self._fields(),
                          hook=getattr(hook, "__qualname__", repr(hook)))
