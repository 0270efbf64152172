"""The journal's format, which both durable stores write: a task's row, operations in memory, a commit's segments.

Nothing here touches a database or a thread: a commit's operations are
encoded into the text of one change-log row (:func:`segments_text`; a row of
SQLite's ``changes``, of PostgreSQL's ``trioschedule_changes``) and decoded
back (:func:`recovered`, :func:`decode`), so the format can be read and
tested on its own.  It is versioned by each store's migrations
(``sqlite/schema.py``, ``postgresql/schema.py``) and must never change
without a new one in both.

A task is one JSON array, its *row* (SQLite keeps it as it is in ``tasks``): the fields :data:`ROW_FIELDS`
names, in that order (args, kwargs and outcome as JSON values).  A task as
accepted is the first :data:`NEW_FIELDS` of them (a
:data:`~trioschedule._store.base.NewTask`), the rest at their defaults.

A row of ``changes`` is a JSON array of *segments*, applied in order; a
segment names each task at most once, so the order within it does not
matter.  A segment is the groups :data:`SEGMENT_GROUPS` names, in that order:

``rows``
    ``[row, ...]``: whole tasks (an upsert); a row of ``NEW_FIELDS`` fields is a new task.
``running``
    ``[[session, attempt, failures, losses, [id, ...]], ...]``: ``update_running()``.
``done``
    ``[[finished_at, failures, losses, [id, attempt, outcome, ...]], ...]``: ``update_done()``.
``forgotten``
    ``[id, ...]``: ``forget()``.
``finished``
    ``[[finished_at, failures, losses, [id, attempt, status, value, ...]], ...]``:
    ``update_done()`` of the usual outcome, ``{"id": id, "status": status,
    "attempt": attempt, "value": value}`` (these keys in this order), without
    the dict, which :func:`recovered` rebuilds exactly.  Format 2 segments end
    before this group.
``accepted``
    ``[[name, kwargs, priority, retries, deadline, not_before, submitted_at, [id, args, ...]], ...]``:
    ``add_new_many()``, tasks accepted together that differ only in id and
    args (a ``map()`` chunk), their shared fields written once.  Format 3
    segments end before this group (and so does any segment without one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from .base import NewTask, StoredTask

__all__ = [
    "ACCEPTED",
    "ADDED",
    "CHAIN",
    "FINISH",
    "FINISH_FIELDS",
    "FORGET",
    "FORGETS",
    "MANY",
    "NEW",
    "NEW_FIELDS",
    "ROW",
    "ROW_FIELDS",
    "RUN",
    "RUNS",
    "RUN_FIELDS",
    "SEGMENT_GROUPS",
    "STATES",
    "VALUES",
    "Encode",
    "Op",
    "decode",
    "new_rows",
    "recovered",
    "row_text",
    "segments_text",
    "values",
]  # fmt: skip

Encode = Callable[[Any], str]

#: The fields of a task's row, in order (see the module docstring).
ROW_FIELDS: Final = (
    "id", "name", "args", "kwargs", "priority", "retries", "deadline", "not_before", "submitted_at",
    "state", "attempt", "failures", "losses", "session", "outcome", "finished_at",
)  # fmt: skip
#: How many of them a task as accepted has (a NewTask); the others are at ``_NEW_ROW_DEFAULTS``.
NEW_FIELDS: Final = 9
#: The groups of a change-log segment, in order (see the module docstring).
SEGMENT_GROUPS: Final = ("rows", "running", "done", "forgotten", "finished", "accepted")
STATES: Final = frozenset(("queued", "running", "done"))

_NEW_ROW_DEFAULTS = ("queued", 0, 0, 0, None, None, None)  # state ... finished_at of a task as accepted
_NEW_ROW_END = ',"queued",0,0,0,null,null,null]'  # the same, encoded: closes a NewTask's JSON into a row
_OUTCOME_KEYS = ("id", "status", "attempt", "value")  # an outcome of this shape is journaled without its dict
_quote: Encode = json.encoder.encode_basestring  # type: ignore[attr-defined]  # a str as JSON

# Operations in memory: tuples whose first element, one of these kinds, says
# what they are; the Trio side appends them to one list in call order and the
# writer takes them from its front.  Tuples and small ints, not objects: the
# store makes three of them per task, on the event loop's side.
#   (NEW, id, text)        a task as accepted (add_new()), new to the journal: text is its NewTask's JSON
#   (ACCEPTED, [id, ...], text, cache)   tasks accepted together (add_new_many()): text is their
#                          ``accepted`` group; cache, a dict, their rows once needed
#   (ADDED, id, text)      a task from add(), new to the journal: text is its row's JSON
#   (ROW, id, text)        a row's JSON, for a task the journal may hold already
#   (VALUES, id, values)   a row as a tuple of JSON values (update(), recovery)
#   RUN_FIELDS             update_running()
#   (RUNS, [id, ...], session, attempt, failures, losses)   tasks handed to one worker together
#   FINISH_FIELDS          update_done()
#   (FORGET, id)
#   (FORGETS, [id, ...])   forget() of several tasks at once (a map() chunk's results)
#   (CHAIN, id, finish operation, run operation after it)   only in a generation (see .checkpoint)
NEW: Final = 0
RUN: Final = 1
FINISH: Final = 2
FORGET: Final = 3
ADDED: Final = 4
ROW: Final = 5
VALUES: Final = 6
CHAIN: Final = 7
RUNS: Final = 8
ACCEPTED: Final = 9
FORGETS: Final = 10
MANY: Final = (RUNS, ACCEPTED, FORGETS)  # the kinds whose second element is a list of task ids
#: A RUN operation's fields, in order (the checkpoint's SQL reads them by these positions).
RUN_FIELDS: Final = ("kind", "id", "session", "attempt", "failures", "losses")
#: A FINISH operation's fields, in order (likewise).
FINISH_FIELDS: Final = ("kind", "id", "attempt", "outcome", "finished_at", "failures", "losses")
Op = tuple[Any, ...]


def values(task: StoredTask) -> Op:
    """``task`` as a (VALUES, id, values) operation (its JSON values not yet encoded)."""
    if task.state not in STATES:
        raise ValueError(f"task {task.id!r}: state {task.state!r} is not one of {sorted(STATES)}")
    return (VALUES, task.id, (
        task.id, task.name, task.args or [], task.kwargs or {}, task.priority, task.retries, task.deadline,
        task.not_before, task.submitted_at, task.state, task.attempt, task.failures, task.losses, task.session,
        task.outcome, task.finished_at,
    ))  # fmt: skip


def row_text(op: Op, task_id: str, encode: Encode) -> str:
    """The row JSON of ``task_id`` from a row operation that holds it (NEW, ADDED, ROW, ACCEPTED)."""
    kind = op[0]
    if kind == NEW:
        return op[2][:-1] + _NEW_ROW_END
    if kind == ACCEPTED:
        cache = op[3]
        if not cache:  # the group as committed, decoded once: later changes to the arguments do not leak in
            *fields, items = json.loads(op[2])
            cache["fields"] = fields
            cache["args"] = dict(zip(items[::2], items[1::2]))
        fields = cache["fields"]
        return encode((task_id, fields[0], cache["args"][task_id], *fields[1:], *_NEW_ROW_DEFAULTS))
    return op[2]


def new_rows(tasks: list[NewTask], dumps: Encode) -> list[Op]:
    """``tasks`` as (NEW, id, JSON of the NewTask) operations; raises TypeError/ValueError if one cannot be.

    The tasks of one submission mostly differ only in id and arguments: the
    JSON of the fields after those is reused while they stay the same.
    """
    quote = _quote
    ops: list[Op] = []
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
        ops.append((NEW, task_id, f"[{quote(task_id)}{head}{dumps(args)}{tail}"))
    return ops


def decode(text: str) -> StoredTask:
    """A row's JSON as the task it holds (raises ValueError/TypeError if malformed)."""
    (task_id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at, state, attempt, failures,
     losses, session, outcome, finished_at) = json.loads(text)  # fmt: skip
    if state not in STATES:
        raise ValueError(f"task {task_id!r} has the state {state!r}")
    return StoredTask(
        id=task_id, name=name, args=args or [], kwargs=kwargs or {}, priority=priority, retries=retries,
        deadline=deadline, not_before=not_before, state=state, attempt=attempt, failures=failures, losses=losses,
        session=session, outcome=outcome, submitted_at=submitted_at, finished_at=finished_at,
    )  # fmt: skip


