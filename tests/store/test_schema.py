"""The journal file: refusals (newer, not a journal, damaged), versions and migrations."""

from __future__ import annotations

import os
import sqlite3

import pytest

from trioschedule import StoreError
from trioschedule._store import generation as _checkpoint
from trioschedule._store.base import StoredTask
from trioschedule._store.sqlite import Migration, SQLiteStore
from trioschedule._store.sqlite import schema as _schema

from .helpers import journal_with_changes, new_task, pragma, reopen


# ================================================================ refusals
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


def _overwrite_page(path, page: int) -> None:
    with open(path, "r+b") as file:
        file.seek(4096 * page)
        file.write(b"\xa5" * 4096)


async def test_damaged_pages_are_refused_as_corrupt(tmp_path):
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    await store.open()
    await store.add([new_task(f"t{i}", name="x" * 50) for i in range(3000)])
    await store.close()
    _overwrite_page(path, 2)  # the third page: inside the tasks table
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
    assert pragma(path, "user_version") == len(_schema.MIGRATIONS) == 5
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


