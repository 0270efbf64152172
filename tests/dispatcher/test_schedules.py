"""Schedules in a running dispatcher, in virtual time: the wall clock follows trio's clock, so days pass in
milliseconds.  A week of cron, a restart from an SQLite journal with misfires, overlap with a slow task,
pause/resume/trigger/remove over the wire, schedules declared in on_start."""

from __future__ import annotations

import collections
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio

from trioschedule import Dispatcher, LocalProtocolError, Store, StoreError, UnknownSchedule, Worker, task
from trioschedule._dispatcher import serving as serving_module
from trioschedule.testing import open_cluster

BASE = datetime(2026, 12, 5, 11, 0, tzinfo=timezone.utc).timestamp()  # a Saturday, 12:00 in Berlin
QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 7200.0}  # days pass: no heartbeat every 2 s


def wall() -> float:
    """The wall clock of these tests: BASE plus trio's (virtual) clock."""
    return BASE + trio.current_time()


@pytest.fixture(autouse=True)
def _quiet_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The every-2-seconds check for unoffered task names would wake 300,000 times in a week.
    monkeypatch.setattr(serving_module, "UNOFFERED_CHECK", 3600.0)


class Clockwork(Worker):
    """Records every run in the class (the tests read it), with the wall-clock time it started (as BASE + trio's clock)."""

    runs: list[tuple[str, Any, float]] = []

    @task
    async def job(self, label: Any = None) -> Any:
        Clockwork.runs.append(("job", label, wall()))
        return label

    @task
    async def slow(self, seconds: float) -> float:
        Clockwork.runs.append(("slow", seconds, wall()))
        await trio.sleep(seconds)
        return seconds


def worker() -> Clockwork:
    return Clockwork(blocked_warning=None, **QUIET)


def dispatcher(**kwargs: Any) -> Dispatcher:
    return Dispatcher(wall_clock=wall, **QUIET, **kwargs)


@pytest.fixture(autouse=True)
def _fresh_runs() -> None:
    Clockwork.runs = []


async def test_a_week_of_a_berlin_weekday_cron_in_virtual_time(autojump_clock: Any) -> None:
    d = dispatcher()
    async with open_cluster(d, worker()):
        entry = await d.add_schedule("report", "job", ["daily"], cron="0 2 * * 1-5", tz="Europe/Berlin")
        assert entry["next_run"] == "2026-12-07T01:00:00Z"
        await trio.sleep(7 * 86400)
        [status] = d.status()["schedules"]
    assert [run[1] for run in Clockwork.runs] == ["daily"] * 5
    started = [datetime.fromtimestamp(run[2], timezone.utc).strftime("%a %H:%M") for run in Clockwork.runs]
    assert started == ["Mon 01:00", "Tue 01:00", "Wed 01:00", "Thu 01:00", "Fri 01:00"]  # 02:00 in Berlin (CET)
    assert [run["task_id"] for run in reversed(status["last_runs"])] == [
        f"sched:report:2026-12-{day:02d}T01:00:00Z" for day in (7, 8, 9, 10, 11)
    ]  # fmt: skip
    assert {run["status"] for run in status["last_runs"]} == {"ok"}
    assert (status["runs"], status["misfired"], status["skipped"]) == (5, 0, 0)
    assert status["next_run"] == "2026-12-14T01:00:00Z"


