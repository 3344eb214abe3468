"""The drill's client side (run inside the client namespace): an API writer and agent prober
through the VIP. One JSON line per event on stdout; stops when the stop file appears (bounded).

    python -m tests.ha.drill_client write URL STOPFILE MAXSECONDS AGENT_ID...
    python -m tests.ha.drill_client names URL
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

KEY = "test-master-key-" + "x" * 48


def call(url, method="GET", body=None, timeout=2.0):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except Exception:
        return 0, None


def out(**event):
    print(json.dumps({"t": time.monotonic(), **event}), flush=True)


def write(url, stop, max_seconds, agents):
    end = time.monotonic() + float(max_seconds)
    last_probe = 0.0
    while time.monotonic() < end and not os.path.exists(stop):
        name = "w-" + uuid.uuid4().hex[:10]
        status, _ = call(url + "/api/v1/region", "POST", {"name": name, "description": "drill", "domain": "d.example"})
        out(kind="write", name=name, status=status)
        if time.monotonic() - last_probe > 0.3:
            last_probe = time.monotonic()
            connected = 0
            for agent_id in agents:
                status, body = call(url + f"/api/v1/agent/{agent_id}/status", timeout=1.0)
                connected += bool(status == 200 and body and body.get("connected"))
            out(kind="agents", connected=connected, total=len(agents))
        time.sleep(0.05)


def names(url):
    status, ids = call(url + "/api/v1/region", timeout=10)
    assert status == 200, status
    found = []
    for i in ids:
        status, body = call(url + f"/api/v1/region/{i}", timeout=10)
        found.append(body["name"])
    print(json.dumps(found))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        names(sys.argv[2])
