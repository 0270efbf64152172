"""Checkpoints of the PostgreSQL journal: the statements that bring ``trioschedule_tasks`` up to date.

What a checkpoint is, and when one runs, is store-neutral (:mod:`..generation`).
This module turns a generation's net changes (a :class:`~..generation.Net`,
each kind one JSON array) into one statement per kind, which the writer
sends in the transaction of a commit (or of an idle checkpoint, or of
recovery), pipelined with the rest: a checkpoint of ten thousand tasks is a
handful of statements, never one per task.

Every statement sets values (upserts keyed by task id, updates to given
values, deletes by id), so applying a net change again on top of the state
it produced (a commit whose outcome was unknown and is sent again; a
recovery that replays a change-log row a checkpoint had applied) ends in
the same state.  No I/O here.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ..generation import Checkpoints, Net

__all__ = ["DELETE_CHANGES", "PostgreSQLCheckpoints", "Statement", "net_statements"]

Statement = tuple[str, tuple[Any, ...]]

_COLUMNS = ("id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at, state, attempt, "
            "failures, losses, session, outcome, finished_at")  # fmt: skip
_UPSERT = (
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, args = excluded.args, kwargs = excluded.kwargs, "
    "priority = excluded.priority, retries = excluded.retries, deadline = excluded.deadline, "
    "not_before = excluded.not_before, submitted_at = excluded.submitted_at, state = excluded.state, "
    "attempt = excluded.attempt, failures = excluded.failures, losses = excluded.losses, "
    "session = excluded.session, outcome = excluded.outcome, finished_at = excluded.finished_at"
)
# A row (``r``, a JSON array of the changelog's ROW_FIELDS, which are these columns in this order)
# as the columns, exactly: text through ``->>``, JSON values through ``->`` (the json type, unlike
# jsonb, keeps their text as written), numbers through their shortest decimal text, which float8
# reads back to the same bits.
UPSERT_ROWS = (
    f"INSERT INTO trioschedule_tasks ({_COLUMNS}) SELECT r->>0, r->>1, (r->2)::text, (r->3)::text, "
    "(r->>4)::bigint, (r->>5)::bigint, (r->>6)::float8, (r->>7)::float8, (r->>8)::float8, r->>9, "
    "(r->>10)::bigint, (r->>11)::bigint, (r->>12)::bigint, r->>13, nullif((r->14)::text, 'null'), "
    f"(r->>15)::float8 FROM json_array_elements(%s::json) WITH ORDINALITY AS e(r, n) ORDER BY n {_UPSERT}"
)
# A task that came and ended within one generation: ``[row, attempt, outcome, finished_at,
# failures, losses]``, its row made done in one write (the fields UPDATE_DONE sets).
UPSERT_ROWS_DONE = (
    f"INSERT INTO trioschedule_tasks ({_COLUMNS}) SELECT r->0->>0, r->0->>1, '[]', '{{}}', "
    "(r->0->>4)::bigint, (r->0->>5)::bigint, (r->0->>6)::float8, NULL, (r->0->>8)::float8, 'done', "
    "(r->>1)::bigint, (r->>4)::bigint, (r->>5)::bigint, NULL, (r->2)::text, (r->>3)::float8 "
    f"FROM json_array_elements(%s::json) WITH ORDINALITY AS e(r, n) ORDER BY n {_UPSERT}"
)
# The narrow updates travel as the changelog's operations: r is RUN_FIELDS
# [kind, id, session, attempt, failures, losses] or FINISH_FIELDS
# [kind, id, attempt, outcome, finished_at, failures, losses].
UPDATE_RUNNING = (
    "UPDATE trioschedule_tasks AS t SET state = 'running', session = r->>2, attempt = (r->>3)::int8, "
    "failures = (r->>4)::int8, losses = (r->>5)::int8, not_before = NULL "
    "FROM json_array_elements(%s::json) AS e(r) WHERE t.id = r->>1"
)
UPDATE_DONE = (
    "UPDATE trioschedule_tasks AS t SET state = 'done', session = NULL, not_before = NULL, args = '[]', "
    "kwargs = '{}', attempt = (r->>2)::int8, outcome = (r->3)::text, finished_at = (r->>4)::float8, "
    "failures = (r->>5)::int8, losses = (r->>6)::int8 "
    "FROM json_array_elements(%s::json) AS e(r) WHERE t.id = r->>1"
)
DELETE_TASKS = "DELETE FROM trioschedule_tasks AS t USING json_array_elements_text(%s::json) AS f(id) WHERE t.id = f.id"
DELETE_CHANGES = "DELETE FROM trioschedule_changes"


def net_statements(net: Net) -> list[Statement]:
    """The statements that write ``net`` to ``trioschedule_tasks``, in the order they must run."""
    out: list[Statement] = []
    if net.rows:
        out.append((UPSERT_ROWS, (net.rows,)))
    if net.finished:
        out.append((UPSERT_ROWS_DONE, (net.finished,)))
    if net.done:
        out.append((UPDATE_DONE, (net.done,)))
    if net.running:  # after done: a task that ended and then ran again is both
        out.append((UPDATE_RUNNING, (net.running,)))
    if net.forgotten:
        out.append((DELETE_TASKS, (net.forgotten,)))
    return out


class PostgreSQLCheckpoints(Checkpoints[list[Statement]]):
    """The writer's checkpoints, as statements appended to the transaction it is about to send."""

    __slots__ = ()

    def _apply(self, target: list[Statement], net: Net) -> None:
        target.extend(net_statements(net))

    def _delete_through(self, target: list[Statement], last: int | None) -> None:
        if last is None:
            target.append((DELETE_CHANGES, ()))
        else:
            target.append((DELETE_CHANGES + " WHERE seq <= %s", (last,)))

    def _transaction(self, target: list[Statement]) -> AbstractContextManager[Any]:
        return nullcontext()  # the writer sends ``target`` as one transaction
