"""The README's testing example, as a complete file: save it as test_math.py and run

    python -m pip install "trioschedule[test]"     # pytest and pytest-trio
    python -m pytest test_math.py

``@pytest.mark.trio`` runs each test under Trio (or set ``trio_mode = true``
in your pytest configuration and drop the markers); ``autojump_clock`` makes
sleeps and timeouts take no real time.
"""

import pytest
import trio

from trioschedule import Dispatcher, Worker, task
from trioschedule.testing import open_cluster


class MathWorker(Worker):
    @task
    async def add(self, a, b):
        return a + b

    @task
    async def slow_add(self, a, b):
        await trio.sleep(60)  # no real time under autojump_clock
        return a + b


@pytest.mark.trio
async def test_add(autojump_clock):
    async with open_cluster(Dispatcher(), MathWorker()) as cluster:
        async with cluster.client() as client:
            assert await client.call("add", 1, 2) == 3


@pytest.mark.trio
async def test_a_killed_worker_costs_nothing(autojump_clock):
    first, second = MathWorker(name="first"), MathWorker(name="second")
    async with open_cluster(Dispatcher(session_grace=1), first, second) as cluster:
        async with cluster.client() as client:
            handles = [await client.submit("slow_add", [i, 1]) for i in range(4)]
            await trio.sleep(1)
            cluster.kill(first)  # as SIGKILL would: its tasks run again on the second worker
            assert [await handle.result() for handle in handles] == [1, 2, 3, 4]
