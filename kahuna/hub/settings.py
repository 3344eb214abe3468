"""Hub tunables, built once by the caller and passed down (no module reads the environment)."""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 * 1024


@dataclass(frozen=True)
class HubSettings:
    """Every knob of the agent hub; the defaults are upstream's where upstream has one.

    Timing (seconds):
      ping_interval         WebSocket ping period (upstream: 9 s).
      pong_timeout          a ping unanswered this long ends the session (upstream: 10 s), so a
                            silent agent is gone at most ping_interval + pong_timeout after its
                            last pong.
      capabilities_timeout  the `<Type>.Capabilities` call made right after the upgrade.
      handshake_timeout     TCP accept -> complete HTTP upgrade request; bounds what a flood of
                            half-open or garbage connections can hold.
      call_timeout          default deadline of `Hub.call` when the caller gives none (upstream
                            waits 3600 s; long enough here for a template download).
      close_timeout         how long a closing session waits for the peer's close frame.
      clock_skew            HMAC mode: largest accepted |server clock - X-WS-Kowabunga-Timestamp|;
                            nonces are remembered for twice this long.
      accept_retry_delay    pause after accept() failed for lack of descriptors or memory.

    Sizes:
      max_message_size      largest accepted frame (bigger closes the session with 1009); 16 MiB
                            because cloud-init ISOs travel inline.
      send_buffer_limit     most bytes buffered for an agent that reads slower than we write
                            (sends never block: what the socket does not take waits here);
                            beyond it the session ends (1011). Default: room for two messages
                            of the largest size, so a healthy agent receiving ISOs never hits it.
      receive_buffer_size   bytes per recv(); only allocated while data is being read.
      nonce_cache_size      most HMAC nonces remembered at once (refuse with 503 beyond it).
      max_methods           most entries accepted in a Capabilities `Methods` list.

    Network:
      path                  the only path upgraded (others get 404 before the upgrade).
      backlog               listen backlog (None: trio's default, the system maximum), sized for
                            reconnect storms after a failover.
      trusted_proxies       peer addresses whose X-Forwarded-For is believed for `remote_address`
                            (e.g. the local Caddy).

    Process:
      gc_threshold          `serve()` raises the cyclic collector's generation-0 threshold to
                            this (never lowers it; None leaves it alone). Each idle session keeps
                            ~130 tracked objects alive and the default (700) made the collector
                            rescan them dozens of times per fan-out: measured with 2,000 agents,
                            fan-out 820 -> 480 ms and 2,200 -> 5,300 calls/s. (`gc.freeze()` is
                            not used: ended sessions leave cyclic garbage it would keep forever.)
                            Raised again to 100,000 (10,000 agents, GC time summed with
                            gc.callbacks): the young collections cost about the same per object
                            whatever the threshold, but fewer of them see fewer survivors.
      gc_threshold_gen1     likewise for generation 1 (collections of gen 0 between two of gen 1;
                            CPython's default 10). Each gen-1 pass rescans every session created
                            since the last one (~130 objects each): at 10,000 agents, 10 made
                            gen-1 passes ~40 % of the collector's time during fan-outs, 50 none.
    """

    path: str = "/ws"
    ping_interval: float = 9.0
    pong_timeout: float = 10.0
    capabilities_timeout: float = 10.0
    handshake_timeout: float = 10.0
    call_timeout: float = 600.0
    close_timeout: float = 3.0
    clock_skew: float = 300.0
    accept_retry_delay: float = 0.1
    max_message_size: int = 16 * MiB
    send_buffer_limit: int = 33 * MiB
    receive_buffer_size: int = 16 * 1024
    nonce_cache_size: int = 200_000
    max_methods: int = 1024
    backlog: int | None = None
    trusted_proxies: frozenset[str] = field(default_factory=frozenset)
    gc_threshold: int | None = 100_000
    gc_threshold_gen1: int | None = 50

    def __post_init__(self) -> None:
        for name in ("ping_interval", "pong_timeout", "capabilities_timeout", "handshake_timeout",
                     "call_timeout", "close_timeout", "clock_skew"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HubSettings.{name} must be > 0")
        if self.accept_retry_delay < 0:
            raise ValueError("HubSettings.accept_retry_delay must be >= 0")
        for name in ("max_message_size", "send_buffer_limit", "receive_buffer_size",
                     "nonce_cache_size", "max_methods"):
            if getattr(self, name) < 1:
                raise ValueError(f"HubSettings.{name} must be >= 1")
        for name in ("gc_threshold", "gc_threshold_gen1"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"HubSettings.{name} must be >= 1 or None")
        if not self.path.startswith("/"):
            raise ValueError("HubSettings.path must start with '/'")
        if not isinstance(self.trusted_proxies, frozenset):
            object.__setattr__(self, "trusted_proxies", frozenset(self.trusted_proxies))
