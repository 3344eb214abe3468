"""An acknowledged write to the embedded store survives SIGKILL, and a kill never leaves half a
document behind.

A child process inserts in a tight loop and prints each `_id` only after `insert` returned; we
SIGKILL it mid-burst, reopen the file, and check every acknowledged document is there, whole.
The same with many concurrent writers, whose inserts the store commits in groups (one
transaction, one fsync for several writes): an ack still means that write's group committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from kahuna.store.embedded import EmbeddedStore

ROOT = Path(__file__).resolve().parents[2]
ACKS_BEFORE_KILL = 300
PAYLOAD = "x" * 2048  # several rows per page, so a torn write would show

CHILD = r"""
import itertools, sys, trio
from kahuna.store.embedded import EmbeddedStore

async def main(path, payload, writers):
    store = EmbeddedStore(path)
    await store.open()
    seqs = itertools.count()

    async def writer():
        while True:
            seq = next(seqs)
            doc = await store.insert(
                "burst",
                {"seq": seq, "payload": payload, "nested": {"seq": seq, "ok": True}, "tags": [seq, str(seq)]},
            )
            sys.stdout.write(f"{doc['_id']} {seq}\n")
            sys.stdout.flush()

    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)

trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


def intact(doc: dict, seq: int | None = None) -> bool:
    s = doc.get("seq")
    return (
        set(doc) == {"_id", "seq", "payload", "nested", "tags"}
        and isinstance(s, int)
        and (seq is None or s == seq)
        and doc["payload"] == PAYLOAD
        and doc["nested"] == {"seq": s, "ok": True}
        and doc["tags"] == [s, str(s)]
    )


@pytest.mark.parametrize("writers", [1, 16])
async def test_acknowledged_inserts_survive_sigkill(tmp_path: Path, writers: int):
    path = tmp_path / "crash.sqlite3"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD, str(path), PAYLOAD, str(writers)], stdout=subprocess.PIPE, cwd=ROOT, env=env
    )
    out = b""
    try:
        with trio.fail_after(40):
            while out.count(b"\n") < ACKS_BEFORE_KILL:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"child exited early with {await proc.wait()}"
                out += chunk
            proc.send_signal(signal.SIGKILL)  # mid-burst: it is inserting as fast as it can
            assert await proc.wait() == -signal.SIGKILL
            while chunk := await proc.stdout.receive_some():  # acks printed before the kill
                out += chunk
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    complete = out[: out.rfind(b"\n") + 1].decode().splitlines()  # a torn last line is no ack
    acked = {doc_id: int(seq) for doc_id, seq in (line.split() for line in complete)}
    assert len(acked) >= ACKS_BEFORE_KILL
    assert len(set(acked.values())) == len(acked)
    if writers == 1:
        assert sorted(acked.values()) == list(range(len(acked)))

    store = EmbeddedStore(path)
    await store.open()
    try:
        for doc_id, seq in acked.items():
            assert intact(await store.get("burst", doc_id), seq), doc_id
        everything = await store.find("burst")
        assert all(intact(doc) for doc in everything), "a partial document survived the kill"
        # at most one insert per writer committed whose ack the kill swallowed
        assert len(acked) <= len(everything) <= len(acked) + writers
    finally:
        await store.close()
