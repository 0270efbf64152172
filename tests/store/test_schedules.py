"""Schedule records in the SQLite store: upsert by name, durable on return, in order with task changes,
migrated from format 4, and nothing kept by memory:."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from trioschedule import MemoryStore
from trioschedule._store.sqlite import SQLiteStore
from trioschedule._store.sqlite import schema as _schema

from .helpers import new_task


async def test_records_are_upserted_by_name_deleted_and_loaded_after_a_reopen(tmp_path) -> None:
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    assert await store.load_schedules() == []
    await store.save_schedules([{"name": "a", "n": 1}, {"name": "b", "n": 2, "nested": {"x": [1, None]}}])
    await store.save_schedules([{"name": "a", "n": 3}])
    await store.delete_schedule("b")
    await store.delete_schedule("never-there")
    await store.close()
    await store.open()
    assert await store.load_schedules() == [{"name": "a", "n": 3}]
    await store.close()


async def test_a_saved_record_is_on_disk_when_save_returns_with_the_task_changes_buffered_before_it(tmp_path) -> None:
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path, commit_interval=60.0)  # buffered updates would wait a minute for company
    await store.open()
    store.update(new_task("t1"))
    await store.save_schedules([{"name": "s", "last_fire": 5.0}])
    # What a crash now leaves: a copy of the files, read by a fresh store.
    for suffix in ("", "-wal"):
        shutil.copy(f"{path}{suffix}", f"{tmp_path / 'copy.sqlite'}{suffix}")
    await store.close()
    crashed = SQLiteStore(tmp_path / "copy.sqlite")
    rows = await crashed.open()
    assert [row.id for row in rows] == ["t1"]
    assert await crashed.load_schedules() == [{"name": "s", "last_fire": 5.0}]
    await crashed.close()


async def test_a_record_that_is_not_json_is_refused_and_nothing_is_buffered(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "j.sqlite")
    await store.open()
    with pytest.raises((TypeError, ValueError)):
        await store.save_schedules([{"name": "s", "bad": object()}])
    await store.save_schedules([{"name": "ok"}])
    assert store.statistics().failed is False
    await store.close()


async def test_a_format_4_journal_gets_the_schedules_table(tmp_path) -> None:
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    await store.add([new_task("old")])
    await store.close()
    with sqlite3.connect(path) as conn:  # as trioschedule with format 4 left it
        conn.execute("DROP TABLE schedules")
        conn.execute("PRAGMA user_version = 4")
    assert _schema.MIGRATIONS[4].version == 5
    store = SQLiteStore(path)
    rows = await store.open()
    assert [row.id for row in rows] == ["old"]
    await store.save_schedules([{"name": "s"}])
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
        assert conn.execute("SELECT name FROM schedules").fetchall() == [("s",)]


async def test_memory_keeps_no_schedules() -> None:
    store = MemoryStore()
    await store.open()
    await store.save_schedules([{"name": "s"}])
    assert await store.load_schedules() == []
