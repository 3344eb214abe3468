"""`global.metadata.legacyHeaders: false`: upstream's source-IP headers are refused, tokens work."""

from __future__ import annotations

import pytest

from kahuna.auth.instance_tokens import instance_token
from kahuna.store.base import new_id
from tests.kahuna_proc import Kahuna, write_config
from tests.metadata.helpers import conn, get
from tests.metadata.test_metadata import SECRET, insert


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory):
    work = tmp_path_factory.mktemp("kahuna-metadata-strict")
    config = write_config(work / "kahuna.yml", work / "data", serverSecret=SECRET,
                          metadata={"legacyHeaders": False})
    with Kahuna(work, config) as k:
        yield k


def test_only_tokens_when_legacy_headers_are_off(kahuna):
    doc = {"_id": new_id(), "name": "vm", "local_ip": "127.0.0.33", "metadata_generation": 0, "vcpus": 1,
           "memory": 1 << 30}
    insert(kahuna, "instance", [doc])
    status, body, _ = get(conn(kahuna, "127.0.0.33"),
                          {"X-Kowabunga-Instance-Id": doc["_id"], "X-Kowabunga-Source-Ip": "127.0.0.33"})
    assert status == 401 and "disabled" in body["reason"]
    status, body, _ = get(conn(kahuna, "127.0.0.33"), {
        "X-Kowabunga-Instance-Id": doc["_id"],
        "X-Kowabunga-Instance-Token": instance_token(SECRET, doc["_id"], 0)})
    assert status == 200 and body["local-hostname"] == "vm" and body["mem_gb"] == 1
