"""``Worker(max_tasks=, max_memory=)``: a worker that retires drains first, and the dispatcher loses nothing."""

from __future__ import annotations

import collections

import pytest
import trio

from trioschedule import Dispatcher, Worker, task
from trioschedule.testing import open_cluster


class Counter(Worker):
    @task
    async def who(self, i):
        await trio.sleep(0.01)
        return self.name


async def test_max_tasks_runs_at_most_n_then_drains_and_returns(autojump_clock):
    retiring = Counter(name="retiring", max_tasks=7, blocked_warning=None)
    steady = Counter(name="steady", blocked_warning=None)
    dispatcher = Dispatcher()
    async with open_cluster(dispatcher, retiring, steady) as cluster, cluster.client() as client:
        with trio.fail_after(60):
            names = await client.map("who", [(i,) for i in range(100)])
        await trio.sleep(2)  # it looks once a second
        ran = collections.Counter(names)
        assert 1 <= ran["retiring"] <= 7 and ran["retiring"] + ran["steady"] == 100, ran
        assert retiring.retired == "ran its 7 task(s) (max_tasks)"
        assert steady.retired is None
        status = dispatcher.status()
        assert (status["tasks"]["done"], status["tasks"]["lost"], status["tasks"]["failed"]) == (100, 0, 0)


async def test_max_memory_retires_a_worker_that_outgrew_it(autojump_clock):
    worker = Counter(name="small", max_memory=1, blocked_warning=None)  # 1 MiB: any Python process is over it
    async with open_cluster(Dispatcher(), worker) as cluster, cluster.client() as client:
        await trio.sleep(3)
        assert worker.retired is None, "a worker that has run nothing has not grown: it stays"
        with trio.fail_after(30):
            assert await client.call("who", 1) == "small"
            while worker.retired is None:
                await trio.sleep(0.5)
        assert worker.retired.startswith("uses ") and "over max_memory 1 MiB" in worker.retired


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_tasks"):
        Counter(max_tasks=0)
    with pytest.raises(ValueError, match="max_memory"):
        Counter(max_memory=0)
