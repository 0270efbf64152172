"""What the scheduling-core tests share: a fake clock, a recording journal, message builders.

The core is driven here the way the dispatcher's shell drives it
(``trioschedule._dispatcher``), with no trio and no sockets: a ``conn`` is any
object that is not None, time is a float the test advances, and the journal
keeps :class:`StoredTask` rows in memory so that a new scheduler can be
rebuilt from them.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from trioschedule._core.recovery import row_of
from trioschedule._core.scheduler import Limits, Scheduler
from trioschedule._core.tasks import DELAYED, DONE, QUEUED, RUNNING, Task
from trioschedule._protocol import messages as m
from trioschedule._protocol.connection import WORKER
from trioschedule._store.base import StoredTask

WALL_OFFSET = 1_700_000_000.0  # the wall clock is far from the monotonic one: mixing them up shows


class FakeClock:
    """One float of time; ``monotonic`` may be shifted (a restarted process has another trio clock)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.shift = 0.0

    def monotonic(self) -> float:
        return self.now + self.shift

    def wall(self) -> float:
        return self.now + WALL_OFFSET


class RecordingJournal:
    """A :class:`~trioschedule._core.journal.Journal` that keeps the rows a store would.

    ``add_new`` is the shell's side (``StoreJournal.add_new``/``add_chunk``):
    the core never journals a client's or a ``map()``'s new task itself.
    """

    def __init__(self, clock: FakeClock, *, active: bool = True, bulk_starts: bool = True) -> None:
        self.clock = clock
        self.active = active
        self.bulk_starts = bulk_starts
        self.rows: dict[str, StoredTask] = {}
        self.calls: list[tuple[Any, ...]] = []

    # ------------------------------------------------------------ the core's side
    def changed(self, task: Task) -> None:
        assert self.active, "the scheduler journaled while the journal is inactive"
        self.calls.append(("changed", task.id, task.state))
        self.rows[task.id] = self.stored(task)

    def started_first(self, task_ids: list[str], session_id: str) -> None:
        assert self.active, "the scheduler journaled while the journal is inactive"
        self.calls.append(("started_first", tuple(task_ids), session_id))
        for task_id in task_ids:
            row = self.rows[task_id]  # journaled as queued first, or the core is wrong to say so
            assert row.state == QUEUED and row.attempt == 0, row
            self.rows[task_id] = attrs.evolve(row, state=RUNNING, attempt=1, failures=0, losses=0,
                                              session=session_id)  # fmt: skip

    def forget(self, task_ids: list[str]) -> None:
        assert self.active, "the scheduler journaled while the journal is inactive"
        self.calls.append(("forget", tuple(task_ids)))
        for task_id in task_ids:
            self.rows.pop(task_id, None)

    # ------------------------------------------------------------ the shell's side
    def add_new(self, tasks: list[Task]) -> None:
        if self.active:
            for task in tasks:
                self.rows[task.id] = self.stored(task)

    def stored(self, task: Task) -> StoredTask:
        """``StoreJournal._stored``: the row of ``task`` as it is now (deadline on the wall clock)."""
        return row_of(task, self.clock.monotonic(), self.clock.wall())

    def snapshot(self) -> list[StoredTask]:
        """What a restarted dispatcher's store would hand to recovery (copies)."""
        return [attrs.evolve(row) for row in self.rows.values()]


class Slot:
    """A task's ``slot``: records the outcome, and fails loudly if a task ends twice."""

    def __init__(self) -> None:
        self.outcomes: list[m.Outcome] = []

    def set(self, outcome: m.Outcome) -> None:
        self.outcomes.append(outcome)
        assert len(self.outcomes) == 1, f"a task ended twice: {self.outcomes}"


class Batch:
    """A ``map()``'s batch: ``one_done(index, outcome)`` once per task."""

    def __init__(self) -> None:
        self.size = 0
        self.outcomes: dict[int, m.Outcome] = {}

    def add(self, tasks: list[Task]) -> None:
        for task in tasks:
            task.batch = self
            task.batch_index = self.size
            self.size += 1

    def one_done(self, index: int, outcome: m.Outcome) -> None:
        assert index not in self.outcomes, f"map() task {index} ended twice"
        self.outcomes[index] = outcome


