"""The Scheduler driven by hand: retries, deadlines, cancels, losses, sessions, stealing, draining.

Each test feeds it what the shell would (hellos, Results, Releases, the
time) and reads what it leaves behind (``session.buffer``/``control``,
outcomes), with a fake clock and a fixed random source.
"""

from __future__ import annotations

import random

import pytest

from trioschedule._core.tasks import DELAYED, DONE, QUEUED, RUNNING
from trioschedule._errors import QueueFull, Rejected
from trioschedule._protocol import messages as m

from .helpers import (
    FakeClock,
    RecordingJournal,
    Slot,
    advance,
    cancelled,
    error,
    hello,
    make_scheduler,
    ok,
    results,
    take_control,
    take_specs,
)


class Conn:
    """The shell's connection, as the core sees it: anything but None."""


def attach(core, *tasks, **kwargs):
    session, _resumed = core.attach_worker(Conn(), hello(*tasks, **kwargs), "127.0.0.1:1")
    return session


def submit(core, name="t", **options):
    options.setdefault("timeout", None)
    options.setdefault("retries", None)
    options.setdefault("delay", None)
    options.setdefault("priority", 0)
    task = core.new_local_task(name, [1], None, options["timeout"], options["retries"], options["delay"],
                               options["priority"], options.get("task_id"))  # fmt: skip
    task.slot = Slot()
    return task


# ==================================================================== the happy path
def test_a_task_goes_straight_to_an_idle_worker_and_ends_once():
    core = make_scheduler()
    session = attach(core, "t")
    task = submit(core)
    assert task.state == RUNNING and task.session is session and core.running == 1
    assert take_specs(core, session) == [{"id": task.id, "name": "t", "args": [1]}]
    core.on_results(session, results(1, ok(task.id, value=2), started=(task.id,)))
    assert task.state == DONE and task.outcome.value == 2 and task.slot.outcomes == [task.outcome]
    assert core.running == 0 and core.unfinished == 0 and core.counts[m.OK] == 1
    assert session.peer.done == 1
    core.on_results(session, results(2, ok(task.id)))  # a duplicate report changes nothing
    assert core.counts[m.OK] == 1 and len(task.slot.outcomes) == 1


def test_tasks_wait_for_a_worker_that_offers_their_name():
    core = make_scheduler()
    first, second = submit(core, "t"), submit(core, "t", priority=5)
    other = attach(core, "u")
    assert first.state == second.state == QUEUED and not other.assigned
    session = attach(core, "t", concurrency=1)
    assert second.state == RUNNING and first.state == QUEUED  # the higher priority first
    assert [spec["id"] for spec in take_specs(core, session)] == [second.id]
    core.on_results(session, results(1, ok(second.id)))
    assert first.state == RUNNING


def test_refusals():
    core = make_scheduler(max_queued=1)
    with pytest.raises(Rejected):
        core.new_local_task("", [], None, None, None, None, 0, None)
    with pytest.raises(ValueError):
        core.new_local_task("t", [], None, -1.0, None, None, 0, None)
    task = submit(core, task_id="mine")
    with pytest.raises(QueueFull):
        submit(core)
    core.limits.max_queued = 10
    with pytest.raises(Rejected, match="exists already"):
        submit(core, task_id="mine")
    core.draining = True
    with pytest.raises(Rejected) as info:
        submit(core)
    assert info.value.code == "draining" and task.state == QUEUED


