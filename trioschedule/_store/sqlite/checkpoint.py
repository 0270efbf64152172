"""Checkpoints: bringing the ``tasks`` table up to date with what the change log holds.

The writer folds every committed operation into the current *generation*:
each task's net change since the generation began.  A generation is closed
once it is :data:`GENERATION_SECONDS` old, has seen :data:`GENERATION_OPS`
operations or holds :data:`GENERATION_TASKS` tasks, and is then applied to
``tasks`` a slice at a time, each slice in the transaction of a commit (or on
its own when the writer is idle); once all of it is applied, the ``changes``
rows it covers are deleted in the same transaction.  The longer a
generation, the more tasks come and go within it without ever being written
to ``tasks``; the shorter, the less memory it holds and the less a recovery
replays.  Recovery folds the whole change log into one generation and applies
it (:class:`Generation`).

Everything here runs on the writer thread.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .changelog import (
    ACCEPTED,
    ADDED,
    CHAIN,
    FINISH,
    FINISH_FIELDS,
    FORGET,
    NEW,
    ROW,
    ROW_FIELDS,
    RUN,
    RUN_FIELDS,
    RUNS,
    VALUES,
    Encode,
    Op,
    row_text,
)  # fmt: skip
from .schema import transaction

__all__ = ["GENERATION_OPS", "GENERATION_SECONDS", "GENERATION_TASKS", "SLICE", "Checkpoints", "Generation"]

GENERATION_SECONDS = 5.0
GENERATION_OPS = 1_000_000
GENERATION_TASKS = 100_000  # tasks it holds: a big backlog closes generations sooner (memory)
SLICE = 2_000  # tasks applied per commit's transaction, at least (twice the commit's operations if more)

_GONE: Any = ("gone",)  # a generation's "latest operation" of a forgotten task


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


class Generation:
    """Each task's net change since the generation began: its latest operation, and its latest row."""

    __slots__ = ("last", "latest", "ops", "rows", "started")

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}  # task id -> its latest operation (_GONE: forgotten)
        self.rows: dict[str, Op] = {}  # task id -> its latest row operation
        self.ops = 0  # operations folded in
        self.started = 0.0  # time.monotonic() of the first
        self.last = 0  # the last ``changes`` row folded in

    def fold(self, ops: list[Op], encode: Encode) -> None:
        """Fold operations in, in order (``encode``: the writer's, for a row that must be written out)."""
        latest, rows = self.latest, self.rows
        gone = _GONE
        for op in ops:
            kind, task_id = op[0], op[1]
            if kind == ACCEPTED:
                for task_id in op[1]:
                    if task_id in latest:  # not new to this generation: it may be in tasks
                        rows[task_id] = latest[task_id] = (ROW, task_id, row_text(op, task_id, encode))
                    else:
                        rows[task_id] = latest[task_id] = op
                continue
            if kind == RUNS:
                for task_id in op[1]:
                    previous = latest.get(task_id)
                    if previous is None or (previous is not gone and previous[0] != FINISH and previous[0] != CHAIN):
                        latest[task_id] = op  # as a RUN (see apply())
                    elif previous is not gone:  # running again after it ended: see below
                        done = previous if previous[0] == FINISH else previous[2]
                        latest[task_id] = (CHAIN, task_id, done, (RUN, task_id, *op[2:]))
                continue
            if kind == RUN or kind == FINISH:
                previous = latest.get(task_id)
                if previous is gone:
                    pass  # after a forget, a narrow update changes nothing
                elif kind == FINISH or previous is None or (previous[0] != FINISH and previous[0] != CHAIN):
                    latest[task_id] = op  # done sets every field that running sets, and more
                else:
                    # Running again after it ended (not something a dispatcher does): the
                    # fields that running leaves alone keep what done gave them.
                    latest[task_id] = (CHAIN, task_id, previous if previous[0] == FINISH else previous[2], op)
            elif kind == FORGET:
                row = rows.pop(task_id, None)
                if row is not None and (row[0] == NEW or row[0] == ADDED or row[0] == ACCEPTED):
                    del latest[task_id]  # new in this generation and gone again: nothing to write
                else:
                    latest[task_id] = gone
            else:
                if (kind == NEW or kind == ADDED) and task_id in latest:
                    op = (ROW, task_id, row_text(op, task_id, encode))  # not new to this generation
                rows[task_id] = latest[task_id] = op
        self.ops += len(ops)  # a RUNS counts once: this bounds memory by operations held, not tasks

    def apply(self, conn: sqlite3.Connection, task_ids: Iterable[str], encode: Encode) -> None:
        """Write these tasks' net changes to ``tasks``: one statement per kind, rows first."""
        latest, rows = self.latest, self.rows
        texts: list[str] = []  # rows, encoded
        values: list[Any] = []  # rows to encode
        finished: list[str] = []  # rows with their done fields (see _APPLY_ROWS_DONE), encoded
        running: list[Op] = []
        done: list[Op] = []
        forgotten: list[str] = []
        for task_id in task_ids:
            op = latest[task_id]
            if op is _GONE:
                forgotten.append(task_id)
                continue
            kind = op[0]
            if kind == RUNS:
                op = (RUN, task_id, *op[2:])
                kind = RUN
            if kind == CHAIN:
                done.append(op[2])
                running.append(op[3])  # after the done ones (see below)
                op = rows.get(task_id)
                if op is None:
                    continue
                kind = op[0]
            elif kind == RUN or kind == FINISH:
                update = op
                op = rows.get(task_id)  # the row it updates, if that came in this generation
                if op is None:
                    (running if kind == RUN else done).append(update)
                    continue
                if kind == FINISH and op[0] != VALUES:  # the usual: in one write
                    finished.append(f"[{row_text(op, task_id, encode)},{encode(update[2:])[1:]}")
                    continue
                (running if kind == RUN else done).append(update)
                kind = op[0]
            if kind == VALUES:
                values.append(op[2])
            else:
                texts.append(row_text(op, task_id, encode))
        # Each of these was encoded once already, when it was committed: this cannot fail.
        if values:
            texts.append(encode(values)[1:-1])
        if texts:
            conn.execute(_APPLY_ROWS, ("[" + ",".join(texts) + "]",))
        if finished:
            conn.execute(_APPLY_ROWS_DONE, ("[" + ",".join(finished) + "]",))
        if done:
            conn.execute(_APPLY_DONE, (encode(done),))
        if running:  # after done: a CHAIN is done, then running again
            conn.execute(_APPLY_RUNNING, (encode(running),))
        if forgotten:
            conn.execute(_APPLY_FORGETS, (encode(forgotten),))


