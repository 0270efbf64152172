"""Dispatch, results, failures, broadcasts and hooks over the in-memory cluster (mock clock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioschedule import (
    Dispatcher,
    LocalProtocolError,
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
    UnknownTaskId,
    Worker,
    task,
)
from trioschedule.testing import open_cluster

from ..conftest import MathWorker, OtherWorker, quick_dispatcher


async def test_call_submit_and_map_return_values(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster, cluster.client() as client:
        handle = await client.submit("add", args=[1, 2])
        assert await handle.result() == 3
        assert handle.done()
        assert await client.call("add", 2, 3) == 5
        assert await client.call("mul", 4, b=5) == 20
        assert await client.map("add", [(i, 1) for i in range(300)]) == [i + 1 for i in range(300)]


async def test_dispatcher_side_submit_call_map(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster:
        d = cluster.dispatcher
        assert await d.call("add", 20, 22) == 42
        assert await d.map("add", [(i, i) for i in range(50)]) == [2 * i for i in range(50)]
        handle = d.submit_nowait("add", [1, 1])
        assert await handle.result() == 2


async def test_map_in_chunks_keeps_order_and_waits_for_room(autojump_clock):
    """Several map() chunks (MAP_CHUNK tasks each), more tasks than max_queued: all results, in order."""
    async with open_cluster(quick_dispatcher(max_queued=700), MathWorker(), MathWorker()) as cluster:
        d = cluster.dispatcher
        with trio.fail_after(60):
            assert await d.map("add", [(i, 1) for i in range(2500)]) == [i + 1 for i in range(2500)]
        assert d.status()["tasks"]["done"] == 2500


async def test_map_waits_for_later_chunks_even_when_the_first_has_ended(autojump_clock, monkeypatch):
    """A chunk that ends entirely before the next is added must not end the map() early.

    With room for one chunk only, map() waits for room before adding the
    next; the worker runs the whole first chunk and reports it in one frame.
    """
    from trioschedule._dispatcher import dispatcher as _dispatcher

    monkeypatch.setattr(_dispatcher, "MAP_CHUNK", 10)
    async with open_cluster(quick_dispatcher(max_queued=10), MathWorker()) as cluster:
        with trio.fail_after(60):
            assert await cluster.dispatcher.map("add", [(i, 1) for i in range(25)]) == [i + 1 for i in range(25)]


async def test_queuing_a_large_map_lets_other_tasks_run(autojump_clock, monkeypatch):
    """Between chunks, once MAP_YIELD_EVERY has passed, map() yields: readers and heartbeats run."""
    from trioschedule._dispatcher import dispatcher as _dispatcher

    monkeypatch.setattr(_dispatcher, "MAP_CHUNK", 10)
    monkeypatch.setattr(_dispatcher, "MAP_YIELD_EVERY", 0.0)
    async with open_cluster(quick_dispatcher()) as cluster:  # no worker: every task stays queued
        d = cluster.dispatcher
        seen: list[int] = []

        async def probe() -> None:
            for _ in range(50):  # bounded: once it stops, the mock clock can jump
                seen.append(len(d._core.tasks))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            with trio.move_on_after(1):
                await d.map("add", [(i, 1) for i in range(100)])
            nursery.cancel_scope.cancel()
        assert any(0 < n < 100 for n in seen), "the probe ran while the map was being queued"


async def test_map_tasks_are_forgotten_as_they_end_and_push_no_other_outcome_out(autojump_clock):
    """map()'s outcomes go to map() alone: its tasks are not kept for reattaching, so a large
    map() does not evict outcomes that others may still want (max_results)."""
    async with open_cluster(quick_dispatcher(max_results=5), MathWorker()) as cluster:
        d = cluster.dispatcher
        kept = await d.submit("add", [20, 22])
        assert await kept.result() == 42
        assert await d.map("add", [(i, 1) for i in range(50)]) == [i + 1 for i in range(50)]
        assert list(d._core.tasks) == [kept.id]
        assert await d.task(kept.id).result() == 42
        assert d.status()["tasks"]["done"] == 51


async def test_a_large_map_keeps_only_its_window_queued_and_lets_others_in(autojump_clock, monkeypatch):
    """map() adds chunks as its tasks drain: at most its window is unfinished at a time, so a task
    submitted meanwhile runs long before the map() ends, and records are freed as tasks end."""
    from trioschedule._dispatcher import dispatcher as _dispatcher

    monkeypatch.setattr(_dispatcher, "MAP_CHUNK", 10)
    monkeypatch.setattr(_dispatcher, "MAP_WINDOW", 30)
    worker = MathWorker(prefetch=0)  # holds one task at a time: the window is MAP_WINDOW
    async with open_cluster(quick_dispatcher(), worker) as cluster:
        d = cluster.dispatcher
        most = 0
        other_done_while_map_left: list[int] = []

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, d.status()["tasks"]["queued"] + d.status()["tasks"]["running"])
                await trio.sleep(0.01)

        async def other() -> None:
            await trio.sleep(0.5)
            assert await d.call("sleep", 0.01, "other") == "other"
            other_done_while_map_left.append(sum(1 for name, _ in worker.ran if name == "sleep"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            nursery.start_soon(other)
            with trio.fail_after(60):
                results = await d.map("sleep", [(0.01, i) for i in range(300)])
            nursery.cancel_scope.cancel()
        assert results == list(range(300))
        assert most <= 31  # the window, plus the other task
        assert other_done_while_map_left and other_done_while_map_left[0] < 100  # it did not wait for the map


async def test_a_map_deadline_counts_from_the_call_for_chunks_added_later(autojump_clock, monkeypatch):
    from trioschedule._dispatcher import dispatcher as _dispatcher

    monkeypatch.setattr(_dispatcher, "MAP_CHUNK", 10)
    monkeypatch.setattr(_dispatcher, "MAP_WINDOW", 20)
    async with open_cluster(quick_dispatcher(), MathWorker(prefetch=0)) as cluster:
        with trio.fail_after(120):
            results = await cluster.dispatcher.map("sleep", [(1, i) for i in range(40)], timeout=15.5, return_exceptions=True)
        finished = [r for r in results if not isinstance(r, TaskTimeout)]
        assert finished == list(range(len(finished))) and 10 <= len(finished) <= 16  # about 15 s of 1 s tasks
        assert all(isinstance(r, TaskTimeout) for r in results[len(finished):])


async def test_map_deadline_applies_to_every_task_of_a_chunk(autojump_clock):
    """A timeout given to map() is each task's deadline, also for tasks that never reach a worker."""
    async with open_cluster(quick_dispatcher()) as cluster:  # nobody offers "add" yet
        d = cluster.dispatcher
        with trio.fail_after(60):
            results = await d.map("add", [(i, 1) for i in range(1500)], timeout=5, return_exceptions=True)
        assert len(results) == 1500 and all(isinstance(r, TaskTimeout) for r in results)


