"""Recovery: a new scheduler rebuilt from the journal's rows picks up where the old one stopped."""

from __future__ import annotations

import pytest

from trioschedule._core.tasks import DELAYED, DONE, QUEUED, RUNNING
from trioschedule._protocol import messages as m
from trioschedule._store.base import StoredTask

from .helpers import WALL_OFFSET, FakeClock, RecordingJournal, advance, hello, make_scheduler, ok, results


class Conn:
    pass


def _row(task_id, **fields):
    fields.setdefault("name", "t")
    return StoredTask(id=task_id, args=[1], kwargs={}, submitted_at=WALL_OFFSET, **fields)


def _recovered(rows, clock=None, **overrides):
    clock = clock or FakeClock()
    journal = RecordingJournal(clock, active=True)
    core = make_scheduler(clock, journal, **overrides)
    core.journal_opened(True)
    core.recover(rows, "test")
    return core, journal, clock


def test_queued_and_delayed_rows_wait_again_with_their_counts_and_deadlines():
    clock = FakeClock()
    wall = clock.wall()
    rows = [
        _row("queued", attempt=2, failures=1, losses=1, priority=3, retries=4, deadline=wall + 50),
        _row("delayed", not_before=wall + 5),
        _row("due", not_before=wall - 5),
    ]
    core, journal, clock = _recovered(rows, clock)
    queued, delayed, due = (core.tasks[i] for i in ("queued", "delayed", "due"))
    assert (queued.state, queued.attempt, queued.failures, queued.losses) == (QUEUED, 2, 1, 1)
    assert queued.priority == 3 and queued.retries == 4
    assert queued.deadline == pytest.approx(clock.monotonic() + 50)  # back on the scheduler's clock
    assert delayed.state == DELAYED and due.state == QUEUED and core.unfinished == 3
    assert {call[1] for call in journal.calls if call[0] == "changed"} == {"queued", "delayed", "due"}
    advance(core, clock, 5.1)
    assert delayed.state == QUEUED
    session, _ = core.attach_worker(Conn(), hello("t", concurrency=3), "addr")
    assert queued.state == RUNNING and queued.attempt == 3 and next(iter(session.assigned)) == "queued"
    advance(core, clock, 45)
    assert queued.state == RUNNING  # past its deadline: the worker reports, or heartbeat_timeout later
    advance(core, clock, 5.1)
    assert queued.outcome.status == m.TIMEOUT


def test_a_running_row_waits_for_its_worker_to_resume():
    core, _journal, _clock = _recovered([_row("r1", state=RUNNING, attempt=1, session="s1"),
                                       _row("r2", state=RUNNING, attempt=2, session="s1")])  # fmt: skip
    r1, r2 = core.tasks["r1"], core.tasks["r2"]
    session = core.sessions["s1"]
    assert session.conn is None and r1.session is session and core.running == 2
    back, resumed = core.attach_worker(Conn(), hello("t", concurrency=2, session="s1", running={"r1": 1}), "addr")
    assert resumed and back is session
    assert r1.state == RUNNING and r1.losses == 0
    # It no longer holds r2, which may well have started: a loss, and it runs again.
    assert r2.losses == 1 and r2.attempt == 3 and r2.session is session
    core.on_results(session, results(1, ok("r1")))
    assert r1.outcome.status == m.OK


def test_a_running_row_whose_worker_never_returns_is_requeued_with_a_loss():
    core, journal, clock = _recovered([_row("r", state=RUNNING, attempt=1, losses=2, session="s")],
                                      session_grace=10.0, max_losses=3)  # fmt: skip
    advance(core, clock, 9)
    assert core.tasks["r"].state == RUNNING
    advance(core, clock, 2)
    task = core.tasks["r"]
    assert task.state == QUEUED and task.losses == 3 and "s" not in core.sessions
    assert journal.rows["r"].losses == 3 and journal.rows["r"].state == QUEUED


def test_a_running_row_at_its_last_loss_ends_as_lost():
    core, _journal, clock = _recovered([_row("r", state=RUNNING, attempt=3, losses=2, session="s")],
                                      session_grace=1.0, max_losses=2)  # fmt: skip
    advance(core, clock, 2)
    assert core.tasks["r"].outcome.status == m.LOST


