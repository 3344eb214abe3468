"""`python -m agent.sim` as a process: faults from flags, state in a JSON file, and a Kontroller
booted from an ISO file."""

import json
import signal
import sys
from pathlib import Path

import pytest
import trio
import yaml

from kahuna.hub import AgentError
from tests.hub.conftest import KAKTUS, KEY, KONTROLLER, wait_until
from tests.sim.conftest import appliance_files, build_cidata

ROOT = Path(__file__).resolve().parents[2]


async def spawn(*args):
    return await trio.lowlevel.open_process([sys.executable, "-m", "agent.sim", *args], cwd=ROOT)


async def stop(proc):
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        assert await proc.wait() == 0


def read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


async def test_kaktus_process_with_faults_and_a_state_file(hub, tmp_path):
    config = tmp_path / "kaktus.yml"
    config.write_text(yaml.safe_dump({"global": {"id": KAKTUS, "apiKey": KEY, "endpoint": hub.url},
                                      "sim": {"pools": {"ssd": 10 * 2**30}, "autoCreatePools": False}}))
    state = tmp_path / "state.json"
    proc = await spawn("kaktus", "-c", str(config), "--state", str(state),
                       "--fault", "CreateRawVolume=fail:rbd: ret=-5, Input/output error",
                       "--fault", "GetVolumeInfos=delay:0.1")
    try:
        await wait_until(lambda: hub.hub.is_connected(KAKTUS), timeout=20)
        with pytest.raises(AgentError, match="Input/output error"):
            await hub.hub.call(KAKTUS, "CreateRawVolume", {"Pool": "ssd", "Volume": "v", "Size": 1})
        await hub.hub.call(KAKTUS, "CreateIsoVolume", {"Pool": "ssd", "Volume": "ci", "Size": 3,
                                                       "Content": "YWJj"})
        doc = read_state(state)
        assert doc["pools"]["ssd"]["images"]["ci"]["kind"] == "iso" and "v" not in doc["pools"]["ssd"]["images"]
        assert [c[0] for c in doc["calls"]][-2:] == ["CreateRawVolume", "CreateIsoVolume"]
        assert doc["calls"][-2][2].startswith("error: rbd")
    finally:
        await stop(proc)


async def test_kontroller_process_boots_from_an_iso_file(hub, tmp_path):
    iso = tmp_path / "cidata.iso"
    iso.write_bytes(build_cidata(appliance_files(KONTROLLER, KEY, hub.url, "http://127.0.0.1:9/latest/meta-data")))
    state = tmp_path / "kontroller.json"
    proc = await spawn("kontroller", "--iso", str(iso), "--state", str(state))
    try:
        await wait_until(lambda: hub.hub.is_connected(KONTROLLER), timeout=20)
        with pytest.raises(AgentError, match="metadata"):      # nothing listens on port 9
            await hub.hub.call(KONTROLLER, "Kontroller.Reload", {})
        await wait_until(lambda: read_state(state).get("errors"), timeout=5)
    finally:
        await stop(proc)