# ==================================================================== retries
def test_retries_back_off_with_jitter_drawn_from_the_given_rng():
    clock = FakeClock()
    core = make_scheduler(clock, seed=7, retry_backoff=1.0, retry_backoff_max=3.0)
    draws = random.Random(7)
    session = attach(core, "t", concurrency=1)
    task = submit(core, retries=3)
    for failures, backoff in [(1, 1.0), (2, 2.0), (3, 3.0)]:  # doubling, capped at retry_backoff_max
        spec = take_specs(core, session)[0]
        assert spec.get("attempt", 1) == failures
        core.on_results(session, results(failures, error(task.id, attempt=failures)))
        assert task.state == DELAYED and task.failures == failures and core.running == 0
        expected = draws.uniform(backoff / 2, backoff)
        assert task.not_before == pytest.approx(clock.wall() + expected)
        advance(core, clock, expected - 0.01)
        assert task.state == DELAYED
        advance(core, clock, 0.02)
        assert task.state == RUNNING and task.attempt == failures + 1
    core.on_results(session, results(4, error(task.id, attempt=4)))
    assert task.state == DONE and task.outcome.status == m.ERROR and task.outcome.attempt == 4
    assert task.slot.outcomes == [task.outcome] and core.counts[m.ERROR] == 1


def test_a_late_result_of_an_earlier_attempt_is_ignored():
    clock = FakeClock()
    core = make_scheduler(clock)
    session = attach(core, "t")
    task = submit(core, retries=1)
    core.on_results(session, results(1, error(task.id, attempt=1)))
    advance(core, clock, 5)
    assert task.attempt == 2 and task.state == RUNNING
    core.on_results(session, results(2, ok(task.id, attempt=1)))
    assert task.state == RUNNING
    core.on_results(session, results(3, ok(task.id, attempt=2)))
    assert task.state == DONE and task.outcome.attempt == 2


def test_the_workers_retry_settings_apply_when_the_task_has_none():
    clock = FakeClock()
    core = make_scheduler(clock)
    session = attach(core, "t", "u", concurrency=2, retries={"t": 1, "u": 1}, no_retry={"u": ("KeyError",)})
    retried, not_retried = submit(core, "t"), submit(core, "u")
    core.on_results(session, results(1, error(retried.id), error(not_retried.id, type="KeyError")))
    assert retried.state == DELAYED
    assert not_retried.state == DONE and not_retried.outcome.error.type == "KeyError"
    explicit = submit(core, "t", retries=0)  # the submitter's retries win
    core.on_results(session, results(2, error(explicit.id)))
    assert explicit.state == DONE


def test_a_draining_dispatcher_does_not_retry():
    core = make_scheduler()
    session = attach(core, "t")
    task = submit(core, retries=5)
    core.draining = True
    core.on_results(session, results(1, error(task.id)))
    assert task.state == DONE and task.outcome.status == m.ERROR


# ==================================================================== deadlines
def test_a_deadline_passing_while_queued_ends_the_task_as_timed_out():
    clock = FakeClock()
    core = make_scheduler(clock)
    task = submit(core, timeout=5.0)
    advance(core, clock, 4.9)
    assert task.state == QUEUED
    advance(core, clock, 0.2)
    assert task.state == DONE and task.outcome.status == m.TIMEOUT
    assert task.outcome.reason == "deadline passed while queued" and core.unfinished == 0


def test_a_deadline_passing_while_delayed_ends_the_task_too():
    clock = FakeClock()
    core = make_scheduler(clock)
    task = submit(core, timeout=2.0, delay=10.0)
    assert task.state == DELAYED
    advance(core, clock, 3.0)
    assert task.state == DONE and task.outcome.status == m.TIMEOUT


def test_a_running_task_past_its_deadline_gets_heartbeat_timeout_to_report():
    clock = FakeClock()
    core = make_scheduler(clock, heartbeat_timeout=5.0)
    session = attach(core, "t")
    task = submit(core, timeout=10.0)
    assert take_specs(core, session)[0]["timeout"] == pytest.approx(10.0)  # the worker enforces it
    advance(core, clock, 10.5)
    assert task.state == RUNNING  # the worker reports its own timeout first, normally
    advance(core, clock, 4.0)
    assert task.state == RUNNING
    advance(core, clock, 1.0)
    assert task.state == DONE and task.outcome.status == m.TIMEOUT and session.assigned == {}
    assert take_control(core, session) == [m.Cancel(id=task.id, reason="deadline passed")]
    assert core.running == 0


