"""Schedules on a shared PostgreSQL store: they live in the database and fire from the leader only,
each fire time at most once across a failover (docs/SCHEDULES.md, docs/HA.md).

Real parts: a real PostgreSQL server (tests/postgres.py), real sockets, real time (the lease lives on
the database's clock).  Runs are told apart by their task ids, ``sched:<name>:<fire time UTC>``.
"""

from __future__ import annotations

import itertools
from datetime import datetime

import psycopg
import pytest
import trio

from tests.processes import wait_for
from trioschedule import Dispatcher, Worker, open_client, task

pytestmark = pytest.mark.postgresql

LEASE = 1.5


class Recording(Dispatcher):
    """Records ``(its name, task id)`` of every run it saw end, in a list the test shares between dispatchers."""

    def __init__(self, url: str, ended: list[tuple[str, str]], name: str, **kwargs) -> None:
        super().__init__("127.0.0.1", 0, store=url, name=name, lease_ttl=LEASE, session_grace=5.0, **kwargs)
        self.ended = ended

    async def on_task_done(self, task_id, name, outcome) -> None:
        if task_id.startswith("sched:"):
            self.ended.append((self.name, task_id))


class Ticker(Worker):
    @task
    async def tick(self) -> str:
        return "tick"


def fire_time(task_id: str) -> float:
    return datetime.fromisoformat(task_id.split(":", 2)[2].replace("Z", "+00:00")).timestamp()


async def serve(d: Dispatcher, ended: list, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    try:
        await d.serve(task_status=task_status)
    except Exception as exc:  # noqa: BLE001  (a step-down; the test looks at it)
        ended.append(exc)
    else:
        ended.append(None)


def check_runs(runs: list[tuple[str, str]]) -> list[float]:
    """Every run id ended once, on one dispatcher; the fire times, whole seconds apart, in order."""
    ids = [task_id for _, task_id in runs]
    assert len(ids) == len(set(ids)), sorted(ids)
    times = sorted(fire_time(task_id) for task_id in ids)
    assert all(b - a >= 1 and b - a == int(b - a) for a, b in itertools.pairwise(times)), times
    return times


@pytest.mark.parametrize("failover", ["clean stop", "lease lost"])
async def test_a_schedule_fires_from_the_leader_only_and_no_fire_time_twice_across_a_failover(postgres_url, failover):
    runs: list[tuple[str, str]] = []
    a, b = Recording(postgres_url, runs, "a"), Recording(postgres_url, runs, "b")
    ended_a: list = []
    ended_b: list = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port_a = await nursery.start(serve, a, ended_a)
            await wait_for(lambda: a.leading, timeout=10)
            port_b = await nursery.start(serve, b, ended_b)
            addresses = [f"127.0.0.1:{port_b}", f"127.0.0.1:{port_a}"]  # the standby first: redirected
            nursery.start_soon(Ticker(addresses=addresses, heartbeat_interval=0.5, heartbeat_timeout=3.0).run)
            async with open_client(addresses=addresses, role="admin") as admin:
                entry = await admin.add_schedule("beat", "tick", every=1)
            assert entry["name"] == "beat" and entry["next_run"].endswith("Z")

            await wait_for(lambda: len(runs) >= 3, timeout=15)
            assert {who for who, _ in runs} == {"a"}  # the standby fires nothing
            assert b.schedules() == [] and b.status()["ha"]["role"] == "standby"
            with psycopg.connect(postgres_url) as conn:  # the schedule lives in the database
                [(record,)] = conn.execute("SELECT record FROM trioschedule_schedules").fetchall()
            assert record["name"] == "beat"

            if failover == "clean stop":
                a.stop(grace=2.0)
            else:  # a's renewals fail (the lease row is locked), so it steps down by itself
                blocker = psycopg.connect(postgres_url)
                blocker.execute("SELECT * FROM trioschedule_lease FOR UPDATE")
                await wait_for(lambda: not a.leading, timeout=LEASE * 4)
                blocker.rollback()
                blocker.close()
            await wait_for(lambda: ended_a, timeout=20)
            await wait_for(lambda: b.leading, timeout=LEASE * 6)
            by_a = len(runs)

            # The new leader has the schedule from the database and carries it on.
            await wait_for(lambda: sum(who == "b" for who, _ in runs) >= 3, timeout=20)
            [entry] = b.schedules()
            assert entry["name"] == "beat" and entry["task"] == "tick" and not entry["paused"]
            times = check_runs(runs)
            # Counters continue from the journaled record; a run may be in flight as we look.
            assert len(runs) <= entry["runs"] <= len(runs) + 1, (entry, len(runs))
            # Fire times missed during the failover became one catch-up run (coalesce latest), never more.
            assert all(fire_time(task_id) > max(times[:by_a]) for who, task_id in runs if who == "b")

            async with open_client(addresses=addresses, role="admin") as admin:
                listed = {e["name"]: e for e in await admin.schedules()}
            assert listed["beat"]["runs"] >= entry["runs"]
            nursery.cancel_scope.cancel()
    assert ended_a and (ended_a[0] is None if failover == "clean stop" else ended_a[0] is not None)
