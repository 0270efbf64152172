"""TaskQueue: higher priority first, first come first served within one, ended tasks skipped."""

from __future__ import annotations

from trioschedule._core.queue import TaskQueue
from trioschedule._core.tasks import DONE, QUEUED, RUNNING, Task


def _task(n: int, priority: int = 0, name: str = "t") -> Task:
    return Task(f"id-{n}", name, [n], {}, priority, None, None, None, n, 0.0)


def _ids(tasks: list[Task]) -> list[str]:
    return [task.id for task in tasks]


def test_fifo_within_one_priority():
    queue = TaskQueue()
    for n in range(5):
        queue.push(_task(n))
    assert _ids(queue.take(2)) == ["id-0", "id-1"]
    assert _ids(queue.take(10)) == ["id-2", "id-3", "id-4"]
    assert queue.take(1) == []
    assert not queue


def test_higher_priority_first_whatever_the_order_of_arrival():
    queue = TaskQueue()
    queue.push(_task(0, priority=0))
    queue.push(_task(1, priority=5))
    queue.push(_task(2, priority=-1))
    queue.push(_task(3, priority=5))
    queue.push(_task(4, priority=1))
    assert _ids(queue.take(5)) == ["id-1", "id-3", "id-4", "id-0", "id-2"]


def test_front_puts_a_returned_task_before_its_level():
    queue = TaskQueue()
    queue.push(_task(0))
    queue.push(_task(1))
    queue.push(_task(2, priority=3))
    queue.push(_task(9), front=True)  # a task that had waited its turn once already
    assert _ids(queue.take(4)) == ["id-2", "id-9", "id-0", "id-1"]


def test_extend_queues_a_chunk_in_order():
    queue = TaskQueue()
    queue.push(_task(0, priority=1))
    queue.extend([_task(n, priority=1) for n in (1, 2, 3)], 1)
    assert _ids(queue.take(4)) == ["id-0", "id-1", "id-2", "id-3"]


def test_tasks_that_left_some_other_way_are_skipped():
    queue = TaskQueue()
    tasks = [_task(n) for n in range(4)]
    for task in tasks:
        queue.push(task)
    tasks[0].state = DONE  # cancelled while queued
    tasks[2].state = RUNNING  # adopted by a resuming worker
    assert queue.head_key() == (0, 1)
    assert _ids(queue.take(1)) == ["id-1"]
    assert _ids(queue.take(5)) == ["id-3"]
    assert not queue


def test_bool_and_head_key_ignore_ended_tasks():
    queue = TaskQueue()
    assert not queue and queue.head_key() == (0, 0)
    low, high = _task(1, priority=0), _task(2, priority=7)
    queue.push(low)
    queue.push(high)
    assert queue and queue.head_key() == (-7, 2)
    high.state = DONE
    assert queue.head_key() == (0, 1)
    low.state = DONE
    assert not queue
    assert queue.take(3) == []
    fresh = _task(3)
    queue.push(fresh)
    assert fresh.state == QUEUED and _ids(queue.take(1)) == ["id-3"]
