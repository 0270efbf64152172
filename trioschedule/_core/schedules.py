"""Schedules in time: interval, cron and one-shot triggers, and every rule about when a run happens.

No trio and no I/O here.  :class:`Schedules` is given the scheduler (for
its ``clock``, ``wall_clock``, ``timers`` and the normal submission path)
and decides, for each schedule, which fire times run, which are misfired
(late past ``misfire_grace``, or coalesced away) and which are skipped (the
previous run still going).  The shell (``trioschedule._dispatcher.schedules``)
makes the schedule records durable and only then asks :meth:`Schedules.submit_ready`
to turn the decided runs into tasks: a run's record is journaled before its
task, so a crash in between loses that one run and never runs it twice.

Fire times are wall-clock seconds (UTC epoch), so a run's task id, derived
from the schedule's name and its nominal fire time (:func:`run_id`), is the
same across restarts.  Timers are on the scheduler's monotonic clock: a
timer that wakes before the wall clock reached its fire time (the wall clock
was set back) is simply set again.  docs/SCHEDULES.md has the rules.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .._errors import QueueFull, Rejected
from .tasks import DONE, check_options

if TYPE_CHECKING:
    from .._protocol.messages import Outcome
    from .scheduler import Scheduler
    from .tasks import Task

__all__ = [
    "COALESCE",
    "CRON",
    "INTERVAL",
    "ONCE",
    "OVERLAP",
    "WIRE_FIELDS",
    "Definition",
    "Schedule",
    "Schedules",
    "define",
    "iso_utc",
    "parse_time",
    "run_id",
    "wire_definition",
]  # fmt: skip

log = logging.getLogger("trioschedule.dispatcher")

INTERVAL: Final = "interval"
CRON: Final = "cron"
ONCE: Final = "once"
COALESCE: Final = ("latest", "earliest", "all")
OVERLAP: Final = ("skip", "buffer-one", "allow")

#: Runs shown per schedule (and kept in its record): fire time, task id, status.
LAST_RUNS_KEPT: Final = 10
#: Fire times looked at in one catch-up; beyond it the oldest missed ones are counted, not examined.
CATCH_UP_SCAN: Final = 100_000
#: ``coalesce="all"`` submits at most this many missed runs at once; older ones count as misfired.
CATCH_UP_RUNS: Final = 1000
#: A timer may wake this much before its wall-clock time (float rounding) and still count as due.
_TOLERANCE = 1e-3
#: The status of a run submitted and not ended yet.
PENDING: Final = "pending"
#: The status of a run whose task the journal no longer holds after a restart.
UNKNOWN_RUN: Final = "unknown"

_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")
_RECORD_VERSION = 1


# ------------------------------------------------------------------ time
def iso_utc(when: float) -> str:
    """``when`` (epoch seconds) as ISO 8601 UTC with a ``Z``; microseconds only if there are any."""
    dt = datetime.fromtimestamp(round(when, 6), tz=timezone.utc)
    text = dt.isoformat(timespec="microseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_time(value: Any, tz: str | None = None, what: str = "time") -> float:
    """A point in time as epoch seconds: a number, an aware or naive ``datetime``, or an ISO 8601 string.

    A naive one is read in ``tz`` if given, else in UTC.
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a datetime, an ISO 8601 string or epoch seconds, not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not an ISO 8601 date and time (like 2026-12-07T09:00:00Z)") from None
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, an ISO 8601 string or epoch seconds, not {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=_zone(tz) if tz else timezone.utc)
    return float(value.timestamp())


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name like 'Europe/Berlin' or 'UTC'") from None


def run_id(name: str, fire_time: float) -> str:
    """The task id of schedule ``name``'s run for ``fire_time``: ``sched:<name>:<ISO 8601 UTC>``.

    A function of the two alone, so that a replay or a restart cannot submit
    one fire time twice.
    """
    return f"sched:{name}:{iso_utc(fire_time)}"


