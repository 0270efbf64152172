"""The SQLite journal: accepted work survives a dispatcher that dies.

The in-memory cluster runs on the real clock here (the journal writes from a
thread), with short timers; the last test kills a real dispatcher process.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
from typing import Any

import pytest
import trio

from trioschedule import Dispatcher, Rejected, StoreError, open_client, task
from trioschedule._store.base import Store
from trioschedule._store.sqlite import SQLiteStore
from trioschedule.testing import open_cluster

from .conftest import MathWorker
from .processes import free_port, processes, wait_for


def journaled(path, **kwargs) -> Dispatcher:
    kwargs.setdefault("heartbeat_interval", 0.2)
    kwargs.setdefault("heartbeat_timeout", 2.0)
    kwargs.setdefault("session_grace", 5.0)
    return Dispatcher(store=f"sqlite:{path}", **kwargs)


def worker(name: str, **kwargs) -> MathWorker:
    return MathWorker(name=name, heartbeat_interval=0.2, heartbeat_timeout=2.0, reconnect_max=0.2, **kwargs)


async def test_restart_on_the_same_journal_runs_everything_once(tmp_path):
    path = tmp_path / "journal.sqlite3"
    workers = [worker("a", concurrency=4), worker("b", concurrency=4)]
    with trio.fail_after(30):
        async with open_cluster(journaled(path), *workers) as cluster, cluster.client() as client:
            handles = [await client.submit("sleep", [0.3, i]) for i in range(40)]
            await trio.sleep(0.5)  # some done, some running, most queued
            await cluster.stop_dispatcher()
            await cluster.start_dispatcher(journaled(path))
            results = [await h.result() for h in handles]
    assert results == list(range(40))
    runs = collections.Counter(args for w in workers for name, args in w.ran if name == "sleep")
    assert sum(runs.values()) == 40, "a task that was running on a returning worker is not run again"


async def test_reattach_after_restart_and_retention(tmp_path):
    path = tmp_path / "journal.sqlite3"
    with trio.fail_after(30):
        async with open_cluster(journaled(path), worker("a")) as cluster:
            async with cluster.client() as client:
                done = await client.submit("add", [20, 22])
                assert await done.result() == 42
                delayed = await client.submit("add", [1, 1], delay=1.0)
            await cluster.stop_dispatcher()
            start = trio.current_time()
            await cluster.start_dispatcher(journaled(path))
            async with cluster.client() as other:
                assert await other.task(done.id).result() == 42
                assert await other.task(delayed.id).result() == 2
                assert trio.current_time() - start >= 0.5  # its delay was kept, not dropped
        # past the retention time the outcome is gone
        async with open_cluster(journaled(path, result_ttl=0.001)) as cluster, cluster.client() as other:
            with pytest.raises(KeyError):
                await other.task(done.id).result()


async def test_a_finished_map_leaves_nothing_in_the_journal(tmp_path):
    """map() tasks are journaled as they come and go, and forgotten as they end: after a restart
    only what others may reattach to (submitted tasks) is there."""
    path = tmp_path / "journal.sqlite3"
    with trio.fail_after(30):
        async with open_cluster(journaled(path), worker("a")) as cluster:
            d = cluster.dispatcher
            kept = await d.submit("add", [20, 22])
            assert await kept.result() == 42
            assert await d.map("add", [(i, 1) for i in range(300)]) == [i + 1 for i in range(300)]
            await cluster.stop_dispatcher()
            restarted = await cluster.start_dispatcher(journaled(path))
            assert list(restarted._core.tasks) == [kept.id]
            assert await restarted.task(kept.id).result() == 42


async def test_journal_in_use_is_refused(tmp_path):
    path = tmp_path / "journal.sqlite3"
    async with open_cluster(journaled(path)):
        with pytest.raises(StoreError, match="in use"):
            async with open_cluster(journaled(path)):
                pass  # pragma: no cover


def ran_args(directory) -> list[int]:
    """The first argument of every slow_add the workers ran (a line still being written is skipped)."""
    return [json.loads(line)["a"] for name in os.listdir(directory) if name.startswith("ran-")
            for line in open(directory / name) if line.endswith("\n")]  # fmt: skip


async def start_journaled(procs, port: int, journal) -> tuple[tuple[str, ...], Any]:
    """A dispatcher process on ``journal`` with two workers of concurrency 8; returns its arguments and process."""
    args = ("--store", f"sqlite:{journal}", "--session-grace", "15")
    dispatcher, _ = await procs.start_dispatcher(*args, port=port, name="d1")
    for i in range(2):
        procs.start_worker(port, "--concurrency", "8", name=f"w{i}")
    return args, dispatcher


async def sigkill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    with trio.fail_after(10):
        await trio.to_thread.run_sync(proc.wait)


async def test_dispatcher_sigkilled_with_hundreds_of_tasks(tmp_path):
    port = free_port()
    journal = tmp_path / "journal.sqlite3"
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        args, dispatcher = await start_journaled(procs, port, journal)
        async with open_client("127.0.0.1", port) as client:
            handles = [await client.submit("slow_add", [i, 1], {"seconds": 0.05}) for i in range(300)]
            await wait_for(lambda: len(ran_args(tmp_path)) >= 60, timeout=30)
            await sigkill(dispatcher)
            await procs.start_dispatcher(*args, port=port, name="d2")
            with trio.fail_after(60):
                results = [await h.result() for h in handles]  # the client reconnects on its own
            assert results == [i + 1 for i in range(300)]
        async with open_client("127.0.0.1", port) as fresh:
            assert await fresh.task(handles[7].id).result() == 8
        counts = collections.Counter(ran_args(tmp_path))
        assert set(counts) == set(range(300))
        assert all(n == 1 for n in counts.values()), {a: n for a, n in counts.items() if n > 1}


async def test_a_map_in_a_sigkilled_dispatcher_runs_each_task_once_after_the_restart(tmp_path):
    """The map() runs inside the dispatcher: its chunk is journaled as one group (format 4)."""
    port = free_port()
    journal = tmp_path / "journal.sqlite3"
    ran = lambda: ran_args(tmp_path)
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        args, dispatcher = await start_journaled(procs, port, journal)
        async with open_client("127.0.0.1", port) as client:
            await client.send({"map_slow_add": 300, "seconds": 0.05})
            await wait_for(lambda: len(ran()) >= 60, timeout=30)
        await sigkill(dispatcher)
        assert len(ran()) < 300, "the map finished before the dispatcher was killed: nothing was tested"
        await procs.start_dispatcher(*args, port=port, name="d2")
        await wait_for(lambda: len(set(ran())) == 300, timeout=60)  # the recovered tasks run with nobody waiting
        await trio.sleep(0.5)  # a second run of anything would show up by now
        counts = collections.Counter(ran())
        assert set(counts) == set(range(300))
        assert all(n == 1 for n in counts.values()), {a: n for a, n in counts.items() if n > 1}


class HeldCommits(Store):
    """A journal whose commits the test holds back and lets through (nothing on disk)."""

    durable = True

    def __init__(self) -> None:
        self.position = 0  # operations journaled
        self.committed = 0  # of those, committed
        self.holding = False
        self._moved = trio.Event()

    async def add(self, tasks) -> None:
        self.update(tasks)
        await self.flush()

    def update(self, task) -> None:
        self.position += 1

    def forget(self, task_ids) -> None:
        self.position += 1

    def mark(self) -> int:
        return self.position

    async def flush(self, mark=None) -> None:
        target = self.position if mark is None else mark
        while self.committed < target:
            if not self.holding:
                self.committed = self.position
                break
            await self._moved.wait()
        await trio.lowlevel.checkpoint()

    def release(self) -> None:
        self.holding = False
        self._moved.set()
        self._moved = trio.Event()


async def test_a_worker_reader_goes_on_reading_while_a_commit_is_pending():
    """Results are read while the journal commits; nothing reaches the worker before its commit.

    The dispatcher once waited for every commit before reading the next
    batch from that worker: the second result below was not read until the
    first commit was done.
    """
    store = HeldCommits()
    gates = {1: trio.Event(), 2: trio.Event()}

    class Gated(MathWorker):
        @task
        async def gated(self, n):
            await gates[n].wait()
            return n

    w = Gated(name="w", concurrency=2, heartbeat_interval=0.2, heartbeat_timeout=30.0)
    with trio.fail_after(10):
        async with open_cluster(Dispatcher(store=store, heartbeat_interval=0.2, heartbeat_timeout=30.0), w) as cluster:
            disp = cluster.dispatcher
            outcomes: dict[int, int] = {}

            async def call(n: int) -> None:
                outcomes[n] = await disp.call("gated", n)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, 1)
                nursery.start_soon(call, 2)
                while len(w._running) < 2:  # both started, their starts committed
                    await trio.sleep(0.01)
                store.holding = True
                gates[1].set()
                while 1 not in outcomes:
                    await trio.sleep(0.01)
                gates[2].set()
                while 2 not in outcomes:  # read and finished with the first commit still held
                    await trio.sleep(0.01)
                assert store.committed < store.position
                await trio.sleep(0.5)  # heartbeats are due, but none leaves before its commit
                # Neither result is acknowledged yet: the worker keeps both.
                assert sum(len(frame.results) for frame in w._unacked) == 2
                store.release()
                while w._unacked:  # the next heartbeat acknowledges them, once committed
                    await trio.sleep(0.01)
    assert outcomes == {1: 1, 2: 2}


async def test_when_the_journal_fails_clients_are_told_their_submissions_are_refused(tmp_path, monkeypatch):
    """Frames to clients wait for the journal; once it has failed they must not wait for it forever."""
    with trio.fail_after(20):
        async with open_cluster(journaled(tmp_path / "journal.sqlite3"), worker("w")) as cluster:
            async with cluster.client() as client:
                assert await client.call("add", 1, 2) == 3

                def broken(self, batch, schedule_ops):
                    raise sqlite3.OperationalError("disk I/O error")

                monkeypatch.setattr(SQLiteStore, "_write", broken)
                for _ in range(2):  # and again: the connection is still up
                    with pytest.raises(Rejected) as info:
                        await client.call("add", 3, 4)
                    assert info.value.code == "store-failed" and "disk I/O error" in str(info.value)
                monkeypatch.undo()  # the dispatcher's close reports the failure; the test is about the above


async def test_a_submission_whose_client_left_during_the_commit_still_runs():
    """A slow commit (a database restarting) outlasted the client's connection: the dispatcher's reader
    for that client was cancelled while awaiting the journal, and the client resubmitted the task after
    reconnecting.  The task must still be placed and run (it once stayed queued forever)."""
    store = HeldCommits()
    d = Dispatcher(store=store, heartbeat_interval=0.2, heartbeat_timeout=1.0)
    with trio.fail_after(30):
        async with open_cluster(d, worker("w")) as cluster, cluster.client() as client:
            assert await client.call("add", 1, 1) == 2
            store.holding = True
            async with trio.open_nursery() as nursery:
                handles = []

                async def submit() -> None:
                    handles.append(await client.submit("add", [20, 22]))

                nursery.start_soon(submit)
                await wait_for(lambda: store.committed < store.position, timeout=10)  # the add waits
                # Its reader waits for the commit and reads nothing: the heartbeat timeout (1 s) closes the
                # connection, cancelling the reader; the client reconnects and resubmits meanwhile.
                await trio.sleep(2.0)
                store.release()
            assert await handles[0].result() == 42
