"""Never lose a task: liveness, redelivery, retries, deadlines, cancellation, backpressure, drain.

Everything runs on the in-memory cluster under the mock clock, so timeouts of
seconds take no real time.
"""

from __future__ import annotations

import pytest
import trio

from trioschedule import (
    QueueFull,
    Rejected,
    TaskCancelled,
    TaskFailed,
    TaskLost,
    TaskTimeout,
    Worker,
    task,
)
from trioschedule.testing import open_cluster

from .conftest import MathWorker, quick_dispatcher


class Counting(MathWorker):
    """Counts how often each key ran, across all instances of the test."""

    runs: dict = {}

    @task
    async def slow(self, key, seconds=10):
        Counting.runs[key] = Counting.runs.get(key, 0) + 1
        await trio.sleep(seconds)
        return f"{key} done"


@pytest.fixture(autouse=True)
def _reset_counts():
    Counting.runs = {}


async def test_killed_worker_tasks_rerun_elsewhere(autojump_clock):
    a, b = Counting(name="a", prefetch=0, concurrency=2), Counting(name="b", prefetch=0, concurrency=2)
    async with open_cluster(quick_dispatcher(), a) as cluster:
        async with cluster.client() as client:
            handles = [await client.submit("slow", [f"k{i}"]) for i in range(4)]
            await trio.sleep(1)
            assert Counting.runs == {"k0": 1, "k1": 1}  # two running on a, two queued
            await cluster.start_worker(b)
            await trio.sleep(1)
            cluster.kill(a)
            results = [await h.result() for h in handles]
            assert results == [f"k{i} done" for i in range(4)]
            assert Counting.runs == {"k0": 2, "k1": 2, "k2": 1, "k3": 1}
        status = cluster.dispatcher.status()
        assert status["tasks"]["done"] == 4 and status["tasks"]["lost"] == 0


async def test_only_started_tasks_count_a_loss(autojump_clock):
    a = Counting(name="a", prefetch=3)  # one running, three prefetched
    async with open_cluster(quick_dispatcher(max_losses=0), a) as cluster, cluster.client() as client:
        handles = [await client.submit("slow", [f"k{i}"]) for i in range(4)]
        await trio.sleep(1)
        cluster.kill(a)
        await cluster.start_worker(Counting(name="b", prefetch=3))
        outcomes = [await h.outcome() for h in handles]
    assert [o.status for o in outcomes] == ["lost", "ok", "ok", "ok"]
    assert "lost 1 times" in outcomes[0].reason


async def test_poison_task_ends_lost_instead_of_looping(autojump_clock):
    class Poisoned(MathWorker):
        @task
        async def poison(self):
            cluster.kill(self)
            await trio.sleep_forever()

    async with open_cluster(quick_dispatcher(max_losses=2)) as cluster:
        for i in range(4):
            await cluster.start_worker(Poisoned(name=f"w{i}"))
        async with cluster.client() as client:
            with pytest.raises(TaskLost, match="lost 3 times"):
                await client.call("poison")
            assert await client.call("add", 1, 1) == 2


async def test_worker_that_reconnects_in_grace_keeps_its_tasks(autojump_clock):
    a = Counting(name="a")
    async with open_cluster(quick_dispatcher(session_grace=5), a) as cluster, cluster.client() as client:
        handle = await client.submit("slow", ["k"])
        await trio.sleep(1)
        cluster.cut(a)
        await trio.sleep(1)
        assert len(cluster.links[a]) == 2  # it reconnected on a new link
        await cluster.start_worker(Counting(name="b"))
        assert await handle.result() == "k done"
        assert Counting.runs == {"k": 1}  # resumed, not run twice
        [session] = [w for w in cluster.dispatcher.status()["workers"] if w["name"] == "a"]
        assert session["done"] == 1


async def test_results_sent_while_disconnected_are_delivered_after_resume(autojump_clock):
    a = Counting(name="a")
    async with open_cluster(quick_dispatcher(session_grace=30), a) as cluster, cluster.client() as client:
        handle = await client.submit("slow", ["k", 2])
        await trio.sleep(1)
        cluster.stall(a)  # the result is produced while nothing gets through
        await trio.sleep(8)
        cluster.resume(a)
        assert await handle.result() == "k done"
        assert Counting.runs == {"k": 1}