def limits(**overrides: Any) -> Limits:
    settings: dict[str, Any] = {
        "max_queued": 10_000, "max_client_queued": 10_000, "max_losses": 2, "retry_backoff": 1.0, "retry_backoff_max": 8.0,
        "heartbeat_timeout": 5.0, "cancel_timeout": 3.0, "session_grace": 10.0, "result_ttl": 1e7, "max_results": 100_000,
    }  # fmt: skip
    settings.update(overrides)
    return Limits(**settings)


def make_scheduler(clock: FakeClock | None = None, journal: RecordingJournal | None = None, *, seed: int = 0,
                   **overrides: Any) -> Scheduler:  # fmt: skip
    clock = clock or FakeClock()
    journal = journal or RecordingJournal(clock, active=False)
    return Scheduler(limits(**overrides), journal, clock=clock.monotonic, wall_clock=clock.wall,
                     rng=random.Random(seed))  # fmt: skip


def hello(*tasks: str, concurrency: int = 1, prefetch: int = 0, session: str | None = None,
          running: dict[str, int] | None = None, retries: dict[str, int] | None = None,
          no_retry: dict[str, tuple[str, ...]] | None = None, name: str = "w",
          retry_delay: dict[str, float] | None = None, retry_timeout: tuple[str, ...] = ()) -> m.Hello:  # fmt: skip
    """A worker's hello, as ``Worker._connect_forever`` builds it."""
    return m.Hello(
        version=m.PROTOCOL_VERSION, role=WORKER, name=name, host="test", pid=1, tasks=tuple(tasks),
        concurrency=concurrency, prefetch=prefetch, session=session, running=dict(running or {}),
        retries=dict(retries or {}), no_retry=dict(no_retry or {}), retry_delay=dict(retry_delay or {}),
        retry_timeout=retry_timeout,
    )  # fmt: skip


def results(seq: int, *outcomes: m.Outcome, started: tuple[str, ...] = ()) -> m.Results:
    return m.Results(seq=seq, started=started, results=tuple(outcomes))


def ok(task_id: str, attempt: int = 1, value: Any = None) -> m.Outcome:
    return m.Outcome(id=task_id, status=m.OK, attempt=attempt, value=value)


def error(task_id: str, attempt: int = 1, type: str = "ValueError") -> m.Outcome:
    return m.Outcome(id=task_id, status=m.ERROR, attempt=attempt, error=m.RemoteError(type=type, message="boom"))


def cancelled(task_id: str, attempt: int = 1, reason: str = "cancelled") -> m.Outcome:
    return m.Outcome(id=task_id, status=m.CANCELLED, attempt=attempt, reason=reason)


def take_specs(scheduler: Scheduler, session: Any) -> list[dict[str, Any]]:
    """What the shell would send ``session`` in its next Run frame (and clears it, as the shell does)."""
    scheduler.dirty_sessions.discard(session)
    specs, session.buffer = session.buffer, []
    return specs


def take_control(scheduler: Scheduler, session: Any) -> list[Any]:
    scheduler.dirty_sessions.discard(session)
    control, session.control = session.control, []
    return control


def advance(scheduler: Scheduler, clock: FakeClock, seconds: float) -> None:
    """Let ``seconds`` pass and fire the timers that came due, as the shell's timer task does."""
    clock.now += seconds
    scheduler.timers.fire_due(clock.monotonic())


def state_of(scheduler: Scheduler, task_id: str) -> str:
    return scheduler.tasks[task_id].state


__all__ = [
    "DELAYED", "DONE", "QUEUED", "RUNNING", "Batch", "FakeClock", "RecordingJournal", "Slot", "advance", "cancelled",
    "error", "hello", "limits", "make_scheduler", "ok", "results", "state_of", "take_control", "take_specs",
]  # fmt: skip
