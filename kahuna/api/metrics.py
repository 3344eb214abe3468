"""`GET /metrics`: Prometheus text exposition of the pair's role and the hub (issue 11).

Access rule `public`, as upstream serves its metrics unauthenticated: Prometheus scrapes *each*
node directly (the passive too: the standby 503 spares /metrics), the text holds counters only,
no names, ids or secrets, and conf/Caddyfile does not route /metrics, so it is not published on
the public name. A registry per app (not the process-global one) keeps several apps in one
process (tests) from clashing; values are read at scrape time, nothing is kept twice.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from quart import Response

from kahuna.api.routes import RouteTable

ROLES = ("single", "active", "passive")


class _Collector:
    def __init__(self, resources) -> None:
        self.resources = resources

    def collect(self):
        node = self.resources.extras.get("ha")
        role = GaugeMetricFamily("kahuna_ha_role", "1 for this node's current role", labels=["role"])
        changes = CounterMetricFamily("kahuna_ha_role_changes", "times this node entered a role",
                                      labels=["role"])
        epoch = GaugeMetricFamily("kahuna_ha_epoch", "the lease epoch this node last saw")
        current = node.role if node is not None else "single"
        for name in ROLES:
            role.add_metric([name], 1.0 if name == current else 0.0)
            changes.add_metric([name], float(node.changes.get(name, 0) if node is not None else 0))
        epoch.add_metric([], float(node.epoch if node is not None else 0))
        yield role
        yield changes
        yield epoch
        hub = self.resources.extras.get("hub")
        if hub is not None:
            agents = GaugeMetricFamily("kahuna_hub_connected_agents", "agents connected to this node")
            agents.add_metric([], float(len(hub.connected_ids())))
            yield agents


def install(table: RouteTable, *, resources) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(resources))

    async def metrics(principal):
        return Response(generate_latest(registry), status=200,
                        content_type="text/plain; version=0.0.4; charset=utf-8")

    table.add("/metrics", "GET", "public", metrics, name="metrics", prefix="")
