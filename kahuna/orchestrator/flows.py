"""Durable multi-step flows: ordered steps, each with an undo, progress kept in the store.

Why: creating a VM is a dozen agent calls (volumes, ISO, adapters, domain, DNS). When one fails,
or the client goes away, or Kahuna is killed, nothing may be left behind. So each step is first
*recorded* in a flow document (collection `flow`) with the data its undo needs — known before
the call, e.g. the image name — then run. On failure the recorded steps are undone in reverse,
under a cancel shield, and the original error (the agent's 502/503/504, a 507 quota) reaches the
client. On server start `recover` undoes every flow left `running` by a dead process: the undo
functions are looked up by name (`register_undo`) and must be idempotent (an image already gone
counts as deleted), since a step may have been recorded but never run, or run twice.

    async with Flow(res, "volume.create", doc_id) as flow:
        await flow.step("image", do=make_image, undo="volume.image", data={"pool": p, "image": i})
    # leaving the block normally marks the flow done (and drops its document)

Forward flows (a delete goes forward, not back): `start(resume=plan)` stores the plan — every
fact the work needs, read before anything goes — and the runner marks each step `mark_done` once
it is; `recover` then calls the function registered for the flow's kind (`register_resume`) with
the reloaded flow, which runs the steps not done yet. Those must be idempotent as well.

Flow document: {kind, target, state: running|undoing, steps: [{name, undo, data}], started_at}
(+ {mode: "resume", plan, done: [step names]} for forward flows).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import trio

from kahuna.logs import get_logger
from kahuna.store import errors as store_errors
from kahuna.store.base import delete_if_present, new_id

log = get_logger("kahuna.flows")

COLLECTION = "flow"
UNDO_TIMEOUT = 60.0  # bound on each undo call (shielded: it must not hang a cancelled request)

Undo = Callable[[Any, dict], Awaitable[None]]
_UNDOS: dict[str, Undo] = {}
Resume = Callable[[Any, "Flow"], Awaitable[None]]
_RESUMES: dict[str, Resume] = {}
_LIVE: set[str] = set()  # flows running in this process: never "recovered" under their feet
RETRY_SECONDS = 2.0
FIRST_RETRY = 0.1  # recover_loop's first retry after a round left flows (doubling to RETRY_SECONDS)


def register_undo(name: str, fn: Undo) -> Undo:
    """Declare an undo by name so that a restarted server can replay it from a flow document."""
    if name in _UNDOS and _UNDOS[name] is not fn:
        raise ValueError(f"undo {name!r} declared twice")
    _UNDOS[name] = fn
    return fn


def register_resume(kind: str, fn: Resume) -> Resume:
    """Declare how a restarted server finishes a forward flow of this kind."""
    if kind in _RESUMES and _RESUMES[kind] is not fn:
        raise ValueError(f"resume {kind!r} declared twice")
    _RESUMES[kind] = fn
    return fn


def undo(name: str):
    """Decorator form of `register_undo`."""
    def deco(fn: Undo) -> Undo:
        return register_undo(name, fn)
    return deco


class Flow:
    def __init__(self, res, kind: str, target: str = "") -> None:
        self.res = res
        self.kind = kind
        self.target = target
        self.id = new_id()
        self.steps: list[dict] = []
        self.plan: dict | None = None  # forward flows only
        self.done: list[str] = []
        self._started = False

    async def start(self, *, resume: dict | None = None) -> "Flow":
        """Store the flow. With `resume` (a plan), a forward flow: finished, never undone."""
        from kahuna.resources.service import utcnow  # the store's time precision
        if resume is not None and self.kind not in _RESUMES:
            raise ValueError(f"flow {self.kind!r} has no registered resume")
        doc = {"_id": self.id, "kind": self.kind, "target": self.target, "state": "running", "steps": [],
               "started_at": utcnow()}
        if resume is not None:
            self.plan = dict(resume)
            doc.update(mode="resume", plan=self.plan, done=[])
        with trio.CancelScope(shield=True):
            await self.res.store.insert(COLLECTION, doc)
        self._started = True
        _LIVE.add(self.id)
        return self

    @classmethod
    def loaded(cls, res, doc: dict) -> "Flow":
        """A stored flow, to go on with (recovery of a forward flow)."""
        flow = cls(res, doc.get("kind", ""), doc.get("target", ""))
        flow.id = doc["_id"]
        flow.steps = list(doc.get("steps") or [])
        flow.plan = doc.get("plan")
        flow.done = list(doc.get("done") or [])
        flow._started = True
        return flow

    def is_done(self, name: str) -> bool:
        return name in self.done

    async def mark_done(self, name: str) -> None:
        """A forward step is over: recovery will not run it again."""
        self.done.append(name)
        with trio.CancelScope(shield=True):
            await self.res.store.update_fields(COLLECTION, self.id, {"done": self.done})

    def release(self) -> None:
        """Hand a stored forward flow over to recovery (`recover_loop` finishes it)."""
        _LIVE.discard(self.id)

    async def step(self, name: str, do: Callable[..., Awaitable[Any]], *, undo: str | None = None,
                   data: dict | None = None) -> Any:
        """Record the step (with its undo's data), then run `do()`; answer what it answers."""
        if undo is not None and undo not in _UNDOS:
            raise ValueError(f"undo {undo!r} is not registered")
        if undo is not None:
            self.steps.append({"name": name, "undo": undo, "data": dict(data or {})})
            await self._save()
        return await do()

    async def record(self, name: str, *, undo: str, data: dict | None = None) -> None:
        """Record a step that already happened (a local store change such as a quota
        reservation): recorded after the fact, so a crash can never undo what was not done."""
        if undo not in _UNDOS:
            raise ValueError(f"undo {undo!r} is not registered")
        self.steps.append({"name": name, "undo": undo, "data": dict(data or {})})
        await self._save()

    async def remember(self, **data: Any) -> None:
        """Add facts learnt during the last step (an id the agent answered) to its undo data."""
        if self.steps:
            self.steps[-1]["data"].update(data)
            await self._save()

    async def finish(self) -> None:
        try:
            with trio.CancelScope(shield=True):
                await delete_if_present(self.res.store, COLLECTION, self.id)
        finally:
            _LIVE.discard(self.id)

    async def rollback(self) -> None:
        """Undo every recorded step in reverse; shielded, each undo bounded; then drop the flow.
        An undo that failed leaves the flow stored: `recover_loop` retries it."""
        try:
            with trio.CancelScope(shield=True):
                await _undo_steps(self.res, self.id, self.kind, self.steps)
        finally:
            _LIVE.discard(self.id)

    async def _save(self) -> None:
        with trio.CancelScope(shield=True):
            await self.res.store.update_fields(COLLECTION, self.id, {"steps": self.steps})

    async def __aenter__(self) -> "Flow":
        return await self.start()

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            await self.finish()
        else:
            log.warning("flow failed, undoing", flow=self.kind, target=self.target,
                        steps=[s["name"] for s in self.steps],
                        error=getattr(exc, "reason", None) or type(exc).__name__)
            await self.rollback()
        return False


async def _undo_steps(res, flow_id: str, kind: str, steps: list[dict]) -> bool:
    """True when every undo succeeded (the flow document is then dropped).

    A step whose undo succeeded is struck from the stored flow at once, so that a retry (another
    undo failed: its agent away) or a recovery after a crash mid-rollback runs only what is still
    to undo. Without that, the counters' undos (`project.usage`, `kaktus.usage`), which are
    deltas, would be applied again at every retry."""
    ok = True
    try:
        await res.store.update_fields(COLLECTION, flow_id, {"state": "undoing"})
    except store_errors.NotFound:
        pass
    remaining = list(steps)
    for index in range(len(steps) - 1, -1, -1):
        step = steps[index]
        fn = _UNDOS.get(step.get("undo") or "")
        if fn is None:
            log.error("flow step has no known undo", flow=kind, step=step.get("name"))
            ok = False
            continue
        try:
            with trio.fail_after(UNDO_TIMEOUT):
                await fn(res, step.get("data") or {})
        except Exception as exc:
            ok = False
            log.error("undo failed", flow=kind, step=step.get("name"),
                      error=getattr(exc, "reason", None) or repr(exc))
            continue
        del remaining[index]
        try:
            await res.store.update_fields(COLLECTION, flow_id, {"steps": remaining})
        except store_errors.NotFound:
            pass
    if ok:
        await delete_if_present(res.store, COLLECTION, flow_id)
    return ok


async def recover(res) -> int:
    """Undo the flows a dead process left unfinished; answer how many were recovered.

    Called by the server before its listeners accept requests (so no flow is running yet). A
    flow whose undo fails (an agent still away) stays stored and is retried at the next start."""
    flows = await res.store.find(COLLECTION, {}, sort="_id")
    done = 0
    for flow in flows:
        if flow["_id"] in _LIVE:
            continue
        if flow.get("mode") == "resume":
            if await _resume(res, flow):
                done += 1
            continue
        log.warning("recovering an unfinished flow", flow=flow.get("kind"), target=flow.get("target"),
                    steps=[s.get("name") for s in flow.get("steps") or ()])
        if await _undo_steps(res, flow["_id"], flow.get("kind", ""), flow.get("steps") or []):
            done += 1
    return done


async def _resume(res, doc: dict) -> bool:
    """Finish a forward flow; True when it is done (its document dropped)."""
    fn = _RESUMES.get(doc.get("kind", ""))
    if fn is None:
        log.error("forward flow has no known resume", flow=doc.get("kind"), target=doc.get("target"))
        return False
    log.warning("finishing an unfinished flow", flow=doc.get("kind"), target=doc.get("target"),
                done=list(doc.get("done") or ()))
    flow = Flow.loaded(res, doc)
    _LIVE.add(flow.id)  # not picked up twice meanwhile
    try:
        with trio.fail_after(UNDO_TIMEOUT):
            await fn(res, flow)
    except Exception as exc:
        log.error("flow not finished yet", flow=doc.get("kind"), target=doc.get("target"),
                  error=getattr(exc, "reason", None) or repr(exc))
        return False
    finally:
        _LIVE.discard(flow.id)
    await delete_if_present(res.store, COLLECTION, flow.id)
    return True


async def pending(res) -> int:
    """How many flows are stored but not running here (left by a dead process, or whose undo
    failed): 0 once everything is recovered."""
    flows = await res.store.find(COLLECTION, {}, sort="_id")
    return sum(1 for f in flows if f["_id"] not in _LIVE)


async def recover_loop(res, interval: float = RETRY_SECONDS, *,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Background task (while this node is active): recover at once, then retry the flows whose
    undo could not run yet (their agent not reconnected): soon at first (agents come back within
    a second of a restart), backing off to every `interval` seconds."""
    started = False
    delay = FIRST_RETRY
    while True:
        left = 0
        try:
            await recover(res)
            left = await pending(res)
        except Exception as exc:  # the store away: next round
            log.warning("flow recovery postponed", error=repr(exc))
        if not started:
            task_status.started()
            started = True
        if left:
            await trio.sleep(delay)
            delay = min(delay * 2, interval)
        else:
            delay = FIRST_RETRY
            await trio.sleep(interval)