def segments_text(batch: list[Op], encode: Encode) -> tuple[str, int, int]:
    """``batch`` (operations in call order) as a row of ``changes``.

    Also returns how many task changes it holds, and how many of those are
    forgets.  A batch that names each task once (the usual: a task's next
    operation waits for the commit of this one) is one segment, which one set
    of its ids tells; otherwise a segment ends before a task's second
    operation.
    """
    ids: list[str] = []
    add, extend = ids.append, ids.extend
    for op in batch:
        if op[0] in MANY:
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
        names = op[1] if op[0] in MANY else (op[1],)
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


def _segment_text(ops: list[Op], encode: Encode) -> tuple[str, int]:
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
        if kind == RUN or kind == RUNS:
            _, ids, session, attempt, failures, losses = op
            if kind == RUN:
                ids = (ids,)
            group = running.get(session)
            if group is None:
                running[session] = [session, attempt, failures, losses, list(ids)]
            elif group[1] == attempt and group[2] == failures and group[3] == losses:
                group[4] += ids
            else:
                other.append([RUN, session, attempt, failures, losses, list(ids)])
        elif kind == FINISH:
            _, task_id, attempt, outcome, finished_at, failures, losses = op
            group = done.get(finished_at)
            if group is None:
                group = done[finished_at] = [finished_at, failures, losses, [], []]  # full items, compact items
            elif group[1] != failures or group[2] != losses:
                other.append([FINISH, finished_at, failures, losses, [task_id, attempt, outcome]])
                continue
            if type(outcome) is dict and len(outcome) == 4 and tuple(outcome) == _OUTCOME_KEYS:
                outcome_id, status, outcome_attempt, value = outcome.values()
                if (
                    type(outcome_id) is str
                    and outcome_id == task_id
                    and type(outcome_attempt) is type(attempt)
                    and outcome_attempt == attempt
                ):
                    group[4] += (task_id, attempt, status, value)  # rebuilt exactly by recovered()
                    continue
            group[3] += (task_id, attempt, outcome)
        elif kind == FORGET:
            forgotten.append(op[1])
        elif kind == FORGETS:
            forgotten += op[1]
        elif kind == ACCEPTED:
            accepted.append(op[2])
        else:
            rows.append(op[2])  # a text, or (VALUES) a tuple of values
    return _groups_text(rows, running, done, other, forgotten, accepted, encode), len(forgotten)


