"""A stopping worker, as the dispatcher sees it."""

from __future__ import annotations

import trio

from trioschedule import Dispatcher, Worker, task
from trioschedule.testing import open_cluster


async def test_a_draining_worker_shows_as_draining_even_with_nothing_to_hand_back(autojump_clock):
    """Issue 16, point 10: a stopping worker tells the dispatcher, prefetched tasks or not."""
    class Sleeper(Worker):
        @task
        async def nap(self):
            await trio.sleep(30)
            return "rested"

    worker = Sleeper(blocked_warning=None)
    dispatcher = Dispatcher()
    async with open_cluster(dispatcher, worker) as cluster, cluster.client() as client:
        handle = await client.submit("nap")
        await trio.sleep(1)
        worker.stop()
        await trio.sleep(1)
        [described] = dispatcher.status()["workers"]
        assert described["draining"], described
        assert await handle.result() == "rested"
