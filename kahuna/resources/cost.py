"""Monthly prices, upstream's formulas (upstream-tenant §1.4), computed from what exists now.

- A zone's unit prices: the mean over its Kaktuses of `cpu_cost.price / (threads × CPU overcommit)`
  and `memory_cost.price / (floor(RAM GiB) × memory overcommit)` (kahuna.resources.compute's
  `virtual_resources`). A Kaktus whose capabilities are not known yet (0 threads / 0 GiB) has
  no unit price and is left out of the mean (upstream divided by zero).
- An instance: `vcpus × zone vCPU price + floor(memory / GiB) × zone memory price`.
- A region's storage price: the mean over its pools of `cost.price / floor(capacity GiB)` (pools
  with an unknown capacity left out); a volume: `floor(size / GiB) × region storage price`.
- A project: the sum over its instances and volumes, found by indexed queries on `project_id`
  at the time of the request — exact under concurrent creates and deletes, since no running
  total is kept to drift. The currency is the last summed item's (upstream), EUR by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kahuna.resources.compute import virtual_resources
from kahuna.resources.errors import NotFoundError
from kahuna.resources.kind import get_kind

GiB = 1 << 30
DEFAULT_CURRENCY = "EUR"

Doc = dict[str, Any]


@dataclass(frozen=True)
class ZonePrices:
    vcpu: float = 0.0
    memory_gb: float = 0.0
    currency: str = ""


@dataclass(frozen=True)
class StoragePrice:
    gb: float = 0.0
    currency: str = ""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def zone_prices_of(kaktuses: list[Doc]) -> ZonePrices:
    """Pure: the zone's unit prices from its Kaktus documents."""
    vcpu, mem, currency = [], [], ""
    for kaktus in kaktuses:
        virt = virtual_resources(kaktus)
        if virt["vcpu"]["count"]:
            vcpu.append(virt["vcpu"]["price"])
            currency = currency or virt["vcpu"]["currency"]
        if virt["vmem_gb"]["count"]:
            mem.append(virt["vmem_gb"]["price"])
            currency = currency or virt["vmem_gb"]["currency"]
    return ZonePrices(_mean(vcpu), _mean(mem), currency)


def storage_price_of(pools: list[Doc]) -> StoragePrice:
    """Pure: the region's price of one GiB-month from its storage pool documents."""
    prices, currency = [], ""
    for pool in pools:
        capacity_gb = int(pool.get("capacity") or 0) // GiB
        if capacity_gb:
            cost = pool.get("cost") or {}
            prices.append(float(cost.get("price") or 0.0) / capacity_gb)
            currency = currency or str(cost.get("currency") or "")
    return StoragePrice(_mean(prices), currency)


def instance_price(instance: Doc, prices: ZonePrices) -> float:
    return int(instance.get("vcpus") or 0) * prices.vcpu + int(instance.get("memory") or 0) // GiB * prices.memory_gb


def volume_price(volume: Doc, price: StoragePrice) -> float:
    return int(volume.get("size") or 0) // GiB * price.gb


def _cost(price: float, currency: str) -> Doc:
    return {"price": float(price), "currency": currency or DEFAULT_CURRENCY}


async def zone_prices(res, zone_id: str) -> ZonePrices:
    return zone_prices_of(await res.store.find(get_kind("kaktus").collection, {"zone_id": zone_id})
                          if zone_id else [])


async def storage_price(res, region_id: str) -> StoragePrice:
    return storage_price_of(await res.store.find(get_kind("pool").collection, {"region_id": region_id})
                            if region_id else [])


async def instance_cost(res, instance: Doc) -> Doc:
    """`{price, currency}` of an instance (the 0.58 `Cost`)."""
    prices = await zone_prices(res, instance.get("zone_id") or "")
    return _cost(instance_price(instance, prices), prices.currency)


async def volume_cost(res, volume: Doc) -> Doc:
    price = await storage_price(res, await _volume_region(res, volume))
    return _cost(volume_price(volume, price), price.currency)


async def _volume_region(res, volume: Doc) -> str:
    if volume.get("region_id"):
        return volume["region_id"]
    try:  # a volume known only by its pool
        return (await res.get("pool", volume.get("storage_pool_id") or ""))["region_id"]
    except (NotFoundError, KeyError):
        return ""


async def project_cost(res, project_id: str) -> Doc:
    """The project's monthly cost from its current instances and volumes."""
    total, currency = 0.0, ""
    zones: dict[str, ZonePrices] = {}
    regions: dict[str, StoragePrice] = {}
    for instance in await res.store.find(get_kind("instance").collection, {"project_id": project_id}, sort="_id"):
        zone_id = instance.get("zone_id") or ""
        if zone_id not in zones:
            zones[zone_id] = await zone_prices(res, zone_id)
        total += instance_price(instance, zones[zone_id])
        currency = zones[zone_id].currency or currency
    for volume in await res.store.find(get_kind("volume").collection, {"project_id": project_id}, sort="_id"):
        if volume.get("type") == "template":
            continue
        region_id = await _volume_region(res, volume)
        if region_id not in regions:
            regions[region_id] = await storage_price(res, region_id)
        total += volume_price(volume, regions[region_id])
        currency = regions[region_id].currency or currency
    return _cost(total, currency)
