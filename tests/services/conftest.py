"""Fixtures of the services tests: one real Kahuna per module (embedded store, mail to a sink so
that users can be confirmed, a short agent call timeout) and simulated agents as processes."""

from __future__ import annotations

import pytest

from agent.sim.harness import SimHost
from tests.conftest import make_client
from tests.infra.conftest import sims  # noqa: F401  (simulated agents as processes, stopped at module end)
from tests.infra.helpers import tenant_kahuna
from tests.services import appliance_world
from tests.smtp_sink import SmtpSink


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    # no document cache: tests.services.helpers.give_private_subnet writes into the store
    with tenant_kahuna(tmp_path_factory, smtp_sink, "services") as k:
        yield k


@pytest.fixture(scope="package")
def appliance_stack(tmp_path_factory):
    """One Kahuna, its mail sink and the in-process simulated agents shared by the Kawaii and
    Konvey modules (the world costs more to build than their tests take), with their world
    (tests.services.appliance_world.build). A module restarting the Kahuna keeps the object."""
    sink = SmtpSink().start()
    try:
        with tenant_kahuna(tmp_path_factory, sink, "appliances") as k, SimHost() as host:
            with make_client(k) as admin:
                world = appliance_world.build(k, admin, sink, host)
            yield k, world
    finally:
        sink.stop()
