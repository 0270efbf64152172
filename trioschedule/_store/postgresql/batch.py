"""From operations in call order to the few statements of one group commit (no I/O here).

The Trio side appends operations (tuples, first element the kind) to a list
in call order; the writer takes everything buffered and commits it as one
transaction.  :func:`statements` turns such a batch into a handful of
statements, one per kind of change per *segment*, each carrying its tasks as
arrays (``unnest``) or as one JSON document (``json_array_elements``), so
that a commit costs the same few round trips (pipelined) whether it holds
one task or ten thousand: never a transaction, or a statement, per task.

A segment applies its statements in a fixed order: new tasks, whole-task
upserts, started tasks, ended tasks, forgotten tasks.  Operations on one
task within a segment are therefore applied in call order only if their
kinds come in that order; a task's operation whose kind does not come after
the task's last one in the segment starts a new segment.  In a busy
dispatcher a task's add, start and end land in different commits anyway
(each must be durable before the dispatcher acts on it), and its end and
forget (a ``map()`` task) are in that order: one segment per commit.

Every statement sets values (upserts keyed by task id, updates to given
values, deletes by id; a new task whose id is there already is ignored:
``ON CONFLICT DO NOTHING``), so replaying a batch whose commit outcome was
unknown, on top of the state it may have produced, ends in the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ..base import StoredTask

__all__ = [
    "ADD_MANY", "ADD_NEW", "ADD_ROWS", "DELETE_SCHEDULE", "FINISH", "FORGET", "RUN", "RUNS", "SAVE_SCHEDULES",
    "UPSERT", "Statement", "statements", "task_ids",
]  # fmt: skip

Encode = Callable[[Any], str]
Statement = tuple[str, tuple[Any, ...]]

# Operations (the Trio side builds them; docs/STORE.md):
#   (ADD_ROWS, [id, ...], text)    add(): text is a JSON array of whole rows (the 16 fields of _COLUMNS)
#   (ADD_NEW, [id, ...], text)     add_new(): a JSON array of NewTask rows (the first 9 fields)
#   (ADD_MANY, [id, ...], args_text, shared)   add_new_many(): args_text a JSON array of the argument lists,
#                                  shared = (name, kwargs_text, priority, retries, deadline, not_before, submitted_at)
#   (UPSERT, id, StoredTask)       update(): the whole task, encoded by the writer
#   (RUN, id, session, attempt, failures, losses)
#   (RUNS, [id, ...], session, attempt, failures, losses)
#   (FINISH, id, attempt, outcome, finished_at, failures, losses)
#   (FORGET, id)
#   (SAVE_SCHEDULES, None, text)   a JSON array of schedule records
#   (DELETE_SCHEDULE, None, name)
ADD_ROWS: Final = 0
ADD_NEW: Final = 1
ADD_MANY: Final = 2
UPSERT: Final = 3
RUN: Final = 4
RUNS: Final = 5
FINISH: Final = 6
FORGET: Final = 7
SAVE_SCHEDULES: Final = 8
DELETE_SCHEDULE: Final = 9

# The order of a segment's statements, by kind.
_RANK: Final = (0, 0, 0, 1, 2, 2, 3, 4)
_MANY: Final = frozenset((ADD_ROWS, ADD_NEW, ADD_MANY, RUNS))  # kinds whose second element is a list of ids

_COLUMNS = ("id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at, state, attempt, "
            "failures, losses, session, outcome, finished_at")  # fmt: skip
# A row of a JSON array (``r``) as the 16 columns, exactly: text through ``->>``, JSON
# values through ``->`` (the json type keeps their text as it was), numbers through
# their shortest decimal text, which float8 reads back to the same bits.
_ROW = ("r->>0, r->>1, (r->2)::text, (r->3)::text, (r->>4)::bigint, (r->>5)::bigint, (r->>6)::float8, "
        "(r->>7)::float8, (r->>8)::float8")  # fmt: skip
_ROW_REST = ("r->>9, (r->>10)::bigint, (r->>11)::bigint, (r->>12)::bigint, r->>13, nullif((r->14)::text, 'null'), "
             "(r->>15)::float8")  # fmt: skip
_DOCS = "unnest(%s::text[]) WITH ORDINALITY AS d(doc, m), json_array_elements(d.doc::json) WITH ORDINALITY AS e(r, n)"

INSERT_ROWS = (f"INSERT INTO trioschedule_tasks ({_COLUMNS}) SELECT {_ROW}, {_ROW_REST} FROM {_DOCS} "
               "ORDER BY m, n ON CONFLICT (id) DO NOTHING")  # fmt: skip
INSERT_NEW = (f"INSERT INTO trioschedule_tasks ({_COLUMNS}) SELECT {_ROW}, 'queued', 0, 0, 0, NULL, NULL, NULL "
              f"FROM {_DOCS} ORDER BY m, n ON CONFLICT (id) DO NOTHING")  # fmt: skip
INSERT_MANY = (
    f"INSERT INTO trioschedule_tasks ({_COLUMNS}) "
    "SELECT u.id, %s, u.args::text, %s, %s, %s, %s, %s, %s, 'queued', 0, 0, 0, NULL, NULL, NULL "
    "FROM ROWS FROM (json_array_elements_text(%s::json), json_array_elements(%s::json)) WITH ORDINALITY "
    "AS u(id, args, n) ORDER BY n ON CONFLICT (id) DO NOTHING"
)
UPSERT_ROWS = (
    f"INSERT INTO trioschedule_tasks ({_COLUMNS}) SELECT {_ROW}, {_ROW_REST} "
    "FROM json_array_elements(%s::json) WITH ORDINALITY AS e(r, n) ORDER BY n "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, args = excluded.args, kwargs = excluded.kwargs, "
    "priority = excluded.priority, retries = excluded.retries, deadline = excluded.deadline, "
    "not_before = excluded.not_before, submitted_at = excluded.submitted_at, state = excluded.state, "
    "attempt = excluded.attempt, failures = excluded.failures, losses = excluded.losses, "
    "session = excluded.session, outcome = excluded.outcome, finished_at = excluded.finished_at"
)
# The narrow updates and forgets travel as the operations themselves, encoded as one JSON
# array per statement (one C call; psycopg adapts a Python list to an SQL array one element
# at a time, in Python): r is [kind, id, session, attempt, failures, losses] (RUN), the same
# with a list of ids (RUNS), [kind, id, attempt, outcome, finished_at, failures, losses] (FINISH).
_SET_RUNNING = ("UPDATE trioschedule_tasks AS t SET state = 'running', session = u.session, attempt = u.attempt, "
                "failures = u.failures, losses = u.losses, not_before = NULL FROM (")  # fmt: skip
UPDATE_RUNNING = (
    _SET_RUNNING + "SELECT r->>1 AS id, r->>2 AS session, (r->>3)::int8 AS attempt, (r->>4)::int8 AS failures, "
    "(r->>5)::int8 AS losses FROM json_array_elements(%s::json) AS e(r)) AS u WHERE t.id = u.id"
)
UPDATE_RUNNING_MANY = (
    # The group's fields once per group (MATERIALIZED: not re-read from its JSON text for each id).
    "WITH g AS MATERIALIZED (SELECT r->1 AS ids, r->>2 AS session, (r->>3)::int8 AS attempt, "
    "(r->>4)::int8 AS failures, (r->>5)::int8 AS losses FROM json_array_elements(%s::json) AS e(r)) "
    + _SET_RUNNING + "SELECT i.id, g.session, g.attempt, g.failures, g.losses "
    "FROM g, json_array_elements_text(g.ids) AS i(id)) AS u WHERE t.id = u.id"
)
UPDATE_DONE = (
    "UPDATE trioschedule_tasks AS t SET state = 'done', session = NULL, not_before = NULL, args = '[]', "
    "kwargs = '{}', attempt = (r->>2)::int8, outcome = (r->3)::text, finished_at = (r->>4)::float8, "
    "failures = (r->>5)::int8, losses = (r->>6)::int8 "
    "FROM json_array_elements(%s::json) AS e(r) WHERE t.id = r->>1"
)
DELETE_TASKS = "DELETE FROM trioschedule_tasks AS t USING json_array_elements_text(%s::json) AS f(id) WHERE t.id = f.id"
SAVE_SCHEDULE_ROWS = (
    "INSERT INTO trioschedule_schedules (name, record, saved_at) "
    "SELECT r->>'name', r::jsonb, now() FROM json_array_elements(%s::json) WITH ORDINALITY AS e(r, n) ORDER BY n "
    "ON CONFLICT (name) DO UPDATE SET record = excluded.record, saved_at = excluded.saved_at"
)
DELETE_SCHEDULE_ROW = "DELETE FROM trioschedule_schedules WHERE name = %s"


def task_ids(op: tuple[Any, ...]) -> list[str]:
    """The ids of the tasks an operation is about."""
    kind = op[0]
    if kind >= SAVE_SCHEDULES:
        return []
    return list(op[1]) if kind in _MANY else [op[1]]


def _row(task: StoredTask) -> list[Any]:
    return [task.id, task.name, task.args, task.kwargs, task.priority, task.retries, task.deadline,
            task.not_before, task.submitted_at, task.state, task.attempt, task.failures, task.losses,
            task.session, task.outcome, task.finished_at]  # fmt: skip


class _Segment:
    """What one segment collects, per kind of statement."""

    __slots__ = ("done", "forgets", "many", "new", "rows", "run", "runs", "upserts")

    def __init__(self) -> None:
        self.rows: list[str] = []  # ADD_ROWS texts
        self.new: list[str] = []  # ADD_NEW texts
        self.many: list[tuple[Any, ...]] = []  # ADD_MANY operations
        self.upserts: list[StoredTask] = []
        self.run: list[tuple[Any, ...]] = []  # RUN operations
        self.runs: list[tuple[Any, ...]] = []  # RUNS operations
        self.done: list[tuple[Any, ...]] = []  # FINISH operations
        self.forgets: list[str] = []

    def statements(self, encode: Encode, skipped: list[Any]) -> list[Statement]:
        out: list[Statement] = []
        if self.rows:
            out.append((INSERT_ROWS, (self.rows,)))
        if self.new:
            out.append((INSERT_NEW, (self.new,)))
        for op in self.many:
            name, kwargs_text, priority, retries, deadline, not_before, submitted_at = op[3]
            out.append((INSERT_MANY, (name, kwargs_text, priority, retries, deadline, not_before, submitted_at,
                                      encode(op[1]), op[2])))  # fmt: skip
        if self.upserts:
            rows = _encodable([_row(task) for task in self.upserts], encode, skipped, self.upserts)
            if rows:
                out.append((UPSERT_ROWS, (rows,)))
        if self.run:
            out.append((UPDATE_RUNNING, (encode(self.run),)))
        if self.runs:
            out.append((UPDATE_RUNNING_MANY, (encode(self.runs),)))
        if self.done and self.forgets:
            # A task that ends and is forgotten in one commit (a map() task) is only deleted.
            forgotten = set(self.forgets)
            self.done = [op for op in self.done if op[1] not in forgotten]
        if self.done:
            done = _encodable(self.done, encode, skipped, self.done)
            if done:
                out.append((UPDATE_DONE, (done,)))
        if self.forgets:
            out.append((DELETE_TASKS, (encode(self.forgets),)))
        return out


def _encodable(items: list[Any], encode: Encode, skipped: list[Any], originals: list[Any]) -> str:
    """``items`` as one JSON array, in one call; those that cannot be encoded are left out (their
    ``originals`` go to ``skipped``, for the caller to log).  "" if none is left."""
    try:
        return encode(items)
    except (TypeError, ValueError):
        good = []
        for item, original in zip(items, originals):
            try:
                encode(item)
            except (TypeError, ValueError):
                skipped.append(original)
            else:
                good.append(item)
        return encode(good) if good else ""


def statements(batch: list[tuple[Any, ...]], encode: Encode) -> tuple[list[Statement], int, int, list[Any]]:
    """The statements that apply ``batch`` in call order.

    Returns them with how many task changes they write and delete, and what
    was skipped because it cannot be encoded as JSON (a whole task from
    ``update()``, or the FINISH operation of an outcome that is not JSON):
    the caller logs each one.
    """
    out: list[Statement] = []
    skipped: list[Any] = []
    segment = _Segment()
    last: dict[str, int] = {}  # task id -> the rank of its last operation in this segment
    written = deleted = 0
    schedules: list[Statement] = []
    for op in batch:
        kind = op[0]
        if kind >= SAVE_SCHEDULES:
            if kind == SAVE_SCHEDULES:
                schedules.append((SAVE_SCHEDULE_ROWS, (op[2],)))
            else:
                schedules.append((DELETE_SCHEDULE_ROW, (op[2],)))
            continue
        rank = _RANK[kind]
        if kind in _MANY:
            ids = op[1]
            # Usually none of them is in the segment yet: checked and recorded at C speed.
            if any(map(last.__contains__, ids)) and any(last.get(task_id, -1) >= rank for task_id in ids):
                out.extend(segment.statements(encode, skipped))
                segment, last = _Segment(), {}
            last.update(dict.fromkeys(ids, rank))
            count = len(ids)
            written += count
            if kind == RUNS:
                segment.runs.append(op)
            elif kind == ADD_MANY:
                segment.many.append(op)
            elif kind == ADD_NEW:
                segment.new.append(op[2])
            else:
                segment.rows.append(op[2])
            continue
        task_id = op[1]
        if last.get(task_id, -1) >= rank:
            out.extend(segment.statements(encode, skipped))
            segment, last = _Segment(), {}
        last[task_id] = rank
        if kind == FINISH:
            segment.done.append(op)
            written += 1
        elif kind == FORGET:
            segment.forgets.append(task_id)
            deleted += 1
        elif kind == RUN:
            segment.run.append(op)
            written += 1
        else:  # UPSERT
            segment.upserts.append(op[2])
            written += 1
    out.extend(segment.statements(encode, skipped))
    out.extend(schedules)
    return out, written - len(skipped), deleted, skipped
