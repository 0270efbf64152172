"""Checkpoints of a change-log journal: folding committed operations into generations, and applying them.

Both durable stores (SQLite and PostgreSQL) commit each batch as *one* row of
a change log (:mod:`.changelog`) and bring their tasks table up to date
later, in checkpoints.  The writer folds every committed operation into the
current *generation*: each task's net change since the generation began.  A
generation is closed once it is :data:`GENERATION_SECONDS` old, has seen
:data:`GENERATION_OPS` operations or holds :data:`GENERATION_TASKS` tasks,
and is then applied to the tasks table a slice at a time, each slice in the
transaction of a commit (or on its own when the writer is idle); once all of
it is applied, the change-log rows it covers are deleted in the same
transaction.  The longer a generation, the more tasks come and go within it
without ever being written to the tasks table (a ``map()`` task: added,
started and forgotten); the shorter, the less memory it holds and the less
a recovery replays.  Recovery folds the whole change log into one
generation and applies it.

What is store-neutral lives here: a generation's :meth:`Generation.net`
changes (:class:`Net`, their JSON already encoded) and the bookkeeping of
:class:`Checkpoints`.  Each store turns a :class:`Net` into its own
statements (``sqlite/checkpoint.py``, ``postgresql/checkpoint.py``).
Everything here runs on the writer thread.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from operator import itemgetter
from typing import Any, Generic, TypeVar

import attrs

from .changelog import (
    ACCEPTED,
    ADDED,
    CHAIN,
    FINISH,
    FORGET,
    FORGETS,
    NEW,
    ROW,
    RUN,
    RUNS,
    VALUES,
    Encode,
    Op,
    row_text,
)  # fmt: skip

__all__ = ["GENERATION_OPS", "GENERATION_SECONDS", "GENERATION_TASKS", "SLICE", "Checkpoints", "Generation", "Net"]

GENERATION_SECONDS = 5.0
GENERATION_OPS = 1_000_000
GENERATION_TASKS = 100_000  # tasks it holds: a big backlog closes generations sooner (memory)
SLICE = 2_000  # tasks applied per commit's transaction, at least (twice the commit's operations if more)

_GONE: Any = ("gone",)  # a generation's "latest operation" of a forgotten task
_ENDED = frozenset((FINISH, CHAIN, _GONE[0]))  # latest operations a start does not simply replace
_NEW_ROWS = frozenset((NEW, ADDED, ACCEPTED))  # row operations of a task new to the generation
_kind = itemgetter(0)

Target = TypeVar("Target")  # what a store applies a checkpoint to: a connection, a list of statements


@attrs.define(slots=True)
class Net:
    """The net changes of some tasks, each kind as one JSON array (text), to apply in this order.

    ``rows``: whole rows (upserts, :data:`~.changelog.ROW_FIELDS`);
    ``finished``: ``[row, attempt, outcome, finished_at, failures, losses]``, a
    task that came and ended within the generation (its row made done);
    ``done``: FINISH operations (:data:`~.changelog.FINISH_FIELDS`);
    ``running``: RUN operations (:data:`~.changelog.RUN_FIELDS`), after the
    done ones (a task that ended and then ran again is both);
    ``forgotten``: task ids to delete.  An empty kind is ``""``.
    """

    rows: str = ""
    finished: str = ""
    done: str = ""
    running: str = ""
    forgotten: str = ""


class Generation:
    """Each task's net change since the generation began: its latest operation, and its latest row."""

    __slots__ = ("last", "latest", "ops", "rows", "started")

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}  # task id -> its latest operation (_GONE: forgotten)
        self.rows: dict[str, Op] = {}  # task id -> its latest row operation
        self.ops = 0  # operations folded in
        self.started = 0.0  # time.monotonic() of the first
        self.last = 0  # the last change-log row folded in

    def fold(self, ops: list[Op], encode: Encode) -> None:
        """Fold operations in, in order (``encode``: the writer's, for a row that must be written out).

        An operation on many tasks (a ``map()`` chunk accepted, started,
        forgotten) takes a path at C speed when none of its tasks is in an
        unusual state, which is every one in a busy dispatcher.
        """
        latest, rows = self.latest, self.rows
        gone = _GONE
        for op in ops:
            kind, task_id = op[0], op[1]
            if kind == ACCEPTED:
                if latest.keys().isdisjoint(op[1]):  # all new to this generation: the usual
                    new = dict.fromkeys(op[1], op)
                    rows.update(new)
                    latest.update(new)
                    continue
                for task_id in op[1]:
                    if task_id in latest:  # not new to this generation: it may be in the tasks table
                        rows[task_id] = latest[task_id] = (ROW, task_id, row_text(op, task_id, encode))
                    else:
                        rows[task_id] = latest[task_id] = op
                continue
            if kind == RUNS:
                if _ENDED.isdisjoint(map(_kind, filter(None, map(latest.get, op[1])))):  # none ended nor forgotten
                    latest.update(dict.fromkeys(op[1], op))
                    continue
                for task_id in op[1]:
                    previous = latest.get(task_id)
                    if previous is None or (previous is not gone and previous[0] != FINISH and previous[0] != CHAIN):
                        latest[task_id] = op  # as a RUN (see net())
                    elif previous is not gone:  # running again after it ended: see below
                        done = previous if previous[0] == FINISH else previous[2]
                        latest[task_id] = (CHAIN, task_id, done, (RUN, task_id, *op[2:]))
                continue
            if kind == FORGETS:
                ids = op[1]
                dropped: list[Any] = list(map(rows.pop, ids, itertools.repeat(None)))
                if None not in dropped and _NEW_ROWS.issuperset(map(_kind, dropped)):  # all new in this generation
                    deque(map(latest.__delitem__, ids), 0)  # and gone again: nothing to write
                    continue
                for task_id, row in zip(ids, dropped):
                    if row is not None and row[0] in _NEW_ROWS:
                        del latest[task_id]
                    else:
                        latest[task_id] = gone
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
                if row is not None and row[0] in _NEW_ROWS:
                    del latest[task_id]  # new in this generation and gone again: nothing to write
                else:
                    latest[task_id] = gone
            else:
                if (kind == NEW or kind == ADDED) and task_id in latest:
                    op = (ROW, task_id, row_text(op, task_id, encode))  # not new to this generation
                rows[task_id] = latest[task_id] = op
        self.ops += len(ops)  # a RUNS counts once: this bounds memory by operations held, not tasks

    def net(self, task_ids: Iterable[str], encode: Encode) -> Net:
        """These tasks' net changes, encoded (every value in them was encoded once already: this cannot fail)."""
        latest, rows = self.latest, self.rows
        texts: list[str] = []  # rows, encoded
        values: list[Any] = []  # rows to encode
        finished: list[str] = []  # rows with their done fields, encoded
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
                running.append(op[3])  # after the done ones
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
        if values:
            texts.append(encode(values)[1:-1])
        return Net(
            rows="[" + ",".join(texts) + "]" if texts else "",
            finished="[" + ",".join(finished) + "]" if finished else "",
            done=encode(done) if done else "",
            running=encode(running) if running else "",
            forgotten=encode(forgotten) if forgotten else "",
        )


