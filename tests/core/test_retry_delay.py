"""Retries the task asks for: ``Retry(after=S)``, ``@task(retry_delay=S)``, and retry on a time limit.

``_attempt_failed`` is driven through ``on_results`` with a fake clock, as
the shell drives it: the delay a task asked for is kept exactly (no jitter),
counts against its retries, and a timeout is retried only for a task that
opted in and only while its deadline is ahead.
"""

from __future__ import annotations

import pytest

from trioschedule._core.tasks import DELAYED, DONE, RUNNING
from trioschedule._protocol import messages as m

from .helpers import FakeClock, advance, error, make_scheduler, results, take_specs
from .test_scheduler import attach, submit


def retry(task_id: str, after: float | None, attempt: int = 1) -> m.Outcome:
    """The outcome a worker reports for a task that raised ``Retry(after=after)``."""
    err = m.RemoteError(type="Retry", message="retry requested", retry_after=after)
    return m.Outcome(id=task_id, status=m.ERROR, attempt=attempt, error=err)


def timed_out(task_id: str, attempt: int = 1) -> m.Outcome:
    return m.Outcome(id=task_id, status=m.TIMEOUT, attempt=attempt, reason="the attempt ran past its time limit (1 s)")


def test_retry_after_is_waited_exactly_instead_of_the_backoff():
    clock = FakeClock()
    core = make_scheduler(clock, retry_backoff=0.1, retry_backoff_max=0.2)
    session = attach(core, "t")
    task = submit(core, retries=2)
    core.on_results(session, results(1, retry(task.id, 5.0)))
    assert task.state == DELAYED and task.failures == 1
    assert task.not_before == pytest.approx(clock.wall() + 5.0)  # exactly: no jitter
    advance(core, clock, 4.99)
    assert task.state == DELAYED
    advance(core, clock, 0.02)
    assert task.state == RUNNING and task.attempt == 2


def test_retry_counts_against_the_retries_and_the_last_one_fails_with_it():
    clock = FakeClock()
    core = make_scheduler(clock)
    session = attach(core, "t")
    task = submit(core, retries=1)
    core.on_results(session, results(1, retry(task.id, 1.0)))
    advance(core, clock, 1.0)
    core.on_results(session, results(2, retry(task.id, 1.0, attempt=2)))
    assert task.state == DONE and task.outcome.status == m.ERROR
    assert task.outcome.error.type == "Retry" and task.outcome.error.retry_after == 1.0
    no_retries = submit(core)  # no retries at all: Retry fails the task at once
    take_specs(core, session)
    core.on_results(session, results(3, retry(no_retries.id, 1.0)))
    assert no_retries.state == DONE


def test_the_tasks_retry_delay_replaces_the_backoff_and_retry_after_wins_over_it():
    clock = FakeClock()
    core = make_scheduler(clock, retry_backoff=100.0, retry_backoff_max=100.0)
    session = attach(core, "t", concurrency=3, retries={"t": 1}, retry_delay={"t": 2.5})
    plain, asked, unasked = submit(core), submit(core), submit(core)
    core.on_results(session, results(1, error(plain.id), retry(asked.id, 7.0), retry(unasked.id, None)))
    assert plain.not_before == pytest.approx(clock.wall() + 2.5)
    assert asked.not_before == pytest.approx(clock.wall() + 7.0)
    assert unasked.not_before == pytest.approx(clock.wall() + 2.5)  # Retry() without after: the task's delay


def test_retry_after_zero_retries_at_once_and_without_a_delay_keeps_the_jittered_backoff():
    clock = FakeClock()
    core = make_scheduler(clock, seed=3, retry_backoff=1.0, retry_backoff_max=1.0)
    session = attach(core, "t", concurrency=2)
    now, later = submit(core, retries=1), submit(core, retries=1)
    core.on_results(session, results(1, retry(now.id, 0.0), retry(later.id, None)))
    assert now.not_before == pytest.approx(clock.wall())
    assert clock.wall() + 0.5 <= later.not_before <= clock.wall() + 1.0


def test_a_timeout_is_retried_only_for_a_task_that_opted_in():
    clock = FakeClock()
    core = make_scheduler(clock, retry_backoff=1.0, retry_backoff_max=1.0)
    session = attach(core, "slow", "other", concurrency=2, retry_timeout=("slow",), retry_delay={"slow": 3.0})
    opted, not_opted = submit(core, "slow", retries=1), submit(core, "other", retries=1)
    core.on_results(session, results(1, timed_out(opted.id), timed_out(not_opted.id)))
    assert opted.state == DELAYED and opted.failures == 1
    assert opted.not_before == pytest.approx(clock.wall() + 3.0)
    assert not_opted.state == DONE and not_opted.outcome.status == m.TIMEOUT
    advance(core, clock, 3.0)
    assert opted.state == RUNNING and opted.attempt == 2
    core.on_results(session, results(2, timed_out(opted.id, attempt=2)))  # out of retries
    assert opted.state == DONE and opted.outcome.status == m.TIMEOUT


def test_a_timeout_past_the_tasks_deadline_is_not_retried():
    clock = FakeClock()
    core = make_scheduler(clock)
    session = attach(core, "slow", retry_timeout=("slow",))
    task = submit(core, "slow", retries=3, timeout=10.0)
    clock.now += 10.0  # the deadline itself: the worker's report arrives as the deadline timer would fire
    core.on_results(session, results(1, timed_out(task.id)))
    assert task.state == DONE and task.outcome.status == m.TIMEOUT
