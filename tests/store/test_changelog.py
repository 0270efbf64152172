"""The change log's format: what a commit writes, and that recovery reads it back exactly."""

from __future__ import annotations

import json
import sqlite3

import pytest

from trioschedule import StoreError
from trioschedule._json import json_encoder
from trioschedule._store import changelog
from trioschedule._store import generation as _checkpoint
from trioschedule._store.changelog import FINISH, FORGET, RUN, RUNS, SEGMENT_GROUPS, VALUES
from trioschedule._store.sqlite import SQLiteStore

from .helpers import journal_with_changes, new_task, reopen, snapshot


def test_a_batch_is_segments_that_decode_to_the_same_operations():
    """No SQLite: what a commit writes, and what recovery makes of it, in order."""
    encode = json_encoder(check_circular=True)
    outcome = {"id": "b", "status": "ok", "attempt": 1, "value": [3, 0.1]}
    batch = [
        *changelog.new_rows([("a", "add", [1], {}, 0, None, None, None, 1000.0),
                             ("b", "add", [2], {}, 0, 3, 2e9, None, 1000.0)], encode),
        (RUNS, ["a"], "s1", 1, 0, 0),
        (FINISH, "b", 1, outcome, 2000.5, 0, 1),
        (FORGET, "gone"),
        (RUN, "a", "s2", 2, 0, 1),
    ]  # each later operation on "a" starts a segment
    text, forgets, changes = changelog.segments_text(batch, encode)
    assert (forgets, changes) == (1, 6)
    segments = json.loads(text)
    assert len(segments) == 3 and all(len(segment) == len(SEGMENT_GROUPS) - 1 for segment in segments)
    groups = dict(zip(SEGMENT_GROUPS, segments[1]))
    assert groups["finished"] == [[2000.5, 0, 1, ["b", 1, "ok", [3, 0.1]]]]  # the usual outcome, without its dict
    defaults = ("queued", 0, 0, 0, None, None, None)
    assert changelog.recovered(text) == [
        (VALUES, "a", ("a", "add", [1], {}, 0, None, None, None, 1000.0, *defaults)),
        (VALUES, "b", ("b", "add", [2], {}, 0, 3, 2e9, None, 1000.0, *defaults)),
        (RUN, "a", "s1", 1, 0, 0),
        (FINISH, "b", 1, outcome, 2000.5, 0, 1),
        (FORGET, "gone"),
        (RUN, "a", "s2", 2, 0, 1),
    ]


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
    snapshot(path, tmp_path / "crash.sqlite")  # all of it in the change log
    await store.close()
    for journal in (tmp_path / "crash.sqlite", path):  # replayed, and checkpointed
        rows = {r.id: r for r in await reopen(journal)}
        for task_id, outcome in outcomes.items():
            assert list(rows[task_id].outcome.items()) == list(outcome.items())  # keys in their order too
            assert type(rows[task_id].outcome["attempt"]) is type(outcome["attempt"])
            assert rows[task_id].failures == (1 if task_id == "failures" else 0)


# A crashed journal of an older version: its change log still applies after the migration.

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
    snapshot(path, tmp_path / "crash.sqlite")
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
    snapshot(path, tmp_path / "crash.sqlite")
    await store.close()
    conn = sqlite3.connect(tmp_path / "crash.sqlite")
    conn.execute("UPDATE changes SET ops = '[[[[\"a\", 1]], [], [], []]]'")  # a row of 2 fields
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as info:
        await reopen(tmp_path / "crash.sqlite")
    assert info.value.code == "corrupt" and "change log" in str(info.value)
