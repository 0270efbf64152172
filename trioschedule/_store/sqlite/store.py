"""A durable store: an SQLite journal in WAL mode, written by one dedicated thread.

Why a thread of its own: SQLite calls block on the disk, and the event loop
must never wait for a disk.  So every SQLite call happens on one long-lived
writer thread that owns the connection; the Trio side only appends to an
in-memory list of operations and parks until the writer says "committed".

Why group commit: a commit costs an fsync, and a dispatcher changes task
states tens of thousands of times a second.  Everything that arrives while
the writer is busy (any number of :meth:`SQLiteStore.add` batches, buffered
updates and deletes) goes into the *next* transaction.

Why a change log: a task is added, started, finished and (once its outcome
expires) forgotten, and each of those written as a change to a row of a
table costs SQLite far more than encoding it.  So a commit appends what it
journals as *one* row of ``changes`` (compact JSON); the ``tasks`` table is
brought up to date later by checkpoints, which apply each task's net change
since the last one: a task added, run, finished and forgotten between two
checkpoints never touches ``tasks`` at all.  Recovery applies whatever
``changes`` still holds, in order, on top of ``tasks``.  The contract every
store keeps, and how this one keeps it, is in docs/STORE.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import trio

from ..._errors import StoreError
from ..base import NewTask, Store, StoredTask

__all__ = ["MIGRATIONS", "Migration", "SQLiteStore", "StoreStatistics"]

log = logging.getLogger("trioschedule.store")

#: ``PRAGMA application_id`` of a trioschedule journal ("trio"), so that a
#: stray SQLite file of some other program is never mistaken for one.
APPLICATION_ID = 0x7472696F

_STATES = frozenset(("queued", "running", "done"))
_HEADER = b"SQLite format 3\x00"


def _json_encoder() -> Callable[[Any], str]:
    """``json.dumps`` (compact, UTF-8, no NaN) without its per-call set-up: a C encoder made once.

    Each thread gets its own (the circular-reference markers are per encoder).
    """
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

    def default(obj: Any) -> Any:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    markers: dict[int, Any] = {}  # the circular-reference check's; an error leaves it dirty
    encode = make(markers, default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    join = "".join

    def dumps(obj: Any) -> str:
        try:
            return join(encode(obj, 0))
        except BaseException:
            markers.clear()
            raise

    return dumps


_quote: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]  # a str as JSON


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """What :meth:`SQLiteStore.statistics` reports (counted since the last ``open()``).

    ``commits`` counts the writer's transactions that journaled changes (the
    schema set-up at open and checkpoints are not counted);
    ``rows_written``/``rows_deleted`` the task operations they journaled
    (added, updated) and the tasks they forgot; ``rows_skipped`` buffered
    updates that could not be encoded as JSON (each one is logged);
    ``pending`` the operations buffered and not yet handed to the writer;
    ``failed`` whether a write failed, which stops the store (see
    :class:`StoreError`); ``checkpoints`` how many checkpoints brought the
    ``tasks`` table up to date (see docs/STORE.md).
    """

    commits: int
    rows_written: int
    rows_deleted: int
    rows_skipped: int
    pending: int
    failed: bool
    checkpoints: int = 0


@attrs.frozen(kw_only=True)
class Migration:
    """One step of the journal's schema history: it turns version ``version - 1`` into ``version``.

    ``steps`` are SQL statements or functions of the connection, run in
    order inside the transaction that also sets ``PRAGMA user_version``.
    """

    version: int
    description: str
    steps: tuple[str | Callable[[sqlite3.Connection], None], ...]


# The schema as a history.  A file at version v gets every step after v, in
# one transaction; a file newer than the last step is refused.  To change the
# schema, append a Migration (never edit a released one) and update the
# statements below that name columns.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="create the tasks table",
        steps=(
            """
            CREATE TABLE tasks (
                seq INTEGER PRIMARY KEY,        -- insertion order: recovery requeues in it
                id TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                args TEXT NOT NULL,             -- JSON array
                kwargs TEXT NOT NULL,           -- JSON object
                priority INTEGER NOT NULL,
                retries INTEGER,
                deadline REAL,                  -- wall clock (time.time())
                not_before REAL,                -- wall clock
                state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
                attempt INTEGER NOT NULL,
                failures INTEGER NOT NULL,
                losses INTEGER NOT NULL,
                session TEXT,
                outcome TEXT,                   -- JSON object, once done
                submitted_at REAL NOT NULL,
                finished_at REAL
            )
            """,
            "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE state = 'done'",
        ),
    ),
    Migration(
        version=2,
        description="one JSON array per task, and the change log that commits append to",
        steps=(
            """
            CREATE TABLE tasks_v2 (
                seq INTEGER PRIMARY KEY,        -- insertion order: recovery requeues in it
                id TEXT NOT NULL UNIQUE,
                state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
                finished_at REAL,               -- wall clock, once done
                task TEXT NOT NULL              -- the task's row: a JSON array (see _sqlite.py)
            )
            """,
            lambda conn: _copy_v1_tasks(conn, "tasks", "tasks_v2"),
            "DROP TABLE tasks",
            "ALTER TABLE tasks_v2 RENAME TO tasks",
            "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE state = 'done'",
            """
            CREATE TABLE changes (
                seq INTEGER PRIMARY KEY,        -- commit order: recovery applies them in it
                ops TEXT NOT NULL               -- what one commit journaled: JSON segments (see _sqlite.py)
            )
            """,
        ),
    ),
    # Nothing in the file changes: a version 2 change log reads as it is.  The
    # number keeps a version 2 trioschedule from mistaking a change log with
    # the fifth kind of group for a corrupt one (it refuses a newer version).
    Migration(
        version=3,
        description="the change log holds the usual outcome compactly (a fifth group in a segment)",
        steps=(),
    ),
    # Likewise: version 3 change logs read as they are.
    Migration(
        version=4,
        description="the change log holds tasks accepted together as one group (a sixth group in a segment)",
        steps=(),
    ),
)


def _copy_v1_tasks(conn: sqlite3.Connection, source: str, target: str) -> None:
    """Version 1 kept a column per field; version 2 keeps the task as one JSON array (encoded here, exactly)."""
    dumps = _json_encoder()
    rows = conn.execute(
        f"SELECT seq, id, name, args, kwargs, priority, retries, deadline, not_before, state, attempt, failures, "
        f"losses, session, outcome, submitted_at, finished_at FROM {source} ORDER BY seq"
    )
    while batch := rows.fetchmany(1000):
        copied = [
            (seq, task_id, state, finished_at, dumps((
                task_id, name, json.loads(args), json.loads(kwargs), priority, retries, deadline, not_before,
                submitted_at, state, attempt, failures, losses, session,
                None if outcome is None else json.loads(outcome), finished_at,
            )))
            for (seq, task_id, name, args, kwargs, priority, retries, deadline, not_before, state, attempt,
                 failures, losses, session, outcome, submitted_at, finished_at) in batch
        ]  # fmt: skip
        conn.executemany(f"INSERT INTO {target} (seq, id, state, finished_at, task) VALUES (?, ?, ?, ?, ?)", copied)


# ------------------------------------------------------------- operations
# A task in ``tasks`` is one JSON array, its *row*:
#   [id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at,
#    state, attempt, failures, losses, session, outcome, finished_at]
# (args, kwargs and outcome as JSON values).  The ``id``, ``state`` and
# ``finished_at`` columns repeat the row's, for the unique index, the recovery
# order and the retention sweep.  A task as accepted is the first 9 fields
# (a NewTask) followed by _NEW_ROW_END.
#
# A row of ``changes`` is a JSON array of *segments*, applied in order; a
# segment names each task at most once, so the order within it does not
# matter.  A segment is [rows, running, done, forgotten, finished, accepted]:
#   rows       [row, ...]                 whole tasks (an upsert); a 9-field row is a new task
#   running    [[session, attempt, failures, losses, [id, ...]], ...]                 update_running()
#   done       [[finished_at, failures, losses, [id, attempt, outcome, ...]], ...]    update_done()
#   forgotten  [id, ...]                                                              forget()
#   finished   [[finished_at, failures, losses, [id, attempt, status, value, ...]], ...]
#              update_done() of the usual outcome, {"id": id, "status": status,
#              "attempt": attempt, "value": value} (these keys in this order),
#              without the dict: encoding a dict costs json three times what
#              encoding its values does.  (Format 2 segments have no finished.)
#   accepted   [[name, kwargs, priority, retries, deadline, not_before, submitted_at, [id, args, ...]], ...]
#              add_new_many(): new tasks accepted together, which differ only in
#              id and args (a map() chunk), the fields they share written once.
#              (Format 3 segments have no accepted; a segment without any ends
#              at finished.)
_NEW_ROW_END = ',"queued",0,0,0,null,null,null]'
_NEW_ROW_DEFAULTS = ("queued", 0, 0, 0, None, None, None)
_OUTCOME_KEYS = ("id", "status", "attempt", "value")  # an outcome of this shape is journaled without its dict

# Writing to ``tasks`` (checkpoints, recovery): one statement per kind for a
# whole JSON array of operations, at most one per task and kind, so that
# thousands of tasks are a few calls into SQLite (the writer thread takes the
# GIL back a few times, not once per task).  ``->>`` gives an SQL value (NULL
# for a JSON null), ``->`` the JSON text exactly as written, which
# json_replace() inserts as JSON: no number is converted on its way to
# ``task``.  Rows first, forgets last: a task may have a row and then a narrow
# update in one checkpoint, never a row and a forget.  The running and done
# statements read the operations in memory, encoded: (_RUN, id, session,
# attempt, failures, losses) and (_FINISH, id, attempt, outcome,
# finished_at, failures, losses).
_APPLY_ROWS = (
    "INSERT INTO tasks (id, state, finished_at, task) SELECT value->>0, value->>9, value->>15, value "
    "FROM json_each(?1) WHERE true "  # "WHERE true" keeps ON CONFLICT from reading as a join constraint
    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, finished_at = excluded.finished_at, task = excluded.task"
)
_APPLY_RUNNING = (
    "UPDATE tasks SET state = 'running', task = json_replace(task, '$[7]', NULL, '$[9]', 'running', "
    "'$[10]', j.value->3, '$[11]', j.value->4, '$[12]', j.value->5, '$[13]', j.value->2) "
    "FROM json_each(?1) AS j WHERE tasks.id = j.value->>1"
)
_APPLY_DONE = (
    "UPDATE tasks SET state = 'done', finished_at = j.value->>4, task = json_replace(task, '$[2]', json('[]'), "
    "'$[3]', json('{}'), '$[7]', NULL, '$[9]', 'done', '$[10]', j.value->2, '$[11]', j.value->5, "
    "'$[12]', j.value->6, '$[13]', NULL, '$[14]', j.value->3, '$[15]', j.value->4) "
    "FROM json_each(?1) AS j WHERE tasks.id = j.value->>1"
)
_APPLY_FORGETS = "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1))"
# A task that came and finished in one checkpoint: its row with the done
# fields already in, one write: [row, attempt, outcome, finished_at, failures, losses].
_APPLY_ROWS_DONE = (
    "INSERT INTO tasks (id, state, finished_at, task) SELECT value->0->>0, 'done', value->>3, "
    "json_replace(value->0, '$[2]', json('[]'), '$[3]', json('{}'), '$[7]', NULL, '$[9]', 'done', "
    "'$[10]', value->1, '$[11]', value->4, '$[12]', value->5, '$[13]', NULL, '$[14]', value->2, '$[15]', value->3) "
    "FROM json_each(?1) WHERE true "
    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, finished_at = excluded.finished_at, task = excluded.task"
)
# Unfinished tasks in submission order, then finished ones oldest first (the
# dispatcher expires outcomes from the front of that list).
_LOAD = "SELECT task FROM tasks ORDER BY state = 'done', finished_at, seq"
_PURGE = "DELETE FROM tasks WHERE state = 'done' AND finished_at < ?"
_LOG = "INSERT INTO changes (ops) VALUES (?)"
_PURGE_EVERY = 60.0  # seconds between the writer's retention sweeps
_WAL_AUTOCHECKPOINT = 4000  # pages

# Checkpoints.  The writer folds every committed operation into the current
# *generation*: each task's net change since the generation began.  A
# generation is closed once it is this old or has seen this many operations,
# and then applied to ``tasks`` a slice at a time, each slice in the
# transaction of a commit (or on its own when the writer is idle); once all
# of it is applied, the ``changes`` rows it covers are deleted in the same
# transaction.  The longer a generation, the more tasks come and go within
# it without ever being written to ``tasks``; the shorter, the less memory
# it holds and the less a recovery replays.
_GENERATION_SECONDS = 5.0
_GENERATION_OPS = 1_000_000
_GENERATION_TASKS = 100_000  # tasks it holds: a big backlog closes generations sooner (memory)
_SLICE = 2_000  # entries applied per transaction, at least (more under load: see _write)

# Operations in memory: tuples whose first element says what they are.  The
# Trio side appends them to one list, in call order; the writer takes them
# from its front.
#   (_NEW, id, text)       a task as accepted (add_new()), new to the journal: text is its NewTask's JSON
#   (_ACCEPTED, [id, ...], text, cache)   tasks accepted together (add_new_many()): text is their
#                          group of ``accepted`` (see above); cache, a dict, their rows once needed
#   (_ADDED, id, text)     a task from add(), new to the journal: text is its row's JSON
#   (_ROW, id, text)       a row's JSON, for a task the journal may hold already
#   (_VALUES, id, values)  a row as a tuple of JSON values (update(), recovery)
#   (_RUN, id, session, attempt, failures, losses)
#   (_RUNS, [id, ...], session, attempt, failures, losses)   tasks handed to one worker together
#   (_FINISH, id, attempt, outcome, finished_at, failures, losses)
#   (_FORGET, id)
_NEW, _RUN, _FINISH, _FORGET, _ADDED, _ROW, _VALUES = 0, 1, 2, 3, 4, 5, 6
_CHAIN = 7  # in a generation: (_CHAIN, id, done operation, running operation that came after it)
_RUNS = 8
_ACCEPTED = 9
_MANY = (_RUNS, _ACCEPTED)  # the operations that name a list of tasks
_Op = tuple[Any, ...]
_GONE: Any = ("gone",)  # a generation's "latest operation" of a forgotten task


def _values(task: StoredTask) -> _Op:
    """``task`` as a (_VALUES, id, values) operation (its JSON values not yet encoded)."""
    if task.state not in _STATES:
        raise ValueError(f"task {task.id!r}: state {task.state!r} is not one of {sorted(_STATES)}")
    return (_VALUES, task.id, (
        task.id, task.name, task.args or [], task.kwargs or {}, task.priority, task.retries, task.deadline,
        task.not_before, task.submitted_at, task.state, task.attempt, task.failures, task.losses, task.session,
        task.outcome, task.finished_at,
    ))  # fmt: skip


def _row_text(op: _Op, task_id: str, encode: Callable[[Any], str]) -> str:
    """The row JSON of ``task_id`` from a row operation that holds it (_NEW, _ADDED, _ROW, _ACCEPTED)."""
    kind = op[0]
    if kind == _NEW:
        return op[2][:-1] + _NEW_ROW_END
    if kind == _ACCEPTED:
        cache = op[3]
        if not cache:  # the group as committed, decoded once: later changes to the arguments do not leak in
            *fields, items = json.loads(op[2])
            cache["fields"] = fields
            cache["args"] = dict(zip(items[::2], items[1::2]))
        fields = cache["fields"]
        return encode((task_id, fields[0], cache["args"][task_id], *fields[1:], *_NEW_ROW_DEFAULTS))
    return op[2]


def _new_rows(tasks: list[NewTask], dumps: Callable[[Any], str]) -> list[_Op]:
    """``tasks`` as (_NEW, id, JSON of the NewTask) operations; raises TypeError/ValueError if one cannot be.

    The tasks of one submission mostly differ only in id and arguments: the
    JSON of the fields after those is reused while they stay the same (a
    float's repr costs more than the rest of a small task).
    """
    quote = _quote
    ops: list[_Op] = []
    last: tuple[Any, ...] = ()
    head = tail = ""
    for task_id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at in tasks:
        if not (
            last and name is last[0] and (kwargs is last[1] or not kwargs and not last[1]) and priority == last[2]
            and retries == last[3] and deadline == last[4] and not_before == last[5] and submitted_at == last[6]
            and type(priority) is int and type(submitted_at) is float  # not True == 1, nor 1 == 1.0
        ):  # fmt: skip
            last = (name, kwargs, priority, retries, deadline, not_before, submitted_at)
            head = "," + quote(name) + ","
            tail = "," + dumps(last[1:])[1:]  # ',kwargs,priority,...]'
        ops.append((_NEW, task_id, f"[{quote(task_id)}{head}{dumps(args)}{tail}"))
    return ops


def _decode(text: str) -> StoredTask:
    (task_id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at, state, attempt, failures,
     losses, session, outcome, finished_at) = json.loads(text)  # fmt: skip
    if state not in _STATES:
        raise ValueError(f"task {task_id!r} has the state {state!r}")
    return StoredTask(
        id=task_id, name=name, args=args or [], kwargs=kwargs or {}, priority=priority, retries=retries,
        deadline=deadline, not_before=not_before, state=state, attempt=attempt, failures=failures, losses=losses,
        session=session, outcome=outcome, submitted_at=submitted_at, finished_at=finished_at,
    )  # fmt: skip


def _segments_text(batch: list[_Op], encode: Callable[[Any], str]) -> tuple[str, int, int]:
    """``batch`` (operations in call order) as a row of ``changes`` (JSON segments, see above).

    Also returns how many task changes it holds, and how many of those are
    forgets.  A batch that names each task once (the usual: a task's next
    operation waits for the commit of this one) is one segment, which one set
    of its ids tells; otherwise a segment ends before a task's second
    operation.
    """
    ids: list[str] = []
    add, extend = ids.append, ids.extend
    for op in batch:
        if op[0] in _MANY:
            extend(op[1])
        else:
            add(op[1])
    if len(set(ids)) == len(ids):
        text, forgets = _segment_text(batch, encode)
        return "[" + text + "]", forgets, len(ids)
    segments: list[str] = []
    forgets = 0
    seen: set[str] = set()
    start = 0
    for i, op in enumerate(batch):
        names = op[1] if op[0] in _MANY else (op[1],)
        if not seen.isdisjoint(names):
            text, count = _segment_text(batch[start:i], encode)
            segments.append(text)
            forgets += count
            seen.clear()
            start = i
        seen.update(names)
    text, count = _segment_text(batch[start:], encode)
    segments.append(text)
    return "[" + ",".join(segments) + "]", forgets + count, len(ids)


def _segment_text(ops: list[_Op], encode: Callable[[Any], str]) -> tuple[str, int]:
    """One segment (``ops`` name each task at most once), and how many forgets it holds.

    Builds no object per operation (the garbage collector's work grows with
    every one): a group is found by its first field, and its items go into
    one flat list.
    """
    rows: list[Any] = []  # row JSON texts, and row value tuples
    running: dict[str, list[Any]] = {}  # session -> [session, attempt, failures, losses, [id, ...]]
    done: dict[float, list[Any]] = {}  # finished_at -> [finished_at, failures, losses, [full items], [compact items]]
    other: list[list[Any]] = []  # groups unlike the first of their session or finished_at
    forgotten: list[str] = []
    accepted: list[str] = []  # groups, encoded
    for op in ops:
        kind = op[0]
        if kind == _RUN or kind == _RUNS:
            ids = op[1] if kind == _RUNS else (op[1],)
            group = running.get(op[2])
            if group is None:
                running[op[2]] = [op[2], op[3], op[4], op[5], list(ids)]
            elif group[1] == op[3] and group[2] == op[4] and group[3] == op[5]:
                group[4] += ids
            else:
                other.append([_RUN, op[2], op[3], op[4], op[5], list(ids)])
        elif kind == _FINISH:
            group = done.get(op[4])
            if group is None:
                group = done[op[4]] = [op[4], op[5], op[6], [], []]  # its full items, its compact items
            elif group[1] != op[5] or group[2] != op[6]:
                other.append([_FINISH, op[4], op[5], op[6], [op[1], op[2], op[3]]])
                continue
            task_id, attempt, outcome = op[1], op[2], op[3]
            if type(outcome) is dict and len(outcome) == 4 and tuple(outcome) == _OUTCOME_KEYS:
                outcome_id, status, outcome_attempt, value = outcome.values()
                if (type(outcome_id) is str and outcome_id == task_id
                        and type(outcome_attempt) is type(attempt) and outcome_attempt == attempt):
                    group[4] += (task_id, attempt, status, value)  # rebuilt exactly by _recovered()
                    continue
            group[3] += (task_id, attempt, outcome)
        elif kind == _FORGET:
            forgotten.append(op[1])
        elif kind == _ACCEPTED:
            accepted.append(op[2])
        else:
            rows.append(op[2])  # a text, or (_VALUES) a tuple of values
    groups_running = list(running.values())
    groups_done: list[list[Any]] = []
    groups_finished: list[list[Any]] = []
    for group in done.values():
        if group[3]:
            groups_done.append(group[:4])
        if group[4]:
            groups_finished.append([group[0], group[1], group[2], group[4]])
    for group in other:
        (groups_running if group[0] == _RUN else groups_done).append(group[1:])
    texts = ",".join([row if type(row) is str else encode(row) for row in rows])
    groups = encode((groups_running, groups_done, forgotten, groups_finished))
    if accepted:
        groups = groups[:-1] + ",[" + ",".join(accepted) + "]]"
    return "[[" + texts + "]," + groups[1:], len(forgotten)


def _recovered(text: str) -> list[_Op]:
    """A row of ``changes`` as operations in memory (raises ValueError/TypeError/IndexError if malformed)."""
    ops: list[_Op] = []
    for segment in json.loads(text):
        accepted: Any = ()
        if len(segment) == 6:
            rows, running, done, forgotten, finished, accepted = segment
        elif len(segment) == 5:
            rows, running, done, forgotten, finished = segment
        else:
            rows, running, done, forgotten = segment  # format 2
            finished = ()
        for row in rows:
            if type(row[0]) is not str or len(row) not in (9, 16):
                raise ValueError(f"a task row has {len(row)} fields")
            ops.append((_VALUES, row[0], (*row, *_NEW_ROW_DEFAULTS) if len(row) == 9 else tuple(row)))
        for name, kwargs, priority, retries, deadline, not_before, submitted_at, items in accepted:
            if len(items) % 2:
                raise ValueError("a group of accepted tasks is not id, args pairs")
            ops.extend(
                (_VALUES, task_id, (task_id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at,
                                    *_NEW_ROW_DEFAULTS))
                for task_id, args in zip(items[::2], items[1::2])
            )  # fmt: skip
        for session, attempt, failures, losses, ids in running:
            ops.extend((_RUN, task_id, session, attempt, failures, losses) for task_id in ids)
        for finished_at, failures, losses, items in done:
            if len(items) % 3:
                raise ValueError("a group of finished tasks is not id, attempt, outcome triples")
            ops.extend((_FINISH, items[i], items[i + 1], items[i + 2], finished_at, failures, losses)
                       for i in range(0, len(items), 3))  # fmt: skip
        for finished_at, failures, losses, items in finished:
            if len(items) % 4:
                raise ValueError("a group of finished tasks is not id, attempt, status, value quadruples")
            ops.extend(
                (_FINISH, task_id, attempt, {"id": task_id, "status": status, "attempt": attempt, "value": value},
                 finished_at, failures, losses)
                for task_id, attempt, status, value in zip(*[iter(items)] * 4)
            )  # fmt: skip
        ops.extend((_FORGET, task_id) for task_id in forgotten)
    for op in ops:
        if type(op[1]) is not str:
            raise ValueError(f"an operation names the task {op[1]!r}")
    return ops


class _Generation:
    """Each task's net change since the generation began: its latest operation, and its latest row."""

    __slots__ = ("last", "latest", "ops", "rows", "started")

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}  # task id -> its latest operation (_GONE: forgotten)
        self.rows: dict[str, _Op] = {}  # task id -> its latest row operation
        self.ops = 0  # operations folded in
        self.started = 0.0  # time.monotonic() of the first
        self.last = 0  # the last ``changes`` row folded in

    def fold(self, ops: list[_Op], encode: Callable[[Any], str]) -> None:
        """Fold operations in, in order (``encode``: the writer's, for a row that must be written out)."""
        latest, rows = self.latest, self.rows
        gone = _GONE
        for op in ops:
            kind, task_id = op[0], op[1]
            if kind == _ACCEPTED:
                for task_id in op[1]:
                    if task_id in latest:  # not new to this generation: it may be in tasks
                        rows[task_id] = latest[task_id] = (_ROW, task_id, _row_text(op, task_id, encode))
                    else:
                        rows[task_id] = latest[task_id] = op
                continue
            if kind == _RUNS:
                for task_id in op[1]:
                    previous = latest.get(task_id)
                    if previous is None or (previous is not gone and previous[0] != _FINISH and previous[0] != _CHAIN):
                        latest[task_id] = op  # as a _RUN (see apply())
                    elif previous is not gone:  # running again after it ended: see below
                        done = previous if previous[0] == _FINISH else previous[2]
                        latest[task_id] = (_CHAIN, task_id, done, (_RUN, task_id, *op[2:]))
                continue
            if kind == _RUN or kind == _FINISH:
                previous = latest.get(task_id)
                if previous is gone:
                    pass  # after a forget, a narrow update changes nothing
                elif kind == _FINISH or previous is None or (previous[0] != _FINISH and previous[0] != _CHAIN):
                    latest[task_id] = op  # done sets every field that running sets, and more
                else:
                    # Running again after it ended (not something a dispatcher does): the
                    # fields that running leaves alone keep what done gave them.
                    latest[task_id] = (_CHAIN, task_id, previous if previous[0] == _FINISH else previous[2], op)
            elif kind == _FORGET:
                row = rows.pop(task_id, None)
                if row is not None and (row[0] == _NEW or row[0] == _ADDED or row[0] == _ACCEPTED):
                    del latest[task_id]  # new in this generation and gone again: nothing to write
                else:
                    latest[task_id] = gone
            else:
                if (kind == _NEW or kind == _ADDED) and task_id in latest:
                    op = (_ROW, task_id, _row_text(op, task_id, encode))  # not new to this generation
                rows[task_id] = latest[task_id] = op
        self.ops += len(ops)  # a _RUNS counts once: this bounds memory by operations held, not tasks

    def apply(self, conn: sqlite3.Connection, task_ids: Iterable[str], encode: Callable[[Any], str]) -> None:
        """Write these tasks' net changes to ``tasks``: one statement per kind, rows first."""
        latest, rows = self.latest, self.rows
        texts: list[str] = []  # rows, encoded
        values: list[Any] = []  # rows to encode
        finished: list[str] = []  # rows with their done fields (see _APPLY_ROWS_DONE), encoded
        running: list[_Op] = []
        done: list[_Op] = []
        forgotten: list[str] = []
        for task_id in task_ids:
            op = latest[task_id]
            if op is _GONE:
                forgotten.append(task_id)
                continue
            kind = op[0]
            if kind == _RUNS:
                op = (_RUN, task_id, *op[2:])
                kind = _RUN
            if kind == _CHAIN:
                done.append(op[2])
                running.append(op[3])  # after the done ones (see below)
                op = rows.get(task_id)
                if op is None:
                    continue
                kind = op[0]
            elif kind == _RUN or kind == _FINISH:
                update = op
                op = rows.get(task_id)  # the row it updates, if that came in this generation
                if op is None:
                    (running if kind == _RUN else done).append(update)
                    continue
                if kind == _FINISH and op[0] != _VALUES:  # the usual: in one write
                    finished.append(f"[{_row_text(op, task_id, encode)},{encode(update[2:])[1:]}")
                    continue
                (running if kind == _RUN else done).append(update)
                kind = op[0]
            if kind == _VALUES:
                values.append(op[2])
            else:
                texts.append(_row_text(op, task_id, encode))
        # Each of these was encoded once already, when it was committed: this cannot fail.
        if values:
            texts.append(encode(values)[1:-1])
        if texts:
            conn.execute(_APPLY_ROWS, ("[" + ",".join(texts) + "]",))
        if finished:
            conn.execute(_APPLY_ROWS_DONE, ("[" + ",".join(finished) + "]",))
        if done:
            conn.execute(_APPLY_DONE, (encode(done),))
        if running:  # after done: a _CHAIN is done, then running again
            conn.execute(_APPLY_RUNNING, (encode(running),))
        if forgotten:
            conn.execute(_APPLY_FORGETS, (encode(forgotten),))


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    text = str(exc)
    return "not a database" in text or "malformed" in text


