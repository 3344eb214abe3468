"""The root of the task tree: store, HTTP app and agent hub in one trio nursery.

`run(config)` is started with `nursery.start`, so callers (the entry point, tests) learn the bound
addresses instead of sleeping. Its listening sockets come bound from the entry point
(`listeners=`, see kahuna/listeners.py: bound before this module's imports, so agents dialing a
restarting Kahuna wait in the backlog instead of being refused); without them `run` binds its
own first thing, the same way. Either way they are accepted from only once the hub and the app
serve. Both listeners live in the same nursery: a crash of one cancels
the other and the process exits non-zero for systemd to restart it. `shutdown` (an Event) asks for
a graceful stop: stop accepting, close agent sessions with 1001, finish in-flight requests.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import AsyncIterator

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from kahuna.api import agents as agents_api
from kahuna.api import compute as compute_api
from kahuna.api import infra as infra_api
from kahuna.api import metadata as metadata_api
from kahuna.api import metrics as metrics_api
from kahuna.api import services as services_api
from kahuna.api.app import create_app
from kahuna.api.authn import HeaderAuthenticator
from kahuna.api.guard import guard
from kahuna.auth.mail import Outbox
from kahuna.config import Config, Secrets  # noqa: F401  (Secrets: kahuna.server.Secrets, as before)
from kahuna.ha import wiring as ha
from kahuna.hub.hub import Hub
from kahuna.hub.settings import HubSettings
from kahuna.listeners import HTTP_BACKLOG, HUB_BACKLOG, Listeners, bind
from kahuna.logs import get_logger
from kahuna.observability.inventory import Inventory
from kahuna.orchestrator import agent_hooks, flows
from kahuna.orchestrator.agent_credentials import StoredAgentCredentials
from kahuna.orchestrator.agent_keys import AgentKeys
from kahuna.resources import catalog
from kahuna.resources.kind import all_kinds
from kahuna.resources.service import Resources
from kahuna.store.base import Store
from kahuna.store.factory import open_store
from kahuna.store.observed import find_observed

log = get_logger("kahuna.server")

GRACEFUL_SECONDS = 3.0


@dataclass(frozen=True)
class Bound:
    """What a started Kahuna tells its starter (tests and benchmarks reach the hub through it)."""

    http: tuple[str, int]
    hub_address: tuple[str, int]
    hub: Hub
    resources: Resources


def hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{config.http.address}:{config.http.port}"]
    hc.backlog = HTTP_BACKLOG  # reconnect storms after a failover
    hc.graceful_timeout = GRACEFUL_SECONDS
    # an idle keep-alive connection, or a request whose next bytes do not come, is closed after
    # 30 s (read_timeout applies to every read, idle or not, so it must not undercut keep-alive)
    hc.keep_alive_timeout = 30
    hc.read_timeout = 30
    hc.h11_max_incomplete_size = 16 * 1024  # request line + headers
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
        observed=True,  # database latencies and the writes the metrics follow (kahuna.api.metrics)
    ) as store:
        for kind in all_kinds():
            await store.ensure_indexes(kind.collection, kind.indexes())
        yield store


def hub_settings(config: Config) -> HubSettings:
    return HubSettings(
        ping_interval=config.hub.ping_interval,
        pong_timeout=config.hub.pong_timeout,
        capabilities_timeout=config.hub.capabilities_timeout,
        call_timeout=config.hub.call_timeout,
        max_message_size=config.hub.max_message_size,
        clock_skew=config.hub.clock_skew,
        trusted_proxies=frozenset(config.trusted_proxies),  # Caddy in front: the agent's real address
        backlog=HUB_BACKLOG,  # a reconnect storm after a failover
    )


def build_app(resources: Resources, secrets: Secrets, *, hub=None, agent_keys=None):
    """The HTTP app with every route of every feature (the route-table test builds it this way
    too, so it sees exactly the routes production serves)."""
    authenticate = HeaderAuthenticator(secrets.master_key, resources=resources,
                                       jwt_signature=secrets.jwt_signature,
                                       server_secret=secrets.server_secret)
    return create_app(resources, authenticate, installers=[
        partial(agents_api.install, resources=resources, keys=agent_keys, hub=hub),
        partial(infra_api.install, resources=resources),
        partial(metadata_api.install, resources=resources, server_secret=secrets.server_secret),
        partial(services_api.install, resources=resources),
        partial(compute_api.install, resources=resources),
        partial(metrics_api.install, resources=resources),
    ])


async def run(config: Config, secrets: Secrets, shutdown: trio.Event, *,
              listeners: Listeners | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve until `shutdown`; `listeners`: the ports bound beforehand (kahuna.listeners.bind;
    taken over and closed here), else bound now, before the store opens.

    The cyclic garbage collector is paused until the daemon serves: start-up allocates much and
    frees little (imports, the decoded agents and keys, the route table), and its collections,
    traversing an ever larger heap, were 15-20 % of the start-up CPU (35-50 % of building the
    app). The entry points pause it already before their imports. Once serving, what start-up
    left is frozen (`gc.freeze`: moved out of the generations the collector traverses -- a
    first collection over it took ~0.1 s, right when the queued agents are being served) and
    the collector resumes for what the daemon allocates from then on; unfrozen when `run`
    ends."""
    gc.disable()
    try:
        with listeners if listeners is not None else bind(config) as bound:
            await _run(config, secrets, shutdown, bound, task_status)
    finally:
        gc.unfreeze()
        gc.enable()


