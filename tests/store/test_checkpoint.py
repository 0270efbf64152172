"""Checkpoints: the tasks table catches up with the change log, and recovery replays what it has not."""

from __future__ import annotations

import sqlite3
from typing import Any

import attrs
import pytest

from trioschedule._store import generation as _checkpoint
from trioschedule._store.base import StoredTask
from trioschedule._store.postgresql import PostgreSQLStore
from trioschedule._store.sqlite import SQLiteStore

from ..postgres import journal_rows
from .helpers import new_task, reopen, snapshot, state_of

STORES = [
    *(pytest.param("sqlite", seed, id=f"sqlite-{seed}") for seed in range(24)),
    # The PostgreSQL store folds and checkpoints with the same code and its own statements.
    *(pytest.param("postgresql", seed, id=f"postgresql-{seed}", marks=pytest.mark.postgresql) for seed in range(6)),
]


@pytest.mark.parametrize(("kind", "seed"), STORES)
async def test_narrow_updates_checkpoints_and_recovery_match_a_model(tmp_path, monkeypatch, request, kind, seed):
    """Random operations against the store and against a dict: reopened (cleanly, or for SQLite from a
    copy taken mid-way, which recovery must replay from the change log) the journal holds what the
    dict holds.

    Tiny generations make checkpoints close and apply slices all the time.
    """
    import random

    monkeypatch.setattr(_checkpoint, "GENERATION_OPS", 7 if seed % 4 else 10**9)  # or only the one at close
    monkeypatch.setattr(_checkpoint, "SLICE", 3)
    rng = random.Random(seed)
    path = tmp_path / "j.sqlite"
    commit_interval = rng.choice([0.0, 0.001, 60])
    store: Any
    if kind == "sqlite":
        store = SQLiteStore(path, commit_interval=commit_interval)
    else:
        url = request.getfixturevalue("postgres_url")
        store = PostgreSQLStore(url, commit_interval=commit_interval)
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
        elif action < 0.93:  # outcomes expire (sometimes with an id nobody knows)
            ids = rng.sample(list(model), min(len(model), rng.randint(1, 3))) + ["never"] * (rng.random() < 0.5)
            store.forget(ids)
            for task_id in ids:
                model.pop(task_id, None)
        else:
            await store.flush()
            if kind == "sqlite" and rng.random() < 0.3:
                copy = tmp_path / f"crash-{step}.sqlite"
                snapshot(path, copy)
                snapshots.append((copy, {k: state_of(v) for k, v in model.items()}))
    await store.close()
    if kind == "postgresql":
        again = PostgreSQLStore(url)
        recovered = {r.id: state_of(r) for r in await again.open()}
        await again.close()
        assert recovered == {k: state_of(v) for k, v in model.items()}
        assert journal_rows(url, "SELECT count(*) FROM trioschedule_changes") == [(0,)]  # all checkpointed
        return
    assert {r.id: state_of(r) for r in await reopen(path)} == {k: state_of(v) for k, v in model.items()}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM changes").fetchone()[0] == 0  # close checkpointed everything
    conn.close()
    assert snapshots
    for copy, expected in snapshots:
        assert {r.id: state_of(r) for r in await reopen(copy)} == expected


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
    snapshot(path, tmp_path / "crash.sqlite")  # as a SIGKILL would leave it: all of it in the change log
    await store.close()
    for journal in (tmp_path / "crash.sqlite", path):
        rows = {r.id: r for r in await reopen(journal)}
        assert rows["a"].state == "done" and rows["a"].outcome["value"] == 2
        assert rows["b"].state == "queued" and rows["b"].args == [3] and rows["b"].priority == 5