# ------------------------------------------------------------------ definitions
class Definition:
    """What the user asked for: checked, normalised, comparable.  Times are epoch seconds."""

    FIELDS: Final = ("name", "task", "args", "kwargs", "kind", "every", "start", "cron", "tz", "at", "misfire_grace",
                     "coalesce", "overlap", "jitter", "timeout", "retries", "priority")  # fmt: skip
    __slots__ = FIELDS

    name: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    kind: str
    every: float | None
    start: float | None
    cron: str | None
    tz: str | None
    at: float | None
    misfire_grace: float | None
    coalesce: str
    overlap: str
    jitter: float
    timeout: float | None
    retries: int | None
    priority: int

    def __init__(self, **fields: Any) -> None:
        for field in self.FIELDS:
            setattr(self, field, fields[field])

    def to_dict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Definition) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def same_trigger(self, other: Definition) -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in ("kind", "every", "start", "cron", "tz", "at"))

    def spec(self) -> str:
        """The trigger as people write it: ``every 30s``, ``0 2 * * 1-5 Europe/Berlin``, ``at 2026-12-07T09:00:00Z``."""
        if self.kind == INTERVAL:
            assert self.every is not None
            text = f"every {self.every:g}s"
            return text if self.start is None else f"{text} from {iso_utc(self.start)}"
        if self.kind == CRON:
            return f"{self.cron} {self.tz or 'UTC'}"
        assert self.at is not None
        return f"at {iso_utc(self.at)}"