def test_a_worker_that_reports_its_timeout_in_time_decides_the_outcome():
    clock = FakeClock()
    core = make_scheduler(clock)
    session = attach(core, "t")
    task = submit(core, timeout=3.0)
    advance(core, clock, 3.5)
    outcome = m.Outcome(id=task.id, status=m.TIMEOUT, attempt=1, reason="the task's deadline passed")
    core.on_results(session, results(1, outcome))
    assert task.outcome == outcome
    advance(core, clock, 60)
    assert task.outcome == outcome and take_control(core, session) == []


def test_the_spec_carries_the_time_left_when_it_is_sent():
    clock = FakeClock()
    core = make_scheduler(clock)
    task = submit(core, timeout=10.0)
    advance(core, clock, 4.0)
    session = attach(core, "t")
    assert task.state == RUNNING
    assert take_specs(core, session)[0]["timeout"] == pytest.approx(6.0)


# ==================================================================== cancelling
def test_cancelling_a_queued_or_delayed_task_ends_it_at_once():
    core = make_scheduler()
    queued, delayed = submit(core), submit(core, delay=5.0)
    assert core.cancel(queued.id, "no longer needed") and core.cancel(delayed.id)
    assert queued.outcome == m.Outcome(id=queued.id, status=m.CANCELLED, attempt=0, reason="no longer needed")
    assert delayed.outcome.status == m.CANCELLED and delayed.outcome.reason == "cancelled"
    assert not core.cancel(queued.id) and not core.cancel("unknown")
    assert core.unfinished == 0
    session = attach(core, "t")
    assert session.assigned == {} and session.buffer == []  # the cancelled task is skipped in the queue


@pytest.mark.parametrize("answer", [m.CANCELLED, m.ERROR, m.OK, None])
def test_cancelling_a_running_task_goes_over_the_wire(answer):
    clock = FakeClock()
    core = make_scheduler(clock, cancel_timeout=3.0)
    session = attach(core, "t")
    task = submit(core, retries=5)
    take_specs(core, session)
    assert core.cancel(task.id, "stop it")
    assert task.state == RUNNING
    assert take_control(core, session) == [m.Cancel(id=task.id, reason="stop it")]
    assert core.cancel(task.id, "again")  # asked once
    assert take_control(core, session) == []
    if answer == m.CANCELLED:
        core.on_results(session, results(1, cancelled(task.id, reason="stop it")))
        expected = m.Outcome(id=task.id, status=m.CANCELLED, attempt=1, reason="stop it")
    elif answer == m.ERROR:  # the task raised on its way out: cancelled all the same, never retried
        core.on_results(session, results(1, error(task.id)))
        expected = m.Outcome(id=task.id, status=m.CANCELLED, attempt=1, reason="stop it")
    elif answer == m.OK:  # it finished before the Cancel arrived
        core.on_results(session, results(1, ok(task.id, value=3)))
        expected = ok(task.id, value=3)
    else:  # no answer within cancel_timeout
        advance(core, clock, 2.9)
        assert task.state == RUNNING
        advance(core, clock, 0.2)
        expected = m.Outcome(id=task.id, status=m.CANCELLED, attempt=1, reason="stop it")
    assert task.outcome == expected and task.slot.outcomes == [expected]
    assert core.running == 0 and session.assigned == {}
    advance(core, clock, 60)
    assert task.slot.outcomes == [expected]


def test_cancelling_a_task_held_by_a_detached_worker_ends_it_at_once():
    core = make_scheduler()
    session = attach(core, "t")
    task = submit(core)
    core.detach_worker(session, clean=False)
    assert core.cancel(task.id)
    assert task.outcome.status == m.CANCELLED and session.assigned == {} and core.running == 0


def test_a_worker_giving_a_task_up_unasked_is_a_loss_and_it_runs_elsewhere():
    core = make_scheduler()
    session = attach(core, "t", concurrency=1)
    task = submit(core)
    core.on_results(session, results(1, cancelled(task.id, reason="the worker stopped")))
    assert task.losses == 1 and task.state == RUNNING and task.attempt == 2  # given straight back out


