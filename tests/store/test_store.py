"""The SQLite journal on its own: round trips, group commit, refusals, migration, threading.

No dispatcher here: the store's contract (docs/STORE.md) is tested directly,
through close-and-reopen on real files in ``tmp_path``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

import attrs
import pytest
import trio

from trioschedule import StoreError
from trioschedule._store.base import StoredTask
from trioschedule._store.sqlite import Migration, SQLiteStore, StoreStatistics
from trioschedule._store.sqlite import checkpoint as _checkpoint
from trioschedule._store.sqlite import schema as _schema


def new_task(task_id: str, **fields) -> StoredTask:
    fields.setdefault("name", "add")
    fields.setdefault("args", [1, 2])
    fields.setdefault("kwargs", {})
    fields.setdefault("submitted_at", 1000.0)
    return StoredTask(id=task_id, **fields)


def done(task: StoredTask, value, finished_at: float) -> StoredTask:
    return StoredTask(
        id=task.id, name=task.name, args=[], kwargs={}, priority=task.priority, state="done", attempt=task.attempt,
        outcome={"id": task.id, "status": "ok", "attempt": task.attempt, "value": value},
        submitted_at=task.submitted_at, finished_at=finished_at,
    )  # fmt: skip


async def reopen(path) -> list[StoredTask]:
    store = SQLiteStore(path)
    rows = await store.open()
    await store.close()
    return rows


def pragma(path, name: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


async def journal_with_changes(path, changes: list[str], version: int | None = None) -> None:
    """A new journal at ``path`` whose change log holds ``changes`` (as a crash leaves it), at ``version``."""
    await reopen(path)
    conn = sqlite3.connect(path)
    if version is not None:
        conn.execute(f"PRAGMA user_version = {version}")
    conn.executemany("INSERT INTO changes (ops) VALUES (?)", [(text,) for text in changes])
    conn.commit()
    conn.close()


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

    def slow(self, batch):
        time.sleep(0.05)
        return original(self, batch)

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

    def spy(self, batch):
        threads.add(threading.get_ident())
        return original(self, batch)

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

    def slow(self, batch):
        time.sleep(0.3)  # a disk that takes its time
        return original(self, batch)

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


# ================================================================ refusals
async def test_a_journal_in_use_is_refused_with_the_holders_pid(tmp_path):
    path = tmp_path / "j.sqlite"
    first = SQLiteStore(path)
    await first.open()
    assert (tmp_path / "j.sqlite.lock").read_text().split()[0] == str(os.getpid())
    second = SQLiteStore(path)
    with pytest.raises(StoreError) as info:
        await second.open()
    assert info.value.code == "locked"
    assert f"pid {os.getpid()}" in str(info.value) and "in use" in str(info.value)
    with pytest.raises(RuntimeError):
        second.update(new_task("x"))  # a refused open leaves the store closed
    await first.close()
    assert await second.open() == []  # the lock went with the first store
    await second.close()


async def test_a_newer_format_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "j.sqlite"
    await reopen(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError) as info:
        await reopen(path)
    message = str(info.value)
    assert info.value.code == "newer-version"
    assert "version 99" in message and "newer trioschedule" in message
    assert f"up to {len(_schema.MIGRATIONS)}" in message
    assert pragma(path, "user_version") == 99


async def test_a_file_that_is_not_a_database_is_refused_as_corrupt(tmp_path):
    path = tmp_path / "j.sqlite"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError) as info:
        await reopen(path)
    assert info.value.code == "corrupt"
    assert "is corrupt" in str(info.value) and "Move it away" in str(info.value)


async def test_damaged_pages_are_refused_as_corrupt(tmp_path):
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    await store.add([new_task(f"t{i}", name="x" * 50) for i in range(3000)])
    await store.close()
    with open(path, "r+b") as file:
        file.seek(4096 * 2)  # the third page: inside the tasks table
        file.write(b"\xa5" * 4096)
    with pytest.raises(StoreError) as info:
        await reopen(path)
    assert info.value.code == "corrupt" and "restore it from a backup" in str(info.value)
    # The refusal released the lock: a repaired file could be opened at once.
    path.unlink()
    assert await reopen(path) == []


async def test_another_programs_database_is_refused_untouched(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as info:
        await reopen(path)
    assert info.value.code == "not-a-journal"
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["users"]
    conn.close()


# ================================================================ versions
async def test_a_new_file_gets_the_current_version(tmp_path):
    path = tmp_path / "j.sqlite"
    await reopen(path)
    assert pragma(path, "user_version") == len(_schema.MIGRATIONS) == 4
    assert pragma(path, "application_id") == _schema.APPLICATION_ID
    assert pragma(path, "journal_mode") == "wal"


async def test_an_older_journal_is_migrated_forward(tmp_path, monkeypatch):
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    await store.add([new_task("old")])
    await store.close()
    current = len(_schema.MIGRATIONS)
    assert pragma(path, "user_version") == current

    def backfill(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE tasks SET note = 'old task'")

    newer = Migration(
        version=current + 1, description="add a note", steps=("ALTER TABLE tasks ADD COLUMN note TEXT", backfill)
    )
    monkeypatch.setattr(_schema, "MIGRATIONS", (*_schema.MIGRATIONS, newer))
    rows = await reopen(path)
    assert [r.id for r in rows] == ["old"]
    assert pragma(path, "user_version") == current + 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT note FROM tasks").fetchall() == [("old task",)]
    conn.close()

    # This build refuses what the "newer" build wrote.
    monkeypatch.undo()
    with pytest.raises(StoreError, match=f"version {current + 1}"):
        await reopen(path)


async def test_a_failing_migration_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "j.sqlite"
    await reopen(path)
    current = len(_schema.MIGRATIONS)
    broken = Migration(version=current + 1, description="broken", steps=("ALTER TABLE tasks ADD COLUMN x", "NOT SQL"))
    monkeypatch.setattr(_schema, "MIGRATIONS", (*_schema.MIGRATIONS, broken))
    with pytest.raises(StoreError, match="cannot open the journal"):
        await reopen(path)
    assert pragma(path, "user_version") == current
    monkeypatch.undo()
    assert await reopen(path) == []


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

    def broken(self, batch):
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


async def test_acknowledged_adds_survive_a_sigkill(tmp_path):
    path = tmp_path / "j.sqlite"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        acknowledged = [int(child.stdout.readline()) for _ in range(30)]
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    rows = await reopen(path)  # the kernel dropped the dead child's lock; SQLite rolls back its torn transaction
    batches: dict[int, int] = {}
    for row in rows:
        batch = int(row.id.split("-")[0])
        batches[batch] = batches.get(batch, 0) + 1
    assert set(acknowledged) <= set(batches)
    assert all(count == 100 for count in batches.values())  # every transaction all or nothing


# ================================================================ the change log and checkpoints
def _state(task: StoredTask) -> tuple:
    return (task.name, task.args, task.kwargs, task.priority, task.retries, task.deadline, task.not_before,
            task.state, task.attempt, task.failures, task.losses, task.session, task.outcome, task.submitted_at,
            task.finished_at)  # fmt: skip


def _snapshot(path, to) -> None:
    """A copy of the journal as a crash would leave it: its last commit (SQLite's backup reads one commit)."""
    source, target = sqlite3.connect(path), sqlite3.connect(to)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


@pytest.mark.parametrize("seed", range(24))
async def test_narrow_updates_checkpoints_and_recovery_match_a_model(tmp_path, monkeypatch, seed):
    """Random operations against the store and against a dict: reopened (cleanly, or from a copy taken
    mid-way, which recovery must replay from the change log) the journal holds what the dict holds.

    Tiny generations make checkpoints close and apply slices all the time.
    """
    import random

    monkeypatch.setattr(_checkpoint, "GENERATION_OPS", 7 if seed % 4 else 10**9)  # or only the one at close
    monkeypatch.setattr(_checkpoint, "SLICE", 3)
    rng = random.Random(seed)
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path, commit_interval=rng.choice([0.0, 0.001, 60]))
    await store.open()
    model: dict[str, StoredTask] = {}
    ever: list[str] = []
    snapshots = []
    for step in range(400):
        action = rng.random()
        if action < 0.15:  # accept new tasks (sometimes an id that was forgotten before)
            ids = [f"t{len(ever) + i}" for i in range(rng.randint(1, 4))]
            if rng.random() < 0.2:
                ids += [i for i in rng.sample(ever, min(2, len(ever))) if i not in model]
            ever.extend(i for i in ids if i not in ever)
            how = rng.random()
            if how < 0.3:  # tasks accepted together, sharing every field but id and args (a map() chunk)
                args = [[rng.randint(0, 9), "ü", 0.1 * step] for _ in ids]
                shared = ("g", {"k": 2} if rng.random() < 0.3 else {}, rng.randint(0, 2), rng.choice([None, 3]),
                          rng.choice([None, 2e9 + 0.5]), rng.choice([None, 1.5e9]), 1000.0 + step / 3)  # fmt: skip
                await store.add_new_many(ids, args, *shared)
                for args_list in args:
                    args_list.append("changed after add_new_many returned")  # must not reach the journal
                new = [(i, shared[0], a[:-1], *shared[1:]) for i, a in zip(ids, args)]
                for t in new:
                    model[t[0]] = StoredTask(id=t[0], name=t[1], args=t[2], kwargs=t[3], priority=t[4], retries=t[5],
                                             deadline=t[6], not_before=t[7], submitted_at=t[8])  # fmt: skip
            elif how < 0.6:
                new = [(i, "f", [rng.randint(0, 9), "ü"], {"k": 1} if rng.random() < 0.3 else {}, rng.randint(0, 2),
                        rng.choice([None, 3]), rng.choice([None, 2e9]), None, 1000.0 + step) for i in ids]  # fmt: skip
                await store.add_new(new)
                for t in new:
                    model[t[0]] = StoredTask(id=t[0], name=t[1], args=t[2], kwargs=t[3], priority=t[4], retries=t[5],
                                             deadline=t[6], not_before=t[7], submitted_at=t[8])  # fmt: skip
            else:
                tasks = [new_task(i, args=[step], not_before=1.5e9 if rng.random() < 0.3 else None) for i in ids]
                await store.add(tasks)
                model.update((t.id, attrs.evolve(t)) for t in tasks)
        elif action < 0.45 and model:  # a worker takes one, or several at once
            attempt, failures, losses = rng.randint(1, 3), rng.randint(0, 2), rng.randint(0, 2)
            session = rng.choice(["s1", "s2", "s3"])
            if rng.random() < 0.5:
                ids = [rng.choice(list(model))]
                store.update_running(ids[0], attempt, failures, losses, session)
            else:  # sometimes with a task named twice in one commit, or taken after it ended
                ids = rng.sample(list(model), min(len(model), rng.randint(1, 5)))
                store.update_running_many(ids, attempt, failures, losses, session)
            for task_id in ids:
                model[task_id] = attrs.evolve(model[task_id], state="running", attempt=attempt, failures=failures,
                                              losses=losses, session=session, not_before=None)  # fmt: skip
        elif action < 0.7 and model:  # one ends
            task_id = rng.choice(list(model))
            attempt = rng.randint(1, 3)
            outcome = {"id": task_id, "status": "ok", "attempt": attempt, "value": [step, 0.1, "é"]}
            finished_at = rng.choice([2000.0, 2000.5, 2000.0 + step])
            store.update_done(task_id, attempt, 0, 1, outcome, finished_at)
            model[task_id] = attrs.evolve(model[task_id], state="done", args=[], kwargs={}, not_before=None,
                                          attempt=attempt, failures=0, losses=1, session=None, outcome=outcome,
                                          finished_at=finished_at)  # fmt: skip
        elif action < 0.8:  # a whole new state (a requeue, say), sometimes of a task the store never saw
            task_id = rng.choice(list(model) or ["fresh"]) if rng.random() < 0.8 else f"u{step}"
            ever.append(task_id)
            task = new_task(task_id, args=[step], state="queued", attempt=rng.randint(0, 3), failures=1)
            store.update(task)
            model[task_id] = attrs.evolve(task)
        elif action < 0.93:  # outcomes expire (and an id nobody knows)
            ids = rng.sample(list(model), min(len(model), rng.randint(1, 3))) + ["never"]
            store.forget(ids)
            for task_id in ids:
                model.pop(task_id, None)
        else:
            await store.flush()
            if rng.random() < 0.3:
                copy = tmp_path / f"crash-{step}.sqlite"
                _snapshot(path, copy)
                snapshots.append((copy, {k: _state(v) for k, v in model.items()}))
    await store.close()
    assert {r.id: _state(r) for r in await reopen(path)} == {k: _state(v) for k, v in model.items()}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM changes").fetchone()[0] == 0  # close checkpointed everything
    conn.close()
    assert snapshots
    for copy, expected in snapshots:
        assert {r.id: _state(r) for r in await reopen(copy)} == expected


