"""`GET /metrics`: the Prometheus text exposition (issues 11 and 13).

Access rule `public`, as upstream serves its metrics unauthenticated: Prometheus scrapes *each*
node directly (the passive too: the standby 503 spares /metrics), the text holds counters and
upstream's inventory gauges, no ids or secrets, and conf/Caddyfile does not route /metrics, so it
is not published on the public name. A registry per app (not the process-global one) keeps
several apps in one process (tests) from clashing.

Nothing here is computed per request or per write beyond a dict increment: the request hooks bump
kahuna.observability.counters.HttpStats (labelled by the route *template*, never the raw path, so
ids never become labels; unmatched paths share one label), the store's ObservedStore bumps
StoreStats, the hub bumps its HubStats, the Inventory follows the writes; the collector turns
them into metric families at scrape time.
"""

from __future__ import annotations

import re
import sys
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)
from quart import Response, g, request

from kahuna.api.routes import RouteTable
from kahuna.observability.counters import HttpStats, Latency
from kahuna.observability.inventory import METRICS, OUTBOX_DEPTH
from kahuna.store.observed import find_observed

ROLES = ("single", "active", "passive")
UNMATCHED = "<unmatched>"  # every path that matched no route (404/405): one label, not one per path
CALL_OUTCOMES = ("ok", "error", "timeout", "disconnected")
_RULE_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