async def _run(config: Config, secrets: Secrets, shutdown: trio.Event, listeners: Listeners,
               task_status) -> None:
    async with prepared_store(config) as store:
        node = ha.build_node(config)  # single on the embedded store; else the lease decides
        store = ha.fenced(store, node)  # every write of this process goes through the fence
        resources = Resources(store, config=config, secrets=secrets)
        credentials = StoredAgentCredentials(resources, secrets.server_secret)
        await credentials.load_all()
        hub = Hub(hub_settings(config), credentials)
        agent_keys = AgentKeys(resources, credentials, hub=hub, admin_email=config.admin_email,
                               mail_enabled=config.smtp.enabled)
        outbox = Outbox(config.smtp)  # mails queued by enqueue(); sent by a background task
        inventory = Inventory()  # upstream's kowabunga_* gauges, following this node's writes
        find_observed(store).listeners.append(inventory)
        resources.extras.update(hub=hub, agent_keys=agent_keys, outbox=outbox, ha=node, inventory=inventory)
        ha.attach(node, store=store, hub=hub, credentials=credentials)
        agent_hooks.install(hub, resources)
        node.while_active(partial(flows.recover_loop, resources))  # flows a dead process left
        node.while_active(partial(inventory.run, store))  # loaded when serving, dropped when passive
        app, _ = build_app(resources, secrets, hub=hub, agent_keys=agent_keys)
        await credentials.reload_if_changed()  # keys changed by another process while starting
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(_serve_http, app, config, shutdown, listeners.http)
            background = trio.CancelScope()  # the hub and the watchers: cancelled at shutdown
            hub_addr = await nursery.start(_serve_background, background, hub, node, credentials, config,
                                           partial(outbox.run, resources),
                                           partial(resources.extras["storage"].run, resources),
                                           listeners.hub)
            http_addr = _parse_bind(binds[0])
            log.info("listening", service="http", address=f"{http_addr[0]}:{http_addr[1]}")
            log.info("listening", service="hub", address=f"{hub_addr[0]}:{hub_addr[1]}")
            task_status.started(Bound(http_addr, hub_addr, hub, resources))
            gc.freeze()  # serving: start-up's objects leave the collector's generations (see `run`)
            gc.enable()
            await shutdown.wait()
            log.info("stopping", graceful_seconds=GRACEFUL_SECONDS)
            # hypercorn stops accepting on the same event and finishes in-flight requests by
            # itself; agent sessions are closed with 1001; nothing outlives the grace period.
            nursery.cancel_scope.deadline = trio.current_time() + GRACEFUL_SECONDS + 0.5
            await hub.shutdown(timeout=GRACEFUL_SECONDS - 1.0)
            background.cancel()


async def _serve_http(app, config: Config, shutdown: trio.Event, sockets, *,
                      task_status=trio.TASK_STATUS_IGNORED):
    """hypercorn on the pre-bound, listening `sockets` (what `hypercorn.trio.serve` does, minus
    binding: its worker entry point takes sockets; `Config.bind` stays set for its logs)."""
    hc = hypercorn_config(config)
    await worker_serve(wrap_app(guard(app), hc.wsgi_max_body_size, None), hc,
                       sockets=Sockets(secure_sockets=[], insecure_sockets=list(sockets), quic_sockets=[]),
                       shutdown_trigger=shutdown.wait, task_status=task_status)


async def _serve_background(scope: trio.CancelScope, hub: Hub, node, credentials: StoredAgentCredentials,
                            config: Config, outbox_run=None, pool_refresh=None, hub_sockets=None, *,
                            task_status=trio.TASK_STATUS_IGNORED):
    with scope:
        async with trio.open_nursery() as nursery:
            listeners = None if hub_sockets is None else [
                trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in hub_sockets]
            address = await nursery.start(partial(hub.serve, config.hub.address, config.hub.port,
                                                  listeners=listeners))
            # tasks that write run only while this node is active (always when single)
            node.while_active(credentials.watch)
            if outbox_run is not None:
                node.while_active(outbox_run)
            if pool_refresh is not None:  # storage pools' statistics, from their agents
                node.while_active(pool_refresh)
            await nursery.start(node.run)
            task_status.started(address)


def _parse_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.split("://", 1)[-1].rpartition(":")
    return host.strip("[]"), int(port)