async def test_tasks_that_come_and_go_between_checkpoints_never_reach_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(_checkpoint, "GENERATION_SECONDS", 3600.0)
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path, commit_interval=60)  # only add() and flush() commit
    await store.open()
    await store.add_new([(f"t{i}", "add", [i, 1], {}, 0, None, None, None, 1000.0) for i in range(100)])
    for i in range(100):
        store.update_running(f"t{i}", 1, 0, 0, "session")
    await store.flush()
    for i in range(100):
        store.update_done(f"t{i}", 1, 0, 0, {"id": f"t{i}", "status": "ok", "attempt": 1, "value": i + 1}, 2000.0)
    store.forget([f"t{i}" for i in range(90)])
    await store.flush()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM changes").fetchone()[0] == 3  # one row per commit
    await store.close()  # the checkpoint at close writes the net result: the 10 outcomes kept
    assert conn.execute("SELECT id, state FROM tasks ORDER BY seq").fetchall() == [
        (f"t{i}", "done") for i in range(90, 100)
    ]
    assert conn.execute("SELECT count(*) FROM changes").fetchone()[0] == 0
    conn.close()
    rows = await reopen(path)
    assert rows[0].outcome == {"id": "t90", "status": "ok", "attempt": 1, "value": 91} and rows[0].args == []