def test_outcomes_are_kept_within_result_ttl_and_forgotten_beyond():
    clock = FakeClock()
    wall = clock.wall()
    outcome = m.converter.unstructure(m.Outcome(id="recent", status=m.OK, attempt=1, value=5))
    rows = [
        _row("recent", state=DONE, attempt=1, outcome=outcome, finished_at=wall - 10),
        _row("old", state=DONE, attempt=1, outcome={**outcome, "id": "old"}, finished_at=wall - 1000),
        _row("broken", state=DONE, attempt=1, outcome=None, finished_at=wall),
    ]
    core, journal, clock = _recovered(rows, clock, result_ttl=100.0)
    assert set(core.tasks) == {"recent"} and core.unfinished == 0
    recent = core.tasks["recent"]
    assert recent.state == DONE and recent.outcome.value == 5 and recent.expires == pytest.approx(clock.monotonic() + 90)
    assert ("forget", ("old", "broken")) in journal.calls
    core.start_purging()
    advance(core, clock, 95)
    assert "recent" not in core.tasks


def test_recovery_with_nothing_journaled_does_nothing():
    core, journal, _clock = _recovered([])
    assert core.tasks == {} and journal.calls == []


def test_a_restart_from_the_journal_round_trips_every_kind_of_task():
    """What one scheduler journals, another recovers to the same states."""
    clock = FakeClock()
    journal = RecordingJournal(clock, active=True)
    first = make_scheduler(clock, journal)
    first.journal_opened(True)
    session, _ = first.attach_worker(Conn(), hello("t", concurrency=1), "addr")
    running = first.new_local_task("t", [1], None, 30.0, None, None, 0, None)
    queued = first.new_local_task("t", [2], None, None, 2, None, 0, None)
    delayed = first.new_local_task("t", [3], None, None, None, 60.0, 0, None)
    done = first.new_local_task("u", [4], None, None, None, None, 0, None)
    first.cancel(done.id, "no")
    clock.now += 5
    clock.shift -= 1000  # a new process: another monotonic clock, the same wall clock
    second = make_scheduler(clock, journal)
    second.journal_opened(True)
    second.recover(journal.snapshot(), "test")
    states = {task_id: task.state for task_id, task in second.tasks.items()}
    assert states == {running.id: RUNNING, queued.id: QUEUED, delayed.id: DELAYED, done.id: DONE}
    assert second.tasks[running.id].session.id == session.id
    assert second.tasks[running.id].deadline == pytest.approx(clock.monotonic() + 25)
    assert second.tasks[queued.id].retries == 2
    assert second.tasks[done.id].outcome == done.outcome


def test_a_resumed_worker_can_hand_back_what_recovery_guessed_had_started():
    """Recovery marks running rows as started (they may have been).  The worker knows better: when
    it releases a task it never started, the task goes to another worker at once, with no loss."""
    core, _journal, _clock = _recovered([_row("held", state=RUNNING, attempt=1, session="s")])
    back, _ = core.attach_worker(Conn(), hello("t", concurrency=1, prefetch=1, session="s", running={"held": 1}),
                                 "addr")  # fmt: skip
    other, _ = core.attach_worker(Conn(), hello("t", concurrency=1), "addr")
    core.on_release(back, m.Release(ids=("held",), stopping=True))
    task = core.tasks["held"]
    assert task.session is other and task.losses == 0 and task.attempt == 2
    assert back.assigned == {} and core.running == 1


def test_a_worker_holding_a_later_attempt_than_the_journal_knows_keeps_it():
    """The journal lagged: it has the task queued, the worker was sent it before the restart.

    (The session is known from another task it runs: a session nobody knows is answered as new.)
    """
    core, journal, _clock = _recovered([_row("lagged"), _row("given-up", attempt=1, losses=1),
                                       _row("known", state=RUNNING, attempt=1, session="s")])  # fmt: skip
    held = {"lagged": 1, "given-up": 1, "known": 1}
    session, resumed = core.attach_worker(Conn(), hello("t", concurrency=3, session="s", running=held), "addr")
    lagged, given_up = core.tasks["lagged"], core.tasks["given-up"]
    assert resumed and lagged.state == RUNNING and lagged.session is session and lagged.attempt == 1
    assert journal.rows["lagged"].state == RUNNING and journal.rows["lagged"].session == "s"
    assert session.buffer_cancel == ["given-up"]  # that attempt was given up: it runs again
    assert given_up.session is session and given_up.attempt == 2


def test_a_resumed_worker_that_reported_a_start_cannot_hand_that_task_back():
    """Once the worker itself says the task started, the guess is knowledge: a release of it is
    ignored, since giving it to another worker could run it twice."""
    core, _journal, _clock = _recovered([_row("held", state=RUNNING, attempt=1, session="s")])
    back, _ = core.attach_worker(Conn(), hello("t", concurrency=1, prefetch=1, session="s", running={"held": 1}),
                                 "addr")  # fmt: skip
    core.attach_worker(Conn(), hello("t", concurrency=1), "addr")
    core.on_results(back, results(1, started=("held",)))
    core.on_release(back, m.Release(ids=("held",), stopping=True))
    task = core.tasks["held"]
    assert task.session is back and task.state == RUNNING and task.attempt == 1
