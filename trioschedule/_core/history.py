"""The last N task outcomes, kept for operators (``trioschedule tasks``, ``status``).

:meth:`Lifecycle.finish <trioschedule._core.lifecycle.Lifecycle.finish>`
appends one plain tuple per task when the history is on, in the field order
of :class:`Ended`, built from what the task record already holds: a finish
costs one small allocation and a bounded-deque append (about 150 ns; calling
``Ended()`` would double it).  Everything that costs more (the
arguments' summary, the JSON shape) is computed when someone reads it.
No I/O here.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

from .._protocol import messages as m

__all__ = ["ARGS_SUMMARY_LENGTH", "Ended", "History", "args_summary"]

#: Characters of an arguments summary, ``...`` included.
ARGS_SUMMARY_LENGTH = 80


class Ended(NamedTuple):
    """One ended task as the history keeps it (frozen; the arguments are summarised when read)."""

    id: str
    name: str
    args: Any
    kwargs: Any
    worker: str | None  # the peer name of the worker that ran its last attempt, if any
    status: str
    attempt: int
    error: Any  # the outcome's RemoteError, or None
    reason: str | None
    submitted_at: float  # wall clock
    finished_at: float  # wall clock

    def describe(self) -> dict[str, Any]:
        """The JSON-ready shape of one entry (``trioschedule tasks --json``)."""
        error = self.error
        return {
            "id": self.id,
            "name": self.name,
            "args": args_summary(self.args, self.kwargs),
            "worker": self.worker,
            "status": self.status,
            "attempt": self.attempt,
            "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
            "error": None if error is None else {"type": error.type, "message": error.message},
            "reason": self.reason,
        }


class History:
    """A bounded deque of ended tasks (tuples in :class:`Ended`'s order), oldest first; ``size`` 0 keeps nothing."""

    __slots__ = ("entries", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: deque[tuple[Any, ...]] = deque(maxlen=max(0, size))

    def latest(self, limit: int, *, failed: bool = False) -> list[Ended]:
        """Up to ``limit`` entries, newest first; ``failed`` keeps those that did not end ``ok``."""
        found: list[Ended] = []
        if limit <= 0:
            return found
        for entry in reversed(self.entries):
            if not failed or entry[5] != m.OK:  # status
                found.append(Ended._make(entry))
                if len(found) >= limit:
                    break
        return found


def args_summary(args: Any, kwargs: Any, length: int = ARGS_SUMMARY_LENGTH) -> str:
    """A short ``repr`` of a call's arguments, cut to ``length`` characters.

    Each argument's repr is cut before it is joined, so a huge argument costs
    its repr once, at read time, and never more than the summary shows.
    """
    parts: list[str] = []
    total = 0
    for value in list(args or ()) + [_Keyword(k, v) for k, v in (kwargs or {}).items()]:
        text = repr(value)
        parts.append(text[: length + 1])  # one more than fits, so the cut shows
        total += len(parts[-1]) + 2
        if total > length:
            break
    text = ", ".join(parts)
    return text if len(text) <= length else text[: length - 3] + "..."


class _Keyword:
    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value

    def __repr__(self) -> str:
        return f"{self.name}={self.value!r}"
