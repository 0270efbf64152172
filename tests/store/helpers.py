"""What the store tests share: tasks to journal, and journals to open, inspect and copy as a crash leaves them."""

from __future__ import annotations

import sqlite3

from trioschedule._store.base import StoredTask
from trioschedule._store.sqlite import SQLiteStore


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
        if version < 5:  # format 5 added the schedules table
            conn.execute("DROP TABLE schedules")
    conn.executemany("INSERT INTO changes (ops) VALUES (?)", [(text,) for text in changes])
    conn.commit()
    conn.close()


def state_of(task: StoredTask) -> tuple:
    return (task.name, task.args, task.kwargs, task.priority, task.retries, task.deadline, task.not_before,
            task.state, task.attempt, task.failures, task.losses, task.session, task.outcome, task.submitted_at,
            task.finished_at)  # fmt: skip


def snapshot(path, to) -> None:
    """A copy of the journal as a crash would leave it: its last commit (SQLite's backup reads one commit)."""
    source, target = sqlite3.connect(path), sqlite3.connect(to)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