async def test_map_task_cancelled_by_id_ends_cancelled_in_its_place(autojump_clock):
    async with open_cluster(quick_dispatcher()) as cluster:  # no worker: the tasks stay queued
        d = cluster.dispatcher
        results: list[object] = []

        async def run_map() -> None:
            results.extend(await d.map("add", [(i, 1) for i in range(5)], return_exceptions=True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_map)
            await trio.testing.wait_all_tasks_blocked()
            queued = [t for t in d._core.tasks.values() if t.name == "add"]
            assert d.cancel_nowait(queued[2].id, "not this one")
            await cluster.start_worker(MathWorker())
        assert results[:2] == [1, 2] and results[3:] == [4, 5]
        assert isinstance(results[2], TaskCancelled)


async def test_failure_carries_type_message_and_traceback(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster, cluster.client() as client:
        with pytest.raises(TaskFailed) as info:
            await client.call("fail", "it broke")
        assert info.value.remote_type == "ValueError"
        assert info.value.remote_message == "it broke"
        assert 'raise ValueError(message)' in info.value.remote_traceback
        assert "trioschedule/_worker" not in info.value.remote_traceback


async def test_unknown_task_name_waits_until_a_worker_offers_it(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster, cluster.client() as client:
        handle = await client.submit("other")
        await trio.sleep(5)
        assert not handle.done()
        assert cluster.dispatcher.status()["waiting_for_worker"] == {"other": 1}
        await cluster.start_worker(OtherWorker())
        with trio.fail_after(5):
            assert await handle.result() == "other"


async def test_dispatcher_call_with_arguments_that_are_not_json_fails_at_once(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster:
        d = cluster.dispatcher
        with trio.fail_after(5), pytest.raises(TaskFailed, match="cannot be sent"):
            await d.call("add", {1, 2}, 1)
        with trio.fail_after(5), pytest.raises(TaskFailed, match="cannot be sent"):
            await (await d.submit("add", [{1, 2}, 1])).result()
        assert await d.call("add", 1, 1) == 2


async def test_result_that_is_not_json_is_a_clean_failure(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster, cluster.client() as client:
        with pytest.raises(TaskFailed, match="cannot be sent"):
            await client.call("not_json")
        assert await client.call("add", 1, 1) == 2


async def test_least_loaded_worker_gets_the_work(autojump_clock):
    a, b = MathWorker(prefetch=0, name="a"), MathWorker(prefetch=0, name="b")
    async with open_cluster(quick_dispatcher(), a, b) as cluster:
        async with cluster.client() as client:
            handles = [await client.submit("sleep", [1]) for _ in range(4)]
            await trio.sleep(0.5)
            running = {w.name: p["running"] for w in (a, b) for p in cluster.dispatcher.status()["workers"] if p["name"] == w.name}
            assert sorted(running.values()) == [1, 1]
            for h in handles:
                await h.result()
        assert len(a.ran) == 2 and len(b.ran) == 2


async def test_dispatcher_submit_goes_straight_to_the_least_loaded_worker(autojump_clock):
    """With nothing queued, submit() assigns the task at once (no queue round trip), least loaded first."""
    a, b = MathWorker(prefetch=0, name="a"), MathWorker(prefetch=0, name="b")
    async with open_cluster(quick_dispatcher(), a, b) as cluster:
        d = cluster.dispatcher
        first = await d.submit("sleep", [1])
        second = await d.submit("sleep", [1])
        running = sorted(p["running"] for p in d.status()["workers"])
        assert running == [1, 1]  # one each, before any of them ran
        third = await d.submit("sleep", [1])  # both full: this one queues
        assert d.status()["tasks"]["queued"] == 1
        for handle in (first, second, third):
            await handle.result()
        assert sorted(len(w.ran) for w in (a, b)) == [1, 2]


async def test_submitted_tasks_run_by_priority_and_never_overtake_queued_ones(autojump_clock):
    worker = MathWorker(prefetch=0)
    async with open_cluster(quick_dispatcher(), worker) as cluster:
        d = cluster.dispatcher
        busy = await d.submit("sleep", [1])
        low = [await d.submit("add", [i, 0]) for i in range(3)]
        high = await d.submit("add", [100, 0], priority=5)
        for handle in (busy, *low, high):
            await handle.result()
        assert [args for name, args in worker.ran if name == "add"] == [(100, 0), (0, 0), (1, 0), (2, 0)]


async def test_broadcast_reaches_every_worker(autojump_clock):
    workers = [MathWorker() for _ in range(3)]
    async with open_cluster(quick_dispatcher(), *workers) as cluster:
        async with cluster.client() as client:
            await client.broadcast({"hello": "workers"})
            await trio.sleep(1)
        assert all(w.messages == [{"hello": "workers"}] for w in workers)
        assert await cluster.dispatcher.broadcast("again") == 3


async def test_hooks_fire_and_a_raising_hook_is_contained(autojump_clock, caplog):
    events = []

    class Hooked(Dispatcher):
        async def on_connect(self, peer):
            events.append(("connect", peer.role))
            raise RuntimeError("hook bug")

        async def on_message(self, peer, message):
            events.append(("message", peer.role, message))

        async def on_task_done(self, task_id, name, outcome):
            events.append(("done", name, outcome.status))

        async def on_close(self, peer):
            events.append(("close", peer.role))

    class Chatty(MathWorker):
        async def on_connect(self):
            await self.send({"hi": "from worker"})

    async with open_cluster(Hooked(heartbeat_interval=1, heartbeat_timeout=5), Chatty()) as cluster:
        async with cluster.client() as client:
            assert await client.call("add", 1, 2) == 3
            await client.send("from client")
            await trio.sleep(1)
        await trio.sleep(1)
        assert cluster.dispatcher.status()["hook_errors"] >= 2
    assert ("connect", "worker") in events and ("connect", "client") in events
    assert ("message", "worker", {"hi": "from worker"}) in events
    assert ("message", "client", "from client") in events
    assert ("done", "add", "ok") in events
    assert ("close", "client") in events
    assert "hook on_connect raised" in caplog.text


async def test_worker_hooks_and_send_to_one_peer(autojump_clock):
    calls = []

    class Hooked(MathWorker):
        async def on_start(self):
            calls.append("start")

        async def on_connect(self):
            calls.append("connect")

        async def on_close(self):
            calls.append("close")

        async def on_stop(self):
            calls.append("stop")

    worker = Hooked()
    async with open_cluster(quick_dispatcher(), worker) as cluster:
        [peer] = cluster.dispatcher.workers
        await cluster.dispatcher.send(peer, {"only": "you"})
        await trio.sleep(1)
        assert worker.messages == [{"only": "you"}]
        cluster.cut(worker)
        await trio.sleep(10)
        assert calls[:4] == ["start", "connect", "close", "connect"]
    assert calls[-1] == "stop"


async def test_reattach_to_a_task_by_id(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster:
        async with cluster.client() as first:
            handle = await first.submit("sleep", [2, "late"])
        async with cluster.client() as second:
            assert await second.task(handle.id).result() == "late"
            with pytest.raises(UnknownTaskId):
                await second.task("no-such-task").result()


async def test_status_counts_and_workers(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker(), MathWorker()) as cluster:
        async with cluster.client() as client:
            await client.map("add", [(1, 1)] * 10)
            with pytest.raises(TaskFailed):
                await client.call("fail")
        status = cluster.dispatcher.status()
        assert status["tasks"]["done"] == 10 and status["tasks"]["failed"] == 1
        assert len(status["workers"]) == 2
        assert sum(w["done"] for w in status["workers"]) == 10
        assert all(w["pid"] > 0 for w in status["workers"])


async def test_admin_status_and_stop_over_the_wire(autojump_clock):
    async with open_cluster(quick_dispatcher(), MathWorker()) as cluster:
        async with cluster.client(role="admin") as admin:
            status = await admin.status()
            assert status["workers"][0]["tasks"] == ["add", "fail", "mul", "not_json", "sleep"]
        async with cluster.client() as client:
            with trio.fail_after(5):  # refused at once, locally: the role may not send it
                with pytest.raises(LocalProtocolError, match="cannot send 'status' as client"):
                    await client.status()


class Registry(Worker):
    @task(name="renamed", retries=2, no_retry=[KeyError], thread=False)
    def original(self):
        return "sync inline"


async def test_task_options_and_names(autojump_clock):
    async with open_cluster(quick_dispatcher(), Registry()) as cluster, cluster.client() as client:
        assert await client.call("renamed") == "sync inline"


class Sizes(Worker):
    @task
    async def echo(self, value):
        return value

    @task
    async def blow_up(self, size):
        return "x" * size


async def test_frames_that_would_be_too_large_are_split_or_refused_cleanly(autojump_clock):
    limit = 64 * 1024
    dispatcher = quick_dispatcher(max_frame_size=limit)
    async with open_cluster(dispatcher, Sizes(max_frame_size=limit, prefetch=40)) as cluster:
        async with cluster.client(max_frame_size=limit) as client:
            chunk = "y" * 4000  # 40 of these make a Run or Outcomes frame far above the limit
            assert await client.map("echo", [(chunk + str(i),) for i in range(60)]) == [chunk + str(i) for i in range(60)]
            with pytest.raises(LocalProtocolError, match="maximum frame size"):
                await client.submit("echo", ["z" * limit])
            with pytest.raises(TaskFailed, match="cannot be sent"):
                await client.call("blow_up", limit)
            assert await client.call("echo", "still fine") == "still fine"


async def test_outcomes_are_forgotten_after_their_retention(autojump_clock):
    async with open_cluster(quick_dispatcher(result_ttl=120, max_results=5), MathWorker()) as cluster:
        async with cluster.client() as client:
            old = await client.submit("add", [1, 1])
            assert await old.result() == 2
            await trio.sleep(60)
            assert await client.task(old.id).result() == 2  # within its retention
            await trio.sleep(121)
            with pytest.raises(UnknownTaskId):
                await client.task(old.id).result()
            handles = [await client.submit("add", [i, 0]) for i in range(7)]
            assert [await h.result() for h in handles] == list(range(7))
            with pytest.raises(UnknownTaskId):  # only the newest max_results are kept
                await client.task(handles[0].id).result()
            assert await client.task(handles[6].id).result() == 6