async def test_recovery_replays_the_change_log_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(_checkpoint, "GENERATION_SECONDS", 3600.0)
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    await store.add_new(
        [("a", "add", [1], {}, 0, None, None, None, 1000.0), ("b", "add", [2], {}, 0, None, None, None, 1000.0)]
    )
    store.update_running("a", 1, 0, 0, "s1")
    store.forget(["b"])
    await store.add_new([("b", "add", [3], {}, 5, None, None, None, 1001.0)])  # the same id again, after its forget
    store.update_done("a", 1, 0, 0, {"id": "a", "status": "ok", "attempt": 1, "value": 2}, 2000.0)
    await store.flush()
    _snapshot(path, tmp_path / "crash.sqlite")  # as a SIGKILL would leave it: all of it in the change log
    await store.close()
    for journal in (tmp_path / "crash.sqlite", path):
        rows = {r.id: r for r in await reopen(journal)}
        assert rows["a"].state == "done" and rows["a"].outcome["value"] == 2
        assert rows["b"].state == "queued" and rows["b"].args == [3] and rows["b"].priority == 5


async def test_a_version_1_journal_is_migrated_with_its_tasks(tmp_path):
    """Version 1 kept one column per field; version 2 one JSON array per task, and the change log."""
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    for step in _schema.MIGRATIONS[0].steps:
        conn.execute(step)
    conn.execute(f"PRAGMA application_id = {_schema.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    columns = ("id, name, args, kwargs, priority, retries, deadline, not_before, state, attempt, failures, losses, "
               "session, outcome, submitted_at, finished_at")  # fmt: skip
    conn.executemany(f"INSERT INTO tasks ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        ("q", "mail", '["ünï", {"n": [1, 2.5, null]}]', '{"to": "ops"}', 7, 3, 1764281234.5678902, 1.5e9, "queued",
         0, 1, 0, None, None, 1234.5678901234567, None),
        ("r", "add", "[1, 2]", "{}", 0, None, None, None, "running", 2, 0, 1, "s1", None, 1000.0, None),
        ("d", "add", "[]", "{}", 0, None, None, None, "done", 1, 0, 0, None,
         '{"id": "d", "status": "ok", "attempt": 1, "value": 0.1}', 1000.0, 2000.25),
    ])  # fmt: skip
    conn.commit()
    conn.close()
    rows = await reopen(path)
    assert pragma(path, "user_version") == len(_schema.MIGRATIONS)
    assert [r.id for r in rows] == ["q", "r", "d"]
    assert rows[0] == StoredTask(  # every float exactly as it was
        id="q", name="mail", args=["ünï", {"n": [1, 2.5, None]}], kwargs={"to": "ops"}, priority=7, retries=3,
        deadline=1764281234.5678902, not_before=1.5e9, failures=1, submitted_at=1234.5678901234567,
    )  # fmt: skip
    assert (rows[1].state, rows[1].attempt, rows[1].losses, rows[1].session) == ("running", 2, 1, "s1")
    assert rows[2].outcome == {"id": "d", "status": "ok", "attempt": 1, "value": 0.1} and rows[2].finished_at == 2000.25
    # and the migrated journal works like any other
    store = SQLiteStore(path)
    await store.open()
    store.update_done("q", 1, 1, 0, {"id": "q", "status": "ok", "attempt": 1}, 3000.0)
    await store.close()
    assert {r.id: r.state for r in await reopen(path)} == {"q": "done", "r": "running", "d": "done"}


