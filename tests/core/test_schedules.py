"""Schedules in the scheduling core, driven synchronously: triggers, DST, misfires, coalescing, overlap,
jitter, run ids, restarts.  No trio: time is a float the test moves, as the shell's timer task would."""

from __future__ import annotations

import collections
import itertools
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.helpers import WALL_OFFSET, FakeClock, hello, make_scheduler, ok, results, take_specs
from trioschedule._core.schedules import PENDING, UNKNOWN_RUN, Schedules
from trioschedule._core.tasks import DONE
from trioschedule._core.triggers import (
    CRON,
    INTERVAL,
    ONCE,
    define,
    fires_between,
    iso_utc,
    jitter_of,
    next_fire,
    parse_time,
    run_id,
    wire_definition,
)  # fmt: skip

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc


def at(text: str, zone: Any = UTC) -> float:
    """Epoch seconds of a local time in ``zone`` (``fold=0``: the first of two)."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def local(when: float) -> str:
    return datetime.fromtimestamp(when, BERLIN).strftime("%Y-%m-%d %H:%M %Z")


class Harness:
    """A scheduler and its schedules, driven as the dispatcher's shell drives them."""

    def __init__(self, wall: float, **limits: Any) -> None:
        self.clock = FakeClock(wall - WALL_OFFSET)
        self.core = make_scheduler(self.clock, **limits)
        self.schedules = Schedules(self.core)
        self.saved: dict[str, dict[str, Any]] = {}  # the journal's schedule records
        self.submitted: list[str] = []

    def wall(self) -> float:
        return self.clock.wall()

    def add(self, name: str = "s", task: str = "job", **fields: Any) -> Any:
        s = self.schedules.add(define(name, task, now=self.wall(), **fields))
        self.settle()
        return s

    def settle(self) -> None:
        """Save the changed records, then submit the runs they decided (the shell's ScheduleShell.settle)."""
        records, deleted, ready = self.schedules.take_changes()
        for record in records:
            self.saved[record["name"]] = record
        for name in deleted:
            self.saved.pop(name, None)
        self.submitted += [task.id for task in self.schedules.submit_ready(ready)]

    def run_until(self, wall: float) -> None:
        """Let time pass to ``wall``, firing each timer at its own time."""
        target = wall - WALL_OFFSET
        timers = self.core.timers
        while timers.next_deadline() <= target + self.clock.shift:
            self.clock.now = max(self.clock.now, timers.next_deadline() - self.clock.shift)
            timers.fire_due(self.clock.monotonic())
            self.settle()
        self.clock.now = target

    def end_runs(self) -> None:
        """Every submitted run that has not ended ends now (cancelled: no worker in these tests)."""
        for task_id in self.submitted:
            task = self.core.tasks.get(task_id)
            if task is not None and task.state != DONE:
                self.core.cancel(task_id)
        self.settle()

    def fire_times(self) -> list[str]:
        return [task_id.split(":", 2)[2] for task_id in self.submitted]


# ------------------------------------------------------------------ ids and definitions
def test_run_ids_are_the_name_and_the_nominal_fire_time_in_utc() -> None:
    assert run_id("nightly", at("2026-12-07T09:00:00")) == "sched:nightly:2026-12-07T09:00:00Z"
    assert run_id("fast", at("2026-12-07T09:00:00") + 0.25) == "sched:fast:2026-12-07T09:00:00.250000Z"
    assert iso_utc(at("2026-03-29T03:00:00", BERLIN)) == "2026-03-29T01:00:00Z"


def test_times_parse_from_iso_strings_datetimes_and_numbers() -> None:
    assert parse_time("2026-12-07T09:00:00Z") == at("2026-12-07T09:00:00")
    assert parse_time("2026-12-07T09:00:00", "Europe/Berlin") == at("2026-12-07T09:00:00", BERLIN)
    assert parse_time(datetime(2026, 12, 7, 9, tzinfo=UTC)) == at("2026-12-07T09:00:00")
    assert parse_time(12.5) == 12.5
    with pytest.raises(ValueError, match="not an ISO 8601"):
        parse_time("next monday")