async def test_partitioned_worker_is_declared_gone_and_its_late_result_ignored(autojump_clock):
    a, b = Counting(name="a", prefetch=0), Counting(name="b", prefetch=0)
    async with open_cluster(quick_dispatcher(session_grace=2), a) as cluster:
        async with cluster.client() as client:
            handle = await client.submit("slow", ["k", 20])
            await trio.sleep(1)
            cluster.stall(a)  # nothing gets through; heartbeats time out after 5 s
            await cluster.start_worker(b)
            assert await handle.result() == "k done"
            assert Counting.runs == {"k": 2}
            cluster.resume(a)
            await trio.sleep(30)
        status = cluster.dispatcher.status()
        assert status["tasks"]["done"] == 1


class Flaky(Worker):
    attempts: dict = {}

    @task
    async def flaky(self, key, fail_times, error="ConnectionError"):
        n = Flaky.attempts[key] = Flaky.attempts.get(key, 0) + 1
        if n <= fail_times:
            raise {"ConnectionError": ConnectionError, "KeyError": KeyError}[error](f"attempt {n}")
        return n

    @task(retries=3, no_retry=[KeyError])
    async def defaults(self, key, fail_times, error="ConnectionError"):
        return await self.flaky(key, fail_times, error)


async def test_retries_with_backoff(autojump_clock):
    Flaky.attempts = {}
    async with open_cluster(quick_dispatcher(retry_backoff=1.0), Flaky()) as cluster, cluster.client() as client:
        start = trio.current_time()
        handle = await client.submit("flaky", ["b", 2], retries=2)
        assert await handle.result() == 3
        assert trio.current_time() - start >= 0.5 + 1.0  # two backoffs, equal jitter
        with pytest.raises(TaskFailed, match="attempt 2"):
            await (await client.submit("flaky", ["c", 5], retries=1)).result()
        assert Flaky.attempts["c"] == 2
        assert await (await client.submit("defaults", ["d", 3])).result() == 4
        with pytest.raises(TaskFailed, match="KeyError"):
            await (await client.submit("defaults", ["e", 3, "KeyError"])).result()
        assert Flaky.attempts["e"] == 1


async def test_deadline_while_queued(autojump_clock):
    async with open_cluster(quick_dispatcher()) as cluster, cluster.client() as client:
        handle = await client.submit("add", [1, 2], timeout=3)
        start = trio.current_time()
        with pytest.raises(TaskTimeout):
            await handle.result()
        assert 2.9 <= trio.current_time() - start <= 3.1


async def test_deadline_while_running_is_enforced_by_the_worker(autojump_clock):
    worker = MathWorker()
    async with open_cluster(quick_dispatcher(), worker) as cluster, cluster.client() as client:
        handle = await client.submit("sleep", [100], timeout=2)
        with pytest.raises(TaskTimeout):
            await handle.result()
        assert worker.cleaned_up == ["sleep 100"]
        assert await client.call("add", 1, 1) == 2


async def test_deadline_enforced_by_dispatcher_when_worker_goes_quiet(autojump_clock):
    worker = MathWorker(heartbeat_timeout=1000)
    async with open_cluster(quick_dispatcher(session_grace=1000, heartbeat_timeout=1000), worker) as cluster:
        async with cluster.client() as client:
            handle = await client.submit("sleep", [100], timeout=2)
            await trio.sleep(1)
            cluster.stall(worker)
            with trio.fail_after(2000):
                with pytest.raises(TaskTimeout):
                    await handle.result()


async def test_cancel_queued_and_running(autojump_clock):
    worker = MathWorker(prefetch=0)
    async with open_cluster(quick_dispatcher(), worker) as cluster, cluster.client() as client:
        running = await client.submit("sleep", [100])
        queued = await client.submit("sleep", [100])
        await trio.sleep(1)
        await queued.cancel("not needed")
        with pytest.raises(TaskCancelled, match="not needed"):
            await queued.result()
        await running.cancel(reason="user pressed stop")
        with pytest.raises(TaskCancelled) as info:
            await running.result()
        assert info.value.reason == "user pressed stop"
        assert worker.cleaned_up == ["sleep 100"]  # the task's finally ran
        assert await client.call("add", 2, 2) == 4


