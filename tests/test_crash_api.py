"""SIGKILL during a burst of API writes: every acknowledged write survives, nothing is partial."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import urllib3

from tests.kahuna_proc import MASTER_KEY, Kahuna, write_config

HEADERS = {"X-API-Key": MASTER_KEY, "Content-Type": "application/json"}


def _writer(api: str, worker: int, stop_at: float) -> list[str]:
    acked = []
    pool = urllib3.PoolManager(retries=False, timeout=5)
    i = 0
    while time.monotonic() < stop_at:
        body = {"name": f"w{worker}-{i}", "description": "x" * 512, "domain": f"w{worker}-{i}.acme.com"}
        try:
            resp = pool.request("POST", api + "/region", body=json.dumps(body), headers=HEADERS)
        except Exception:
            break  # the server died under us: this write was not acknowledged
        if resp.status == 201:
            acked.append(json.loads(resp.data)["id"])
        i += 1
    return acked


def test_sigkill_during_write_burst_loses_no_acknowledged_write(tmp_path):
    config = write_config(tmp_path / "k.yml", tmp_path / "data")
    k = Kahuna(tmp_path, config).start()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_writer, k.api, w, time.monotonic() + 20) for w in range(4)]
        time.sleep(1.5)
        k.proc.send_signal(signal.SIGKILL)
        k.proc.wait(10)
        acked = [i for f in futures for i in f.result()]
    assert len(acked) > 20, "the burst did not get going before the kill"

    with Kahuna(tmp_path, config) as k2:
        http = urllib3.PoolManager()
        ids = json.loads(http.request("GET", k2.api + "/region", headers=HEADERS).data)
        assert set(acked) <= set(ids)
        for region_id in ids:
            resp = http.request("GET", k2.api + f"/region/{region_id}", headers=HEADERS)
            region = json.loads(resp.data)
            assert resp.status == 200
            assert region["name"].startswith("w") and region["description"] == "x" * 512
            assert region["domain"] == region["name"] + ".acme.com"