# ==================================================================== losses and sessions
def test_a_task_lost_more_than_max_losses_times_ends_as_lost():
    clock = FakeClock()
    core = make_scheduler(clock, max_losses=2, session_grace=10.0)
    task = submit(core)
    for losses in (1, 2, 3):
        session = attach(core, "t")
        assert task.session is session and task.attempt == losses
        core.on_results(session, results(1, started=(task.id,)))
        core.detach_worker(session, clean=False)
        assert task.state == RUNNING  # the worker may come back within the grace period
        advance(core, clock, 9.9)
        assert task.state == RUNNING and task.losses == losses - 1
        advance(core, clock, 0.2)
        assert task.losses == losses
    assert task.state == DONE and task.outcome.status == m.LOST
    assert "lost 3 times (limit 2)" in task.outcome.reason and core.counts[m.LOST] == 1


def test_a_clean_goodbye_takes_tasks_back_at_once():
    core = make_scheduler()
    session = attach(core, "t", concurrency=1, prefetch=1)
    started, waiting = submit(core), submit(core)
    core.on_results(session, results(1, started=(started.id,)))
    core.detach_worker(session, clean=True)
    assert started.state == waiting.state == QUEUED
    assert (started.losses, waiting.losses) == (1, 0)
    assert session.id not in core.sessions and core.running == 0


def test_an_expired_session_counts_its_oldest_unreported_tasks_as_started():
    """A worker can die before its "started" report leaves: a poison task must not loop forever."""
    clock = FakeClock()
    core = make_scheduler(clock)
    session = attach(core, "t", concurrency=2, prefetch=2)
    tasks = [submit(core) for _ in range(4)]
    assert all(task.session is session for task in tasks)
    core.detach_worker(session, clean=False)
    advance(core, clock, 11)
    assert [task.losses for task in tasks] == [1, 1, 0, 0]
    # With one start reported, only one more slot is unaccounted for.
    session = attach(core, "t", concurrency=2, prefetch=2)
    core.on_results(session, results(1, started=(tasks[3].id,)))
    order = list(session.assigned)
    core.detach_worker(session, clean=False)
    advance(core, clock, 11)
    losses = {task.id: task.losses for task in tasks}
    first_unreported = next(i for i in order if i != tasks[3].id)
    assert losses[tasks[3].id] == 1 and losses[first_unreported] == (2 if first_unreported in (tasks[0].id, tasks[1].id) else 1)
    assert sum(losses.values()) == 2 + 2


def test_a_worker_resuming_within_the_grace_period_keeps_what_it_holds():
    clock = FakeClock()
    core = make_scheduler(clock)
    session = attach(core, "t", concurrency=2)
    kept, dropped = submit(core), submit(core)
    core.on_results(session, results(1, started=(kept.id, dropped.id)))
    core.detach_worker(session, clean=False)
    advance(core, clock, 5)
    again, resumed = core.attach_worker(Conn(), hello("t", concurrency=2, session=session.id,
                                                      running={kept.id: 1}), "addr")  # fmt: skip
    assert resumed and again is session and session.detached_at is None
    assert kept.state == RUNNING and kept.session is session and kept.losses == 0
    # The one it no longer holds was started: requeued with a loss, and given out again (attempt 2).
    assert dropped.losses == 1 and dropped.attempt == 2 and dropped.session is session
    advance(core, clock, 60)  # the old expiry timer is stale
    assert session.id in core.sessions and kept.state == RUNNING