class Checkpoints:
    """The writer's checkpoint work: the generation being folded, and the closed one being applied.

    The writer calls :meth:`fold` after each commit, applies a
    :meth:`slice_for_commit` in the transaction of the next one (then
    :meth:`sliced`), and calls :meth:`run` when it is idle or closing.
    """

    __slots__ = ("_closed", "_encode", "_left", "_rest", "count", "generation")

    def __init__(self, encode: Encode) -> None:
        self._encode = encode  # the writer thread's
        self.generation = Generation()  # folding in what is committed
        self._closed: Generation | None = None  # the one before, being applied to ``tasks`` (never changed again)
        self._rest: Iterator[str] = iter(())  # the task ids of it not applied yet
        self._left = 0  # how many that is
        self.count = 0  # generations applied

    def fold(self, batch: list[Op], seq: int) -> None:
        """Fold a batch committed as the ``changes`` row ``seq`` into the current generation."""
        generation = self.generation
        if not generation.ops:
            generation.started = time.monotonic()
        generation.fold(batch, self._encode)
        generation.last = seq
        if generation.ops >= GENERATION_OPS or len(generation.latest) >= GENERATION_TASKS:
            self._close_generation()

    def due(self) -> float | None:
        """For an idle writer: 0 if there is checkpoint work now, else seconds until there is (None: never)."""
        if self._closed is not None:
            return 0.0
        if self.generation.last:
            return max(0.0, self.generation.started + GENERATION_SECONDS - time.monotonic())
        return None

    def slice_for_commit(self, ops: int) -> tuple[list[str], int]:
        """What to apply in the transaction of a commit of ``ops`` operations: see :meth:`apply_slice`.

        At least :data:`SLICE` tasks, or twice the commit's operations if
        more, so that a slice always outpaces what comes in.
        """
        return self._next_slice(max(SLICE, 2 * ops))

    def apply_slice(self, conn: sqlite3.Connection, task_ids: list[str], last: int) -> None:
        """In the caller's transaction: apply these tasks of the closed generation; with ``last``, the rest is done."""
        if task_ids:
            assert self._closed is not None
            self._closed.apply(conn, task_ids, self._encode)
        if last:
            conn.execute("DELETE FROM changes WHERE seq <= ?", (last,))

    def sliced(self, last: int) -> None:
        """After the commit that applied a slice (and, with ``last``, finished the closed generation)."""
        if last:
            self._closed, self._rest, self._left = None, iter(()), 0
            self.count += 1

    def run(self, conn: sqlite3.Connection, *, everything: bool) -> None:
        """Apply checkpoint work in a transaction of its own: a slice, or (``everything``) all of it."""
        if everything:
            self._run_everything(conn)
            return
        task_ids, last = self._next_slice(2 * SLICE)
        if not task_ids and not last:
            return
        with transaction(conn):
            self.apply_slice(conn, task_ids, last)
        self.sliced(last)

    def _run_everything(self, conn: sqlite3.Connection) -> None:
        if self._closed is None and not self.generation.last:
            return
        with transaction(conn):
            if self._closed is not None:
                self._closed.apply(conn, self._rest, self._encode)
            generation = self.generation
            if generation.latest:
                generation.apply(conn, generation.latest, self._encode)
            conn.execute("DELETE FROM changes")
        self.sliced(1)
        self.generation = Generation()

    def _close_generation(self) -> None:
        """Start applying the current generation, unless the one before is still being applied."""
        if self._closed is not None or not self.generation.last:
            return
        closed = self._closed = self.generation
        self._rest = iter(closed.latest)
        self._left = len(closed.latest)
        self.generation = Generation()

    def _next_slice(self, size: int) -> tuple[list[str], int]:
        """Up to ``size`` task ids of the closed generation, and its last ``changes`` row if that finishes it."""
        if self._closed is None:
            generation = self.generation
            if not generation.last or time.monotonic() < generation.started + GENERATION_SECONDS:
                return [], 0
            self._close_generation()
            assert self._closed is not None
        task_ids = list(itertools.islice(self._rest, size))
        self._left -= len(task_ids)
        return task_ids, self._closed.last if not self._left else 0