class _LockFile:
    """An exclusive, non-blocking lock on ``PATH.lock`` holding the owner's pid.

    ``flock`` belongs to the open file description, so the kernel drops it
    when its process dies (no stale locks to clean up), and a second open in
    the same process conflicts too.  The file is never deleted: unlinking a
    lock file races with whoever is about to lock it.
    """

    def __init__(self, path: str, journal: str) -> None:
        self.path = path
        self.journal = journal
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from exc
        try:
            _lock_nowait(fd)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "pid unknown"
            raise StoreError(
                f"the journal {self.journal} is in use by another running dispatcher ({who}, lock file {self.path}); "
                "stop that dispatcher first, or give this one a journal of its own (--store sqlite:OTHER_PATH)",
                code="locked",
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"cannot lock {self.path}: {exc.strerror or exc}; keep the journal on a local filesystem",
                code="unsupported",
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is a courtesy for error messages; the lock is what counts
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # drops the lock


if sys.platform == "win32":  # pragma: no cover - lock one byte far past the pid, which stays readable
    import msvcrt

    def _lock_nowait(fd: int) -> None:
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except PermissionError as exc:
            raise BlockingIOError(str(exc)) from exc

else:
    import fcntl

    def _lock_nowait(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).split()[0])
    except (OSError, ValueError, IndexError):
        return None


