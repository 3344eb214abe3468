"""How the server plugs the pair in: a Node from the config, the fenced store, the hooks.

Kept here so that `kahuna.server.run` changes by a few lines only.
"""

from __future__ import annotations

from typing import Any

from kahuna.config import Config
from kahuna.store.base import Store

from .fenced import FencedStore
from .lease import LeaseStore
from .node import Node

CLOSE_GOING_AWAY = 1001


def build_node(config: Config) -> Node:
    if not config.ha.enabled:
        return Node()
    # one lease call must end well inside the fence margin
    timeout = max(0.2, min(1.0, config.ha.fence_margin_seconds / 2))
    return Node(config.ha, LeaseStore(config.db_uri, config.db_name, timeout))


def fenced(store: Store, node: Node) -> Store:
    return store if node.is_single else FencedStore(store, node)


def attach(node: Node, *, store: Store, hub: Any, credentials: Any) -> None:
    """Agents only on the active; caches rebuilt on turning active; agents dropped on fencing."""
    if node.is_single:
        return
    hub.admission = node.serving

    async def rebuild() -> None:
        clear = getattr(store, "clear", None)  # the CachedStore's read cache
        if clear is not None:
            clear()
        await credentials.load_all()

    async def drop_agents() -> None:
        for agent_id in list(hub.connected_ids()):
            await hub.disconnect(agent_id, CLOSE_GOING_AWAY, "this Kahuna turned passive")

    node.on_active(rebuild)
    node.on_passive(drop_agents)
