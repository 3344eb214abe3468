"""Crash-test helpers of the compute tests: requests run in threads while Kahuna is killed with
SIGKILL, then restarted with its simulated agents dialling its new hub port."""

from __future__ import annotations

import signal
import threading


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


def kill_and_restart(kahuna, sims, threads) -> None:
    """SIGKILL, the sims' faults cleared, the requests' threads joined, Kahuna started again and
    the sims pointed at its new hub port."""
    kahuna.proc.send_signal(signal.SIGKILL)
    kahuna.proc.wait(10)
    for sim in sims:
        sim.faults.clear()
    for t in threads:
        t.join(30)
    kahuna.start()
    for sim in sims:
        sim.start(f"ws://127.0.0.1:{kahuna.hub_port}/ws")
