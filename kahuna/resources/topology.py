"""Regions and their availability zones (upstream schema v2: collections `region`, `zone`)."""

from kahuna.resources.kind import Access, Hooks, Kind, Parent, base_fields, register
from kahuna.resources.types import Field, Str

# Every authenticated user may read regions and zones (upstream fixed this in 0.62.2): they need
# them to choose where to create their resources.
READ_ALL = Access(read="authenticated")


async def _region_after_update(res, old, new, **_):
    """A new domain: the region's DNS records follow it on its Kiwis (kahuna.orchestrator.dns)."""
    dns = res.extras.get("dns")
    if dns is not None and old.get("domain") != new.get("domain"):
        await dns.region_domain_changed(res, new)


REGION = register(Kind(
    name="region",
    fields=base_fields() + (
        # required by the 0.58 client's Region model; shown as "" for upstream documents without it
        Field("domain", Str(max_len=253), required=True),
    ),
    access=READ_ALL,
    hooks=Hooks(after_update=_region_after_update),
))

ZONE = register(Kind(
    name="zone",
    fields=base_fields(),
    parent=Parent("region", "region_id"),
    access=READ_ALL,
))
