"""Retries a task asks for, end to end over the in-memory cluster (mock clock).

``Retry(after=S)`` runs the task again S seconds later; ``retry_delay``
replaces the backoff; a ``time_limit`` attempt is retried on timeout only
with ``retry_on_timeout=True``.
"""

from __future__ import annotations

import pytest
import trio

from trioschedule import Retry, TaskFailed, TaskTimeout, Worker, task
from trioschedule.testing import open_cluster

from ..conftest import quick_dispatcher


class FlakyWorker(Worker):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.runs: dict[str, list[float]] = {}

    def _ran(self, name: str) -> int:
        self.runs.setdefault(name, []).append(trio.current_time())
        return len(self.runs[name])

    @task(retries=1)
    async def rate_limited(self, x):
        if self._ran("rate_limited") == 1:
            raise Retry(after=5, reason="rate limited")
        return x * 2

    @task
    async def asks_without_retries(self):
        self._ran("asks_without_retries")
        raise Retry(after=1)

    @task(retries=1, retry_delay=4)
    async def fixed_delay(self):
        if self._ran("fixed_delay") == 1:
            raise ValueError("first time")
        return "ok"

    @task(retries=2, time_limit=1, retry_on_timeout=True)
    async def sometimes_slow(self):
        if self._ran("sometimes_slow") == 1:
            await trio.sleep(60)
        return "fast this time"

    @task(retries=5, time_limit=1, retry_on_timeout=True, retry_delay=0.25)
    async def never_fast(self):
        self._ran("never_fast")
        await trio.sleep(60)

    @task(retries=2, time_limit=1)
    async def always_slow(self):
        self._ran("always_slow")
        await trio.sleep(60)


async def test_a_task_that_raises_retry_runs_again_that_much_later_and_succeeds(autojump_clock):
    worker = FlakyWorker()
    async with open_cluster(quick_dispatcher(), worker) as cluster, cluster.client() as client:
        assert await client.call("rate_limited", 21) == 42
        first, second = worker.runs["rate_limited"]
        assert second - first == pytest.approx(5.0, abs=0.05)  # exactly the delay asked for: no backoff, no jitter


async def test_retry_counts_against_the_retries(autojump_clock):
    worker = FlakyWorker()
    async with open_cluster(quick_dispatcher(), worker) as cluster, cluster.client() as client:
        with pytest.raises(TaskFailed) as info:
            await client.call("asks_without_retries")
        assert info.value.remote_type == "Retry" and len(worker.runs["asks_without_retries"]) == 1


async def test_retry_delay_replaces_the_backoff(autojump_clock):
    worker = FlakyWorker()
    async with open_cluster(quick_dispatcher(), worker) as cluster, cluster.client() as client:
        assert await client.call("fixed_delay") == "ok"
        first, second = worker.runs["fixed_delay"]
        assert second - first == pytest.approx(4.0, abs=0.05)


async def test_a_time_limited_attempt_is_retried_on_timeout_when_the_task_opts_in(autojump_clock):
    worker = FlakyWorker()
    async with open_cluster(quick_dispatcher(), worker) as cluster, cluster.client() as client:
        assert await client.call("sometimes_slow") == "fast this time"
        assert len(worker.runs["sometimes_slow"]) == 2
        with pytest.raises(TaskTimeout):  # no opt-in: the first timeout ends it
            await client.call("always_slow")
        assert len(worker.runs["always_slow"]) == 1


async def test_retry_on_timeout_stops_at_the_tasks_deadline(autojump_clock):
    worker = FlakyWorker()
    async with open_cluster(quick_dispatcher(), worker) as cluster, cluster.client() as client:
        start = trio.current_time()
        handle = await client.submit("never_fast", timeout=2.6)  # room for two 1 s attempts and part of a third
        with pytest.raises(TaskTimeout):
            await handle.result()
        assert trio.current_time() - start == pytest.approx(2.6, abs=0.1)
        assert len(worker.runs["never_fast"]) == 3  # 0 s, 1.25 s, 2.5 s: the third stopped by the deadline


def test_the_options_are_checked_where_the_task_is_declared():
    with pytest.raises(ValueError, match="time_limit"):
        task(retry_on_timeout=True)
    with pytest.raises(ValueError, match="time_limit"):
        task(time_limit=0)
    with pytest.raises(ValueError, match="retry_delay"):
        task(retry_delay=-1)
    with pytest.raises(ValueError, match="after"):
        Retry(after=-1)
