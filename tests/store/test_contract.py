"""The store contract (docs/STORE.md), run against every durable store: SQLite and PostgreSQL.

Each test gets ``journal``: a factory of stores on one fresh journal (a file
in ``tmp_path``, or a database of its own on the suite's PostgreSQL server),
so closing one store and opening another is what a restart does.
Store-specific behaviour is tested beside each store (test_store.py,
test_postgresql.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import trio

from trioschedule import SQLiteStore, StoreError
from trioschedule._store.base import Store, StoredTask
from trioschedule._store.registry import open_store

from .helpers import done, new_task, state_of

Journal = Callable[..., Store]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def journal(request, tmp_path) -> Journal:
    if request.param == "sqlite":
        path = tmp_path / "journal.sqlite"
        return lambda **kwargs: SQLiteStore(path, **kwargs)
    from trioschedule._store.postgresql import PostgreSQLStore

    url = request.getfixturevalue("postgres_url")
    return lambda **kwargs: PostgreSQLStore(url, **kwargs)


async def reopen(journal: Journal, **kwargs) -> list[StoredTask]:
    store = journal(**kwargs)
    rows = await store.open()
    await store.close()
    return rows


async def test_round_trip_in_recovery_order(journal):
    store = journal()
    assert store.durable and await store.open() == []
    full = new_task(
        "full", name="mail", args=["ünïcode", {"nested": [1, 2.5, None, True]}], kwargs={"to": "ops", "a": 0.1},
        priority=7, retries=3, deadline=2e9 + 0.123456789, not_before=1.5e9, submitted_at=1234.5,
    )  # fmt: skip
    await store.add([new_task("a"), full, new_task("b"), new_task("c"), new_task("gone")])
    store.update(StoredTask(id="b", name="add", args=[1, 2], kwargs={}, state="running", attempt=1, session="s1"))
    store.update(done(new_task("c"), 3, finished_at=2000.0))
    store.update(done(new_task("a"), 3, finished_at=1500.0))
    store.forget(["gone", "never-existed"])
    await store.close()

    rows = await reopen(journal)
    # Unfinished first, in submission order; then finished ones, oldest first.
    assert [r.id for r in rows] == ["full", "b", "a", "c"]
    assert rows[0] == full and list(rows[0].kwargs) == ["to", "a"]  # exact, key order kept
    assert rows[1].state == "running" and rows[1].attempt == 1 and rows[1].session == "s1"
    assert rows[2].state == "done" and rows[2].outcome == {"id": "a", "status": "ok", "attempt": 0, "value": 3}
    assert rows[2].finished_at == 1500.0


async def test_new_tasks_and_narrow_updates_mean_what_whole_updates_mean(journal):
    store = journal()
    await store.open()
    assert type(store).narrow_updates()
    await store.add_new([("n", "add", [0.1, 2**53 + 1], {"z": 1, "a": [None]}, 5, 2, 3e9, 2e9, 17.25)])
    await store.add_new_many(["m1", "m2", "m3"], [[1], [2.000000001], []], "mul", {"k": 1}, 2, None, None, None, 5.5)
    store.update_running("n", 1, 0, 1, "s-n")
    store.update_running_many(["m1", "m2"], 1, 0, 0, "s-m")
    outcome = {"id": "m1", "status": "ok", "attempt": 1, "value": {"b": 1, "a": 2.5}}
    store.update_done("m1", 1, 2, 0, outcome, 99.125)
    await store.flush()
    await store.close()

    rows = {r.id: r for r in await reopen(journal)}
    assert state_of(rows["n"]) == ("add", [0.1, 2**53 + 1], {"z": 1, "a": [None]}, 5, 2, 3e9, None, "running", 1, 0,
                                   1, "s-n", None, 17.25, None)  # fmt: skip
    assert state_of(rows["m2"]) == ("mul", [2.000000001], {"k": 1}, 2, None, None, None, "running", 1, 0, 0, "s-m",
                                    None, 5.5, None)  # fmt: skip
    assert state_of(rows["m3"]) == ("mul", [], {"k": 1}, 2, None, None, None, "queued", 0, 0, 0, None, None, 5.5, None)
    assert state_of(rows["m1"]) == ("mul", [], {}, 2, None, None, None, "done", 1, 2, 0, None, outcome, 5.5, 99.125)
    assert list(rows["m1"].outcome["value"]) == ["b", "a"]
    assert [r.id for r in rows.values()] == ["n", "m2", "m3", "m1"]


async def test_update_inserts_and_the_latest_state_wins(journal):
    store = journal(commit_interval=60)  # nothing commits until flush()
    await store.open()
    for attempt in range(1, 6):  # update() of an unknown task inserts it (an upsert)
        store.update(new_task("t", state="running", attempt=attempt))
    store.update(new_task("dropped"))
    store.forget(["dropped"])
    store.forget(["back"])
    store.update(new_task("back"))
    await store.add([new_task("x")])
    store.update_running("x", 1, 0, 0, "s")
    store.update_done("x", 1, 0, 0, {"id": "x", "status": "ok", "attempt": 1, "value": 1}, 5.0)
    store.forget(["x"])
    await store.add([new_task("x", args=["again"])])  # forgotten, then added again: a new task
    store.update_running("x", 1, 0, 0, "s2")
    await store.flush()
    await store.close()
    rows = {r.id: r for r in await reopen(journal)}
    assert set(rows) == {"t", "back", "x"}
    assert rows["t"].attempt == 5
    assert rows["x"].args == ["again"] and rows["x"].session == "s2" and rows["x"].state == "running"


async def test_flush_to_a_mark_waits_for_what_came_before_it_only(journal):
    store = journal(commit_interval=3600)
    await store.open()
    nothing = store.mark()
    with trio.fail_after(10):
        await store.flush(nothing)
    assert store.statistics().commits == 0
    store.update(new_task("before"))
    mark = store.mark()
    assert mark > nothing
    store.update(new_task("after"))
    assert store.mark() == mark
    with trio.fail_after(10):
        await store.flush(mark)
    assert store.statistics().commits == 1 and store.statistics().pending == 0
    store.update(new_task("later"))
    with trio.fail_after(10):
        await store.flush(mark)
    assert store.statistics().pending == 1
    with trio.fail_after(10):
        await store.flush()
    assert store.statistics().commits == 2
    await store.close()
    assert sorted(t.id for t in await reopen(journal)) == ["after", "before", "later"]


async def test_updates_commit_without_flush(journal):
    store = journal(commit_interval=0.001)
    await store.open()
    store.update(new_task("t"))
    with trio.fail_after(10):
        while store.statistics().commits == 0:
            await trio.sleep(0.005)
    assert store.statistics().rows_written == 1
    await store.close()


async def test_concurrent_adds_share_commits(journal):
    store = journal()
    await store.open()
    batches = [[new_task(f"{b}-{i}", args=[i, 1]) for i in range(500)] for b in range(20)]
    async with trio.open_nursery() as nursery:
        for batch in batches:
            nursery.start_soon(store.add, batch)
    stats = store.statistics()
    assert stats.rows_written == 10_000 and stats.commits <= 20
    for batch in batches:
        for task in batch:
            store.update_running(task.id, 1, 0, 0, "s")
        for task in batch:
            store.update_done(task.id, 1, 0, 0, {"id": task.id, "status": "ok", "attempt": 1, "value": 2}, time.time())
    await store.flush()
    assert store.statistics().commits - stats.commits <= 5  # 20,000 buffered updates: a handful of commits
    await store.close()
    rows = await reopen(journal)
    assert len(rows) == 10_000 and all(r.state == "done" for r in rows)


async def test_retention_drops_old_outcomes_at_open(journal):
    now = time.time()
    store = journal()
    await store.open()
    await store.add([new_task("old-queued", submitted_at=now - 10_000), new_task("old-done"), new_task("new-done")])
    store.update(done(new_task("old-done"), 1, finished_at=now - 5_000))
    store.update(done(new_task("new-done"), 1, finished_at=now - 10))
    await store.close()
    assert {r.id for r in await reopen(journal)} == {"old-queued", "old-done", "new-done"}
    assert [r.id for r in await reopen(journal, retention=3600)] == ["old-queued", "new-done"]
    assert {r.id for r in await reopen(journal)} == {"old-queued", "new-done"}


async def test_misuse_is_a_runtime_error_and_a_closed_store_opens_again(journal):
    store = journal()
    with pytest.raises(RuntimeError, match="open"):
        await store.add([new_task("t")])
    with pytest.raises(RuntimeError):
        store.update(new_task("t"))
    await store.close()  # never opened: nothing to do
    await store.open()
    with pytest.raises(RuntimeError, match="open"):
        await store.open()
    with pytest.raises(ValueError, match="state"):
        store.update(new_task("t", state="delayed"))
    await store.add([])
    await store.close()
    await store.close()
    with pytest.raises(RuntimeError, match="close"):
        store.forget(["t"])
    assert await store.open() == []
    await store.close()


async def test_unencodable_states_are_refused_or_skipped_loudly(journal, caplog):
    store = journal()
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
    assert [r.id for r in await reopen(journal)] == ["fine"]


async def test_cancelled_open_still_releases_the_journal(journal):
    store = journal()
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.open()
    await store.close()  # waits for the writer thread to finish on its own
    with trio.fail_after(30):
        assert await reopen(journal) == []


async def test_a_second_store_on_the_same_journal_is_refused(journal):
    first = journal()
    await first.open()
    try:
        with pytest.raises(StoreError) as info:
            await journal().open()
        assert info.value.code == "locked"
    finally:
        await first.close()
    assert await reopen(journal) == []  # released on close


def test_the_registry_opens_both_by_url(tmp_path):
    assert isinstance(open_store(f"sqlite:{tmp_path}/j.sqlite"), SQLiteStore)
    store = open_store("postgresql://someone:secret@db.example:5433/jobs?sslmode=require")
    assert type(store).__name__ == "PostgreSQLStore" and store.durable and store.shared
    assert store.url == "postgresql://someone:***@db.example:5433/jobs?sslmode=require"  # no password in logs
    with pytest.raises(ValueError, match="postgresql://USER@HOST:PORT/DB"):
        open_store("postgresql:jobs")