def _groups_text(
    rows: list[Any], running: dict[str, list[Any]], done: dict[float, list[Any]], other: list[list[Any]],
    forgotten: list[str], accepted: list[str], encode: Encode,
) -> str:  # fmt: skip
    """The segment that :func:`_segment_text` sorted into groups, as JSON."""
    groups_running = list(running.values())
    groups_done: list[list[Any]] = []
    groups_finished: list[list[Any]] = []
    for group in done.values():
        if group[3]:
            groups_done.append(group[:4])
        if group[4]:
            groups_finished.append([group[0], group[1], group[2], group[4]])
    for group in other:
        (groups_running if group[0] == RUN else groups_done).append(group[1:])
    texts = ",".join([row if type(row) is str else encode(row) for row in rows])
    groups = encode((groups_running, groups_done, forgotten, groups_finished))
    if accepted:
        groups = groups[:-1] + ",[" + ",".join(accepted) + "]]"
    return "[[" + texts + "]," + groups[1:]


def recovered(text: str) -> list[Op]:
    """A row of ``changes`` as operations in memory (raises ValueError/TypeError/IndexError if malformed)."""
    ops: list[Op] = []
    for segment in json.loads(text):
        accepted: Any = ()
        finished: Any = ()
        if len(segment) == 6:
            rows, running, done, forgotten, finished, accepted = segment
        elif len(segment) == 5:  # format 3
            rows, running, done, forgotten, finished = segment
        else:  # format 2
            rows, running, done, forgotten = segment
        for row in rows:
            if type(row[0]) is not str or len(row) not in (NEW_FIELDS, len(ROW_FIELDS)):
                raise ValueError(f"a task row has {len(row)} fields")
            ops.append((VALUES, row[0], (*row, *_NEW_ROW_DEFAULTS) if len(row) == NEW_FIELDS else tuple(row)))
        for name, kwargs, priority, retries, deadline, not_before, submitted_at, items in accepted:
            if len(items) % 2:
                raise ValueError("a group of accepted tasks is not id, args pairs")
            ops.extend(
                (VALUES, task_id, (task_id, name, args, kwargs, priority, retries, deadline, not_before, submitted_at,
                                   *_NEW_ROW_DEFAULTS))
                for task_id, args in zip(items[::2], items[1::2])
            )  # fmt: skip
        for session, attempt, failures, losses, ids in running:
            ops.extend((RUN, task_id, session, attempt, failures, losses) for task_id in ids)
        for finished_at, failures, losses, items in done:
            if len(items) % 3:
                raise ValueError("a group of finished tasks is not id, attempt, outcome triples")
            ops.extend((FINISH, task_id, attempt, outcome, finished_at, failures, losses)
                       for task_id, attempt, outcome in zip(*[iter(items)] * 3))  # fmt: skip
        for finished_at, failures, losses, items in finished:
            if len(items) % 4:
                raise ValueError("a group of finished tasks is not id, attempt, status, value quadruples")
            ops.extend(
                (FINISH, task_id, attempt, {"id": task_id, "status": status, "attempt": attempt, "value": value},
                 finished_at, failures, losses)
                for task_id, attempt, status, value in zip(*[iter(items)] * 4)
            )  # fmt: skip
        ops.extend((FORGET, task_id) for task_id in forgotten)
    for op in ops:
        if type(op[1]) is not str:
            raise ValueError(f"an operation names the task {op[1]!r}")
    return ops
