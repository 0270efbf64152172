"""Task records, their lifecycle table, and the checks on submit options."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Final

from .metrics import UNTRACKED, NameStats

if TYPE_CHECKING:
    from .._protocol.messages import Outcome
    from .sessions import ClientRecord, WorkerSession

__all__ = [
    "DELAYED",
    "DONE",
    "NO_KWARGS",
    "QUEUED",
    "RUNNING",
    "TRANSITIONS",
    "IdSequence",
    "Task",
    "check_options",
]  # fmt: skip

QUEUED: Final = "queued"  # waiting in its name's queue for a worker with room
DELAYED: Final = "delayed"  # waiting for its not_before time (a delay, or a retry's backoff)
RUNNING: Final = "running"  # assigned to a worker session (sent, perhaps started)
DONE: Final = "done"  # ended with its one outcome; kept for reattaching until it expires

#: The legal state changes and what causes each.  ``Scheduler`` changes a
#: task's state only along these edges; the property test checks every step.
TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (QUEUED, RUNNING): "assigned to the least loaded worker with room",
    (QUEUED, DONE): "cancelled, deadline passed, or lost when a dispatcher without a journal stops",
    (DELAYED, QUEUED): "its delay or retry backoff is over",
    (DELAYED, RUNNING): "a resuming worker still holds it",
    (DELAYED, DONE): "cancelled, deadline passed, or lost when a dispatcher without a journal stops",
    (RUNNING, QUEUED): "its worker gave it back, was lost, or handed it over to an idle worker",
    (RUNNING, DELAYED): "it raised (or hit its time limit, opted in) and has retries left: retried after a delay",
    (RUNNING, DONE): "its worker reported an outcome, or it was cancelled, timed out or lost for good",
}

NO_KWARGS: dict[str, Any] = {}  # shared and never mutated: most tasks have no keyword arguments


class Task:
    """A task as the dispatcher tracks it (one per accepted submission).

    ``deadline`` is on the scheduler's clock; ``submitted_at``,
    ``finished_at`` and ``not_before`` are wall-clock times (journaled).
    ``slot`` and ``batch`` are the shell's waiters: the scheduler calls
    ``slot.set(outcome)`` and ``batch.one_done(batch_index, outcome)`` when
    the task ends, and never looks at them otherwise.
    """

    __slots__ = (
        "args",
        "assumed",
        "attempt",
        "batch",
        "batch_index",
        "cancel_reason",
        "deadline",
        "expires",
        "failures",
        "finished_at",
        "id",
        "kwargs",
        "losses",
        "name",
        "not_before",
        "outcome",
        "owner",
        "priority",
        "reclaiming",
        "retries",
        "schedule",
        "seq",
        "session",
        "slot",
        "started",
        "started_at",
        "state",
        "stats",
        "submitted_at",
        "watchers",
        "worker",
    )  # fmt: skip

    def __init__(self, task_id: str, name: str, args: list[Any], kwargs: dict[str, Any], priority: int,
                 retries: int | None, deadline: float | None, owner: ClientRecord | None, seq: int,
                 submitted_at: float, stats: NameStats = UNTRACKED) -> None:  # fmt: skip
        self.id = task_id
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.priority = priority
        self.retries = retries
        self.deadline = deadline
        self.state: str = QUEUED
        self.attempt = 0  # deliveries so far: only grows, so a late result of an earlier one is recognised
        self.failures = 0  # attempts that raised (limited by retries)
        self.losses = 0  # attempts whose worker was lost (limited by max_losses)
        self.session: WorkerSession | None = None
        self.started = False
        self.assumed = False  # started only as a guess (recovered, or adopted on resume): its worker knows better
        self.outcome: Outcome | None = None
        self.slot: Any = None
        self.batch: Any = None
        self.batch_index = 0
        self.reclaiming = False  # asked back from its worker for an idle one
        self.expires = 0.0  # when a finished outcome may be forgotten
        self.watchers: list[ClientRecord] | None = None
        self.owner = owner
        self.cancel_reason: str | None = None
        self.submitted_at = submitted_at
        self.finished_at = 0.0
        self.seq = seq
        self.not_before: float | None = None
        self.schedule: Any = None  # the Schedule this task is a run of (told when it ends), else None
        self.worker: str | None = None  # the peer name of the worker given its last attempt (for the history)
        self.stats = stats  # its name's counters (``metrics.py``): no lookup on the hot path
        self.started_at = -1.0  # scheduler clock of the current attempt's start; negative until it first started

    def __repr__(self) -> str:
        return f"<Task {self.name} {self.id} {self.state} attempt {self.attempt}>"


def check_options(timeout: float | None, retries: int | None, delay: float | None) -> None:
    """Refuse submit options that make no sense, before anything is sent or queued."""
    if timeout is not None and not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    if retries is not None and retries < 0:
        raise ValueError("retries must be >= 0")
    if delay is not None and delay < 0:
        raise ValueError("delay must be >= 0")


class IdSequence:
    """Task ids: a random prefix, then a counter in hex.

    A random prefix per dispatcher or client keeps ids from different
    sources apart as well as a ``uuid4()`` per task would, for less than a
    small task costs.
    """

    __slots__ = ("count", "prefix")

    def __init__(self, prefix_length: int = 32) -> None:
        self.prefix = uuid.uuid4().hex[:prefix_length]
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count:x}"

    def take(self, n: int) -> list[str]:
        """The next ``n`` ids, in order."""
        prefix, first = self.prefix, self.count + 1
        self.count += n
        return [f"{prefix}-{i:x}" for i in range(first, first + n)]