async def test_both_dst_transitions_in_berlin(autojump_clock: Any) -> None:
    """A 02:30 job: once at 03:00 on the spring day (02:30 does not exist), once on the autumn day (two 02:30s)."""
    zone = ZoneInfo("Europe/Berlin")
    base = {"at": datetime(2026, 3, 27, 12, tzinfo=timezone.utc).timestamp()}  # wall = base + trio's clock
    now = lambda: base["at"] + trio.current_time()
    berlin = lambda t: datetime.fromtimestamp(t - BASE + base["at"], zone).strftime("%m-%d %H:%M %Z")
    d = Dispatcher(wall_clock=now, **QUIET)
    async with open_cluster(d, worker()):
        await d.add_schedule("spring", "job", cron="30 2 * * *", tz="Europe/Berlin")
        await trio.sleep(3 * 86400)  # through Sunday 29 March
        spring = [berlin(run[2]) for run in Clockwork.runs]
        await d.remove_schedule("spring")
        # Months later (the wall clock jumps: nothing is scheduled meanwhile).
        base["at"] = datetime(2026, 10, 24, 12, tzinfo=timezone.utc).timestamp() - trio.current_time()
        Clockwork.runs.clear()
        await d.add_schedule("autumn", "job", cron="30 2 * * *", tz="Europe/Berlin")
        await trio.sleep(2 * 86400)  # through Sunday 25 October
        autumn = [berlin(run[2]) for run in Clockwork.runs]
    assert spring == ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]
    assert autumn == ["10-25 02:30 CEST", "10-26 02:30 CET"]


@pytest.mark.parametrize(("overlap", "started", "fired", "skipped"), [
    # Each run takes 22 s; fire times every 10 s.  skip: 20 and 30 fall in the first run, 50 and 60 in the second.
    ("skip", [10, 40, 70], [10, 40, 70], 4),
    # buffer-one: the newest fire time waits (30 replaces 20) and starts when the run ends, under its own id.
    ("buffer-one", [10, 32, 54], [10, 30, 50], 3),
    ("allow", [10, 20, 30, 40, 50, 60, 70], [10, 20, 30, 40, 50, 60, 70], 0),
])  # fmt: skip
async def test_overlap_with_a_slow_task(autojump_clock: Any, overlap: str, started: list[int], fired: list[int],
                                        skipped: int) -> None:  # fmt: skip
    d = dispatcher()
    async with open_cluster(d, Clockwork(concurrency=10, blocked_warning=None, **QUIET)):
        t0 = trio.current_time()
        await d.add_schedule("slow", "slow", [22], every=10, overlap=overlap)
        await trio.sleep(75)
        [status] = d.schedules()
    assert [round(run[2] - BASE - t0) for run in Clockwork.runs] == started
    assert [run["fire_time"] for run in reversed(status["last_runs"])] == [
        f"2026-12-05T11:00:{s:02d}Z" if s < 60 else f"2026-12-05T11:01:{s - 60:02d}Z" for s in fired
    ]  # fmt: skip
    assert status["skipped"] == skipped


def jump_after_commits(mock_clock: Any) -> None:
    """Virtual time that waits for the SQLite writer thread: the clock jumps only after 20 ms of real idleness."""
    mock_clock.autojump_threshold = 0.02


async def test_a_restart_from_the_journal_applies_the_misfire_rules_and_runs_no_fire_time_twice(
    mock_clock: Any, tmp_path: Any
) -> None:
    jump_after_commits(mock_clock)
    path = tmp_path / "journal.sqlite3"
    first = dispatcher(store=f"sqlite:{path}")
    async with open_cluster(first, worker()) as cluster:
        t0 = trio.current_time()
        await first.add_schedule("minutely", "job", ["m"], every=60, misfire_grace=150, coalesce="all",
                                  overlap="allow")
        await first.add_schedule("daily", "job", ["d"], cron="0 0 * * *")
        await trio.sleep_until(t0 + 185)  # runs at 11:01, 11:02, 11:03 (UTC)
        await cluster.stop_dispatcher()  # dies: nothing more is journaled
        before = list(Clockwork.runs)
        await trio.sleep_until(t0 + 785)  # ten minutes of fire times pass with no dispatcher
        second = dispatcher(store=f"sqlite:{path}")
        await cluster.start_dispatcher(second)
        await trio.sleep_until(t0 + 850)
        schedules = {s["name"]: s for s in second.schedules()}
    assert [r[1] for r in before] == ["m", "m", "m"]
    after = Clockwork.runs[len(before):]
    minutely = schedules["minutely"]
    # Back at 11:13:05 after fire times 11:04..11:13 passed: those within 150 s (11:11, 11:12, 11:13) run
    # (coalesce all), seven are misfired; then 11:14 runs on time.  11:01..11:03 never run again.
    ids = [run["task_id"] for run in reversed(minutely["last_runs"])]
    assert ids == [f"sched:minutely:2026-12-05T11:{m:02d}:00Z" for m in (1, 2, 3, 11, 12, 13, 14)]
    assert {run["status"] for run in minutely["last_runs"]} == {"ok"}
    assert (minutely["runs"], minutely["misfired"], minutely["skipped"]) == (7, 7, 0)
    assert [r[1] for r in after] == ["m"] * 4
    daily = schedules["daily"]
    assert (daily["runs"], daily["next_run"]) == (0, "2026-12-06T00:00:00Z")


