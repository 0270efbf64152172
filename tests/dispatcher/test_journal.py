"""The journal seam: what StoreJournal tells a store, and the write barrier it gives connections."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trioschedule import StoreError
from trioschedule._core.tasks import DONE, RUNNING, Task
from trioschedule._dispatcher.journal import StoreJournal
from trioschedule._protocol import messages as m
from trioschedule._store.base import Store, StoredTask


class Recording(Store):
    """A durable store that records every call (no marks: the base class's)."""

    durable = True
    url = "recording:"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = False

    async def flush(self, mark: Any = None) -> None:
        self.calls.append(("flush", mark))
        if self.fail:
            raise StoreError("the disk is gone")

    def update(self, task: StoredTask) -> None:
        self.calls.append(("update", task.id, task.state))


class Narrow(Recording):
    """A store with marks and the narrow updates."""

    def mark(self) -> int:
        return len(self.calls)

    def update_running(self, task_id: str, attempt: int, failures: int, losses: int, session: str) -> None:
        self.calls.append(("running", task_id, attempt, session))

    def update_done(self, task_id: str, attempt: int, failures: int, losses: int, outcome: dict[str, Any],
                    finished_at: float) -> None:  # fmt: skip
        self.calls.append(("done", task_id, outcome["status"]))


def _task(state: str = RUNNING) -> Task:
    task = Task("t1", "add", [1, 2], {}, 0, None, 110.0, None, 1, 1000.0)
    task.state, task.attempt = state, 1
    return task


async def _opened(store: Store) -> StoreJournal:
    journal = StoreJournal(store, clock=lambda: 100.0, wall_clock=lambda: 5000.0)
    await journal.open()
    return journal


async def test_a_store_without_narrow_updates_gets_whole_tasks_with_wall_clock_deadlines():
    store = Recording()
    journal = await _opened(store)
    assert journal.active and not journal.bulk_starts
    task = _task()
    journal.changed(task)
    assert store.calls == [("update", "t1", RUNNING)]
    assert journal._stored(task).deadline == pytest.approx(5010.0)  # 10 s left on the scheduler's clock


async def test_a_store_with_narrow_updates_gets_them():
    store = Narrow()
    journal = await _opened(store)
    assert journal.bulk_starts
    task = _task()

    class Session:
        id = "s1"

    task.session = Session()  # type: ignore[assignment]
    journal.changed(task)
    task.state, task.session, task.outcome = DONE, None, m.Outcome(id="t1", status=m.OK, attempt=1, value=3)
    journal.changed(task)
    journal.started_first(["a", "b"], "s1")
    assert store.calls[:2] == [("running", "t1", 1, "s1"), ("done", "t1", m.OK)]
    assert store.calls[2:] == [("running", "a", 1, "s1"), ("running", "b", 1, "s1")]


async def test_the_write_barrier_waits_for_the_marked_position_or_for_everything():
    marked = await _opened(Narrow())
    mark, wait = marked.barrier(refuse_after_failure=True)
    assert mark is not None
    position = mark()
    await wait(position)
    assert marked.store.calls[-1] == ("flush", position)  # type: ignore[attr-defined]

    unmarked = await _opened(Recording())
    mark, wait = unmarked.barrier(refuse_after_failure=True)
    assert mark is None  # the connection keeps its own default
    await wait(None)
    assert unmarked.store.calls[-1] == ("flush", None)  # type: ignore[attr-defined]


async def test_after_a_journal_failure_workers_get_nothing_and_clients_still_hear_why():
    store = Recording()
    journal = await _opened(store)
    store.fail = True
    _, worker_wait = journal.barrier(refuse_after_failure=True)
    _, client_wait = journal.barrier(refuse_after_failure=False)
    with pytest.raises(StoreError):
        await worker_wait(None)
    with trio.fail_after(1):
        await client_wait(None)  # returns: the client's refusal ("store-failed") must still go out
