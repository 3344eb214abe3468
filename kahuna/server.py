"""The root of the task tree: store, HTTP app and agent hub in one trio nursery.

`run(config)` is started with `nursery.start`, so callers (the entry point, tests) learn the bound
addresses instead of sleeping. Both listeners live in the same nursery: a crash of one cancels
the other and the process exits non-zero for systemd to restart it. `shutdown` (an Event) asks for
a graceful stop: stop accepting, close agent sessions with 1001, finish in-flight requests.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from kahuna.api.app import create_app
from kahuna.api.authn import HeaderAuthenticator
from kahuna.config import Config
from kahuna.hub import listener as hub_listener
from kahuna.logs import get_logger
from kahuna.resources import catalog
from kahuna.resources.kind import all_kinds
from kahuna.resources.service import Resources
from kahuna.store.base import Store
from kahuna.store.factory import open_store

log = get_logger("kahuna.server")

GRACEFUL_SECONDS = 3.0


@dataclass(frozen=True)
class Secrets:
    master_key: str
    jwt_signature: str
    server_secret: str


@dataclass(frozen=True)
class Bound:
    http: tuple[str, int]
    hub: tuple[str, int]


def hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{config.http.address}:{config.http.port}"]
    hc.backlog = 2048  # reconnect storms after a failover
    hc.graceful_timeout = GRACEFUL_SECONDS
    hc.keep_alive_timeout = 60
    hc.accesslog = None
    hc.errorlog = None  # our own log lines say what matters
    hc.include_server_header = False
    return hc


@asynccontextmanager
async def prepared_store(config: Config) -> AsyncIterator[Store]:
    """The configured store, opened, with every kind's indexes in place; closed on exit."""
    catalog.load()
    async with open_store(
        db_uri=config.db_uri or None,
        db_name=config.db_name,
        data_dir=config.data_dir,
        cache_enabled=config.cache.enabled,
        cache_max_entries=config.cache.max_entries,
        cache_ttl_seconds=config.cache.expiration_minutes * 60.0,
    ) as store:
        for kind in all_kinds():
            await store.ensure_indexes(kind.collection, kind.indexes())
        yield store


async def run(config: Config, secrets: Secrets, shutdown: trio.Event, *,
              task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with prepared_store(config) as store:
        resources = Resources(store, config=config)
        app, _ = create_app(resources, HeaderAuthenticator(secrets.master_key))
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(_serve_http, app, config, shutdown)
            hub_scope = trio.CancelScope()
            hub_addr = await nursery.start(_serve_hub, hub_scope, config)
            http_addr = _parse_bind(binds[0])
            log.info("listening", service="http", address=f"{http_addr[0]}:{http_addr[1]}")
            log.info("listening", service="hub", address=f"{hub_addr[0]}:{hub_addr[1]}")
            task_status.started(Bound(http_addr, hub_addr))
            await shutdown.wait()
            log.info("stopping", graceful_seconds=GRACEFUL_SECONDS)
            # hypercorn stops accepting on the same event and finishes in-flight requests by
            # itself; the hub listener is cancelled; nothing may outlive the grace period.
            hub_scope.cancel()
            nursery.cancel_scope.deadline = trio.current_time() + GRACEFUL_SECONDS + 0.5


async def _serve_http(app, config: Config, shutdown: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED):
    await hypercorn_serve(app, hypercorn_config(config), shutdown_trigger=shutdown.wait, task_status=task_status)


async def _serve_hub(scope: trio.CancelScope, config: Config, *, task_status=trio.TASK_STATUS_IGNORED):
    with scope:
        await hub_listener.serve(config.hub.address, config.hub.port, task_status=task_status)


def _parse_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.split("://", 1)[-1].rpartition(":")
    return host.strip("[]"), int(port)
