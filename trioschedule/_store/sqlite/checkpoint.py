"""Checkpoints of the SQLite journal: the statements that bring ``tasks`` up to date from the change log.

What a checkpoint is, and when one runs, is store-neutral (:mod:`..generation`);
this module writes a generation's net changes (a :class:`~..generation.Net`)
to SQLite.  Everything here runs on the writer thread.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Any

from ..changelog import FINISH_FIELDS, ROW_FIELDS, RUN_FIELDS
from ..generation import Checkpoints, Net
from .schema import transaction

__all__ = ["SQLiteCheckpoints", "apply_net"]


# Writing to ``tasks``: one statement per kind for a whole JSON array of
# operations, at most one per task and kind, so that thousands of tasks are a
# few calls into SQLite (the writer thread takes the GIL back a few times, not
# once per task).  ``->>`` gives an SQL value (NULL for a JSON null), ``->``
# the JSON text exactly as written, which json_replace() inserts as JSON: no
# number is converted on its way to ``task``.  Rows first, forgets last: a
# task may have a row and then a narrow update in one checkpoint, never a row
# and a forget.  The running and done statements read the operations as
# encoded (RUN_FIELDS, FINISH_FIELDS); a task that came and finished in one
# checkpoint is its row followed by its FINISH fields (_ROW_DONE_FIELDS).
def _path(field: str) -> str:
    """The JSON path of a row's field, for json_replace()."""
    return f"'$[{ROW_FIELDS.index(field)}]'"


def _at(fields: tuple[str, ...], field: str) -> int:
    return fields.index(field)


_ROW_DONE_FIELDS = ("row", *FINISH_FIELDS[2:])  # [row, attempt, outcome, finished_at, failures, losses]


def _done_replacements(source: str, fields: tuple[str, ...]) -> str:
    """json_replace() arguments that make a row done, from the operation ``source`` laid out as ``fields``."""

    def take(field: str) -> str:
        return f"{source}->{_at(fields, field)}"

    return (
        f"{_path('args')}, json('[]'), {_path('kwargs')}, json('{{}}'), {_path('not_before')}, NULL, "
        f"{_path('state')}, 'done', {_path('attempt')}, {take('attempt')}, {_path('failures')}, {take('failures')}, "
        f"{_path('losses')}, {take('losses')}, {_path('session')}, NULL, {_path('outcome')}, {take('outcome')}, "
        f"{_path('finished_at')}, {take('finished_at')}"
    )


_UPSERT = (
    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, finished_at = excluded.finished_at, task = excluded.task"
)
_APPLY_ROWS = (
    f"INSERT INTO tasks (id, state, finished_at, task) SELECT value->>{_at(ROW_FIELDS, 'id')}, "
    f"value->>{_at(ROW_FIELDS, 'state')}, value->>{_at(ROW_FIELDS, 'finished_at')}, value "
    f"FROM json_each(?1) WHERE true {_UPSERT}"  # "WHERE true" keeps ON CONFLICT from reading as a join constraint
)
_APPLY_RUNNING = (
    f"UPDATE tasks SET state = 'running', task = json_replace(task, {_path('not_before')}, NULL, "
    f"{_path('state')}, 'running', {_path('attempt')}, j.value->{_at(RUN_FIELDS, 'attempt')}, "
    f"{_path('failures')}, j.value->{_at(RUN_FIELDS, 'failures')}, {_path('losses')}, "
    f"j.value->{_at(RUN_FIELDS, 'losses')}, {_path('session')}, j.value->{_at(RUN_FIELDS, 'session')}) "
    f"FROM json_each(?1) AS j WHERE tasks.id = j.value->>{_at(RUN_FIELDS, 'id')}"
)
_APPLY_DONE = (
    f"UPDATE tasks SET state = 'done', finished_at = j.value->>{_at(FINISH_FIELDS, 'finished_at')}, "
    f"task = json_replace(task, {_done_replacements('j.value', FINISH_FIELDS)}) "
    f"FROM json_each(?1) AS j WHERE tasks.id = j.value->>{_at(FINISH_FIELDS, 'id')}"
)
_APPLY_ROWS_DONE = (
    f"INSERT INTO tasks (id, state, finished_at, task) SELECT value->0->>{_at(ROW_FIELDS, 'id')}, 'done', "
    f"value->>{_at(_ROW_DONE_FIELDS, 'finished_at')}, "
    f"json_replace(value->0, {_done_replacements('value', _ROW_DONE_FIELDS)}) "
    f"FROM json_each(?1) WHERE true {_UPSERT}"
)
_APPLY_FORGETS = "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1))"


def apply_net(conn: sqlite3.Connection, net: Net) -> None:
    """Write ``net`` to ``tasks``: one statement per kind, rows first."""
    if net.rows:
        conn.execute(_APPLY_ROWS, (net.rows,))
    if net.finished:
        conn.execute(_APPLY_ROWS_DONE, (net.finished,))
    if net.done:
        conn.execute(_APPLY_DONE, (net.done,))
    if net.running:  # after done: a task that ended and then ran again is both
        conn.execute(_APPLY_RUNNING, (net.running,))
    if net.forgotten:
        conn.execute(_APPLY_FORGETS, (net.forgotten,))


class SQLiteCheckpoints(Checkpoints[sqlite3.Connection]):
    """The writer's checkpoints, applied on its connection (in its transaction)."""

    __slots__ = ()

    def _apply(self, target: sqlite3.Connection, net: Net) -> None:
        apply_net(target, net)

    def _delete_through(self, target: sqlite3.Connection, last: int | None) -> None:
        if last is None:
            target.execute("DELETE FROM changes")
        else:
            target.execute("DELETE FROM changes WHERE seq <= ?", (last,))

    def _transaction(self, target: sqlite3.Connection) -> AbstractContextManager[Any]:
        return transaction(target)
