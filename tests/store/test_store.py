"""The SQLite store's Trio side and its writer thread: round trips, group commit, threading, failures.

No dispatcher here: the store's contract (docs/STORE.md) is tested directly,
through close-and-reopen on real files in ``tmp_path``.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import trio

from trioschedule import StoreError
from trioschedule._store import generation as _checkpoint
from trioschedule._store.base import StoredTask
from trioschedule._store.sqlite import SQLiteStore, StoreStatistics

from .helpers import done, new_task, reopen


# ================================================================ round trips
async def test_round_trip_across_close_and_reopen(tmp_path):
    path = tmp_path / "journal.sqlite"
    store = SQLiteStore(path)
    assert store.durable and store.url == f"sqlite:{path}"
    assert await store.open() == []
    full = new_task(
        "full", name="mail", args=["ünïcode", {"nested": [1, 2.5, None, True]}], kwargs={"to": "ops"}, priority=7,
        retries=3, deadline=2e9, not_before=1.5e9, submitted_at=1234.5,
    )  # fmt: skip
    await store.add([new_task("a"), full, new_task("b"), new_task("c"), new_task("gone")])
    store.update(StoredTask(id="b", name="add", args=[1, 2], kwargs={}, state="running", attempt=1, session="s1"))
    store.update(done(new_task("c"), 3, finished_at=2000.0))
    store.update(done(new_task("a"), 3, finished_at=1500.0))
    store.forget(["gone", "never-existed"])
    await store.close()

    rows = await reopen(path)
    # Unfinished first, in submission order; then finished ones, oldest first.
    assert [r.id for r in rows] == ["full", "b", "a", "c"]
    assert rows[0] == full
    assert rows[1].state == "running" and rows[1].attempt == 1 and rows[1].session == "s1"
    assert rows[2].state == "done" and rows[2].outcome == {"id": "a", "status": "ok", "attempt": 0, "value": 3}
    assert rows[2].finished_at == 1500.0


async def test_update_inserts_and_latest_state_wins(tmp_path):
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path, commit_interval=60)  # nothing commits until flush()
    await store.open()
    for attempt in range(1, 6):  # update() of an unknown task inserts it (an upsert)
        store.update(new_task("t", state="running", attempt=attempt))
    store.update(new_task("dropped"))
    store.forget(["dropped"])
    store.forget(["back"])
    store.update(new_task("back"))
    assert store.statistics().pending == 9  # operations, journaled in call order
    await store.flush()
    stats = store.statistics()
    assert (stats.commits, stats.rows_written, stats.rows_deleted, stats.pending) == (1, 7, 2, 0)
    await store.close()
    rows = {r.id: r for r in await reopen(path)}
    assert set(rows) == {"t", "back"}
    assert rows["t"].attempt == 5


async def test_add_is_durable_when_it_returns(tmp_path, monkeypatch):
    monkeypatch.setattr(_checkpoint, "GENERATION_SECONDS", 3600.0)  # no checkpoint while we look
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path, commit_interval=60)
    await store.open()
    store.update(new_task("buffered"))
    await store.add([new_task("x"), new_task("y")])
    # Another connection sees the rows (and the update that was buffered before) while the store is open:
    # committed to the change log, not yet checkpointed into the tasks table.
    conn = sqlite3.connect(path)
    ids = sorted(
        row[0]
        for row in conn.execute(
            "SELECT row.value->>0 FROM changes, json_each(changes.ops) AS segment, json_each(segment.value->0) AS row"
        )
    )  # the rows of each segment of each commit
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    conn.close()
    assert ids == ["buffered", "x", "y"]
    await store.close()


async def test_updates_commit_without_flush(tmp_path):
    store = SQLiteStore(tmp_path / "j.sqlite", commit_interval=0.001)
    await store.open()
    store.update(new_task("t"))
    with trio.fail_after(5):
        while store.statistics().commits == 0:
            await trio.sleep(0.005)
    assert store.statistics().rows_written == 1
    await store.close()


async def test_flush_and_close_with_nothing_buffered(tmp_path):
    store = SQLiteStore(tmp_path / "j.sqlite")
    await store.close()  # never opened: nothing to do
    await store.open()
    await store.flush()
    await store.add([])
    assert store.statistics() == StoreStatistics(
        commits=0, rows_written=0, rows_deleted=0, rows_skipped=0, pending=0, failed=False
    )
    await store.close()
    await store.close()


async def test_flush_to_a_mark_waits_for_what_came_before_it_only(tmp_path):
    # commit_interval of an hour: nothing is committed unless someone waits for it.
    store = SQLiteStore(tmp_path / "j.sqlite", commit_interval=3600)
    await store.open()
    nothing = store.mark()
    with trio.fail_after(5):
        await store.flush(nothing)  # nothing buffered: no commit to wait for
    assert store.statistics().commits == 0
    store.update(new_task("before"))
    mark = store.mark()
    assert mark > nothing
    store.update(new_task("after"))  # the same batch: the writer has not taken it yet
    assert store.mark() == mark
    with trio.fail_after(5):
        await store.flush(mark)
    assert store.statistics().commits == 1 and store.statistics().pending == 0
    store.update(new_task("later"))  # buffered after the mark: flushing to it does not wait for this
    with trio.fail_after(5):
        await store.flush(mark)
    assert store.statistics().commits == 1 and store.statistics().pending == 1
    assert store.mark() > mark
    with trio.fail_after(5):
        await store.flush()  # no mark: everything
    assert store.statistics().commits == 2 and store.statistics().pending == 0
    await store.close()
    assert sorted(t.id for t in await reopen(tmp_path / "j.sqlite")) == ["after", "before", "later"]


# ================================================================ group commit
async def test_group_commit_20000_tasks_in_batches_of_1000(tmp_path, monkeypatch):
    # Each commit takes at least 50 ms (a slow disk), so that how much piles up while the
    # writer is busy does not depend on how fast this machine encodes and commits.
    original = SQLiteStore._write

    def slow(self, batch, schedule_ops):
        time.sleep(0.05)
        return original(self, batch, schedule_ops)

    monkeypatch.setattr(SQLiteStore, "_write", slow)
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    batches = [[new_task(f"{b}-{i}", args=[i, 1]) for i in range(1000)] for b in range(20)]
    async with trio.open_nursery() as nursery:
        for batch in batches:
            nursery.start_soon(store.add, batch)
    after_adds = store.statistics()
    assert after_adds.rows_written == 20_000
    assert after_adds.commits <= 5, after_adds
    # Every task runs and finishes: 40,000 buffered updates share a handful more.
    for batch in batches:
        for task in batch:
            store.update(StoredTask(id=task.id, name="add", args=task.args, kwargs={}, state="running", attempt=1))
        for task in batch:
            store.update(done(task, task.args[0] + 1, finished_at=time.time()))
    await store.flush()
    stats = store.statistics()
    assert stats.commits - after_adds.commits <= 5, stats
    await store.close()
    rows = await reopen(path)
    assert len(rows) == 20_000 and all(r.state == "done" for r in rows)


async def test_sequential_adds_carry_buffered_updates(tmp_path):
    store = SQLiteStore(tmp_path / "j.sqlite", commit_interval=60)
    await store.open()
    for b in range(20):
        batch = [new_task(f"{b}-{i}") for i in range(1000)]
        for i in range(1000):  # the previous batch's state changes ride along with this add
            store.update(new_task(f"{b - 1}-{i}", state="running", attempt=1))
        await store.add(batch)
    assert store.statistics().commits == 20
    await store.close()


# ================================================================ threading
async def test_writes_happen_on_one_dedicated_thread(tmp_path, monkeypatch):
    threads: set[int] = set()
    original = SQLiteStore._write

    def spy(self, batch, schedule_ops):
        threads.add(threading.get_ident())
        return original(self, batch, schedule_ops)

    monkeypatch.setattr(SQLiteStore, "_write", spy)
    store = SQLiteStore(tmp_path / "j.sqlite", commit_interval=0)
    await store.open()
    for i in range(5):
        await store.add([new_task(f"t{i}")])
        store.update(new_task(f"t{i}", state="running"))
        await store.flush()
    await store.close()
    assert len(threads) == 1
    assert threading.get_ident() not in threads


async def test_the_event_loop_keeps_running_during_a_slow_commit(tmp_path, monkeypatch):
    original = SQLiteStore._write

    def slow(self, batch, schedule_ops):
        time.sleep(0.3)  # a disk that takes its time
        return original(self, batch, schedule_ops)

    monkeypatch.setattr(SQLiteStore, "_write", slow)
    store = SQLiteStore(tmp_path / "j.sqlite")
    await store.open()
    ticks = 0
    async with trio.open_nursery() as nursery:

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.01)
                ticks += 1

        nursery.start_soon(ticker)
        start = trio.current_time()
        await store.add([new_task("slow")])
        assert trio.current_time() - start >= 0.25
        nursery.cancel_scope.cancel()
    assert ticks >= 10
    await store.close()



# ================================================================ retention
async def test_retention_drops_old_outcomes_at_open(tmp_path):
    path = tmp_path / "j.sqlite"
    now = time.time()
    store = SQLiteStore(path)
    await store.open()
    old_queued = new_task("old-queued", submitted_at=now - 10_000)
    await store.add([old_queued, new_task("old-done"), new_task("new-done")])
    store.update(done(new_task("old-done"), 1, finished_at=now - 5_000))
    store.update(done(new_task("new-done"), 1, finished_at=now - 10))
    await store.close()

    assert {r.id for r in await reopen(path)} == {"old-queued", "old-done", "new-done"}  # None: keep all
    store = SQLiteStore(path, retention=3600)
    rows = await store.open()
    await store.close()
    assert [r.id for r in rows] == ["old-queued", "new-done"]
    assert {r.id for r in await reopen(path)} == {"old-queued", "new-done"}


# ================================================================ misuse and failures
async def test_misuse_is_a_runtime_error(tmp_path):
    store = SQLiteStore(tmp_path / "j.sqlite")
    with pytest.raises(RuntimeError, match="open"):
        await store.add([new_task("t")])
    with pytest.raises(RuntimeError):
        store.update(new_task("t"))
    await store.open()
    with pytest.raises(RuntimeError, match="open"):
        await store.open()
    with pytest.raises(ValueError, match="state"):
        store.update(new_task("t", state="delayed"))
    await store.close()
    with pytest.raises(RuntimeError, match="close"):
        store.forget(["t"])
    assert await store.open() == []  # a closed store may be opened again
    await store.close()


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [(":memory:", {}), ("", {}), ("j.sqlite", {"synchronous": "OFF"}), ("j.sqlite", {"retention": -1})],
)
def test_bad_arguments(path, kwargs):
    with pytest.raises(ValueError):
        SQLiteStore(path, **kwargs)



async def test_unencodable_tasks(tmp_path, caplog):
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    with pytest.raises(TypeError):
        await store.add([new_task("ok"), new_task("bad", args=[{1, 2}])])  # all or nothing
    assert store.statistics().pending == 0
    with caplog.at_level(logging.ERROR, logger="trioschedule.store"):
        store.update(new_task("nan", args=[float("nan")]))
        store.update(new_task("fine"))
        await store.flush()
    assert "nan" in caplog.text and "skipped" in caplog.text
    stats = store.statistics()
    assert (stats.rows_written, stats.rows_skipped, stats.failed) == (1, 1, False)
    await store.close()
    assert [r.id for r in await reopen(path)] == ["fine"]


async def test_a_failed_write_stops_the_store_loudly(tmp_path, monkeypatch):
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    await store.add([new_task("kept")])

    def broken(self, batch, schedule_ops):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SQLiteStore, "_write", broken)
    with pytest.raises(StoreError, match="disk I/O error") as info:
        await store.add([new_task("lost")])
    assert info.value.code == "io"
    assert store.statistics().failed
    store.update(new_task("ignored"))  # update() never raises for it: add/flush/close report it
    with pytest.raises(StoreError):
        await store.flush()
    with pytest.raises(StoreError, match="restart"):
        await store.close()
    monkeypatch.undo()
    assert [r.id for r in await reopen(path)] == ["kept"]  # lock released, earlier commits intact


async def test_cancelled_open_still_releases_the_lock(tmp_path):
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.open()
    await store.close()  # waits for the writer thread to finish on its own
    assert await reopen(path) == []


# ================================================================ crash
_CHILD = """
import sys, trio
from trioschedule._store.sqlite import SQLiteStore
from trioschedule._store.base import StoredTask

async def main():
    store = SQLiteStore(sys.argv[1])
    await store.open()
    batch = 0
    while True:
        await store.add([StoredTask(id=f"{batch}-{i}", name="t", args=[i], kwargs={}) for i in range(100)])
        for i in range(100):
            store.update(StoredTask(id=f"{batch}-{i}", name="t", args=[i], kwargs={}, state="running", attempt=1))
        print(batch, flush=True)
        batch += 1

trio.run(main)
"""


def _killed_after(path, batches: int) -> list[int]:
    """Run ``_CHILD`` on ``path`` until it acknowledged ``batches`` adds, then SIGKILL it; what it acknowledged."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        return [int(child.stdout.readline()) for _ in range(batches)]
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


async def test_acknowledged_adds_survive_a_sigkill(tmp_path):
    path = tmp_path / "j.sqlite"
    acknowledged = _killed_after(path, 30)
    rows = await reopen(path)  # the kernel dropped the dead child's lock; SQLite rolls back its torn transaction
    batches: dict[int, int] = {}
    for row in rows:
        batch = int(row.id.split("-")[0])
        batches[batch] = batches.get(batch, 0) + 1
    assert set(acknowledged) <= set(batches)
    assert all(count == 100 for count in batches.values())  # every transaction all or nothing