async def test_an_idle_runner_reads_and_a_task_that_waits_hands_reading_back(autojump_clock):
    """An idle runner reads the connection itself (no hand-over for a task that never waits); a task
    that waits gives reading back at once, so a Cancel and the dispatcher's heartbeats still get in."""
    from trioschedule._worker.readturn import UNCLAIMED as _UNCLAIMED

    worker = MathWorker(heartbeat_interval=1.0, heartbeat_timeout=5.0)
    async with open_cluster(quick_dispatcher(), worker) as cluster:
        d = cluster.dispatcher
        assert await d.call("add", 1, 1) == 2
        await trio.sleep(0.1)
        turn = worker._turn
        assert turn is not None and turn.runner not in (None, _UNCLAIMED)  # a runner reads
        conn = worker._conn
        assert await d.call("add", 2, 2) == 4
        assert turn.runner not in (None, _UNCLAIMED)  # that task never waited: the runner kept reading

        # Longer than heartbeat_timeout: unless somebody reads, the worker would drop the connection.
        assert await d.call("sleep", 12, "slept") == "slept"
        assert worker._conn is conn

        running = await d.submit("sleep", [100])
        await trio.sleep(1)
        assert turn.runner is None  # the waiting task gave the reader the turn
        assert d.cancel_nowait(running.id, "stop")
        with trio.fail_after(5), pytest.raises(TaskCancelled, match="stop"):
            await running.result()
        await trio.sleep(0.1)
        assert turn.runner not in (None, _UNCLAIMED)  # idle again: a runner reads


async def test_a_cut_connection_while_a_runner_reads_reconnects(autojump_clock):
    from trioschedule._worker.readturn import UNCLAIMED as _UNCLAIMED

    worker = MathWorker()
    async with open_cluster(quick_dispatcher(), worker) as cluster:
        d = cluster.dispatcher
        assert await d.call("add", 1, 1) == 2
        await trio.sleep(0.1)
        assert worker._turn is not None and worker._turn.runner not in (None, _UNCLAIMED)
        cluster.cut(worker)
        with trio.fail_after(30):
            assert await d.call("add", 3, 3) == 6
        assert [name for name, _ in worker.ran] == ["add", "add"]


async def test_client_leaving_keeps_or_cancels_its_tasks(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker(concurrency=2)) as cluster:
        async with cluster.client() as keeper:
            kept = await keeper.submit("sleep", [5, "kept"])
        async with cluster.client(cancel_on_exit=True) as leaver:
            dropped = await leaver.submit("sleep", [5, "dropped"])
        async with cluster.client() as observer:
            assert await observer.task(kept.id).result() == "kept"
            with pytest.raises(TaskCancelled, match="left"):
                await observer.task(dropped.id).result()