async def test_outcomes_come_back_from_the_change_log_exactly(tmp_path, monkeypatch):
    """The usual outcome is journaled without its dict (format 3); every other shape as it is."""
    monkeypatch.setattr(_checkpoint, "GENERATION_SECONDS", 3600.0)
    path = tmp_path / "j.sqlite"
    outcomes = {
        "usual": {"id": "usual", "status": "ok", "attempt": 1, "value": {"n": [1, 0.1, None], "s": "ünï"}},
        "float": {"id": "float", "status": "ok", "attempt": 1, "value": 1764281234.5678902},
        "order": {"status": "ok", "id": "order", "attempt": 1, "value": 1},  # other key order: kept
        "bool": {"id": "bool", "status": "ok", "attempt": True, "value": 1},  # True is not the attempt 1
        "other-id": {"id": "x", "status": "ok", "attempt": 1, "value": 1},
        "other-attempt": {"id": "other-attempt", "status": "ok", "attempt": 2, "value": 1},
        "error": {"id": "error", "status": "error", "attempt": 1, "error": {"type": "E", "message": "m"}},
        "extra": {"id": "extra", "status": "ok", "attempt": 1, "value": 1, "reason": "r"},
        "failures": {"id": "failures", "status": "ok", "attempt": 1, "value": 2},
    }
    store = SQLiteStore(path)
    await store.open()
    await store.add_new([(task_id, "add", [], {}, 0, None, None, None, 1000.0) for task_id in outcomes])
    for task_id, outcome in outcomes.items():
        store.update_done(task_id, 1, 1 if task_id == "failures" else 0, 0, outcome, 2000.0)
    await store.flush()
    conn = sqlite3.connect(path)
    (ops,) = conn.execute("SELECT ops FROM changes ORDER BY seq DESC LIMIT 1").fetchone()
    conn.close()
    assert '"usual",1,"ok",{' in ops and '{"id":"usual"' not in ops  # journaled compactly
    _snapshot(path, tmp_path / "crash.sqlite")  # all of it in the change log
    await store.close()
    for journal in (tmp_path / "crash.sqlite", path):  # replayed, and checkpointed
        rows = {r.id: r for r in await reopen(journal)}
        for task_id, outcome in outcomes.items():
            assert list(rows[task_id].outcome.items()) == list(outcome.items())  # keys in their order too
            assert type(rows[task_id].outcome["attempt"]) is type(outcome["attempt"])
            assert rows[task_id].failures == (1 if task_id == "failures" else 0)