async def test_schedules_over_the_wire_and_their_refusals(autojump_clock: Any) -> None:
    d = dispatcher()
    async with open_cluster(d, worker()) as cluster, cluster.client(role="admin", **QUIET) as admin:
        entry = await admin.add_schedule("beat", "job", ["b"], every=30, jitter=5)
        assert (entry["name"], entry["kind"], entry["spec"], entry["paused"]) == ("beat", "interval", "every 30s", False)
        await trio.sleep(65)
        assert [r[1] for r in Clockwork.runs] == ["b", "b"]
        assert all(0 <= (r[2] - BASE) % 30 < 5 for r in Clockwork.runs)  # jittered, within 5 s of the fire time
        paused = await admin.pause_schedule("beat")
        assert paused["paused"] is True and paused["next_run"] is None
        await trio.sleep(120)
        assert len(Clockwork.runs) == 2
        task_id = await admin.trigger_schedule("beat")
        assert task_id.startswith("sched:beat:manual:")
        assert await admin.task(task_id).result() == "b"
        resumed = await admin.resume_schedule("beat")
        assert resumed["paused"] is False and resumed["next_run"] is not None
        await trio.sleep(31)
        assert len(Clockwork.runs) == 4
        listed = await admin.schedules()
        assert [s["name"] for s in listed] == ["beat"]
        assert (await admin.status())["schedules"] == listed
        with pytest.raises(ValueError, match="bad cron expression"):
            await admin.add_schedule("bad", "job", cron="0 25 * * *")
        with pytest.raises(ValueError, match="in the past"):
            await admin.add_schedule("late", "job", at="2020-01-01T00:00:00Z")  # refused by the dispatcher
        with pytest.raises(UnknownSchedule, match="nope"):
            await admin.pause_schedule("nope")
        assert await admin.remove_schedule("beat") is True
        assert await admin.remove_schedule("beat") is False
        await trio.sleep(120)
        assert len(Clockwork.runs) == 4
        assert await admin.schedules() == []
        # The connection survived every refusal.
        assert (await admin.status())["schedules"] == []


class Declaring(Dispatcher):
    """Declares its schedule in on_start, as Workerman's Timer::add in onWorkerStart."""

    async def on_start(self) -> None:
        await self.add_schedule("tick", "job", ["t"], every=60)


async def test_a_schedule_declared_in_on_start_is_kept_across_restarts_not_reanchored(
    mock_clock: Any, tmp_path: Any
) -> None:
    jump_after_commits(mock_clock)
    path = tmp_path / "journal.sqlite3"
    async with open_cluster(Declaring(wall_clock=wall, store=f"sqlite:{path}", **QUIET), worker()) as cluster:
        await trio.sleep(130)
        await cluster.stop_dispatcher()
        await trio.sleep(20)  # back at 150 s: the next fire time is still 180 s, not 210 s
        restarted = Declaring(wall_clock=wall, store=f"sqlite:{path}", **QUIET)
        await cluster.start_dispatcher(restarted)
        await trio.sleep(40)
        [entry] = restarted.schedules()
    offsets = [round(r[2] - BASE) for r in Clockwork.runs]
    assert offsets == [60, 120, 180]
    assert entry["runs"] == 3 and collections.Counter(r["task_id"] for r in entry["last_runs"]).most_common(1)[0][1] == 1