class Checkpoints(Generic[Target]):
    """A writer's checkpoint work: the generation being folded, and the closed one being applied.

    The writer calls :meth:`fold` after each commit, applies a
    :meth:`slice_for_commit` in the transaction of the next one (then
    :meth:`sliced`), and calls :meth:`run` when it is idle or closing.  A
    store subclasses it with the three ways its target (a connection, or a
    list of statements to send) is written: :meth:`_apply`,
    :meth:`_delete_through` and :meth:`_transaction`.
    """

    __slots__ = ("_closed", "_encode", "_left", "_rest", "count", "generation")

    def __init__(self, encode: Encode) -> None:
        self._encode = encode  # the writer thread's
        self.generation = Generation()  # folding in what is committed
        self._closed: Generation | None = None  # the one before, being applied (never changed again)
        self._rest: Iterator[str] = iter(())  # the task ids of it not applied yet
        self._left = 0  # how many that is
        self.count = 0  # generations applied

    # ------------------------------------------------------------ each store's
    def _apply(self, target: Target, net: Net) -> None:  # pragma: no cover - each store's
        """Write ``net`` to the tasks table, in the target's transaction."""
        raise NotImplementedError

    def _delete_through(self, target: Target, last: int | None) -> None:  # pragma: no cover - each store's
        """Delete the change-log rows up to ``last`` (None: all of them), in the target's transaction."""
        raise NotImplementedError

    def _transaction(self, target: Target) -> AbstractContextManager[Any]:  # pragma: no cover - each store's
        """A transaction of its own on ``target``, for checkpoint work while the writer is idle."""
        raise NotImplementedError

    # ------------------------------------------------------------ the writer's
    def fold(self, batch: list[Op], seq: int) -> None:
        """Fold a batch committed as the change-log row ``seq`` into the current generation."""
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

    def apply_slice(self, target: Target, task_ids: list[str], last: int) -> None:
        """In the target's transaction: apply these tasks of the closed generation; with ``last``, the rest is done."""
        if task_ids:
            assert self._closed is not None
            self._apply(target, self._closed.net(task_ids, self._encode))
        if last:
            self._delete_through(target, last)

    def sliced(self, last: int) -> None:
        """After the commit that applied a slice (and, with ``last``, finished the closed generation)."""
        if last:
            self._closed, self._rest, self._left = None, iter(()), 0
            self.count += 1

    def run(self, target: Target, *, everything: bool) -> None:
        """Apply checkpoint work in a transaction of its own: a slice, or (``everything``) all of it."""
        if everything:
            self._run_everything(target)
            return
        task_ids, last = self._next_slice(2 * SLICE)
        if not task_ids and not last:
            return
        with self._transaction(target):
            self.apply_slice(target, task_ids, last)
        self.sliced(last)

    def _run_everything(self, target: Target) -> None:
        if self._closed is None and not self.generation.last:
            return
        with self._transaction(target):
            if self._closed is not None:
                self._apply(target, self._closed.net(self._rest, self._encode))
            generation = self.generation
            if generation.latest:
                self._apply(target, generation.net(generation.latest, self._encode))
            self._delete_through(target, None)
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
        """Up to ``size`` task ids of the closed generation, and its last change-log row if that finishes it."""
        if self._closed is None:
            generation = self.generation
            if not generation.last or time.monotonic() < generation.started + GENERATION_SECONDS:
                return [], 0
            self._close_generation()
            assert self._closed is not None
        task_ids = list(itertools.islice(self._rest, size))
        self._left -= len(task_ids)
        return task_ids, self._closed.last if not self._left else 0