def define(
    name: str, task: str, args: Any = (), kwargs: dict[str, Any] | None = None, *, every: float | None = None,
    start: Any = None, cron: str | None = None, tz: str | None = None, at: Any = None,
    misfire_grace: float | None = None, coalesce: str = "latest", overlap: str = "skip", jitter: float = 0.0,
    timeout: float | None = None, retries: int | None = None, priority: int = 0, now: float | None = None,
) -> Definition:  # fmt: skip
    """Check a schedule as given to ``add_schedule`` and normalise it; raises ValueError saying what is wrong.

    ``now`` (epoch seconds) refuses a one-shot time in the past.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("a schedule name must be 1 to 200 characters without spaces or control characters")
    if not isinstance(task, str) or not task:
        raise ValueError("a schedule must name its task (a non-empty string)")
    if isinstance(args, (str, bytes)) or not hasattr(args, "__iter__"):
        raise ValueError("args must be a list of positional arguments")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError("kwargs must be a dict")
    given = [what for what, value in (("every", every), ("cron", cron), ("at", at)) if value is not None]
    if len(given) != 1:
        raise ValueError("give exactly one trigger: every= (seconds), cron= (an expression) or at= (a time)"
                         + (f"; got {', '.join(given)}" if given else ""))  # fmt: skip
    if tz is not None:
        _zone(tz)
    kind = INTERVAL if every is not None else CRON if cron is not None else ONCE
    every_s = start_s = at_s = None
    if kind == INTERVAL:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not (math.isfinite(every) and every > 0):
            raise ValueError(f"every must be a positive number of seconds, not {every!r}")
        every_s = float(every)
        start_s = None if start is None else parse_time(start, tz, "start")
    elif start is not None:
        raise ValueError("start= anchors an interval (every=); cron and one-shot schedules have none")
    if kind == CRON:
        assert cron is not None
        cron = " ".join(str(cron).split())
        try:
            CronSim(cron, datetime.now(_zone(tz) if tz else timezone.utc))
        except (CronSimError, ValueError, IndexError) as exc:
            raise ValueError(f"bad cron expression {cron!r}: {exc or 'not understood'} "
                             "(5 fields: minute hour day month weekday, or 6 with seconds first)") from None  # fmt: skip
        tz = tz or "UTC"
    if kind == ONCE:
        at_s = parse_time(at, tz, "at")
        if now is not None and at_s <= now:
            raise ValueError(f"at={iso_utc(at_s)} is in the past (now is {iso_utc(now)}): a one-shot schedule "
                             "must name a time to come")  # fmt: skip
    if kind != CRON and tz is not None and kind == INTERVAL and start is None:
        tz = None  # nothing to read in it
    if misfire_grace is not None and not (isinstance(misfire_grace, (int, float)) and misfire_grace >= 0):
        raise ValueError("misfire_grace must be seconds >= 0, or None for no limit")
    if coalesce not in COALESCE:
        raise ValueError(f"coalesce must be one of {', '.join(COALESCE)}, not {coalesce!r}")
    if overlap not in OVERLAP:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP)}, not {overlap!r}")
    if not (isinstance(jitter, (int, float)) and math.isfinite(jitter) and jitter >= 0):
        raise ValueError("jitter must be seconds >= 0")
    check_options(timeout, retries, None)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError("priority must be an integer")
    return Definition(
        name=name, task=task, args=list(args), kwargs=dict(kwargs or {}), kind=kind, every=every_s, start=start_s,
        cron=cron, tz=tz, at=at_s, misfire_grace=None if misfire_grace is None else float(misfire_grace),
        coalesce=coalesce, overlap=overlap, jitter=float(jitter),
        timeout=None if timeout is None else float(timeout), retries=retries, priority=priority,
    )  # fmt: skip


#: The fields of a ``schedule`` request's definition (``add_schedule``'s keywords).
WIRE_FIELDS: Final = ("name", "task", "args", "kwargs", "every", "start", "cron", "tz", "at", "misfire_grace",
                      "coalesce", "overlap", "jitter", "timeout", "retries", "priority")  # fmt: skip
def wire_definition(**fields: Any) -> dict[str, Any]:
    """A definition as a ``schedule`` request carries it: checked here first, times as ISO 8601 UTC, defaults left out."""
    d = define(**fields)
    out: dict[str, Any] = {}
    defaults = {"args": [], "kwargs": {}, "coalesce": "latest", "overlap": "skip", "jitter": 0.0, "priority": 0}
    for field in WIRE_FIELDS:
        value = getattr(d, field)
        if field in ("start", "at") and value is not None:
            value = iso_utc(value)
        if field == "tz" and d.kind == "cron" and fields.get("tz") is None:
            continue  # the dispatcher's default (UTC) is the same
        if value is None or (field in defaults and value == defaults[field]):
            continue
        out[field] = value
    return out


# ------------------------------------------------------------------ triggers
def next_fire(d: Definition, anchor: float, after: float) -> float | None:
    """The first fire time strictly after ``after`` (None if there is none)."""
    if d.kind == INTERVAL:
        assert d.every is not None
        every = d.every
        k = max(0, math.floor((after - anchor) / every) + 1)
        fire = anchor + k * every
        while fire <= after:  # float rounding
            k += 1
            fire = anchor + k * every
        return fire
    if d.kind == ONCE:
        assert d.at is not None
        return d.at if d.at > after else None
    for fire in _cron_fires(d, after):
        return fire
    return None


def _cron_fires(d: Definition, after: float) -> Iterator[float]:
    """Cron fire times strictly after ``after``, in order (cronsim applies Debian cron's DST rules)."""
    assert d.cron is not None
    zone = _zone(d.tz or "UTC")
    last = after
    try:
        for dt in CronSim(d.cron, datetime.fromtimestamp(after, tz=zone)):
            fire = dt.timestamp()
            # cronsim steps a daily job in local time; after the first of two 01:30s
            # (fall back) it may name that one again: never go back.
            if fire > last:
                last = fire
                yield fire
    except StopIteration:  # pragma: no cover - cronsim ends an impossible expression so
        return


def fires_between(d: Definition, anchor: float, after: float, until: float) -> Iterator[float]:
    """Fire times in ``(after, until]``, in order."""
    if d.kind == CRON:
        for fire in _cron_fires(d, after):
            if fire > until:
                return
            yield fire
        return
    following = next_fire(d, anchor, after)
    while following is not None and following <= until:
        yield following
        following = next_fire(d, anchor, following)


def jitter_of(d: Definition, anchor: float, fire: float) -> float:
    """The delay of ``fire``'s run: deterministic in (name, fire time), below ``jitter`` and before the next fire."""
    if not d.jitter:
        return 0.0
    digest = hashlib.sha256(f"{d.name}\x00{iso_utc(fire)}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64  # in [0, 1)
    following = next_fire(d, anchor, fire)
    room = d.jitter if following is None else min(d.jitter, following - fire)
    return fraction * room


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
        start = s.last_fire
        for fire in fires_between(d, s.anchor, start, now):
            # Only a fire time within ``jitter`` of now may still be waiting for its jittered time.
            if fire > now - d.jitter - _TOLERANCE and fire + jitter_of(d, s.anchor, fire) > now + _TOLERANCE:
                break
            due.append(fire)
            scanned += 1
            if scanned >= CATCH_UP_SCAN:  # a very long gap: count the oldest, look at the most recent
                s.misfired += len(due)
                log.warning("schedule %r: more than %d fire times missed; counted as misfired", s.name, CATCH_UP_SCAN)
                due = []
                scanned = 0
                start = max(fire, now - 3600.0 if d.misfire_grace is None else now - d.misfire_grace - 1.0)
                for later in fires_between(d, s.anchor, start, now):
                    if later > now - d.jitter - _TOLERANCE and later + jitter_of(d, s.anchor, later) > now + _TOLERANCE:
                        break
                    due.append(later)
                break
        if not due:
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
        if late <= grace + _TOLERANCE:
            return True  # jitter only makes it less late
        if late - s.d.jitter > grace + _TOLERANCE:
            return False  # even the largest jitter would not bring it within the grace
        return late - jitter_of(s.d, s.anchor, fire) <= grace + _TOLERANCE

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