# A crashed journal of an older version: its change log still applies after the migration.
# The same history each time: a and b added, b started on s1, a ended with 3 at 2000.5.
_OLDER_CHANGE_LOGS = {
    2: [  # segments of four groups
        '[[[["a","add",[1],{},0,null,null,null,1000.0],["b","add",[2],{},0,null,null,null,1000.0]],[],[],[]]]',
        '[[[],[["s1",1,0,0,["b"]]],[[2000.5,0,0,["a",1,{"id":"a","status":"ok","attempt":1,"value":3}]]],[]]]',
    ],
    3: [  # five groups: the fifth holds the usual outcome without its dict; no accepted group
        '[[[["a","add",[1],{},0,null,null,null,1000.0],["b","add",[2],{},0,null,null,null,1000.0]],[],[],[],[]]]',
        '[[[],[["s1",1,0,0,["b"]]],[],[],[[2000.5,0,0,["a",1,"ok",3]]]]]',
    ],
}  # fmt: skip


@pytest.mark.parametrize("version", sorted(_OLDER_CHANGE_LOGS))
async def test_an_older_change_log_is_replayed_after_the_migration(tmp_path, monkeypatch, version):
    monkeypatch.setattr(_checkpoint, "GENERATION_SECONDS", 3600.0)
    path = tmp_path / "j.sqlite"
    await journal_with_changes(path, _OLDER_CHANGE_LOGS[version], version)
    rows = {r.id: r for r in await reopen(path)}
    assert pragma(path, "user_version") == len(_schema.MIGRATIONS)
    assert rows["a"].state == "done" and rows["a"].outcome == {"id": "a", "status": "ok", "attempt": 1, "value": 3}
    assert rows["a"].finished_at == 2000.5
    assert (rows["b"].state, rows["b"].session, rows["b"].args) == ("running", "s1", [2])


