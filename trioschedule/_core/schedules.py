"""Schedules in time: their state, and every rule about when a run happens.

No trio and no I/O here.  :class:`Schedules` is given the scheduler (for
its ``clock``, ``wall_clock``, ``timers`` and the normal submission path)
and decides, for each schedule, which fire times run, which are misfired
(late past ``misfire_grace``, or coalesced away) and which are skipped (the
previous run still going).  The shell (``trioschedule._dispatcher.schedules``)
makes the schedule records durable and only then asks :meth:`Schedules.submit_ready`
to turn the decided runs into tasks: a run's record is journaled before its
task, so a crash in between loses that one run and never runs it twice.

Fire times (:mod:`.triggers`) are wall-clock seconds (UTC epoch), so a run's
task id, derived from the schedule's name and its nominal fire time
(:func:`~.triggers.run_id`), is the same across restarts.  Timers are on the
scheduler's monotonic clock: a timer that wakes before the wall clock reached
its fire time (the wall clock was set back) is simply set again.
docs/SCHEDULES.md has the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._errors import QueueFull, Rejected
from .tasks import DONE
from .triggers import TOLERANCE, Definition, fires_between, iso_utc, jitter_of, next_fire, run_id

if TYPE_CHECKING:
    from .._protocol.messages import Outcome
    from .scheduler import Scheduler
    from .tasks import Task

__all__ = ["CATCH_UP_RUNS", "CATCH_UP_SCAN", "LAST_RUNS_KEPT", "PENDING", "UNKNOWN_RUN", "Schedule", "Schedules"]

log = logging.getLogger("trioschedule.dispatcher")

#: Runs shown per schedule (and kept in its record): fire time, task id, status.
LAST_RUNS_KEPT: Final = 10
#: Fire times looked at in one catch-up; beyond it the oldest missed ones are counted, not examined.
CATCH_UP_SCAN: Final = 100_000
#: ``coalesce="all"`` submits at most this many missed runs at once; older ones count as misfired.
CATCH_UP_RUNS: Final = 1000
#: The status of a run submitted and not ended yet.
PENDING: Final = "pending"
#: The status of a run whose task the journal no longer holds after a restart.
UNKNOWN_RUN: Final = "unknown"

_RECORD_VERSION = 1


# ------------------------------------------------------------------ schedules
class Schedule:
    """A schedule's definition and its state: where it is in time, its runs, its counters."""

    __slots__ = ("_owner", "active", "anchor", "buffered", "d", "generation", "last_fire", "last_runs", "misfired",
                 "paused", "removed", "runs", "skipped")  # fmt: skip

    def __init__(self, d: Definition, anchor: float, last_fire: float) -> None:
        self.d = d
        self.anchor = anchor  # intervals: fire times are anchor + k * every
        self.last_fire = last_fire  # every fire time up to this one was dealt with (run, misfired or skipped)
        self.paused = False
        self.runs = self.misfired = self.skipped = 0
        self.last_runs: list[dict[str, Any]] = []  # oldest first: fire_time, task_id, status
        self.active: dict[str, Task | None] = {}  # unfinished runs: task id -> task (None: recovered, not linked)
        self.buffered: float | None = None  # a fire time waiting for the running run to end (overlap buffer-one)
        self.generation = 0  # its timer's; a timer of an older generation is stale
        self.removed = False
        self._owner: Schedules | None = None  # told when a run ends

    @property
    def name(self) -> str:
        return self.d.name

    def next_fire(self) -> float | None:
        return next_fire(self.d, self.anchor, self.last_fire)

    # ------------------------------------------------------------ records
    def record(self) -> dict[str, Any]:
        """What is journaled (docs/STORE.md): JSON-ready, keyed by ``name``."""
        return {
            "version": _RECORD_VERSION,
            **self.d.to_dict(),
            "anchor": self.anchor,
            "last_fire": self.last_fire,
            "paused": self.paused,
            "runs": self.runs,
            "misfired": self.misfired,
            "skipped": self.skipped,
            "last_runs": [dict(run) for run in self.last_runs],
            "buffered": self.buffered,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Schedule:
        d = Definition(**{field: record[field] for field in Definition.FIELDS})
        s = cls(d, float(record["anchor"]), float(record["last_fire"]))
        s.paused = bool(record.get("paused", False))
        s.runs = int(record.get("runs", 0))
        s.misfired = int(record.get("misfired", 0))
        s.skipped = int(record.get("skipped", 0))
        s.last_runs = [dict(run) for run in record.get("last_runs", ())]
        buffered = record.get("buffered")
        s.buffered = None if buffered is None else float(buffered)
        return s

    def run_ended(self, task: Task, outcome: Outcome) -> None:
        """Its run ``task`` ended (called by ``Lifecycle.finish``)."""
        self.active.pop(task.id, None)
        for run in self.last_runs:
            if run["task_id"] == task.id:
                run["status"] = outcome.status
        if self._owner is not None:
            self._owner.run_ended(self)


class Schedules:
    """Every schedule of one dispatcher, driven by its scheduler's clocks and timers.

    ``wake`` is called (synchronously) whenever runs are decided or records
    changed: the shell then saves :meth:`take_changes` and calls
    :meth:`submit_ready`.
    """

    def __init__(self, core: Scheduler, wake: Callable[[], None] = lambda: None) -> None:
        self.core = core
        self.wake = wake
        self.schedules: dict[str, Schedule] = {}
        self.ready: list[tuple[Schedule, str, float | None]] = []  # (schedule, task id, fire time or None: trigger)
        self.changed: set[str] = set()  # names whose records must be saved
        self.deleted: set[str] = set()  # names whose records must be dropped

    # ------------------------------------------------------------ changes
    def add(self, d: Definition) -> Schedule:
        """Add ``d``, or update the schedule of that name: the same definition again changes nothing.

        An update with a new trigger starts its fire times from now (no
        catch-up of the new trigger's past); counters and runs are kept.
        """
        now = self.core.wall_clock()
        s = self.schedules.get(d.name)
        if s is not None and s.d == d:
            return s
        if s is None:
            s = Schedule(d, d.start if d.start is not None else now, now)
            s._owner = self
            self.schedules[d.name] = s
        else:
            same_trigger = s.d.same_trigger(d)
            s.d = d
            if not same_trigger:
                s.anchor = d.start if d.start is not None else now
                s.last_fire = max(s.last_fire, now)
                s.buffered = None
        self.deleted.discard(d.name)
        self._changed(s)
        self._arm(s)
        return s

    def remove(self, name: str) -> bool:
        s = self.schedules.pop(name, None)
        if s is None:
            return False
        s.removed = True
        s.generation += 1
        self.ready = [item for item in self.ready if item[0] is not s]
        self.changed.discard(name)
        self.deleted.add(name)
        self.wake()
        return True

    def get(self, name: str) -> Schedule:
        s = self.schedules.get(name)
        if s is None:
            raise KeyError(name)
        return s

    def pause(self, name: str) -> None:
        s = self.get(name)
        if not s.paused:
            s.paused = True
            s.generation += 1
            self._changed(s)

    def resume(self, name: str) -> None:
        """Fire times while paused are neither run nor counted: the schedule goes on from now."""
        s = self.get(name)
        if s.paused:
            s.paused = False
            s.last_fire = max(s.last_fire, self.core.wall_clock())
            self._changed(s)
            self._arm(s)

    def trigger(self, name: str) -> str:
        """Run the schedule's task now, whatever its trigger and overlap say; returns the run's task id."""
        s = self.get(name)
        now = self.core.wall_clock()
        task_id = f"sched:{name}:manual:{iso_utc(now)}"
        while task_id in self.core.tasks or any(item[1] == task_id for item in self.ready):
            now += 1e-6
            task_id = f"sched:{name}:manual:{iso_utc(now)}"
        self._decide_run(s, task_id, None)
        self._changed(s)
        return task_id

    def take_changes(self) -> tuple[list[dict[str, Any]], list[str], list[tuple[Schedule, str, float | None]]]:
        """Since the last call: the records to save, the names to drop, and the runs those records decided.

        The shell saves the first two and then hands the runs to :meth:`submit_ready`.
        """
        records = [self.schedules[name].record() for name in sorted(self.changed) if name in self.schedules]
        deleted = sorted(self.deleted)
        self.changed.clear()
        self.deleted.clear()
        ready, self.ready = self.ready, []
        return records, deleted, ready

    def _changed(self, s: Schedule) -> None:
        self.changed.add(s.name)
        self.wake()

    # ------------------------------------------------------------ restart
    def restore(self, records: list[dict[str, Any]]) -> None:
        """The journaled schedules, after the scheduler recovered its tasks: link their runs, then catch up."""
        for record in records:
            try:
                s = Schedule.from_record(record)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("schedule record %r cannot be read and is ignored: %r", record.get("name"), exc)
                continue
            s._owner = self
            self.schedules[s.name] = s
            for run in s.last_runs:
                task = self.core.tasks.get(run["task_id"])
                if task is None:
                    if run["status"] == PENDING:
                        # Journaled as decided, but its task is not in the journal: the
                        # dispatcher stopped in between, or its outcome expired.  At most once.
                        log.warning("schedule %r: run %s is not in the journal; it is not run again",
                                    s.name, run["task_id"])  # fmt: skip
                        run["status"] = UNKNOWN_RUN
                elif task.state == DONE:
                    if task.outcome is not None:
                        run["status"] = task.outcome.status
                else:
                    task.schedule = s
                    s.active[task.id] = task
            self._changed(s)
            self._arm(s)
            if s.buffered is not None and not s.active:
                self._submit_buffered(s)
        if records:
            log.info("recovered %d schedule(s)", len(self.schedules))

    # ------------------------------------------------------------ time
    def _arm(self, s: Schedule) -> None:
        s.generation += 1
        if s.paused or s.removed:
            return
        fire = s.next_fire()
        if fire is None:
            return
        due = fire + jitter_of(s.d, s.anchor, fire)
        core = self.core
        core.timers.at(core.clock() + max(0.0, due - core.wall_clock()), self._timer, (s, s.generation))

    def _timer(self, arg: tuple[Schedule, int]) -> None:
        s, generation = arg
        if generation != s.generation or s.removed or s.paused:
            return
        if self.core.draining:
            return  # a stopping dispatcher runs nothing new; a restart catches up by the misfire rules
        self.fire(s, self.core.wall_clock())

    def fire(self, s: Schedule, now: float) -> None:
        """Deal with every fire time of ``s`` due at ``now``: run, misfire or skip each, then set the next timer."""
        d = s.d
        due: list[float] = []
        scanned = 0
        start = previous = s.last_fire
        for fire in fires_between(d, s.anchor, start, now):
            # Only a fire time within ``jitter`` of now may still be waiting for its jittered time.
            if fire > now - d.jitter - TOLERANCE and fire + jitter_of(d, s.anchor, fire) > now + TOLERANCE:
                break
            due.append(fire)
            scanned += 1
            if scanned >= CATCH_UP_SCAN:  # a very long gap: count the oldest, look at the most recent
                s.misfired += len(due)
                s.last_fire = fire  # dealt with, whatever the window below holds
                log.warning("schedule %r: more than %d fire times missed; counted as misfired", s.name, CATCH_UP_SCAN)
                due = []
                scanned = 0
                start = max(fire, now - 3600.0 if d.misfire_grace is None else now - d.misfire_grace - 1.0)
                s.last_fire = start  # what lies between is skipped over, uncounted (docs/SCHEDULES.md)
                for later in fires_between(d, s.anchor, start, now):
                    if later > now - d.jitter - TOLERANCE and later + jitter_of(d, s.anchor, later) > now + TOLERANCE:
                        break
                    due.append(later)
                break
        if not due:
            if s.last_fire != previous:
                self._changed(s)
            self._arm(s)
            return
        s.last_fire = due[-1]
        grace = d.misfire_grace
        within = [f for f in due if grace is None or self._in_grace(s, f, now, grace)]
        late = len(due) - len(within)
        if d.coalesce == "latest":
            chosen = within[-1:]
        elif d.coalesce == "earliest":
            chosen = within[:1]
        else:
            chosen = within[-CATCH_UP_RUNS:]
        s.misfired += late + len(within) - len(chosen)
        if len(due) > 1 or late:
            log.info("schedule %r: %d fire time(s) due at once (%d past misfire_grace); running %d (coalesce=%s)",
                     s.name, len(due), late, len(chosen), d.coalesce)  # fmt: skip
        for fire in chosen:
            self._decide(s, fire)
        self._changed(s)
        self._arm(s)

    @staticmethod
    def _in_grace(s: Schedule, fire: float, now: float, grace: float) -> bool:
        """Whether ``fire``'s run, due at its jittered time, is at most ``grace`` late at ``now``."""
        late = now - fire
        if late <= grace + TOLERANCE:
            return True  # jitter only makes it less late
        if late - s.d.jitter > grace + TOLERANCE:
            return False  # even the largest jitter would not bring it within the grace
        return late - jitter_of(s.d, s.anchor, fire) <= grace + TOLERANCE

    def _decide(self, s: Schedule, fire: float) -> None:
        """Fire time ``fire`` is to run: unless the overlap policy says otherwise."""
        task_id = run_id(s.name, fire)
        if task_id in self.core.tasks:
            return  # submitted before (an update, or a replay): once only
        busy = bool(s.active)  # a decided run not submitted yet counts: it is in ``active`` too
        overlap = s.d.overlap
        if busy and overlap == "skip":
            s.skipped += 1
            log.info("schedule %r: fire time %s skipped: its previous run has not ended (overlap=skip)",
                     s.name, iso_utc(fire))  # fmt: skip
        elif busy and overlap == "buffer-one":
            if s.buffered is not None:
                s.skipped += 1  # one is waiting already
            s.buffered = fire  # the newest waits
        else:
            self._decide_run(s, task_id, fire)

    def _decide_run(self, s: Schedule, task_id: str, fire: float | None) -> None:
        s.runs += 1
        s.last_runs.append({"fire_time": iso_utc(fire if fire is not None else self.core.wall_clock()),
                            "task_id": task_id, "status": PENDING})  # fmt: skip
        del s.last_runs[:-LAST_RUNS_KEPT]
        s.active[task_id] = None  # busy from now on (linked to its task once submitted)
        self.ready.append((s, task_id, fire))
        self.wake()

    def run_ended(self, s: Schedule) -> None:
        if s.buffered is not None and not s.active and not s.removed:
            self._submit_buffered(s)

    def _submit_buffered(self, s: Schedule) -> None:
        fire, s.buffered = s.buffered, None
        assert fire is not None
        task_id = run_id(s.name, fire)
        if task_id not in self.core.tasks:
            self._decide_run(s, task_id, fire)
        self._changed(s)

    def submit_ready(self, ready: list[tuple[Schedule, str, float | None]], durable: bool = True) -> list[Task]:
        """Turn the decided runs (from :meth:`take_changes`) into tasks, once their records are durable.

        With ``durable=False`` (saving the records failed) they are not
        submitted: a run whose decision could not be journaled could run
        twice after a restart.  They count as misfired.
        """
        submitted: list[Task] = []
        core = self.core
        for s, task_id, fire in ready:
            s.active.pop(task_id, None)
            status = None
            if not durable:
                status, s.misfired, s.runs = "not-journaled", s.misfired + 1, s.runs - 1
            elif s.removed:
                continue
            else:
                d = s.d
                try:
                    task = core.new_local_task(d.task, d.args, d.kwargs, d.timeout, d.retries, None, d.priority,
                                               task_id)  # fmt: skip
                except (Rejected, QueueFull) as exc:
                    log.warning("schedule %r: run %s not submitted: %s", s.name, task_id, exc)
                    status = "rejected"
                else:
                    if task.state != DONE:
                        task.schedule = s
                        s.active[task_id] = task
                    elif task.outcome is not None:
                        status = task.outcome.status
                    submitted.append(task)
            if status is not None:
                for run in s.last_runs:
                    if run["task_id"] == task_id:
                        run["status"] = status
                self.changed.add(s.name)
        return submitted

    # ------------------------------------------------------------ reading
    def describe(self, s: Schedule) -> dict[str, Any]:
        """A schedule in the status document (docs/SCHEDULES.md names the fields)."""
        d = s.d
        upcoming: list[str] = []
        if not s.paused:
            after = s.last_fire
            for _ in range(3):
                fire = next_fire(d, s.anchor, after)
                if fire is None:
                    break
                upcoming.append(iso_utc(fire))
                after = fire
        return {
            "name": d.name,
            "task": d.task,
            "kind": d.kind,
            "spec": d.spec(),
            "paused": s.paused,
            "next_run": upcoming[0] if upcoming else None,
            "next_runs": upcoming,
            "last_runs": [dict(run) for run in reversed(s.last_runs)],  # newest first
            "misfired": s.misfired,
            "skipped": s.skipped,
            "runs": s.runs,
            "args": list(d.args),
            "kwargs": dict(d.kwargs),
            "misfire_grace": d.misfire_grace,
            "coalesce": d.coalesce,
            "overlap": d.overlap,
            "jitter": d.jitter,
            "timeout": d.timeout,
            "retries": d.retries,
            "priority": d.priority,
            "running": len(s.active),
            "buffered": None if s.buffered is None else iso_utc(s.buffered),
        }

    def describe_all(self) -> list[dict[str, Any]]:
        return [self.describe(s) for s in sorted(self.schedules.values(), key=lambda s: s.name)]
