"""Fixtures shared by the whole suite: a real Kahuna process and the official client."""

from __future__ import annotations

import kowabunga
import pytest

from tests.kahuna_proc import MASTER_KEY, Kahuna, write_config
from tests.nx_server import nx_server
from tests.smtp_sink import SmtpSink


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory):
    """One Kahuna (embedded store) per test module, on free ports, stopped with SIGTERM."""
    work = tmp_path_factory.mktemp("kahuna")
    config = write_config(work / "kahuna.yml", work / "data")
    with Kahuna(work, config) as k:
        yield k


@pytest.fixture(scope="module")
def smtp_sink():
    """A real SMTP server (aiosmtpd) per test module; tests read what Kahuna mailed to it."""
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module", params=["embedded", "mongo"])
def kahuna_on_each_store(request, tmp_path_factory):
    """One Kahuna per test module and store backend: embedded, then MongoDB over real TCP
    (an nx-27017 wire server). Modules opt in with `kahuna = kahuna_on_each_store`."""
    work = tmp_path_factory.mktemp(f"kahuna-{request.param}")
    if request.param == "embedded":
        config = write_config(work / "kahuna.yml", work / "data")
        with Kahuna(work, config) as k:
            yield k
        return
    with nx_server() as nx:
        config = write_config(work / "kahuna.yml", work / "data",
                              db={"uri": nx.uri, "name": "kahuna_test"})
        with Kahuna(work, config) as k:
            yield k


def make_client(kahuna: Kahuna, *, api_key: str | None = MASTER_KEY, token: str | None = None):
    cfg = kowabunga.Configuration(host=kahuna.api)
    if api_key:
        cfg.api_key["ApiKeyAuth"] = api_key
    if token:
        cfg.access_token = token
    return kowabunga.ApiClient(cfg)


@pytest.fixture(scope="module")
def admin(kahuna):
    """The official client authenticated with the master API key."""
    with make_client(kahuna) as client:
        yield client