def _histogram(name: str, doc: str, labels: list[str], latency: Latency | None,
               buckets=None, counts=None, total=None) -> HistogramMetricFamily:
    """From Latency (per key) or from one set of non-cumulative `counts` (HubStats' shape)."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    rows = []
    if latency is not None:
        rows = [(list(key), latency.counts[key], latency.sums[key], latency.buckets) for key in list(latency.counts)]
    elif counts is not None and buckets is not None:
        rows = [([], counts, total or 0.0, buckets)]
    for key, non_cumulative, total_sum, bounds in rows:
        cumulative, running = [], 0
        for bound, n in zip(list(bounds) + [float("inf")], non_cumulative):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        family.add_metric(key, cumulative, total_sum)
    return family


class _Collector:
    def __init__(self, resources, http: HttpStats) -> None:
        self.resources = resources
        self.http = http
        self.scrapes = 0

    def collect(self):
        yield from self._ha()
        yield from self._http()
        yield from self._store()
        yield from self._hub()
        yield from self._inventory()

    def _ha(self):
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

    def _http(self):
        requests = CounterMetricFamily("kahuna_http_requests", "HTTP requests by route template, method and status",
                                       labels=["route", "method", "status"])
        for (route, method, status), n in list(self.http.requests.items()):
            requests.add_metric([route, method, str(status)], float(n))
        yield requests
        yield _histogram("kahuna_http_request_duration_seconds", "HTTP request latency by route template",
                         ["route", "method"], self.http.latency)

    def _store(self):
        observed = find_observed(self.resources.store)
        if observed is None:
            return
        stats = observed.stats
        yield _histogram("kahuna_store_operation_duration_seconds",
                         "database operation latency (below the id cache)", ["operation", "collection"],
                         stats.latency)
        errors = CounterMetricFamily("kahuna_store_operation_errors",
                                     "database operations that raised, by exception class",
                                     labels=["operation", "collection", "error"])
        for (op, collection, error), n in list(stats.errors.items()):
            errors.add_metric([op, collection, error], float(n))
        yield errors
        cache = self.resources.store
        while cache is not None and not hasattr(cache, "hits"):
            cache = getattr(cache, "inner", None)
        if cache is not None:
            reads = CounterMetricFamily("kahuna_store_cache_reads", "reads by id through the cache",
                                        labels=["result"])
            reads.add_metric(["hit"], float(cache.hits))
            reads.add_metric(["miss"], float(cache.misses))
            yield reads

    def _hub(self):
        hub = self.resources.extras.get("hub")
        if hub is None:
            return
        stats = hub.stats
        agents = GaugeMetricFamily("kahuna_hub_connected_agents", "agents connected to this node")
        agents.add_metric([], float(len(hub.connected_ids())))
        yield agents
        sessions = GaugeMetricFamily("kahuna_hub_sessions", "connected agent sessions by agent type",
                                     labels=["type"])
        by_type = getattr(stats, "sessions_by_type", None)
        if by_type is not None:
            for agent_type, n in list(by_type.items()):
                sessions.add_metric([str(agent_type)], float(n))
        yield sessions
        handshakes = CounterMetricFamily("kahuna_hub_handshakes", "agent handshakes: accepted, or the refusal reason",
                                         labels=["result"])
        results = getattr(stats, "handshakes", None)
        if results is None:  # HubStats before its per-result counter: accepted + refused by reason
            results = {"accepted": getattr(stats, "registrations", 0), **dict(getattr(stats, "rejected", {}))}
        for result, n in list(results.items()):
            handshakes.add_metric([str(result)], float(n))
        yield handshakes
        calls = CounterMetricFamily("kahuna_hub_calls", "agent RPC calls by method and outcome",
                                    labels=["method", "outcome"])
        calls_by = getattr(stats, "calls_by", None)
        if calls_by is not None:
            for (method, outcome), n in list(calls_by.items()):
                calls.add_metric([str(method), str(outcome)], float(n))
        yield calls
        counts = getattr(stats, "call_latency_counts", None)
        # HubStats' module constant, found without importing the hub (a sibling package)
        bounds = getattr(sys.modules.get(type(stats).__module__), "LATENCY_BUCKETS", None)
        if counts is not None and bounds is not None:
            yield _histogram("kahuna_hub_call_duration_seconds", "agent RPC call latency", [], None,
                             buckets=bounds, counts=counts, total=getattr(stats, "call_latency_sum", 0.0))
        for name, attr, doc in (
                ("kahuna_hub_frames_received", "frames_in", "WebSocket frames received from agents"),
                ("kahuna_hub_frames_sent", "frames_out", "WebSocket frames sent to agents"),
                ("kahuna_hub_heartbeat_losses", "heartbeat_timeouts", "sessions ended by a missed pong"),
                ("kahuna_hub_backpressure_events", "backpressure_events",
                 "sends that found an agent's socket full and started buffering (a slow agent)"),
                ("kahuna_hub_send_buffer_overflows", "send_buffer_overflows",
                 "sessions ended because their send buffer passed its bound (a stalled agent)"),
                ("kahuna_hub_replaced_sessions", "replaced", "sessions replaced by a new connection of the same agent"),
                ("kahuna_hub_malformed_frames", "malformed_frames", "frames that did not decode")):
            value = getattr(stats, attr, None)
            if value is not None:
                yield CounterMetricFamily(name, doc, value=float(value))
        connections = getattr(stats, "connections", None)
        if connections is not None:
            yield GaugeMetricFamily("kahuna_hub_connections", "open hub TCP connections, handshaking ones included",
                                    value=float(connections))

    def _inventory(self):
        inventory = self.resources.extras.get("inventory")
        self.scrapes += 1
        up = GaugeMetricFamily("kowabunga_up", "1 when the inventory gauges are loaded and followed")
        up.add_metric([], 1.0 if inventory is not None and inventory.loaded else 0.0)
        yield up
        # upstream's exact series name (a Go counter has no _total suffix): exported untyped
        scrapes = Metric("kowabunga_total_scrapes", "scrapes of /metrics", "unknown")
        scrapes.add_sample("kowabunga_total_scrapes", {}, float(self.scrapes))
        yield scrapes
        depth = GaugeMetricFamily(OUTBOX_DEPTH, "mails queued, not sent yet")
        depth.add_metric([], float(inventory.outbox_depth() if inventory is not None else 0))
        yield depth
        samples = inventory.samples() if inventory is not None else {}
        for name, (doc, labels) in METRICS.items():
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            for values, value in samples.get(name, {}).items():
                family.add_metric(list(values), value)
            yield family


def _template(rule: str, memo: dict[str, str]) -> str:
    """Quart's `/api/v1/region/<regionId>` as the client writes it: `/api/v1/region/{regionId}`."""
    out = memo.get(rule)
    if out is None:
        out = memo[rule] = _RULE_PARAM.sub(r"{\1}", rule)
    return out


def count_requests(app) -> HttpStats:
    """Hook request counting into a Quart app: a perf_counter before, a dict increment and a
    bisect after (bench/api.py measures this on a bare app too, against the same app without).
    Registered before create_app's own hooks (installers run first), so the standby answer of a
    passive node and the request log are timed and counted too."""
    http = HttpStats()
    memo: dict[str, str] = {}
    clock = time.perf_counter

    @app.before_request
    async def _metrics_start():
        g.kahuna_metrics_t0 = clock()

    @app.after_request
    async def _metrics_count(response):
        rule = request.url_rule
        started = g.get("kahuna_metrics_t0")
        http.observe(_template(rule.rule, memo) if rule is not None else UNMATCHED, request.method,
                     response.status_code, clock() - started if started is not None else 0.0)
        return response

    return http


def install(table: RouteTable, *, resources) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(resources, count_requests(table.app)))

    async def metrics(principal):
        return Response(generate_latest(registry), status=200,
                        content_type="text/plain; version=0.0.4; charset=utf-8")

    table.add("/metrics", "GET", "public", metrics, name="metrics", prefix="")
