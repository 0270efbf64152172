"""Schedules on several dispatchers sharing one PostgreSQL database (issue 17, docs/HA.md, docs/SCHEDULES.md).

Real parts: a real PostgreSQL server, real sockets, real time (the lease lives on
the database's clock).  A worker and a client know both dispatchers; an
``every=1`` schedule is added on the leader, the leader goes (a clean hand-over,
or a lease it can no longer renew), and the standby takes the schedule over from
the database.  Every run is counted in the worker and every fire time's task id
``sched:<name>:<fire time>`` must have run at most once across both dispatchers.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio

from tests.dispatcher.test_leadership import dispatcher, serve
from tests.postgres import journal_rows
from tests.processes import wait_for
from trioschedule import Worker, open_client, task
from trioschedule._worker import runner as runner_module

pytestmark = pytest.mark.postgresql


class Beat(Worker):
    runs: list[str] = []
    started: list[str] = []

    @task
    async def beat(self, label: str) -> str:
        Beat.runs.append(label)
        return label


@pytest.fixture(autouse=True)
def _record_task_ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every task id the worker starts, as it starts it (the task function is not told its id)."""
    started: list[str] = []
    original = runner_module.TaskRunner._run

    async def recording(self: Any, running: Any, announce: bool = True) -> None:
        started.append(running.spec.id)
        await original(self, running, announce)

    monkeypatch.setattr(runner_module.TaskRunner, "_run", recording)
    Beat.started = started
    return started


def sched_rows(url: str) -> list[str]:
    """The schedule runs the journal holds (its change log applied, as a recovery would)."""
    rows = journal_rows(url, "SELECT id FROM trioschedule_tasks WHERE id LIKE 'sched:%%' ORDER BY id")
    return [str(row[0]) for row in rows]


async def _failover(url: str, *, clean: bool) -> None:
    Beat.runs = []
    a, b = dispatcher(url, lease_ttl=2.0), dispatcher(url, lease_ttl=2.0)
    ended_a: list[Any] = []
    ended_b: list[Any] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port_a = await nursery.start(serve, a, ended_a)
            await wait_for(lambda: a.leading, timeout=10)
            port_b = await nursery.start(serve, b, ended_b)
            addresses = [f"127.0.0.1:{port_b}", f"127.0.0.1:{port_a}"]  # the standby first: it redirects
            worker = Beat(addresses=addresses, heartbeat_interval=0.5, heartbeat_timeout=4.0, reconnect_max=0.2,
                          blocked_warning=None)
            nursery.start_soon(worker.run)
            async with open_client(addresses=addresses, role="admin") as client:
                await client.add_schedule("pulse", "beat", ["x"], every=1)
            await trio.sleep(4)
            assert b.status()["ha"]["role"] == "standby"
            assert b.schedules() == []  # a standby holds no schedules and fires nothing
            before = next(s for s in a.schedules() if s["name"] == "pulse")
            assert before["runs"] >= 2, before
            blocker = None
            if clean:
                a.stop(grace=0.5)
            else:  # the lease row locked: a's renewals fail and it steps down by itself, no clean stop
                blocker = psycopg.connect(url)
                blocker.execute("SELECT * FROM trioschedule_lease FOR UPDATE")
                await wait_for(lambda: not a.leading, timeout=10)
                await wait_for(lambda: ended_a, timeout=20)
                blocker.rollback()
                blocker.close()
            await wait_for(lambda: ended_a, timeout=20)
            runs_at_handover = len(Beat.runs)
            await wait_for(lambda: b.leading, timeout=20)
            await trio.sleep(4)
            after = next(s for s in b.schedules() if s["name"] == "pulse")  # restored from the database
            assert after["runs"] > before["runs"], (before, after)  # counters continue, not restarted
            assert len(Beat.runs) > runs_at_handover  # the new leader fires it
            assert not after["paused"]
            started = list(Beat.started)  # before reading the database: a task reaches a worker only once journaled
            ids = sched_rows(url)
            assert all(i.startswith("sched:pulse:") for i in ids), ids
            # At most once per fire time: every run the worker did has its own task id, never twice.
            assert len(started) == len(set(started)), sorted(started)  # no fire time twice
            assert set(started) <= set(ids), (sorted(set(started) - set(ids)), ids)  # nothing ran that was not journaled
            assert len(ids) == len(set(ids))
            last = [r["task_id"] for r in after["last_runs"]]
            assert len(last) == len(set(last)), last
            if not clean:
                # The lease expired before b took over (>= 2 s with no leader): the fire times missed meanwhile
                # were coalesced (latest, the default) into one catch-up run and counted as misfired.
                assert after["misfired"] >= 1, after
            # A fire time whose run the old leader had recorded but could no longer journal shows as "unknown"
            # and is never run again (at most once); there is at most one such, the one in flight.
            assert sum(r["status"] == "unknown" for r in after["last_runs"]) <= 1, after["last_runs"]
            nursery.cancel_scope.cancel()


async def test_a_schedule_continues_on_the_standby_after_a_clean_hand_over(postgres_url):
    await _failover(postgres_url, clean=True)


async def test_a_schedule_continues_once_per_fire_time_after_the_leader_loses_its_lease(postgres_url):
    await _failover(postgres_url, clean=False)


async def test_schedule_commands_given_both_addresses_reach_the_leader_through_the_standby(postgres_url):
    """``schedule add/list A,B`` with the standby first: its redirect leads the command to the leader."""
    import json

    from tests.processes import cli, env

    a, b = dispatcher(postgres_url, lease_ttl=2.0), dispatcher(postgres_url, lease_ttl=2.0)
    ended_a: list[Any] = []
    ended_b: list[Any] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port_a = await nursery.start(serve, a, ended_a)
            await wait_for(lambda: a.leading, timeout=10)
            port_b = await nursery.start(serve, b, ended_b)
            both = f"127.0.0.1:{port_b},127.0.0.1:{port_a}"  # the standby first
            added = await trio.run_process(cli("schedule", "add", both, "nightly", "beat", "x", "--cron", "0 2 * * *"),
                                           env=env(), capture_stdout=True, capture_stderr=True, check=False)
            assert added.returncode == 0, added.stderr
            listed = await trio.run_process(cli("schedule", "list", both, "--json"), env=env(), capture_stdout=True,
                                            capture_stderr=True, check=False)
            assert listed.returncode == 0, listed.stderr
            entries = json.loads(listed.stdout)
            entries = entries["schedules"] if isinstance(entries, dict) else entries
            assert [(e["name"], e["task"], e["paused"]) for e in entries] == [("nightly", "beat", False)]
            assert entries[0]["next_run"].endswith("T02:00:00Z")
            assert [s["name"] for s in a.schedules()] == ["nightly"] and b.schedules() == []
            nursery.cancel_scope.cancel()