@pytest.mark.parametrize(("fields", "message"), [
    ({}, "exactly one trigger"),
    ({"every": 5, "cron": "* * * * *"}, "exactly one trigger"),
    ({"every": 0}, "positive number of seconds"),
    ({"cron": "61 * * * *"}, "bad cron expression"),
    ({"cron": "* * *"}, "bad cron expression"),
    ({"cron": "0 2 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
    ({"at": "2020-01-01T00:00:00Z"}, "in the past"),
    ({"every": 5, "coalesce": "some"}, "coalesce must be one of"),
    ({"every": 5, "overlap": "queue"}, "overlap must be one of"),
    ({"every": 5, "misfire_grace": -1}, "misfire_grace"),
    ({"every": 5, "jitter": -1}, "jitter"),
    ({"every": 5, "timeout": 0}, "timeout"),
    ({"cron": "0 2 * * *", "start": "2030-01-01T00:00:00Z"}, "start= anchors an interval"),
])  # fmt: skip
def test_definitions_that_cannot_work_are_refused_saying_why(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        define("s", "job", now=at("2026-01-01T00:00:00"), **fields)


def test_a_name_is_one_word() -> None:
    with pytest.raises(ValueError, match="schedule name"):
        define("two words", "job", every=5)
    assert define("reports:nightly-1", "job", every=5).name == "reports:nightly-1"


def test_the_wire_form_leaves_defaults_out_and_writes_times_in_utc() -> None:
    assert wire_definition(name="n", task="t", every=30) == {"name": "n", "task": "t", "every": 30.0}
    assert wire_definition(name="n", task="t", at="2026-12-07T10:00:00", tz="Europe/Berlin", args=[1]) == {
        "name": "n", "task": "t", "args": [1], "at": "2026-12-07T09:00:00Z", "tz": "Europe/Berlin",
    }  # fmt: skip


# ------------------------------------------------------------------ triggers
def test_an_interval_fires_every_n_seconds_from_its_anchor() -> None:
    d = define("s", "job", every=30)
    anchor = at("2026-01-01T00:00:00")
    assert next_fire(d, anchor, anchor) == anchor + 30
    assert list(fires_between(d, anchor, anchor + 31, anchor + 125)) == [anchor + 60, anchor + 90, anchor + 120]
    start = define("s", "job", every=60, start="2026-01-01T12:00:00Z")
    assert next_fire(start, at("2026-01-01T12:00:00"), at("2026-01-01T11:00:00")) == at("2026-01-01T12:00:00")


def test_cron_in_five_and_six_fields() -> None:
    five = define("s", "job", cron="0 2 * * 1-5", tz="Europe/Berlin")
    fires = list(fires_between(five, 0, at("2026-12-04T00:00:00"), at("2026-12-09T00:00:00")))  # Fri..Tue
    assert [local(f) for f in fires] == ["2026-12-04 02:00 CET", "2026-12-07 02:00 CET", "2026-12-08 02:00 CET"]
    six = define("s", "job", cron="*/20 * * * * *")
    start = at("2026-12-07T09:00:00")
    assert list(fires_between(six, 0, start, start + 60)) == [start + 20, start + 40, start + 60]


def test_a_one_shot_fires_once() -> None:
    d = define("s", "job", at="2026-12-07T09:00:00Z", now=at("2026-12-01T00:00:00"))
    assert d.kind == ONCE
    assert next_fire(d, 0, at("2026-12-01T00:00:00")) == at("2026-12-07T09:00:00")
    assert next_fire(d, 0, at("2026-12-07T09:00:00")) is None


def test_spring_forward_a_skipped_0230_runs_once_at_the_first_valid_instant() -> None:
    """Berlin skips 02:00-03:00 on 2026-03-29: the 02:30 job runs at 03:00 that day (Debian cron's rule)."""
    d = define("s", "job", cron="30 2 * * *", tz="Europe/Berlin")
    fires = list(fires_between(d, 0, at("2026-03-27T12:00:00"), at("2026-03-31T12:00:00")))
    assert [local(f) for f in fires] == [
        "2026-03-28 02:30 CET", "2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST", "2026-03-31 02:30 CEST",
    ]  # fmt: skip


def test_fall_back_a_doubled_0230_runs_once_and_an_hourly_job_runs_in_both_hours() -> None:
    """Berlin has two 02:30s on 2026-10-25: a daily 02:30 job runs once; an hourly one runs 25 times that day."""
    daily = define("s", "job", cron="30 2 * * *", tz="Europe/Berlin")
    fires = list(fires_between(daily, 0, at("2026-10-24T12:00:00"), at("2026-10-26T12:00:00")))
    assert [local(f) for f in fires] == ["2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"]
    # Starting between the two 02:30s (after the first ran) does not go back to it.
    assert next_fire(daily, 0, fires[0] + 1800) == fires[1]
    hourly = define("s", "job", cron="0 * * * *", tz="Europe/Berlin")
    day = list(fires_between(hourly, 0, at("2026-10-25T00:00:00", BERLIN) - 1, at("2026-10-25T23:59:00", BERLIN)))
    assert len(day) == 25
    assert [local(f) for f in day[2:4]] == ["2026-10-25 02:00 CEST", "2026-10-25 02:00 CET"]


CRONS = ["* * * * *", "*/7 * * * *", "30 2 * * *", "0 * * * *", "15 1,2,3 * * 0", "*/13 * * * * *", "0 0 1 * *"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]


@settings(max_examples=150, deadline=None)
@given(
    expr=st.sampled_from(CRONS), zone=st.sampled_from(ZONES),
    start=st.floats(min_value=at("2025-01-01T00:00:00"), max_value=at("2028-12-31T00:00:00")),
)  # fmt: skip
def test_cron_fire_times_strictly_increase_and_never_repeat(expr: str, zone: str, start: float) -> None:
    d = define("s", "job", cron=expr, tz=zone)
    fires = []
    for fire in fires_between(d, 0, start, start + 40 * 86400):
        fires.append(fire)
        if len(fires) >= 200:
            break
    assert fires and fires[0] > start
    assert all(b > a for a, b in itertools.pairwise(fires))
    assert len({run_id("s", f) for f in fires}) == len(fires)
    assert next_fire(d, 0, start) == fires[0]


@settings(max_examples=200, deadline=None)
@given(
    every=st.floats(min_value=0.001, max_value=1e6), offset=st.floats(min_value=-1e7, max_value=1e7),
    jitter=st.floats(min_value=0, max_value=1e6),
)  # fmt: skip
def test_interval_fires_and_their_jittered_due_times_strictly_increase(every: float, offset: float,
                                                                      jitter: float) -> None:  # fmt: skip
    anchor = at("2026-06-01T00:00:00")
    d = define("s", "job", every=every, jitter=jitter)
    fires = [next_fire(d, anchor, anchor + offset)]
    for _ in range(20):
        fires.append(next_fire(d, anchor, fires[-1]))  # type: ignore[arg-type]
    due = [f + jitter_of(d, anchor, f) for f in fires]  # type: ignore[operator]
    assert all(b > a for a, b in itertools.pairwise(fires))  # type: ignore[operator]
    assert all(b > a for a, b in itertools.pairwise(due))
    assert fires[0] > anchor + offset  # type: ignore[operator]


def test_jitter_is_deterministic_per_fire_time_bounded_and_never_past_the_next_fire() -> None:
    anchor = at("2026-06-01T00:00:00")
    d = define("s", "job", every=10, jitter=60)
    delays = [jitter_of(d, anchor, anchor + 10 * k) for k in range(1, 200)]
    assert all(0 <= j < 10 for j in delays)  # capped by the next fire, not the 60 asked for
    assert delays == [jitter_of(d, anchor, anchor + 10 * k) for k in range(1, 200)]
    assert len(set(delays)) > 150
    other = define("t", "job", every=10, jitter=60)
    assert delays != [jitter_of(other, anchor, anchor + 10 * k) for k in range(1, 200)]
    wide = define("s", "job", every=3600, jitter=5)
    assert all(0 <= jitter_of(wide, anchor, anchor + 3600 * k) < 5 for k in range(1, 100))


# ------------------------------------------------------------------ driving schedules
def test_a_week_of_a_weekday_cron_runs_each_fire_time_once_with_its_run_id() -> None:
    h = Harness(at("2026-12-05T12:00:00", BERLIN))  # a Saturday
    h.add("report", "build_report", cron="0 2 * * 1-5", tz="Europe/Berlin")
    for day in range(8):
        h.run_until(at("2026-12-05T12:00:00", BERLIN) + 86400 * (day + 1))
        h.end_runs()
    assert h.fire_times() == [f"2026-12-{d:02d}T01:00:00Z" for d in (7, 8, 9, 10, 11)]
    s = h.schedules.get("report")
    assert (s.runs, s.misfired, s.skipped) == (5, 0, 0)
    assert h.saved["report"]["last_fire"] == at("2026-12-11T02:00:00", BERLIN)


def test_an_interval_runs_on_time_with_its_task_options() -> None:
    h = Harness(at("2026-06-01T00:00:00"))
    h.add("beat", "ping", every=30, args=[1], kwargs={"x": 2}, timeout=5, retries=2, priority=7)
    h.run_until(at("2026-06-01T00:01:33"))
    # No worker: each run times out 5 s after its fire time, so none overlaps the next.
    assert h.fire_times() == ["2026-06-01T00:00:30Z", "2026-06-01T00:01:00Z", "2026-06-01T00:01:30Z"]
    task = h.core.tasks[h.submitted[-1]]
    assert (task.name, task.args, task.kwargs, task.retries, task.priority) == ("ping", [1], {"x": 2}, 2, 7)
    assert task.deadline == pytest.approx(h.clock.monotonic() - 3 + 5)
    s = h.schedules.get("beat")
    assert [run["status"] for run in s.last_runs] == ["timeout", "timeout", PENDING]
    assert s.skipped == 0


def _behind(coalesce: str, grace: float | None, missed: int = 10) -> Harness:
    """An every-10s schedule whose dispatcher was away while ``missed`` fire times passed."""
    h = Harness(at("2026-06-01T00:00:00"))
    h.add("s", "job", every=10, misfire_grace=grace, coalesce=coalesce, overlap="allow")
    h.clock.now += 10 * missed + 5  # no timers fire: the dispatcher was down (or blocked)
    h.schedules.fire(h.schedules.get("s"), h.wall())
    h.settle()
    return h


@pytest.mark.parametrize(("coalesce", "grace", "runs", "misfired"), [
    ("latest", None, ["00:01:40"], 9),
    ("earliest", None, ["00:00:10"], 9),
    ("all", None, [f"00:0{m // 60}:{m % 60:02d}" for m in range(10, 101, 10)], 0),
    ("latest", 30, ["00:01:40"], 9),
    ("earliest", 30, ["00:01:20"], 9),  # the earliest still within the grace
    ("all", 30, ["00:01:20", "00:01:30", "00:01:40"], 7),
    ("latest", 1, [], 10),  # all of them too late
    ("all", 0, [], 10),
])  # fmt: skip
def test_misfire_grace_and_coalesce(coalesce: str, grace: float | None, runs: list[str], misfired: int) -> None:
    h = _behind(coalesce, grace)
    assert h.fire_times() == [f"2026-06-01T{t}Z" for t in runs]
    s = h.schedules.get("s")
    assert (s.runs, s.misfired) == (len(runs), misfired)
    assert s.last_fire == at("2026-06-01T00:01:40")  # every missed fire time was dealt with
    assert next_fire(s.d, s.anchor, s.last_fire) == at("2026-06-01T00:01:50")


@pytest.mark.parametrize(("overlap", "runs", "skipped"), [
    ("skip", ["00:00:10"], 3),
    ("allow", ["00:00:10", "00:00:20", "00:00:30", "00:00:40"], 0),
    ("buffer-one", ["00:00:10", "00:00:40"], 2),  # the newest waiting one runs when the first ends
])  # fmt: skip
def test_overlap_while_the_previous_run_is_still_running(overlap: str, runs: list[str], skipped: int) -> None:
    h = Harness(at("2026-06-01T00:00:00"))
    h.add("s", "slow", every=10, overlap=overlap)
    h.run_until(at("2026-06-01T00:00:45"))
    h.end_runs()  # the first run ends (and a buffered one starts, and ends)
    h.end_runs()
    assert h.fire_times() == [f"2026-06-01T{t}Z" for t in runs]
    assert h.schedules.get("s").skipped == skipped


def test_a_run_id_already_known_is_never_submitted_again() -> None:
    h = Harness(at("2026-06-01T00:00:00"))
    s = h.add("s", "job", every=10, overlap="allow")
    h.run_until(at("2026-06-01T00:00:10"))
    assert h.submitted == ["sched:s:2026-06-01T00:00:10Z"]
    s.last_fire = at("2026-06-01T00:00:00")  # as if its record lagged
    h.schedules.fire(s, h.wall())
    h.settle()
    assert h.submitted == ["sched:s:2026-06-01T00:00:10Z"]


def test_pause_resume_trigger_remove() -> None:
    h = Harness(at("2026-06-01T00:00:00"))
    h.add("s", "job", every=10, overlap="allow")
    h.run_until(at("2026-06-01T00:00:15"))
    h.schedules.pause("s")
    h.settle()
    h.run_until(at("2026-06-01T00:01:03"))
    assert h.saved["s"]["paused"] is True
    assert h.schedules.describe(h.schedules.get("s"))["next_run"] is None
    assert h.fire_times() == ["2026-06-01T00:00:10Z"]
    h.schedules.resume("s")
    h.settle()
    h.run_until(at("2026-06-01T00:01:25"))
    assert h.fire_times() == ["2026-06-01T00:00:10Z", "2026-06-01T00:01:10Z", "2026-06-01T00:01:20Z"]
    assert h.schedules.get("s").misfired == 0  # a pause is not a misfire
    task_id = h.schedules.trigger("s")
    h.settle()
    assert task_id == "sched:s:manual:2026-06-01T00:01:25Z" and h.submitted[-1] == task_id
    assert h.schedules.remove("s") and not h.schedules.remove("s")
    h.settle()
    assert "s" not in h.saved
    h.run_until(at("2026-06-01T00:05:00"))
    assert len(h.submitted) == 4


def test_adding_the_same_definition_again_changes_nothing_and_a_new_trigger_starts_from_now() -> None:
    h = Harness(at("2026-06-01T00:00:00"))
    s = h.add("s", "job", every=10, overlap="allow")
    h.run_until(at("2026-06-01T00:00:25"))
    assert h.add("s", "job", every=10, overlap="allow") is s
    assert s.anchor == at("2026-06-01T00:00:00")  # not re-anchored: on_start may declare it at every start
    h.add("s", "job", every=10, overlap="allow", args=[1])  # new arguments, same times
    assert s.anchor == at("2026-06-01T00:00:00") and s.d.args == [1]
    h.add("s", "job", every=60, overlap="allow")
    h.run_until(at("2026-06-01T00:02:00"))
    assert [f for f in h.fire_times() if f > "2026-06-01T00:00:25Z"] == ["2026-06-01T00:01:25Z"]
    assert len(h.schedules.schedules) == 1


def test_a_one_shot_runs_once_and_then_has_no_next_run() -> None:
    h = Harness(at("2026-06-01T00:00:00"))
    h.add("once", "job", at="2026-06-01T08:00:00Z")
    h.run_until(at("2026-06-03T00:00:00"))
    assert h.fire_times() == ["2026-06-01T08:00:00Z"]
    entry = h.schedules.describe(h.schedules.get("once"))
    assert entry["kind"] == ONCE and entry["next_run"] is None and entry["spec"] == "at 2026-06-01T08:00:00Z"


def test_the_status_entry() -> None:
    h = Harness(at("2026-12-05T12:00:00"))
    h.add("n", "job", cron="0 2 * * 1-5", tz="Europe/Berlin")
    h.run_until(at("2026-12-07T12:00:00"))
    entry = h.schedules.describe(h.schedules.get("n"))
    assert entry["kind"] == CRON and entry["spec"] == "0 2 * * 1-5 Europe/Berlin"
    assert entry["next_run"] == "2026-12-08T01:00:00Z"
    assert entry["next_runs"] == ["2026-12-08T01:00:00Z", "2026-12-09T01:00:00Z", "2026-12-10T01:00:00Z"]
    assert entry["last_runs"] == [{"fire_time": "2026-12-07T01:00:00Z", "task_id": "sched:n:2026-12-07T01:00:00Z",
                                   "status": PENDING}]  # fmt: skip
    assert (entry["runs"], entry["misfired"], entry["skipped"], entry["paused"]) == (1, 0, 0, False)
    assert define("i", "job", every=30).spec() == "every 30s" and define("i", "job", every=30).kind == INTERVAL


# ------------------------------------------------------------------ restarts
def test_a_restart_links_running_runs_marks_lost_ones_and_catches_up_by_the_misfire_rules() -> None:
    h = Harness(at("2026-06-01T00:00:00"))
    h.add("a", "job", every=10)  # overlap skip
    h.add("b", "job", every=10, coalesce="all", misfire_grace=25, overlap="allow")
    session, _ = h.core.attach_worker(object(), hello("job", concurrency=10), "w")
    h.run_until(at("2026-06-01T00:00:10"))
    take_specs(h.core, session)
    first = h.submitted[:]
    assert first == ["sched:a:2026-06-01T00:00:10Z", "sched:b:2026-06-01T00:00:10Z"]
    h.core.on_results(session, results(1, ok(first[1]), started=(first[0], first[1])))
    # The process dies; a record says "decided" for a run whose task never reached the journal.
    records = {name: dict(record) for name, record in h.saved.items()}
    records["b"]["last_runs"] = records["b"]["last_runs"] + [
        {"fire_time": "2026-06-01T00:00:20Z", "task_id": "sched:b:2026-06-01T00:00:20Z", "status": PENDING}]
    records["b"]["last_fire"] = at("2026-06-01T00:00:20")
    rows = [row for row in h.core.tasks.values()]

    later = Harness(at("2026-06-01T00:01:00"))  # back 50 s later
    from trioschedule._core.recovery import row_of

    later.core.journal_opened(False)
    later.core.recover([row_of(t, h.clock.monotonic(), h.wall()) for t in rows], "test")
    later.schedules.restore(list(records.values()))
    later.settle()
    later.run_until(at("2026-06-01T00:01:00"))  # their timers, due already, fire at once
    a, b = later.schedules.get("a"), later.schedules.get("b")
    assert list(a.active) == [first[0]]  # still running from before: overlap applies to it
    assert later.core.tasks[first[0]].schedule is a
    assert [run["status"] for run in b.last_runs][:2] == ["ok", UNKNOWN_RUN]
    # a: 5 fire times missed (00:20..01:00), latest would run but its previous run is still going.
    assert (a.skipped, a.misfired, a.runs) == (1, 4, 1)
    # b: 00:30..01:00 missed, within 25 s of now: 00:40, 00:50, 01:00; never 00:20 again.
    assert later.fire_times() == ["2026-06-01T00:00:40Z", "2026-06-01T00:00:50Z", "2026-06-01T00:01:00Z"]
    assert b.misfired == 1


def test_a_very_long_gap_is_counted_and_only_its_recent_end_examined(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioschedule._core import schedules as core_schedules

    monkeypatch.setattr(core_schedules, "CATCH_UP_SCAN", 50)
    h = Harness(at("2026-06-01T00:00:00"))
    h.add("s", "job", cron="* * * * * *", misfire_grace=2, coalesce="all", overlap="allow")  # every second
    h.clock.now += 1000.5  # a thousand fire times missed
    h.schedules.fire(h.schedules.get("s"), h.wall())
    h.settle()
    s = h.schedules.get("s")
    assert h.fire_times() == ["2026-06-01T00:16:39Z", "2026-06-01T00:16:40Z"]  # within the 2 s grace
    assert s.last_fire == at("2026-06-01T00:16:40")
    assert s.misfired >= 50 and s.runs == 2


# ------------------------------------------------------------------ a property over many steps
STEPS = st.lists(st.tuples(
    st.sampled_from(["wait", "down", "end", "pause", "resume", "trigger", "crash", "restart"]),
    st.floats(min_value=0, max_value=400),
), max_size=40)  # fmt: skip
DEFINITIONS = st.fixed_dictionaries({
    "every": st.sampled_from([7.0, 30.0, 61.5]),
    "misfire_grace": st.sampled_from([None, 0.0, 20.0, 100.0]),
    "coalesce": st.sampled_from(["latest", "earliest", "all"]),
    "overlap": st.sampled_from(["skip", "buffer-one", "allow"]),
    "jitter": st.sampled_from([0.0, 3.0, 100.0]),
})  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(definition=DEFINITIONS, cron=st.booleans(), steps=STEPS)
def test_no_fire_time_ever_runs_twice_whatever_happens(definition: dict[str, Any], cron: bool,
                                                       steps: list[tuple[str, float]]) -> None:  # fmt: skip
    """Time passes, the dispatcher is down or crashes between saving a record and submitting its runs,
    restarts from what was journaled, runs end, the schedule is paused and triggered: every run id is
    submitted once, and a schedule's fire times are submitted in increasing order."""
    from trioschedule._core.recovery import row_of

    if cron:
        definition = {**definition, "every": None, "cron": "*/2 * * * *", "tz": "Europe/Berlin"}
    h = Harness(at("2026-10-25T00:30:00"))  # Berlin's autumn DST change is 30 minutes away
    h.add("p", "job", **definition)
    submitted: list[str] = []
    last_fire = h.schedules.get("p").last_fire
    for op, amount in steps:
        if op == "wait":
            h.run_until(h.wall() + amount)
        elif op == "down":
            h.clock.now += amount  # no timer fires meanwhile
        elif op == "end":
            h.end_runs()
        elif op == "pause":
            h.schedules.pause("p")
            h.settle()
        elif op == "resume":
            h.schedules.resume("p")
            h.settle()
        elif op == "trigger":
            h.schedules.trigger("p")
            h.settle()
        if op in ("crash", "restart"):
            if op == "crash":  # the record is journaled, the dispatcher dies before submitting its runs
                h.schedules.fire(h.schedules.get("p"), h.wall())
                records, _, _ = h.schedules.take_changes()
                h.saved.update({r["name"]: r for r in records})
            rows = [row_of(t, h.clock.monotonic(), h.wall()) for t in h.core.tasks.values()]
            saved, wall = dict(h.saved), h.wall() + amount
            submitted += h.submitted
            h = Harness(wall)
            h.core.recover(rows, "test")
            h.saved = saved
            h.schedules.restore(list(saved.values()))
            h.settle()
        s = h.schedules.get("p")
        assert s.last_fire >= last_fire
        last_fire = s.last_fire
    submitted += h.submitted
    assert len(submitted) == len(set(submitted)), collections.Counter(submitted).most_common(3)
    scheduled = [i for i in submitted if ":manual:" not in i]
    assert scheduled == sorted(scheduled)  # ISO 8601 UTC strings sort as times


def test_a_very_long_gap_with_nothing_in_its_recent_window_moves_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioschedule._core import schedules as core_schedules

    monkeypatch.setattr(core_schedules, "CATCH_UP_SCAN", 50)
    h = Harness(at("2026-06-01T00:00:00"))
    # Every second for the first minute of each hour: the last 60 minutes before now hold no fire time.
    h.add("s", "job", cron="* 0 * * * *", misfire_grace=0, overlap="allow")
    h.clock.now += 1800
    s = h.schedules.get("s")
    h.schedules.fire(s, h.wall())
    h.settle()
    assert h.submitted == [] and s.misfired == 50
    assert s.last_fire == at("2026-06-01T00:29:59")  # not rescanned from the start at the next timer
    assert h.saved["s"]["last_fire"] == s.last_fire
