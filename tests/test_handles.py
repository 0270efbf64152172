"""TaskHandle and the seam it asks through: an OutcomeSource, never its owner's private methods."""

from __future__ import annotations

import pytest

from trioschedule import TaskCancelled, TaskFailed
from trioschedule._handles import OutcomeSlot, OutcomeSource, TaskHandle
from trioschedule._protocol import messages as m


class Source:
    """An OutcomeSource that records what it is asked."""

    def __init__(self, outcome: m.Outcome | None = None) -> None:
        self.outcome = outcome
        self.calls: list[tuple[str, ...]] = []

    async def wait_outcome(self, task_id: str) -> m.Outcome:
        self.calls.append(("wait", task_id))
        assert self.outcome is not None
        return self.outcome

    def peek_outcome(self, task_id: str) -> m.Outcome | None:
        self.calls.append(("peek", task_id))
        return self.outcome

    async def cancel_task(self, task_id: str, reason: str | None) -> None:
        self.calls.append(("cancel", task_id, reason or ""))


async def test_a_handle_without_a_slot_asks_its_source():
    source = Source(m.Outcome(id="t1", status=m.OK, value=42))
    seam: OutcomeSource = source  # three methods, no owner
    handle = TaskHandle(seam, "t1", "add")
    assert handle.done()
    assert await handle.result() == 42
    await handle.cancel("not needed")
    assert source.calls == [("peek", "t1"), ("wait", "t1"), ("cancel", "t1", "not needed")]


async def test_a_handle_with_a_slot_waits_on_it_without_asking():
    source = Source()
    slot = OutcomeSlot()
    handle = TaskHandle(source, "t2", "fail", slot)
    slot.set(m.Outcome(id="t2", status=m.ERROR, error=m.RemoteError(type="ValueError", message="boom")))
    assert handle.done()
    with pytest.raises(TaskFailed, match="boom"):
        await handle.result()
    assert source.calls == []


async def test_how_a_task_ended_becomes_the_exception_the_caller_sees():
    handle = TaskHandle(Source(m.Outcome(id="t3", status=m.CANCELLED, reason="user pressed stop")), "t3")
    with pytest.raises(TaskCancelled, match="user pressed stop"):
        await handle.result()
    assert (await handle.outcome()).status == m.CANCELLED
    assert repr(handle) == "<TaskHandle task t3>"
