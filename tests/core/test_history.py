"""The bounded task history: what Lifecycle.finish keeps for ``trioschedule tasks`` and ``status``."""

from __future__ import annotations

from trioschedule._core.history import ARGS_SUMMARY_LENGTH, args_summary
from trioschedule._protocol import messages as m

from .helpers import error, make_scheduler, ok, results, take_specs
from .test_scheduler import attach


def new(core, task_id, args=(1,), kwargs=None, name="t"):
    task = core.new_task(task_id, name, list(args), kwargs, 0, None, None, None, None)
    core.place(task, None)
    core.dispatch()
    return task


def test_the_history_is_off_at_zero_and_costs_nothing():
    core = make_scheduler(history=0)
    session = attach(core, "t")
    new(core, "a")
    take_specs(core, session)
    core.on_results(session, results(1, ok("a")))
    assert core.history.latest(10) == [] and len(core.history.entries) == 0


def test_the_history_keeps_the_last_n_outcomes_newest_first_with_their_worker():
    core = make_scheduler(history=3)
    session = attach(core, "t", concurrency=10, name="w1")
    for i in range(5):
        new(core, f"t{i}", args=(i, "x"))
    take_specs(core, session)
    core.on_results(session, results(1, ok("t0"), ok("t1"), error("t2"), ok("t3"), ok("t4")))
    latest = core.history.latest(10)
    assert [e.id for e in latest] == ["t4", "t3", "t2"]  # bounded: the two oldest are gone
    failed = core.history.latest(10, failed=True)
    assert [e.id for e in failed] == ["t2"]
    entry = failed[0].describe()
    assert entry["worker"] == "w1" and entry["status"] == m.ERROR and entry["attempt"] == 1
    assert entry["error"] == {"type": "ValueError", "message": "boom"}
    assert entry["args"] == "2, 'x'" and entry["name"] == "t"
    assert entry["submitted_at"] <= entry["finished_at"]
    assert core.history.latest(1) == latest[:1] and core.history.latest(0) == []


def test_tasks_that_never_reached_a_worker_are_kept_without_one():
    core = make_scheduler(history=10)
    new(core, "q", name="nobody-offers-this")
    assert core.cancel("q", "user asked")
    (entry,) = core.history.latest(5, failed=True)
    assert entry.worker is None and entry.status == m.CANCELLED and entry.reason == "user asked"


def test_the_arguments_summary_is_short_whatever_the_arguments():
    assert args_summary([1, "a"], {"k": [2]}) == "1, 'a', k=[2]"
    assert args_summary(None, None) == ""
    long = args_summary(["x" * 10_000, 2], {"big": list(range(10_000))})
    assert len(long) == ARGS_SUMMARY_LENGTH and long.endswith("...")
