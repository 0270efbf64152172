"""Testing your own tasks with trioschedule.testing: no sockets, no real time.

    python -m pytest examples/test_example.py
"""

from __future__ import annotations

import pytest
import trio

from trioschedule import Dispatcher, TaskTimeout, Worker, task
from trioschedule.testing import open_cluster


class Billing(Worker):
    @task
    async def charge(self, amount):
        await trio.sleep(2)  # takes no real time under autojump_clock
        return {"charged": amount}


@pytest.mark.trio
async def test_charge(autojump_clock):
    async with open_cluster(Dispatcher(), Billing()) as cluster, cluster.client() as client:
        assert await client.call("charge", 10) == {"charged": 10}


@pytest.mark.trio
async def test_charge_survives_a_killed_worker(autojump_clock):
    first, second = Billing(name="first"), Billing(name="second")
    async with open_cluster(Dispatcher(session_grace=1), first) as cluster, cluster.client() as client:
        handle = await client.submit("charge", [5])
        await trio.sleep(1)
        await cluster.start_worker(second)
        cluster.kill(first)  # mid-task, as SIGKILL would
        assert await handle.result() == {"charged": 5}


@pytest.mark.trio
async def test_charge_deadline(autojump_clock):
    async with open_cluster(Dispatcher(), Billing()) as cluster, cluster.client() as client:
        with pytest.raises(TaskTimeout):
            await (await client.submit("charge", [1], timeout=1)).result()
