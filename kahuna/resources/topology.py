"""Regions and their availability zones (upstream schema v2: collections `region`, `zone`)."""

from kahuna.resources.kind import Access, Kind, Parent, base_fields, register
from kahuna.resources.types import Field, Str

# Every authenticated user may read regions and zones (upstream fixed this in 0.62.2): they need
# them to choose where to create their resources.
READ_ALL = Access(read="authenticated")

REGION = register(Kind(
    name="region",
    fields=base_fields() + (
        # required by the 0.58 client's Region model; shown as "" for upstream documents without it
        Field("domain", Str(max_len=253), required=True),
    ),
    access=READ_ALL,
))

ZONE = register(Kind(
    name="zone",
    fields=base_fields(),
    parent=Parent("region", "region_id"),
    access=READ_ALL,
))