class SQLiteStore(Store):
    """A journal in one SQLite file, so a restarted dispatcher recovers its tasks.

    ``path`` is the database file; ``PATH-wal``/``PATH-shm`` (SQLite's) and
    ``PATH.lock`` (ours) live beside it.  ``retention`` (seconds) drops
    finished tasks older than that at :meth:`open` and in the writer's
    periodic sweep; None keeps them until :meth:`forget`.  ``synchronous`` is
    SQLite's setting: ``"FULL"`` (default) makes each commit survive a power
    cut, ``"NORMAL"`` only a crash of this process (faster, still
    consistent).  ``commit_interval`` is how long buffered updates may wait
    for company before the writer commits them; :meth:`add` and
    :meth:`flush` never wait for it.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: float | None = None,
        synchronous: str = "FULL",
        commit_interval: float = 0.005,
    ) -> None:
        path = os.fspath(path)
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError(f"SQLiteStore needs a file path, not {path!r} (use 'memory:' to keep nothing)")
        if retention is not None and not retention >= 0:
            raise ValueError("retention must be a number of seconds >= 0, or None")
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be 'NORMAL', 'FULL' or 'EXTRA'")
        if not commit_interval >= 0:
            raise ValueError("commit_interval must be >= 0")
        self.path = path
        self.url = "sqlite:" + path
        self.retention = retention
        self.synchronous = synchronous.upper()
        self.commit_interval = commit_interval
        self._state = "new"  # new -> opening -> open -> closing -> closed (-> opening again)
        # The hot paths take the plain lock (``with self._mutex``); waiting and
        # notifying go through the condition built on it.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._trio_encode = _json_encoder()  # the Trio side's (the writer has its own: see _reset)
        self._reset()

    def _reset(self) -> None:
        # Shared with the writer thread.  The Trio side appends to ``_ops``
        # (one list.append, atomic) and the writer takes a prefix of it under
        # ``_mutex``; everything else here only under ``_mutex``.
        self._ops: list[_Op] = []
        self._pending_since = 0.0
        self._urgent = False  # someone awaits the next commit: do not wait for company
        self._closing = False
        self._batch = 1  # the number of the batch being collected
        self._committed = 0  # the last batch number committed (read without the lock: one int)
        self._failure: BaseException | None = None
        self._commits = self._rows_written = self._rows_deleted = self._rows_skipped = self._checkpoints = 0
        # The Trio side's.
        self._lots: dict[int, trio.lowlevel.ParkingLot] = {}  # batch number -> who waits for its commit
        self._opened = trio.Event()
        self._exited = trio.Event()
        self._open_outcome: list[StoredTask] | BaseException = []
        # The writer thread's.
        self._conn: sqlite3.Connection | None = None
        self._lock = _LockFile(self.path + ".lock", self.path)
        self._next_purge = 0.0
        self._encode = _json_encoder()
        self._unfolded: tuple[list[_Op], int] | None = None  # a committed batch not folded yet
        self._generation = _Generation()  # folding in what is committed
        self._closed: _Generation | None = None  # the one before, being applied to ``tasks`` (never changed again)
        self._closed_rest: Iterator[str] = iter(())  # the task ids of it not applied yet
        self._closed_left = 0  # how many that is

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r} {self._state}>"

    # ============================================================ Trio side
    async def open(self) -> list[StoredTask]:
        """Lock the journal, check and migrate it, and return the tasks to recover.

        Raises :class:`StoreError` if another dispatcher holds the journal,
        if it was written by a newer trioschedule, or if it is corrupt or not
        a trioschedule journal; nothing is changed in those cases.
        """
        if self._state not in ("new", "closed"):
            raise RuntimeError(f"this SQLiteStore is {self._state}; open() it only when new or closed")
        self._reset()
        self._token = trio.lowlevel.current_trio_token()
        self._state = "opening"
        threading.Thread(target=self._run, name=f"trioschedule-sqlite:{self.path}", daemon=True).start()
        try:
            await self._opened.wait()
        except BaseException:
            self._begin_close()  # the thread finishes opening, then closes by itself
            self._state = "closing"
            raise
        outcome = self._open_outcome
        if isinstance(outcome, BaseException):
            self._state = "closed"
            raise outcome
        self._state = "open"
        self._open_outcome = []
        return outcome

    async def add(self, tasks: list[StoredTask]) -> None:
        """Journal new tasks; return once they are committed (the same transaction as whatever else is buffered).

        Only for tasks the journal does not hold: new ones, or ones
        :meth:`forget` dropped before.  Raises TypeError/ValueError (nothing
        buffered) if a task cannot be encoded as JSON, :class:`StoreError`
        if the journal is broken.  If cancelled while waiting, the tasks stay
        buffered and are committed anyway.
        """
        self._check_open("add")
        dumps = self._trio_encode
        ops = []
        for task in tasks:  # encoded here, so that a bad task fails its own caller
            op = _values(task)
            ops.append((_ADDED, op[1], dumps(op[2])))
        await self._add(ops)

    async def add_new(self, tasks: list[NewTask]) -> None:
        """:meth:`add` for :data:`~trioschedule._store.NewTask` tuples, encoded as they are."""
        self._check_open("add")
        await self._add(_new_rows(tasks, self._trio_encode))

    async def add_new_many(
        self, ids: list[str], args: list[Any], name: str, kwargs: dict[str, Any], priority: int, retries: int | None,
        deadline: float | None, not_before: float | None, submitted_at: float,
    ) -> None:  # fmt: skip
        """:meth:`add_new` for tasks that differ only in id and ``args``: one group, its shared fields once.

        Encoded here, in one call for the whole group (raises TypeError/ValueError,
        nothing buffered, if any of it cannot be).
        """
        self._check_open("add")
        if len(ids) != len(args):
            raise ValueError(f"{len(ids)} ids for {len(args)} argument lists")
        items: list[Any] = [None] * (2 * len(ids))
        items[::2], items[1::2] = ids, args
        text = self._trio_encode((name, kwargs, priority, retries, deadline, not_before, submitted_at, items))
        await self._add([(_ACCEPTED, ids, text, {})] if ids else [])

    async def _add(self, ops: list[_Op]) -> None:
        if not ops:
            await trio.lowlevel.checkpoint()
            return
        with self._mutex:
            self._raise_if_failed()
            if not self._ops:
                self._pending_since = time.monotonic()
            self._ops.extend(ops)
            self._urgent = True
            ticket = self._batch
            self._cond.notify()
        await self._wait_committed(ticket)

    def update(self, task: StoredTask) -> None:
        """Buffer ``task``'s new state (an upsert); the writer commits it within ``commit_interval``.

        The store keeps a reference to ``task`` until then: do not mutate it.
        """
        if self._state != "open":
            self._check_open("update")
        op = _values(task)  # raises ValueError for a bad state; the writer encodes it
        ops = self._ops
        ops.append(op)
        if len(ops) == 1:
            self._wake_writer()

    def update_running(self, task_id: str, attempt: int, failures: int, losses: int, session: str) -> None:
        """Buffer "``task_id`` runs on ``session``" (see :meth:`Store.update_running`)."""
        if self._state != "open":
            self._check_open("update")
        ops = self._ops
        ops.append((_RUN, task_id, session, attempt, failures, losses))
        if len(ops) == 1:
            self._wake_writer()

    def update_running_many(self, task_ids: list[str], attempt: int, failures: int, losses: int, session: str) -> None:
        """Buffer "these tasks run on ``session``", as one operation (the store keeps ``task_ids``)."""
        if self._state != "open":
            self._check_open("update")
        ops = self._ops
        ops.append((_RUNS, task_ids, session, attempt, failures, losses))
        if len(ops) == 1:
            self._wake_writer()

    def update_done(
        self, task_id: str, attempt: int, failures: int, losses: int, outcome: dict[str, Any], finished_at: float
    ) -> None:
        """Buffer "``task_id`` ended with ``outcome``" (see :meth:`Store.update_done`).

        The store keeps a reference to ``outcome`` until it is committed: do not mutate it.
        """
        if self._state != "open":
            self._check_open("update")
        ops = self._ops
        ops.append((_FINISH, task_id, attempt, outcome, finished_at, failures, losses))
        if len(ops) == 1:
            self._wake_writer()

    def forget(self, task_ids: list[str]) -> None:
        """Buffer the deletion of these tasks' rows (unknown ids are ignored)."""
        if self._state != "open":
            self._check_open("forget")
        ops = self._ops
        was_empty = not ops
        for task_id in task_ids:
            ops.append((_FORGET, task_id))
        if was_empty and ops:
            self._wake_writer()

    def _wake_writer(self) -> None:
        """The first operation of a batch was buffered: the writer commits within ``commit_interval``."""
        with self._mutex:
            self._pending_since = time.monotonic()
            self._cond.notify()

    def mark(self) -> int:
        """The batch that holds everything buffered so far (see :meth:`flush`)."""
        with self._mutex:
            return self._batch if self._ops else self._batch - 1  # the one the writer holds, if any

    async def flush(self, mark: int | None = None) -> None:
        """Return once everything buffered before this call is committed; with a :meth:`mark`, what was before it.

        A mark lets a caller wait for its own operations and not for those
        buffered since, which go into the next group commit (one fsync later).
        """
        self._check_open("flush")
        with self._mutex:
            self._raise_if_failed()
            ticket = self._batch if self._ops else self._batch - 1
            if mark is not None and mark < ticket:
                ticket = mark
            elif ticket == self._batch:
                self._urgent = True
                self._cond.notify()
        await self._wait_committed(ticket)

    async def close(self) -> None:
        """Commit what is buffered, close the database and release the lock.

        Safe to call twice.  If cancelled, the writer thread still finishes
        (and releases the lock) by itself.  Raises :class:`StoreError` if a
        write failed while the store was open.
        """
        if self._state in ("new", "closed"):
            await trio.lowlevel.checkpoint()
            return
        self._begin_close()
        self._state = "closing"
        await self._exited.wait()
        self._state = "closed"
        if self._failure is not None:
            raise self._failed_error()

    def statistics(self) -> StoreStatistics:
        """Counters since the last open(): commits, rows written/deleted/skipped, pending ops."""
        with self._cond:
            return StoreStatistics(
                commits=self._commits,
                rows_written=self._rows_written,
                rows_deleted=self._rows_deleted,
                rows_skipped=self._rows_skipped,
                pending=len(self._ops),
                failed=self._failure is not None,
                checkpoints=self._checkpoints,
            )

    def _check_open(self, what: str) -> None:
        if self._state != "open":
            raise RuntimeError(f"{what}() on a {self._state} SQLiteStore: call open() first, and not after close()")

    def _begin_close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failed_error()

    def _failed_error(self) -> StoreError:
        error = StoreError(
            f"writing the journal {self.path} failed ({self._failure!r}), so this dispatcher stopped journaling; "
            "changes since the last successful commit are lost.  Fix the cause (disk full? file removed?) "
            "and restart: the journal holds every commit made before the failure",
            code="io",
        )
        error.__cause__ = self._failure
        return error

    async def _wait_committed(self, ticket: int) -> None:
        if self._committed >= ticket:
            await trio.lowlevel.checkpoint()
            return
        while self._committed < ticket:
            if self._failure is not None:
                raise self._failed_error()
            if self._exited.is_set():
                raise StoreError(f"the journal {self.path} was closed before the write was committed")
            lot = self._lots.get(ticket)
            if lot is None:
                lot = self._lots[ticket] = trio.lowlevel.ParkingLot()
            await lot.park()

    def _wake(self) -> None:
        """In the Trio thread, after a commit (or a failure): wake whoever waits for what is committed now."""
        lots = self._lots
        if self._failure is not None:
            ready = list(lots)
        else:
            committed = self._committed
            ready = [ticket for ticket in lots if ticket <= committed]
        for ticket in ready:
            lots.pop(ticket).unpark_all()

    def _thread_exited(self) -> None:
        self._opened.set()
        self._exited.set()
        for lot in self._lots.values():
            lot.unpark_all()
        self._lots.clear()

    def _call_soon(self, fn: Callable[[], None]) -> None:
        """From the writer thread: run ``fn`` in the Trio thread."""
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass  # nobody left to tell

    # ======================================================== writer thread
    def _run(self) -> None:
        try:
            try:
                self._open_outcome = self._open_database()
            except BaseException as exc:
                self._open_outcome = exc if isinstance(exc, StoreError) else self._open_error(exc)
                return
            self._call_soon(self._opened.set)
            self._write_loop()
        except BaseException:  # pragma: no cover - a bug here; never let the thread die silently
            log.exception("the journal writer for %s crashed", self.path)
            with self._cond:
                if self._failure is None:
                    self._failure = RuntimeError("the journal writer thread crashed")
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover
                    log.exception("closing %s failed", self.path)
            self._lock.release()
            self._call_soon(self._thread_exited)

    def _open_error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, sqlite3.Error) and _is_corruption(exc):
            return self._corrupt(str(exc))
        if isinstance(exc, json.JSONDecodeError):
            return self._corrupt(f"a row holds invalid JSON ({exc})")
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        error = StoreError(f"cannot open the journal {self.path}: {text}", code="io")
        error.__cause__ = exc
        return error

    def _corrupt(self, detail: str) -> StoreError:
        return StoreError(
            f"the journal {self.path} is corrupt ({detail}).  Move it away (with {self.path}-wal and "
            f"{self.path}-shm if they exist) and restore it from a backup, or start with an empty journal "
            "and lose its tasks",
            code="corrupt",
        )

    def _open_database(self) -> list[StoredTask]:
        self._lock.acquire()
        try:
            with open(self.path, "rb") as file:
                header = file.read(len(_HEADER))
        except FileNotFoundError:
            header = b""
        if header and header != _HEADER:
            raise self._corrupt("it is not an SQLite database")
        conn = self._conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        latest = _check_migrations(MIGRATIONS)
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(
                f"{self.path} is an SQLite database of another program (application_id {app_id:#x}), "
                "not a trioschedule journal; give the dispatcher a path of its own",
                code="not-a-journal",
            )
        if app_id == 0 and (version or conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]):
            raise StoreError(
                f"{self.path} holds an SQLite database that is not a trioschedule journal; "
                "give the dispatcher a path of its own",
                code="not-a-journal",
            )
        if version > latest:
            raise StoreError(
                f"the journal {self.path} has format version {version}, written by a newer trioschedule; this one "
                f"reads versions up to {latest}.  Run the newer trioschedule on it (it drains and migrates), "
                "or move the file away to start with an empty journal",
                code="newer-version",
            )
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise self._corrupt("; ".join(problems).replace("\n", "; "))
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(
                f"cannot put {self.path} in WAL mode (it stays {mode!r}); keep the journal on a local filesystem",
                code="unsupported",
            )
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        # SQLite copies the WAL into the database every this many pages, inside some commit;
        # 16 MB instead of 4: fewer of those pauses, and a page the change log reuses is copied once.
        conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT}")
        if version < latest:
            self._migrate(conn, version)
        # Recovery: what the change log holds after the last checkpoint, applied
        # in commit order on top of ``tasks``, then the retention sweep; in one
        # transaction, so that a journal refused half-way is left as it was.
        pending = conn.execute("SELECT count(*) FROM changes").fetchone()[0]
        if pending or self.retention is not None:
            with _transaction(conn):
                if pending:
                    self._replay(conn)
                    conn.execute("DELETE FROM changes")
                    log.info("%s: applied %d commit(s) from the change log", self.path, pending)
                if self.retention is not None:
                    conn.execute(_PURGE, (time.time() - self.retention,))
        if self.retention is not None:
            self._next_purge = time.monotonic() + _PURGE_EVERY
        try:
            return [_decode(row[0]) for row in conn.execute(_LOAD)]
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise self._corrupt(f"a task does not decode ({exc})") from exc

    def _replay(self, conn: sqlite3.Connection) -> None:
        """Apply the change log on top of ``tasks``: the commits since the last finished checkpoint, in order."""
        generation = _Generation()
        try:
            for (text,) in conn.execute("SELECT ops FROM changes ORDER BY seq"):
                generation.fold(_recovered(text), self._encode)
        except (ValueError, TypeError, IndexError) as exc:  # JSONDecodeError is a ValueError
            raise self._corrupt(f"its change log does not decode ({exc})") from exc
        generation.apply(conn, generation.latest, self._encode)

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        with _transaction(conn):
            for migration in MIGRATIONS:
                if migration.version <= version:
                    continue
                log.info("migrating %s to format version %d: %s", self.path, migration.version, migration.description)
                for step in migration.steps:
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        step(conn)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {MIGRATIONS[-1].version}")

    def _write_loop(self) -> None:
        cond = self._cond
        ops = self._ops
        while True:
            with cond:
                while True:
                    if self._failure is not None:
                        del ops[:]  # stopped: nothing more is written
                        if self._closing:
                            return
                        cond.wait()
                    elif ops:
                        if self._urgent or self._closing:
                            break
                        wait = self._pending_since + self.commit_interval - time.monotonic()
                        if wait <= 0:
                            break
                        cond.wait(wait)
                    elif self._closing:
                        break
                    else:
                        idle = self._checkpoint_due()
                        if idle is not None and idle <= 0:
                            break
                        cond.wait(idle)
                # The Trio side only ever appends: take what is there now.
                count = len(ops)
                batch = ops[:count]
                del ops[:count]
                closing = self._closing
                if batch:
                    number = self._batch
                    self._batch += 1
                    self._urgent = False
            if not batch:
                # Nothing to commit: bring ``tasks`` up to date (all of it when closing).
                try:
                    self._checkpoint(everything=closing)
                except Exception as exc:  # nothing is lost: the change log still holds it all
                    log.warning("checkpoint of the journal %s failed (its change log keeps everything): %r",
                                self.path, exc)  # fmt: skip
                    if closing:
                        return
                    with cond:
                        self._failure = exc  # something is wrong with the file: stop writing to it
                if closing:
                    return
                continue
            try:
                counts = self._write(batch)
            except Exception as exc:
                log.error("writing the journal %s failed; journaling stops: %r", self.path, exc)
                with cond:
                    self._failure = exc
            else:
                with cond:
                    self._committed = number
                    self._commits += 1
                    self._rows_written += counts[0]
                    self._rows_deleted += counts[1]
                    self._rows_skipped += counts[2]
            self._call_soon(self._wake)
            unfolded, self._unfolded = self._unfolded, None
            if unfolded is not None:  # after the wake-up: nobody waits for this
                self._fold(*unfolded)

    def _write(self, batch: list[_Op]) -> tuple[int, int, int]:
        """Commit ``batch`` as one row of the change log (with a slice of checkpoint, if one is under way)."""
        conn = self._conn
        assert conn is not None
        skipped = 0
        try:
            text, forgets, changes = _segments_text(batch, self._encode)
        except (TypeError, ValueError):
            count = len(batch)
            batch = self._encodable(batch)
            skipped = count - len(batch)
            text, forgets, changes = _segments_text(batch, self._encode)
        entries, last = self._next_slice(max(_SLICE, 2 * len(batch)))
        purge = self.retention is not None and time.monotonic() >= self._next_purge
        purged = 0
        if entries or last or purge:
            with _transaction(conn):
                seq = conn.execute(_LOG, (text,)).lastrowid or 0
                if entries:
                    assert self._closed is not None
                    self._closed.apply(conn, entries, self._encode)
                if last:
                    conn.execute("DELETE FROM changes WHERE seq <= ?", (last,))
                if purge:
                    purged = max(conn.execute(_PURGE, (time.time() - self.retention,)).rowcount, 0)  # type: ignore[operator]
            if purge:
                self._next_purge = time.monotonic() + _PURGE_EVERY
            self._sliced(last)
        else:
            # One statement is its own transaction: one call into SQLite (one hand-back
            # of the GIL, which a busy event loop may keep for a while) instead of three.
            seq = conn.execute(_LOG, (text,)).lastrowid or 0
        self._unfolded = (batch, seq)  # folded once the waiters are woken (see _write_loop)
        return changes - forgets, forgets + purged, skipped

    def _encodable(self, batch: list[_Op]) -> list[_Op]:
        """``batch`` without (and logging) the operations that cannot be encoded as JSON."""
        good = []
        for op in batch:
            try:
                if op[0] == _VALUES:
                    self._encode(op[2])
                elif op[0] in (_RUN, _RUNS, _FINISH, _FORGET):
                    self._encode(op)
            except (TypeError, ValueError) as exc:
                log.error("task %s: its state cannot be journaled and is skipped: %s", op[1], exc)
            else:
                good.append(op)
        return good

    # ----------------------------------------------------------- checkpoints
    def _fold(self, batch: list[_Op], seq: int) -> None:
        """Fold a committed batch into the current generation."""
        generation = self._generation
        if not generation.ops:
            generation.started = time.monotonic()
        generation.fold(batch, self._encode)
        generation.last = seq
        if generation.ops >= _GENERATION_OPS or len(generation.latest) >= _GENERATION_TASKS:
            self._close_generation()

    def _close_generation(self) -> None:
        """Start applying the current generation, unless the one before is still being applied."""
        if self._closed is not None or not self._generation.last:
            return
        closed = self._closed = self._generation
        self._closed_rest = iter(closed.latest)
        self._closed_left = len(closed.latest)
        self._generation = _Generation()

    def _checkpoint_due(self) -> float | None:
        """For an idle writer: 0 if there is checkpoint work now, else seconds until there is (None: never)."""
        if self._closed is not None:
            return 0.0
        if self._generation.last:
            return max(0.0, self._generation.started + _GENERATION_SECONDS - time.monotonic())
        return None

    def _next_slice(self, size: int) -> tuple[list[str], int]:
        """Up to ``size`` task ids of the closed generation, and its last ``changes`` row if that finishes it."""
        if self._closed is None:
            generation = self._generation
            if not generation.last or time.monotonic() < generation.started + _GENERATION_SECONDS:
                return [], 0
            self._close_generation()
            assert self._closed is not None
        task_ids = list(itertools.islice(self._closed_rest, size))
        self._closed_left -= len(task_ids)
        return task_ids, self._closed.last if not self._closed_left else 0

    def _sliced(self, last: int) -> None:
        """After the commit that applied a slice (and, with ``last``, finished the closed generation)."""
        if last:
            self._closed, self._closed_rest, self._closed_left = None, iter(()), 0
            self._checkpoints += 1

    def _checkpoint(self, *, everything: bool) -> None:
        """Apply checkpoint work in a transaction of its own: a slice, or (``everything``) all of it."""
        conn = self._conn
        assert conn is not None
        if everything:
            if self._closed is None and not self._generation.last:
                return
            with _transaction(conn):
                if self._closed is not None:
                    self._closed.apply(conn, self._closed_rest, self._encode)
                generation = self._generation
                if generation.latest:
                    generation.apply(conn, generation.latest, self._encode)
                conn.execute("DELETE FROM changes")
            self._sliced(1)
            self._generation = _Generation()
            return
        task_ids, last = self._next_slice(2 * _SLICE)
        if not task_ids and not last:
            return
        with _transaction(conn):
            if task_ids:
                assert self._closed is not None
                self._closed.apply(conn, task_ids, self._encode)
            if last:
                conn.execute("DELETE FROM changes WHERE seq <= ?", (last,))
        self._sliced(last)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` if the block or the commit itself fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - the original error matters more
                pass
        raise


def _check_migrations(migrations: tuple[Migration, ...]) -> int:
    """The latest version; the history must be numbered 1, 2, 3... with no gaps."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise RuntimeError(f"MIGRATIONS[{expected - 1}] has version {migration.version}, expected {expected}")
    return len(migrations)