async def test_with_memory_schedules_last_as_long_as_the_process(autojump_clock: Any) -> None:
    async with open_cluster(dispatcher(), worker()) as cluster:
        await cluster.dispatcher.add_schedule("s", "job", every=60)
        await cluster.stop_dispatcher()
        restarted = await cluster.start_dispatcher(dispatcher())
        assert restarted.schedules() == []


async def test_adding_before_serving_says_where_to_add_instead() -> None:
    with pytest.raises(RuntimeError, match="on_start"):
        await Dispatcher().add_schedule("s", "job", every=60)


class FailingSchedules(Store):
    """A durable store whose schedule records stop saving when told (a full disk, say)."""

    durable = True

    def __init__(self) -> None:
        self.failing = False
        self.records: dict[str, dict[str, Any]] = {}

    async def save_schedules(self, records: list[dict[str, Any]]) -> None:
        if self.failing:
            raise StoreError("the disk is full", code="io")
        self.records.update({r["name"]: r for r in records})


async def test_runs_whose_record_cannot_be_journaled_are_not_submitted(autojump_clock: Any) -> None:
    store = FailingSchedules()
    d = dispatcher(store=store)
    async with open_cluster(d, worker()):
        await d.add_schedule("s", "job", ["x"], every=60)
        await trio.sleep(61)
        assert len(Clockwork.runs) == 1
        store.failing = True
        await trio.sleep(60)
        [entry] = d.schedules()
    assert len(Clockwork.runs) == 1  # could run twice after a restart: not run at all
    assert [run["status"] for run in entry["last_runs"]] == ["not-journaled", "ok"]
    assert (entry["runs"], entry["misfired"]) == (1, 1)
    assert store.records["s"]["runs"] == 1


async def test_a_client_without_the_admin_role_is_told_what_it_needs(autojump_clock: Any) -> None:
    async with open_cluster(dispatcher()) as cluster, cluster.client() as client:
        with pytest.raises(LocalProtocolError, match="role='admin'"):
            await client.add_schedule("s", "job", every=60)
        assert client.connected  # nothing was sent: the connection is as it was
        assert cluster.dispatcher.schedules() == []


async def test_schedule_metrics_count_runs_skips_misfires_and_name_the_next_fire_time(autojump_clock: Any) -> None:
    """``/metrics`` reads each schedule's counters at scrape time (docs/OPERATIONS.md)."""
    from prometheus_client.parser import text_string_to_metric_families

    from trioschedule._http.metrics import DispatcherCollector, render_metrics

    d = dispatcher()
    async with open_cluster(d, Clockwork(concurrency=10, blocked_warning=None, **QUIET)):
        await d.add_schedule("slow", "slow", [22], every=10)  # overlap skip: 4 of 7 fire times skipped in 75 s
        await d.add_schedule("later", "job", cron="0 2 * * *", tz="Europe/Berlin")
        await d.pause_schedule("later")
        await trio.sleep(75)
        body, _ = render_metrics(DispatcherCollector(d), "text/plain")
        [status] = [s for s in d.schedules() if s["name"] == "slow"]
    samples = {(s.name, s.labels.get("schedule")): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}  # fmt: skip
    assert samples[("trioschedule_schedule_runs_total", "slow")] == status["runs"] == 3
    assert samples[("trioschedule_schedule_skipped_total", "slow")] == status["skipped"] == 4
    assert samples[("trioschedule_schedule_misfires_total", "slow")] == status["misfired"] == 0
    assert samples[("trioschedule_schedule_paused", "later")] == 1
    assert samples[("trioschedule_schedule_paused", "slow")] == 0
    next_run = datetime.fromisoformat(status["next_run"].replace("Z", "+00:00")).timestamp()
    assert samples[("trioschedule_schedule_next_run_timestamp_seconds", "slow")] == next_run
    assert ("trioschedule_schedule_next_run_timestamp_seconds", "later") not in samples