def test_after_its_session_expired_a_returning_worker_gets_a_new_session():
    """Past the grace period the dispatcher gave those attempts up (a loss each) and forgot the
    session: the worker is answered as new, so it drops its copies, and whatever is still wanted
    runs again as a new attempt."""
    clock = FakeClock()
    core = make_scheduler(clock)
    session = attach(core, "t", concurrency=3)
    requeued, finished, elsewhere = submit(core), submit(core), submit(core)
    core.detach_worker(session, clean=False)
    advance(core, clock, 11)  # expired: all three requeued (losses counted for the unreported ones)
    assert requeued.state == finished.state == elsewhere.state == QUEUED
    core.cancel(finished.id)
    other = attach(core, "t", concurrency=1)
    running_elsewhere = next(iter(other.assigned.values()))
    still_queued = requeued if running_elsewhere is elsewhere else elsewhere
    held = {requeued.id: 1, finished.id: 1, elsewhere.id: 1, "never-heard-of": 1}
    back, resumed = core.attach_worker(Conn(), hello("t", concurrency=3, session=session.id, running=held), "addr")
    assert not resumed and back.id != session.id
    assert back.buffer_cancel == []  # a worker answered as new drops what it held by itself
    assert still_queued.session is back and still_queued.attempt == 2  # sent again, as a new attempt
    assert running_elsewhere.session is other


def test_a_new_session_is_made_when_the_named_one_is_attached_elsewhere():
    core = make_scheduler()
    first = attach(core, "t")
    second, resumed = core.attach_worker(Conn(), hello("t", session=first.id), "addr")
    assert not resumed and second is not first


# ==================================================================== releases and stealing
def test_release_requeues_what_it_names_and_stopping_drains_the_session():
    core = make_scheduler()
    session = attach(core, "t", concurrency=1, prefetch=2)
    running, waiting, last = submit(core), submit(core), submit(core)
    core.on_results(session, results(1, started=(running.id,)))
    # A task the worker reported started is not taken back, even if it names it: it may be running.
    core.on_release(session, m.Release(ids=(running.id, waiting.id, last.id, "unknown"), stopping=True))
    assert running.state == RUNNING and waiting.state == last.state == QUEUED
    assert session.draining and (waiting.losses, last.losses) == (0, 0)
    assert list(session.assigned) == [running.id]  # nothing new for a stopping worker
    other = attach(core, "t", concurrency=2)
    assert set(other.assigned) == {waiting.id, last.id}
    # The requeued tasks went to the front: they had waited their turn.


def test_an_idle_worker_steals_prefetched_tasks_from_a_busy_one():
    core = make_scheduler()
    busy = attach(core, "t", concurrency=1, prefetch=3)
    tasks = [submit(core) for _ in range(4)]
    core.on_results(busy, results(1, started=(tasks[0].id,)))
    take_specs(core, busy)
    idle = attach(core, "t", concurrency=2)
    assert take_control(core, busy) == [m.Reclaim(ids=(tasks[2].id, tasks[3].id))]
    assert tasks[2].reclaiming and tasks[3].reclaiming
    core.on_release(busy, m.Release(ids=(tasks[2].id, tasks[3].id)))
    stolen = tasks[2:]
    assert all(t.state == RUNNING and t.attempt == 2 and t.losses == 0 and not t.reclaiming for t in stolen)
    # Placement levels the loads (assigned / window): a released task may go back to the
    # donor's prefetch when both end up equally loaded, but the idle one gets work.
    assert idle.assigned and core.running == 4


# ==================================================================== journal and purging
def test_the_journal_hears_every_change_while_active():
    clock = FakeClock()
    journal = RecordingJournal(clock, active=True, bulk_starts=True)
    core = make_scheduler(clock, journal)
    session = attach(core, "t", concurrency=2)
    first = submit(core)  # straight to the worker: journaled as queued, then as started
    assert journal.calls == [("changed", first.id, QUEUED), ("started_first", (first.id,), session.id)]
    core.on_results(session, results(1, ok(first.id)))
    assert journal.calls[-1] == ("changed", first.id, DONE)
    assert journal.rows[first.id].outcome["status"] == m.OK
    core.journal_opened(False)
    second = submit(core)
    assert journal.calls[-1] == ("changed", first.id, DONE) and second.state == RUNNING


