"""The daemon's listening sockets, bound first thing (the systemd socket-activation pattern).

A restarting Kahuna (systemd restart, failover, a crash) spends a second or more importing its
stack and loading its store before it can serve. Were its ports closed meanwhile, every agent
and client dialing would be refused (ECONNREFUSED) and go into its reconnect backoff: after a
restart, that backoff, not the hub, made a reconnect storm long (issue 13). So `bind(config)` is
called right after the configuration is read, before the heavy imports: the hub's and the HTTP
API's sockets listen with their usual backlogs, and whoever dials during start-up waits in the
kernel's accept queue instead of being refused.

Nothing is answered early: a socket bound here is only accepted from once its server runs
(`Hub.serve(listeners=...)`, hypercorn's pre-bound sockets), i.e. once the daemon is ready; a
queued agent is handled by the hub, a queued HTTP request by the app. A node that comes up
passive (kahuna.ha) serves exactly as it would have: its hub refuses agents, its app answers
503, as before.

Standard library only (this module is imported before trio, hypercorn and the rest). The
sockets are bound as the servers themselves would bind them: the hub's like
`trio.open_tcp_listeners` (SO_REUSEADDR, IPV6_V6ONLY, one socket per address family),
the HTTP one like hypercorn's `Config.create_sockets` (SO_REUSEADDR, TCP_NODELAY).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

HUB_BACKLOG = 4096   # a reconnect storm after a failover (also kahuna.server.hub_settings)
HTTP_BACKLOG = 2048  # the same (also kahuna.server.hypercorn_config)


class BindError(OSError):
    """A port could not be bound; says which setting and address (exit code 1)."""

    def __init__(self, setting: str, host: str, port: int, cause: OSError) -> None:
        shown = f"[{host}]" if ":" in host else host
        super().__init__(cause.errno, f"{setting}: cannot listen on {shown}:{port}: "
                                      f"{cause.strerror or cause}")
        self.setting, self.host, self.port = setting, host, port

    def __str__(self) -> str:
        return self.strerror


@dataclass
class Listeners:
    """Bound, listening, not yet accepted from. `close()` is idempotent; serving takes them over
    (the servers close them when they stop)."""

    hub: list[socket.socket] = field(default_factory=list)
    http: list[socket.socket] = field(default_factory=list)

    def close(self) -> None:
        for sock in self.hub + self.http:
            sock.close()

    def __enter__(self) -> "Listeners":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bind(config) -> Listeners:
    """Bind the hub's (`global.ws`) and the HTTP API's (`global.http`) ports; BindError names
    the one that failed (nothing stays bound then)."""
    listeners = Listeners()
    try:
        listeners.hub = bind_hub(config.hub.address, config.hub.port)
        listeners.http = [bind_http(config.http.address, config.http.port)]
    except BaseException:
        listeners.close()
        raise
    return listeners


def bind_hub(host: str | None, port: int, backlog: int = HUB_BACKLOG) -> list[socket.socket]:
    """As `trio.open_tcp_listeners(port, host=host, backlog=backlog)` binds."""
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError("global.ws", host or "*", port, exc) from exc
    out: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in infos:
            sock = socket.socket(family, type_, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                raise BindError("global.ws", host or "*", port, exc) from exc
            sock.listen(min(backlog, 0xFFFF))
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


def bind_http(host: str, port: int, backlog: int = HTTP_BACKLOG) -> socket.socket:
    """As hypercorn's `Config.create_sockets` binds `host:port` (then listens with `backlog`)."""
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BindError("global.http", host, port, exc) from exc
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
