"""The worker's watchdog: it names the task that blocks the event loop (issue 16)."""

from __future__ import annotations

import logging
import time

import trio

from trioschedule import Worker, task
from trioschedule._worker.watchdog import Watchdog, describe_blocker


class Hog(Worker):
    @task
    async def hog(self, seconds):
        time.sleep(seconds)

    @task
    def fine(self):
        return 1


async def test_the_warning_names_the_task_and_the_fix(caplog):
    worker = Hog(blocked_warning=0.2)
    watchdog = Watchdog(worker, 0.2)
    caplog.set_level(logging.WARNING, "trioschedule.worker")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.run)
        await trio.sleep(0.1)
        await worker.hog(0.8)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    text = caplog.text
    assert watchdog.episodes >= 1, text
    assert "blocked for" in text and "task 'hog'" in text and "test_watchdog.py" in text, text
    assert "plain def" in text and "trio.to_thread.run_sync" in text, text
    assert "ran again after" in text, text


async def test_a_loop_that_runs_is_not_reported(caplog):
    watchdog = Watchdog(Hog(), 2.0)  # far above any stall a loaded machine causes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.run)
        for _ in range(10):
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert watchdog.episodes == 0, caplog.text


def test_without_a_task_on_the_stack_the_innermost_user_frame_is_named():
    import sys

    name, where = describe_blocker(sys._getframe(), {})
    assert name is None and "test_without_a_task_on_the_stack" in where

