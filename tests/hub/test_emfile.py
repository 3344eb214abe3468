"""Out of file descriptors: accept() fails with EMFILE; the hub refuses politely and serves on.

Run as its own process (`python -m kahuna.hub`, the bench hub) with a low RLIMIT_NOFILE, so the
test process keeps its descriptors.
"""

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import trio

from agent.sdk import key_headers
from tests.hub.rawagent import RawAgent, Rejected

ROOT = Path(__file__).resolve().parents[2]


def bench_key(agent_id: str) -> str:
    return hashlib.sha256(b"key:" + agent_id.encode()).hexdigest()


def get_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
        return json.loads(resp.read())


async def test_accept_out_of_descriptors_is_survived(nursery):
    proc = subprocess.Popen([sys.executable, "-m", "kahuna.hub", "--listen", "127.0.0.1:0",
                             "--ctl", "127.0.0.1:0", "--nofile", "40"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(15):
            info = json.loads(await trio.to_thread.run_sync(proc.stdout.readline))
        port, ctl = info["hub"][1], info["ctl"][1]
        accepted, refused, failed = [], [], []

        async def connect(i):
            agent_id = f"{i:024x}"
            try:
                agent = await RawAgent.connect(nursery, port, key_headers("Kaktus", agent_id, bench_key(agent_id)),
                                               timeout=4)
                await agent.answer_capabilities(timeout=4)
                accepted.append(agent)
            except Rejected as exc:
                refused.append(exc.status)
            except (trio.TooSlowError, OSError, trio.BrokenResourceError) as exc:
                failed.append(repr(exc))

        async with trio.open_nursery() as n:
            for i in range(70):
                n.start_soon(connect, i)
        assert proc.poll() is None
        assert accepted and refused, (len(accepted), refused, failed)
        assert set(refused) == {503}
        assert len(accepted) + len(refused) + len(failed) == 70

        for agent in accepted:          # descriptors come back: the hub serves again
            await agent.aclose()
        agent_id = "f" * 24
        with trio.fail_after(10):
            while True:             # the hub may not have seen every close yet
                try:
                    late = await RawAgent.connect(nursery, port, key_headers("Kaktus", agent_id, bench_key(agent_id)))
                    break
                except Rejected as exc:
                    refused.append(exc.status)
                    await trio.sleep(0.2)
        await late.answer_capabilities()
        stats = await trio.to_thread.run_sync(get_stats, ctl)
        while stats["registered"] != 1:
            await trio.sleep(0.05)
            stats = await trio.to_thread.run_sync(get_stats, ctl)
        assert stats["rejected"]["accept_too_many_files"] >= 1
        assert stats["rejected"]["refused_busy"] == len(refused) and set(refused) == {503}
        await late.aclose()
        proc.terminate()
        assert await trio.to_thread.run_sync(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
