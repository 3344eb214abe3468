"""Crash-test helpers of the compute tests: requests run in threads while Kahuna is killed with
SIGKILL, then restarted with its simulated agents dialling its new hub port."""

from __future__ import annotations

import signal
import sqlite3
import threading

from tests.infra.helpers import http


def in_thread(fn, *args) -> threading.Thread:
    """`fn(*args)` in a started thread; its failure (the daemon killed under it) is expected."""
    def run():
        try:
            fn(*args)
        except Exception:
            pass
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def kill_and_restart(kahuna, sims, threads, *, while_down=None) -> None:
    """SIGKILL, the sims' faults cleared, the requests' threads joined, `while_down()` (checks of
    what the dead process left), Kahuna started again and the sims pointed at its new hub port."""
    kahuna.proc.send_signal(signal.SIGKILL)
    kahuna.proc.wait(10)
    for sim in sims:
        sim.faults.clear()
    for t in threads:
        t.join(30)
    if while_down is not None:
        while_down()
    kahuna.start()
    for sim in sims:
        sim.start(f"ws://127.0.0.1:{kahuna.hub_port}/ws")


def stored_count(kahuna, collection: str) -> int:
    """Documents of `collection` in the daemon's embedded store (read-only, beside the daemon)."""
    conn = sqlite3.connect(f"file:{kahuna.workdir / 'data' / 'kahuna.sqlite3'}?mode=ro", uri=True)
    try:
        return conn.execute(f'SELECT count(*) FROM "{collection}"').fetchone()[0]
    except sqlite3.OperationalError:  # the collection was never written
        return 0
    finally:
        conn.close()


def storage_usage(kahuna, world) -> int:
    """The world project's storage usage, as the API answers it."""
    status, body = http(kahuna, "GET", f"/project/{world['project']}/usage")
    assert status == 200, body
    return body["storage"]