@pytest.mark.parametrize("change", [
    '[[[],[],[],[],[[2000.0,0,0,["a",1,"ok"]]]]]',  # a compact outcome group of three, not four
    '[[[],[],[],[],[],[["add",{},0,null,null,null,1.0,["a"]]]]]',  # an accepted group: an id without args
])  # fmt: skip
async def test_a_group_that_does_not_decode_is_refused_as_corrupt(tmp_path, change):
    path = tmp_path / "j.sqlite"
    await journal_with_changes(path, [change])
    with pytest.raises(StoreError) as info:
        await reopen(path)
    assert info.value.code == "corrupt" and "change log" in str(info.value)


async def test_tasks_accepted_together_are_one_group_and_recover_one_by_one(tmp_path, monkeypatch):
    monkeypatch.setattr(_checkpoint, "GENERATION_SECONDS", 3600.0)  # no checkpoint: recovery reads the change log
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    await store.add_new_many(["m1", "m2", "m3"], [[1, 2], (3, 4), ["ü"]], "add", {}, 2, 3, 2e9, None, 1000.25)
    store.update_running_many(["m1"], 1, 0, 0, "s1")
    store.forget(["m3"])
    await store.flush()
    with pytest.raises(ValueError):
        await store.add_new_many(["x"], [], "add", {}, 0, None, None, None, 1000.0)
    with pytest.raises(ValueError):  # NaN is not JSON: the caller hears of it, nothing is buffered
        await store.add_new_many(["x"], [[float("nan")]], "add", {}, 0, None, None, None, 1000.0)
    conn = sqlite3.connect(path)
    (first,) = conn.execute("SELECT ops FROM changes ORDER BY seq LIMIT 1").fetchone()
    conn.close()
    # The shared fields once, then id and args pairs.
    assert first == '[[[],[],[],[],[],[["add",{},2,3,2000000000.0,null,1000.25,["m1",[1,2],"m2",[3,4],"m3",["ü"]]]]]]'
    _snapshot(path, tmp_path / "crash.sqlite")
    await store.close()
    for copy in (tmp_path / "crash.sqlite", path):  # replayed from the change log, and checkpointed at close
        rows = {r.id: r for r in await reopen(copy)}
        assert sorted(rows) == ["m1", "m2"]
        assert (rows["m1"].state, rows["m1"].session, rows["m1"].args) == ("running", "s1", [1, 2])
        assert (rows["m2"].state, rows["m2"].args, rows["m2"].priority, rows["m2"].retries) == ("queued", [3, 4], 2, 3)
        assert (rows["m2"].deadline, rows["m2"].submitted_at) == (2e9, 1000.25)


async def test_a_change_log_that_does_not_decode_is_refused_as_corrupt(tmp_path, monkeypatch):
    monkeypatch.setattr(_checkpoint, "GENERATION_SECONDS", 3600.0)
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    await store.add([new_task("a")])
    _snapshot(path, tmp_path / "crash.sqlite")
    await store.close()
    conn = sqlite3.connect(tmp_path / "crash.sqlite")
    conn.execute("UPDATE changes SET ops = '[[[[\"a\", 1]], [], [], []]]'")  # a row of 2 fields
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as info:
        await reopen(tmp_path / "crash.sqlite")
    assert info.value.code == "corrupt" and "change log" in str(info.value)
