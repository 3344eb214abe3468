"""Project usage stays exact under concurrency, through the official client, a real daemon and a
simulated Kaktus: parallel volume creates and deletes (with project updates racing them, which
replace the whole project document) leave usage equal to what exists and no image behind; and
parallel creates at the quota's edge stop exactly there, the refused ones answering 507 with the
dimension, the limit and the usage."""

from __future__ import annotations

import concurrent.futures
import random
import threading

import kowabunga
from kowabunga.exceptions import ApiException

from agent.sim.model import GiB
from tests.infra.helpers import unique


def _volumes(admin, world, project) -> list:
    volumes = kowabunga.VolumeApi(admin)
    ids = kowabunga.ProjectApi(admin).list_project_region_volumes(project, world["region"])
    return [volumes.read_volume(i) for i in ids]


def _create(admin, world, project, size):
    return kowabunga.ProjectApi(admin).create_project_region_volume(project, world["region"], kowabunga.Volume(
        name=unique("v"), type="raw", size=size), pool_id=world["pool"])


def test_usage_exact_under_parallel_creates_deletes_and_project_updates(admin, world):
    project = world["project"]
    projects = kowabunga.ProjectApi(admin)
    projects.update_project(project, kowabunga.ProjectUpdate(quotas=kowabunga.ProjectResources(storage=0)))
    before = {v.id for v in _volumes(admin, world, project)}
    images_before = set(world["kaktus"].images("ssd"))
    rng = random.Random(8)
    created: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def create(i):
        vol = _create(admin, world, project, rng.choice((1, 2, 3)) * GiB + i)
        with lock:
            created.append(vol.id)

    def delete_one():
        with lock:
            victim = created.pop(0) if created else None
        if victim:
            kowabunga.VolumeApi(admin).delete_volume(victim)

    def churn_project():  # whole-document replaces racing the usage counters
        n = 0
        while not stop.is_set():
            projects.update_project(project, kowabunga.ProjectUpdate(description=f"churn {n}"))
            n += 1

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        churn = pool.submit(churn_project)
        jobs = [pool.submit(create, i) for i in range(24)]
        jobs += [pool.submit(delete_one) for _ in range(12)]
        for job in jobs:
            job.result()
        stop.set()
        churn.result()

    existing = [v for v in _volumes(admin, world, project) if v.id not in before]
    assert {v.id for v in existing} == set(created) and len(existing) >= 12
    usage = projects.read_project_usage(project)
    assert usage.storage == sum(v.size for v in _volumes(admin, world, project))
    # nothing leaked on the hypervisor either: one image per remaining volume
    assert len(set(world["kaktus"].images("ssd")) - images_before) == len(existing)
    for vol in existing:
        kowabunga.VolumeApi(admin).delete_volume(vol.id)
    assert projects.read_project_usage(project).storage == sum(v.size for v in _volumes(admin, world, project))


def test_parallel_creates_stop_exactly_at_the_quota(admin, world):
    project = world["other"]
    projects = kowabunga.ProjectApi(admin)
    assert projects.read_project_usage(project).storage == 0
    projects.update_project(project, kowabunga.ProjectUpdate(quotas=kowabunga.ProjectResources(storage=10 * GiB)))

    def create(_):
        try:
            return _create(admin, world, project, 2 * GiB).id
        except ApiException as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(create, range(8)))
    made = [g for g in got if isinstance(g, str)]
    refused = [g for g in got if not isinstance(g, str)]
    assert len(made) == 5 and len(refused) == 3
    for exc in refused:
        assert exc.status == 507
        assert "storage" in exc.body and str(10 * GiB) in exc.body and "usage" in exc.body
    assert projects.read_project_usage(project).storage == 10 * GiB

    # deletes and creates racing at the edge: never above the quota, always what exists
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        deletes = [pool.submit(kowabunga.VolumeApi(admin).delete_volume, v) for v in made[:2]]
        creates = [pool.submit(create, i) for i in range(4)]
        for job in deletes:
            job.result()
        outcomes = [job.result() for job in creates]
    assert all(isinstance(o, str) or o.status == 507 for o in outcomes)
    sizes = sum(v.size for v in _volumes(admin, world, project))
    assert projects.read_project_usage(project).storage == sizes <= 10 * GiB
    for vol in _volumes(admin, world, project):
        kowabunga.VolumeApi(admin).delete_volume(vol.id)
    assert projects.read_project_usage(project).storage == 0
