"""Task history over the in-memory cluster (mock clock): ``Client.tasks``, ``recent_failures`` in status."""

from __future__ import annotations

import pytest
import trio

from trioschedule import LocalProtocolError, TaskFailed
from trioschedule.cli import format_status
from trioschedule.testing import open_cluster

from ..conftest import MathWorker, OtherWorker, quick_dispatcher


async def test_recent_outcomes_and_failures_reach_an_admin(autojump_clock):
    async with open_cluster(quick_dispatcher(history=5), MathWorker(name="math-1")) as cluster:
        async with cluster.client(role="admin") as admin:
            for i in range(6):
                assert await admin.call("add", i, 1) == i + 1
            with pytest.raises(TaskFailed):
                await admin.call("fail", "it broke\non two lines")
            recent = await admin.tasks(limit=100)
            assert len(recent) == 5  # bounded by history=5, newest first
            assert [e["status"] for e in recent] == ["error", "ok", "ok", "ok", "ok"]
            assert recent[1]["args"] == "5, 1" and recent[1]["worker"] == "math-1"
            (failure,) = await admin.tasks(failed=True)
            assert failure["name"] == "fail" and failure["error"]["type"] == "ValueError"
            assert failure["submitted_at"] <= failure["finished_at"]
            status = await admin.status()
            assert [e["id"] for e in status["recent_failures"]] == [failure["id"]]
            table = format_status(status)
            assert f"{failure['id']}  fail  error: ValueError: it broke on two lines" in table
            assert len(await admin.tasks(limit=2)) == 2


async def test_unfinished_tasks_are_listed_by_state(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker(name="math-1")) as cluster:
        async with cluster.client(role="admin") as admin:
            running = await admin.submit("sleep", args=[100])
            waiting = await admin.submit("other")  # nobody offers it: queued, waiting
            await trio.sleep(1)
            entries = {e["id"]: e for e in await admin.tasks(unfinished=True)}
            assert entries[running.id]["state"] == "running" and entries[running.id]["worker"] == "math-1"
            assert entries[waiting.id]["state"] == "queued" and entries[waiting.id]["waiting_for_worker"]
            assert len(await admin.tasks(unfinished=True, limit=1)) == 1
            await running.cancel()
            await waiting.cancel()
            await trio.sleep(1)  # the running one ends once its worker acknowledges
            cancelled = await admin.tasks(failed=True)
            assert {e["id"] for e in cancelled} == {running.id, waiting.id}
            assert {e["status"] for e in cancelled} == {"cancelled"}


async def test_history_off_keeps_nothing_and_clients_may_not_ask(autojump_clock):
    async with open_cluster(quick_dispatcher(history=0), OtherWorker()) as cluster:
        async with cluster.client(role="admin") as admin:
            assert await admin.call("other") == "other"
            assert await admin.tasks() == []
            assert (await admin.status())["recent_failures"] == []
        async with cluster.client() as client:
            with trio.fail_after(5), pytest.raises(LocalProtocolError, match="cannot send 'tasks' as client"):
                await client.tasks()