async def test_backpressure_waits_or_refuses(autojump_clock):
    async with open_cluster(quick_dispatcher(max_queued=3)) as cluster:
        d = cluster.dispatcher
        async with cluster.client() as client:
            handles = [await client.submit("add", [i, 0]) for i in range(3)]
            with pytest.raises(QueueFull):
                await client.submit("add", [9, 9], wait=False)
            with pytest.raises(QueueFull):
                d.submit_nowait("add", [9, 9])
            waiting = []

            async def submit_more():
                waiting.append(await client.submit("add", [5, 5]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit_more)
                await trio.sleep(5)
                assert waiting == []  # still waiting for room
                await cluster.start_worker(MathWorker())
            assert [await h.result() for h in handles] == [0, 1, 2]
            assert await waiting[0].result() == 10


async def test_client_reconnects_and_still_gets_results(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster, cluster.client() as client:
        handle = await client.submit("sleep", [3, "survived"])
        cluster.cut(client)
        assert await handle.result() == "survived"
        cluster.cut(client)
        assert await client.call("add", 1, 2) == 3


async def test_dispatcher_drain_lets_running_tasks_finish(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker(prefetch=0)) as cluster:
        d = cluster.dispatcher
        async with cluster.client() as client:
            running = await client.submit("sleep", [5, "finished"])
            queued = await client.submit("sleep", [5, "never"])
            await trio.sleep(1)
            d.stop(grace=30)
            await trio.sleep(0.1)
            with pytest.raises(Rejected, match="shutting down"):
                await client.submit("add", [1, 1])
            assert await running.result() == "finished"
            with pytest.raises(TaskLost, match="stopped"):
                await queued.result()


async def test_a_map_adding_chunks_stops_when_the_dispatcher_drains(autojump_clock, monkeypatch):
    """A map() waiting to add its next chunk adds no more once draining starts: it says so."""
    from trioschedule._dispatcher import dispatcher as _dispatcher

    monkeypatch.setattr(_dispatcher, "MAP_CHUNK", 10)
    monkeypatch.setattr(_dispatcher, "MAP_WINDOW", 20)
    worker = MathWorker(prefetch=0)
    async with open_cluster(quick_dispatcher(), worker) as cluster:
        d = cluster.dispatcher

        async def drain_soon() -> None:
            await trio.sleep(3.5)
            d.stop(grace=30)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain_soon)
            with trio.fail_after(60), pytest.raises(Rejected, match="shutting down"):
                await d.map("sleep", [(1, i) for i in range(100)])
        assert len(worker.ran) < 40  # it stopped adding chunks


async def test_dispatcher_drain_gives_up_after_grace(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster:
        d = cluster.dispatcher
        async with cluster.client() as client:
            handle = await client.submit("sleep", [1000])
            await trio.sleep(1)
            start = trio.current_time()
            d.stop(grace=3)
            with pytest.raises(TaskLost):
                await handle.result()
            assert trio.current_time() - start < 4


async def test_worker_drain_hands_back_prefetched_tasks(autojump_clock):
    a = Counting(name="a", prefetch=3)
    async with open_cluster(quick_dispatcher(), a) as cluster:
        async with cluster.client() as client:
            handles = [await client.submit("slow", [f"k{i}", 2]) for i in range(4)]
            await trio.sleep(1)
            a.stop(grace=30)
            await cluster.start_worker(Counting(name="b"))
            assert [await h.result() for h in handles] == [f"k{i} done" for i in range(4)]
            assert Counting.runs == {f"k{i}": 1 for i in range(4)}
        tasks = cluster.dispatcher._core.tasks
        assert all(t.losses == 0 and t.failures == 0 for t in tasks.values())  # handing back burns nothing


async def test_dispatcher_restart_workers_come_back(autojump_clock):
    worker = MathWorker()
    async with open_cluster(quick_dispatcher(), worker) as cluster:
        await cluster.stop_dispatcher()
        await trio.sleep(1)
        await cluster.start_dispatcher(quick_dispatcher())
        async with cluster.client() as client:
            with trio.fail_after(30):
                assert await client.call("add", 40, 2) == 42


async def test_worker_stopping_past_grace_hands_its_running_task_on(autojump_clock):
    a = Counting(name="a")
    async with open_cluster(quick_dispatcher(), a) as cluster, cluster.client() as client:
        handle = await client.submit("slow", ["k", 100])
        await trio.sleep(1)
        a.stop(grace=2)
        await cluster.start_worker(Counting(name="b"))
        assert await handle.result() == "k done"
        assert Counting.runs == {"k": 2}


async def test_an_idle_worker_steals_prefetched_tasks_stuck_behind_a_long_one(autojump_clock):
    busy = Counting(name="busy", prefetch=8)
    async with open_cluster(quick_dispatcher(), busy) as cluster:
        async with cluster.client() as client:
            long = await client.submit("slow", ["long", 100])
            short = [await client.submit("slow", [f"s{i}", 1]) for i in range(4)]
            await trio.sleep(0.5)
            assert Counting.runs == {"long": 1}  # the short ones wait behind it on the busy worker
            start = trio.current_time()
            await cluster.start_worker(Counting(name="idle", prefetch=8))
            for handle in short:
                assert (await handle.result()).endswith("done")
            assert trio.current_time() - start < 10, "the short tasks did not wait for the long one"
            assert await long.result() == "long done"
        assert Counting.runs == {"long": 1, "s0": 1, "s1": 1, "s2": 1, "s3": 1}
        assert cluster.dispatcher.status()["tasks"]["lost"] == 0
