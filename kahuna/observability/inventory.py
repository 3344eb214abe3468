"""Upstream's `kowabunga_*` gauges (reference/upstream-tenant.md §11), kept current from the writes.

Upstream rebuilds them from the database every 30 minutes and never deletes a series. Here every
document of a watched collection *contributes* a few `(metric, labels, value)` terms, computed
from that document alone when the store writes it (`written`, `deleted`: the ObservedStore's
listener interface); a series is the sum of its contributors' terms and disappears with its last
contributor. So a scrape touches no database, a deleted object's series go at once, and counts
(`kowabunga_project_instances`, `kowabunga_virtual_networks`, public subnet IPs) are sums of 1s.

Labels that are other objects' names (a Kaktus's zone, an instance's project) are kept as
references `(kind, id)` and resolved at scrape time from the names this inventory also tracks,
so renaming a zone relabels its Kaktus series without touching them. Links that never change
(a subnet's vnet, its CIDR, a vnet's region and privacy) are resolved when the child is seen.
The whole state is loaded once from the store (`load`) when the node starts serving (single) or
becomes active (pair), and dropped when it turns passive: a passive writes nothing, so it could
not keep them current.

Departures (said in the README): storage pool series are summed per region (upstream's
last-pool-wins quirk); `kowabunga_instance_settings`' `os` is the instance document's `os` field
("" when unknown); public subnet IPs: usable hosts (no network/broadcast), reserved = the
reserved and gateway-pool ranges, allocated = adapter addresses, free = the rest.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Any, Iterable, Iterator

import trio

from kahuna.logs import get_logger

log = get_logger("kahuna.metrics")
LOAD_RETRY_SECONDS = 5.0

Doc = dict[str, Any]
Ref = tuple[str, str]  # (kind, id): a label value resolved to that object's name at scrape time
Term = tuple[str, tuple[Any, ...], float]

# metric -> (help, label names); the order of the exposition
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "kowabunga_regions": ("1 per region", ("name",)),
    "kowabunga_zones": ("1 per zone", ("name",)),
    "kowabunga_kaktus_allocated_vcpus": ("vCPUs allocated on a Kaktus", ("zone", "name")),
    "kowabunga_kaktus_allocated_memory_bytes": ("memory allocated on a Kaktus", ("zone", "name")),
    "kowabunga_kaktus_instances": ("instances on a Kaktus", ("zone", "name")),
    "kowabunga_kaktus_cost": ("a Kaktus's CPU + memory cost", ("zone", "name", "currency")),
    "kowabunga_storage_pools_allocated_bytes": ("bytes allocated in a region's storage pools", ("region",)),
    "kowabunga_storage_pools_free_bytes": ("bytes free in a region's storage pools", ("region",)),
    "kowabunga_storage_pools_capacity_bytes": ("capacity of a region's storage pools", ("region",)),
    "kowabunga_storage_pools_cost": ("cost of a region's storage pools", ("region", "currency")),
    "kowabunga_virtual_networks": ("virtual networks of a region", ("region", "type")),
    "kowabunga_private_subnets": ("private subnets by prefix length", ("region", "netmask", "type")),
    "kowabunga_public_subnets_ips": ("addresses in public subnets", ("region", "netmask", "type")),
    "kowabunga_projects": ("1 per project", ("name",)),
    "kowabunga_project_instances": ("instances of a project", ("name",)),
    "kowabunga_project_volumes": ("volumes of a project", ("name",)),
    "kowabunga_project_allocated_vcpus": ("vCPUs a project uses", ("name",)),
    "kowabunga_project_allocated_memory_bytes": ("memory a project uses", ("name",)),
    "kowabunga_project_allocated_storage_bytes": ("storage a project uses", ("name",)),
    "kowabunga_project_estimated_cost": ("a project's estimated cost", ("name", "currency")),
    "kowabunga_instance_settings": ("1 per instance", ("name", "project", "os", "ip")),
    "kowabunga_instance_allocated_vcpus": ("vCPUs of an instance", ("name", "project")),
    "kowabunga_instance_allocated_memory_bytes": ("memory of an instance", ("name", "project")),
    "kowabunga_instance_estimated_cost": ("an instance's estimated cost", ("name", "project", "currency")),
}

OUTBOX_DEPTH = "kahuna_mail_outbox_depth"
NAMED = ("region", "zone", "project")  # kinds whose names other series use as labels
# load order: a child's immutable links are resolved from its parent's entry
COLLECTIONS = ("region", "zone", "kaktus", "storage_pool", "vnet", "subnet", "adapter", "project",
               "volume", "instance", "mail_outbox")


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _get(doc: Doc, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def _range_size(r: Any) -> int:
    try:
        return max(0, int(ipaddress.IPv4Address(r["last"])) - int(ipaddress.IPv4Address(r["first"])) + 1)
    except (KeyError, TypeError, ValueError):
        return 0


class Inventory:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.terms: dict[tuple[str, str], list[Term]] = {}
        self.series: dict[tuple[str, tuple[Any, ...]], list[float]] = {}  # -> [sum, contributors]
        self.names: dict[Ref, str] = {}
        self.vnets: dict[str, tuple[str, bool]] = {}  # id -> (region id, private)
        self.subnets: dict[str, tuple[str, str, bool]] = {}  # id -> (region id, netmask, public)
        self.loaded = False
        self._gone: set[tuple[str, str]] | None = None  # deleted while a load reads

    async def load(self, store) -> None:
        """Read every watched collection once (at start, or on becoming active). A document
        deleted while the load reads its collection is not brought back by what was read."""
        self.clear()
        self._gone = set()
        try:
            for collection in COLLECTIONS:
                for doc in await store.find(collection, {}):
                    if (collection, str(doc.get("_id"))) not in self._gone:
                        self.written(collection, doc)
        finally:
            self._gone = None
        self.loaded = True

    async def run(self, store, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """While this node is active (kahuna.ha `while_active`): load, then follow the writes;
        cleared when cancelled (turned passive). A failed load is retried."""
        task_status.started()
        try:
            while True:
                try:
                    await self.load(store)
                    break
                except Exception as exc:
                    log.warning("metrics inventory not loaded yet", error=str(exc))
                    await trio.sleep(LOAD_RETRY_SECONDS)
            await trio.sleep_forever()
        finally:
            self.clear()

    # -- the ObservedStore listener interface ---------------------------------------------------

    def written(self, collection: str, doc: Doc) -> None:
        terms = _TERMS.get(collection)
        if terms is None:
            return
        doc_id = str(doc.get("_id"))
        self._drop((collection, doc_id))
        new = list(terms(self, doc_id, doc))
        if new:
            self.terms[(collection, doc_id)] = new
            for metric, labels, value in new:
                entry = self.series.setdefault((metric, labels), [0.0, 0])
                entry[0] += value
                entry[1] += 1

    def deleted(self, collection: str, doc_id: str) -> None:
        if collection not in _TERMS:
            return
        if self._gone is not None:
            self._gone.add((collection, str(doc_id)))
        self._drop((collection, str(doc_id)))
        if collection in NAMED:  # their collections are named after the kind
            self.names.pop((collection, str(doc_id)), None)
        elif collection == "vnet":
            self.vnets.pop(str(doc_id), None)
        elif collection == "subnet":
            self.subnets.pop(str(doc_id), None)

    def _drop(self, key: tuple[str, str]) -> None:
        for metric, labels, value in self.terms.pop(key, ()):
            entry = self.series[(metric, labels)]
            entry[0] -= value
            entry[1] -= 1
            if entry[1] <= 0:
                del self.series[(metric, labels)]

    # -- scrape ---------------------------------------------------------------------------------

    def samples(self) -> dict[str, dict[tuple[str, ...], float]]:
        """metric -> {resolved label values: value}; references to unknown objects are skipped."""
        out: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
        for (metric, labels), (value, _) in self.series.items():
            resolved = []
            for label in labels:
                if isinstance(label, tuple):
                    label = self.names.get(label)
                    if label is None:
                        break
                resolved.append(str(label))
            else:
                key = tuple(resolved)
                bucket = out[metric]
                bucket[key] = bucket.get(key, 0.0) + value
        return out

    def outbox_depth(self) -> int:
        entry = self.series.get((OUTBOX_DEPTH, ()))
        return int(entry[0]) if entry else 0


# -- what each document contributes ---------------------------------------------------------------

def _named(kind: str, metric: str):
    def terms(inv: Inventory, doc_id: str, doc: Doc) -> Iterator[Term]:
        inv.names[(kind, doc_id)] = str(doc.get("name", ""))
        yield metric, ((kind, doc_id),), 1.0
    return terms


def _kaktus(inv: Inventory, doc_id: str, doc: Doc) -> Iterator[Term]:
    labels = (("zone", str(doc.get("zone_id"))), str(doc.get("name", "")))
    usage = doc.get("usage") or {}
    yield "kowabunga_kaktus_allocated_vcpus", labels, _num(usage.get("vcpus"))
    yield "kowabunga_kaktus_allocated_memory_bytes", labels, _num(usage.get("memory"))
    yield "kowabunga_kaktus_instances", labels, _num(usage.get("instances"))
    currency = str(_get(doc, "costs.cpu.currency") or "")
    yield ("kowabunga_kaktus_cost", labels + (currency,),
           _num(_get(doc, "costs.cpu.price")) + _num(_get(doc, "costs.memory.price")))


def _pool(inv: Inventory, doc_id: str, doc: Doc) -> Iterator[Term]:
    region = ("region", str(doc.get("region_id")))
    yield "kowabunga_storage_pools_allocated_bytes", (region,), _num(doc.get("allocation"))
    yield "kowabunga_storage_pools_free_bytes", (region,), _num(doc.get("available"))
    yield "kowabunga_storage_pools_capacity_bytes", (region,), _num(doc.get("capacity"))
    yield ("kowabunga_storage_pools_cost", (region, str(_get(doc, "cost.currency") or "")),
           _num(_get(doc, "cost.price")))


def _vnet(inv: Inventory, doc_id: str, doc: Doc) -> Iterator[Term]:
    region_id, private = str(doc.get("region_id")), doc.get("private", True) is not False
    inv.vnets[doc_id] = (region_id, private)
    yield "kowabunga_virtual_networks", (("region", region_id), "private" if private else "public"), 1.0


def _subnet(inv: Inventory, doc_id: str, doc: Doc) -> Iterator[Term]:
    vnet = inv.vnets.get(str(doc.get("vnet_id")))
    try:
        network = ipaddress.IPv4Network(str(doc.get("cidr")), strict=False)
    except ValueError:
        return
    if vnet is None:
        return
    region_id, private = vnet
    netmask = str(network.prefixlen)
    inv.subnets[doc_id] = (region_id, netmask, not private)
    region = ("region", region_id)
    if private:
        yield ("kowabunga_private_subnets", (region, netmask, "allocated" if doc.get("project_id") else "free"),
               1.0)
        return
    usable = max(0, network.num_addresses - 2)
    reserved = sum(_range_size(r) for r in (doc.get("reserved_ranges") or []) + (doc.get("gw_pool") or []))
    reserved = min(reserved, usable)
    yield "kowabunga_public_subnets_ips", (region, netmask, "reserved"), float(reserved)
    yield "kowabunga_public_subnets_ips", (region, netmask, "allocated"), 0.0
    yield "kowabunga_public_subnets_ips", (region, netmask, "free"), float(usable - reserved)


def _adapter(inv: Inventory, doc_id: str, doc: Doc) -> Iterator[Term]:
    subnet = inv.subnets.get(str(doc.get("subnet_id")))
    if subnet is None or not subnet[2]:
        return
    region_id, netmask, _ = subnet
    n = float(len(doc.get("addresses") or []))
    yield "kowabunga_public_subnets_ips", (("region", region_id), netmask, "allocated"), n
    yield "kowabunga_public_subnets_ips", (("region", region_id), netmask, "free"), -n


def _project(inv: Inventory, doc_id: str, doc: Doc) -> Iterator[Term]:
    inv.names[("project", doc_id)] = str(doc.get("name", ""))
    name = (("project", doc_id),)
    usage = doc.get("usage") or {}
    cost = doc.get("cost") or {}
    yield "kowabunga_projects", name, 1.0
    yield "kowabunga_project_instances", name, 0.0  # instances and volumes add their 1s
    yield "kowabunga_project_volumes", name, 0.0
    yield "kowabunga_project_allocated_vcpus", name, _num(usage.get("vcpus"))
    yield "kowabunga_project_allocated_memory_bytes", name, _num(usage.get("memory"))
    yield "kowabunga_project_allocated_storage_bytes", name, _num(usage.get("storage"))
    yield "kowabunga_project_estimated_cost", name + (str(cost.get("currency") or "EUR"),), _num(cost.get("price"))


def _volume(inv: Inventory, doc_id: str, doc: Doc) -> Iterator[Term]:
    if doc.get("project_id"):
        yield "kowabunga_project_volumes", (("project", str(doc["project_id"])),), 1.0


def _instance(inv: Inventory, doc_id: str, doc: Doc) -> Iterator[Term]:
    project = ("project", str(doc.get("project_id")))
    name = str(doc.get("name", ""))
    cost = doc.get("cost") or {}
    yield "kowabunga_project_instances", (project,), 1.0
    yield ("kowabunga_instance_settings", (name, project, str(doc.get("os") or ""), str(doc.get("local_ip") or "")),
           1.0)
    yield "kowabunga_instance_allocated_vcpus", (name, project), _num(doc.get("vcpus"))
    yield "kowabunga_instance_allocated_memory_bytes", (name, project), _num(doc.get("memory"))
    yield ("kowabunga_instance_estimated_cost", (name, project, str(cost.get("currency") or "EUR")),
           _num(cost.get("price")))


def _mail(inv: Inventory, doc_id: str, doc: Doc) -> Iterable[Term]:
    return ((OUTBOX_DEPTH, (), 1.0),)


_TERMS = {
    "region": _named("region", "kowabunga_regions"),
    "zone": _named("zone", "kowabunga_zones"),
    "kaktus": _kaktus,
    "storage_pool": _pool,
    "vnet": _vnet,
    "subnet": _subnet,
    "adapter": _adapter,
    "project": _project,
    "volume": _volume,
    "instance": _instance,
    "mail_outbox": _mail,
}
