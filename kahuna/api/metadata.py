"""GET /latest/meta-data: an instance reads its own profile (issue 10).

Registered with the "public" rule (no user or agent credentials) because the caller is a
virtual machine; identification is this module's job (`kahuna.metadata.identify`). Order of
checks, each cheap before the next: per-address request bucket, per-address failure bucket (a
scanner of guessed ids exhausts it within a few dozen requests), identification, per-instance
bucket, then the profile built from current state.
"""

from __future__ import annotations

from quart import request

from kahuna.api.routes import json_response
from kahuna.api.session import client_address
from kahuna.metadata import identify, profile
from kahuna.metadata.throttle import Buckets
from kahuna.resources.errors import DomainError, TooManyRequests, Unavailable
from kahuna.store import errors as store_errors

# A boot storm of 300 instances behind one NAT address reading ~3 times each is 900 requests:
# the per-address burst holds it. Failed identifications are what a scanner produces.
PER_ADDRESS = dict(rate=100.0, burst=1500.0)
FAILURES_PER_ADDRESS = dict(rate=1.0, burst=50.0)
PER_INSTANCE = dict(rate=2.0, burst=30.0)


def install(table, *, resources, server_secret: str) -> None:
    config = resources.config
    legacy = config.metadata_legacy_headers
    per_address = Buckets(**PER_ADDRESS)
    failures = Buckets(**FAILURES_PER_ADDRESS)
    per_instance = Buckets(**PER_INSTANCE)

    def throttled(wait: int, what: str) -> TooManyRequests:
        return TooManyRequests(f"too many metadata requests {what}; retry in {wait} s", retry_after=wait)

    async def meta_data(principal):
        source = client_address(config.trusted_proxies)
        address = identify.strip_port(source)
        wait = per_address.take(address) or failures.retry_after(address)
        if wait:
            raise throttled(wait, "from this address")
        try:
            caller = await identify.identify(resources.store, server_secret, request.headers, source,
                                             legacy_headers=legacy)
            wait = per_instance.take(str(caller.instance["_id"]))
            if wait:
                raise throttled(wait, "for this instance")
            body = await profile.build(resources, caller.instance, server_secret=server_secret)
        except DomainError as exc:
            if exc.status in (401, 403):
                failures.take(address)
            raise
        except store_errors.Unavailable as exc:
            raise Unavailable(f"database unavailable: {exc}") from None
        return json_response(body, 200)

    table.add("/latest/meta-data", "GET", "public", meta_data, name="metadata", prefix="")
