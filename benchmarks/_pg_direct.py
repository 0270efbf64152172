"""How the PostgreSQL store wrote until schema version 4, kept to measure against (benchmarks/pg_commit_shapes.py).

Until schema version 4 (commit 1b7d462) the store's writer applied every
task change to ``trioschedule_tasks`` in the transaction of its commit: an
insert when a task was accepted, an update when it started, a delete when it
was forgotten.  The server's work per task was what bounded W1, and the
store now commits a change log instead (trioschedule/_store/postgresql/
writer.py).  This is the code it used (``trioschedule/_store/postgresql/
batch.py`` as of commit e63b11c: ``git show e63b11c:trioschedule/_store/
postgresql/batch.py``), cut down to the three kinds of operation a W1 commit
sends: ``add_new_many()``, ``update_running_many()`` and ``forget()``.  The
store no longer uses it; nothing but the benchmark should.

A batch of operations in call order becomes one statement per kind of
change per *segment*, each carrying its tasks as one JSON document, so that
a commit costs the same few statements (pipelined) whatever its size.  A
segment applies its statements in a fixed order (new tasks, started tasks,
forgotten tasks); a task's operation whose kind does not come after the
task's last one in the segment starts a new segment.  No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

__all__ = ["ADD_MANY", "FORGET", "RUNS", "Statement", "statements"]

Encode = Callable[[Any], str]
Statement = tuple[str, tuple[Any, ...]]

# Operations (the store's Trio side built them):
#   (ADD_MANY, [id, ...], args_text, shared)   add_new_many(): args_text a JSON array of the argument lists,
#                  shared = (name, kwargs_text, priority, retries, deadline, not_before, submitted_at)
#   (RUNS, [id, ...], session, attempt, failures, losses)   update_running_many()
#   (FORGET, id)   forget(), one per task
# (The numbers are the ones the store used.)
ADD_MANY: Final = 2
RUNS: Final = 5
FORGET: Final = 7

_RANK: Final = {ADD_MANY: 0, RUNS: 2, FORGET: 4}  # the order of a segment's statements, by kind

_COLUMNS = ("id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at, state, attempt, "
            "failures, losses, session, outcome, finished_at")  # fmt: skip
INSERT_MANY = (
    f"INSERT INTO trioschedule_tasks ({_COLUMNS}) "
    "SELECT u.id, %s, u.args::text, %s, %s, %s, %s, %s, %s, 'queued', 0, 0, 0, NULL, NULL, NULL "
    "FROM ROWS FROM (json_array_elements_text(%s::json), json_array_elements(%s::json)) WITH ORDINALITY "
    "AS u(id, args, n) ORDER BY n ON CONFLICT (id) DO NOTHING"
)
# The RUNS operations travel as themselves, encoded as one JSON array: [kind, [id, ...], session,
# attempt, failures, losses].  The group's fields once per group (MATERIALIZED: not re-read from
# its JSON text for each id).
UPDATE_RUNNING_MANY = (
    "WITH g AS MATERIALIZED (SELECT r->1 AS ids, r->>2 AS session, (r->>3)::int8 AS attempt, "
    "(r->>4)::int8 AS failures, (r->>5)::int8 AS losses FROM json_array_elements(%s::json) AS e(r)) "
    "UPDATE trioschedule_tasks AS t SET state = 'running', session = u.session, attempt = u.attempt, "
    "failures = u.failures, losses = u.losses, not_before = NULL FROM ("
    "SELECT i.id, g.session, g.attempt, g.failures, g.losses "
    "FROM g, json_array_elements_text(g.ids) AS i(id)) AS u WHERE t.id = u.id"
)
DELETE_TASKS = "DELETE FROM trioschedule_tasks AS t USING json_array_elements_text(%s::json) AS f(id) WHERE t.id = f.id"


class _Segment:
    """What one segment collects, per kind of statement."""

    __slots__ = ("forgets", "many", "runs")

    def __init__(self) -> None:
        self.many: list[tuple[Any, ...]] = []  # ADD_MANY operations
        self.runs: list[tuple[Any, ...]] = []  # RUNS operations
        self.forgets: list[str] = []

    def statements(self, encode: Encode) -> list[Statement]:
        out: list[Statement] = []
        for op in self.many:
            name, kwargs_text, priority, retries, deadline, not_before, submitted_at = op[3]
            out.append((INSERT_MANY, (name, kwargs_text, priority, retries, deadline, not_before, submitted_at,
                                      encode(op[1]), op[2])))  # fmt: skip
        if self.runs:
            out.append((UPDATE_RUNNING_MANY, (encode(self.runs),)))
        if self.forgets:
            out.append((DELETE_TASKS, (encode(self.forgets),)))
        return out


def statements(batch: list[tuple[Any, ...]], encode: Encode) -> list[Statement]:
    """The statements that apply ``batch`` (ADD_MANY, RUNS and FORGET operations) in call order."""
    out: list[Statement] = []
    segment = _Segment()
    last: dict[str, int] = {}  # task id -> the rank of its last operation in this segment
    for op in batch:
        kind = op[0]
        rank = _RANK[kind]
        if kind == FORGET:
            task_id = op[1]
            if last.get(task_id, -1) >= rank:
                out.extend(segment.statements(encode))
                segment, last = _Segment(), {}
            last[task_id] = rank
            segment.forgets.append(task_id)
            continue
        ids = op[1]
        # Usually none of them is in the segment yet: checked and recorded at C speed.
        if any(map(last.__contains__, ids)) and any(last.get(task_id, -1) >= rank for task_id in ids):
            out.extend(segment.statements(encode))
            segment, last = _Segment(), {}
        last.update(dict.fromkeys(ids, rank))
        (segment.runs if kind == RUNS else segment.many).append(op)
    out.extend(segment.statements(encode))
    return out