def test_tasks_accepted_before_the_journal_opened_are_journaled_whole():
    clock = FakeClock()
    journal = RecordingJournal(clock, active=False)
    core = make_scheduler(clock, journal)
    task = submit(core)
    journal.active = True
    core.journal_opened(True)
    assert journal.rows[task.id].state == QUEUED


def test_outcomes_are_forgotten_after_result_ttl_or_beyond_max_results():
    clock = FakeClock()
    core = make_scheduler(clock, result_ttl=100.0, max_results=2)
    session = attach(core, "t", concurrency=3)
    tasks = [submit(core) for _ in range(3)]
    core.on_results(session, results(1, *(ok(t.id) for t in tasks)))
    assert tasks[0].id not in core.tasks and tasks[1].id in core.tasks  # max_results
    core.start_purging()
    advance(core, clock, 50)
    assert tasks[1].id in core.tasks
    advance(core, clock, 70)
    assert tasks[1].id not in core.tasks and tasks[2].id not in core.tasks


def test_a_map_task_nobody_looked_up_goes_to_its_batch_alone():
    from .helpers import Batch

    core = make_scheduler()
    session = attach(core, "t", concurrency=2)
    chunk = core.new_chunk("t", [[1], [2]], 0, None, None)
    batch = Batch()
    batch.add(chunk)
    core.place_chunk("t", chunk, 0)
    looked_up = chunk[1]
    client_slot = looked_up.slot = Slot()
    core.on_results(session, results(1, ok(chunk[0].id, value=1), ok(looked_up.id, value=2)))
    assert batch.outcomes == {0: chunk[0].outcome, 1: looked_up.outcome}
    assert chunk[0].id not in core.tasks and looked_up.id in core.tasks
    assert client_slot.outcomes == [looked_up.outcome]


def test_lose_unfinished_ends_everything_left_as_lost():
    core = make_scheduler()
    attach(core, "t")
    running, queued = submit(core), submit(core)
    core.lose_unfinished("the dispatcher stopped")
    assert running.outcome.status == queued.outcome.status == m.LOST
    assert core.unfinished == 0 and core.running == 0


def test_a_clean_goodbye_charges_no_loss_to_tasks_the_worker_never_started():
    """A stopping worker's last Results and its Goodbye arrive together; tasks placed on it in
    between were never started (it reported everything), so they must not burn a loss (a deploy
    that burns retries is what users complain of)."""
    core = make_scheduler()
    session = attach(core, "t", concurrency=1)
    finished, waiting = submit(core), submit(core)
    assert waiting.state == QUEUED
    core.on_results(session, results(1, ok(finished.id), started=(finished.id,)))
    assert waiting.session is session  # placed on it before its Goodbye is read
    core.detach_worker(session, clean=True)
    assert waiting.state == QUEUED and waiting.losses == 0


def test_a_resent_error_report_is_not_counted_twice():
    """The worker keeps a Results frame until it is acknowledged, names its tasks in its hello
    when it resumes, and sends the frame again.  A retry waiting for its backoff is not the
    worker's to adopt: the attempt it holds is the one that failed, and its failure is counted."""
    clock = FakeClock()
    core = make_scheduler(clock)
    session = attach(core, "t", concurrency=1)
    task = submit(core, retries=2)
    frame = results(1, error(task.id, attempt=1))
    core.on_results(session, frame)
    assert task.state == DELAYED and task.failures == 1
    core.detach_worker(session, clean=False)  # before the acknowledgement reached the worker
    back, resumed = core.attach_worker(Conn(), hello("t", concurrency=1, session=session.id,
                                                     running={task.id: 1}), "addr")  # fmt: skip
    # Nothing was assigned any more, so the session ended with the connection: the worker is
    # answered as new and drops its report; a stray resend of it must still not count.
    assert not resumed and task.state == DELAYED and back.assigned == {}
    core.on_results(back, frame)
    assert task.state == DELAYED and task.failures == 1
    advance(core, clock, 2)
    assert task.state == RUNNING and task.attempt == 2
