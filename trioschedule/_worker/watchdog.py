"""The worker's watchdog: notices when its event loop stops running, and says which task stopped it.

An ``async def`` task that calls blocking code (``time.sleep``, a
synchronous HTTP call, a long computation) holds the whole event loop: no
other task runs, nothing is read or written, no heartbeat leaves.  That is
the commonest mistake on any async framework, and without this module it
looks like a network failure: the dispatcher hears nothing, declares the
worker lost and runs the task again elsewhere.

A trio task bumps a tick; a thread checks it.  When the tick stops moving the
thread reads the event loop thread's stack (``sys._current_frames``: nothing
is added to the loop's hot path), finds the ``@task`` function in it and logs
one warning that names the task, the line, and the fix.  Meanwhile it keeps
the heartbeats flowing (``Connection.thread_heartbeat``: plain TCP only), so
a worker that is alive but blocked is not treated like one that died, and
its task does not run twice.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

import trio

from .._logging import context

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Watchdog", "describe_blocker"]

log = logging.getLogger("trioschedule.worker")

FIX = "an async def task must not block: make it a plain def (it then runs in a thread) or await trio.to_thread.run_sync(...) around the blocking call"
_OURS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(trio.__file__)))


def _task_codes(tasks: dict[str, tuple[Any, Any]]) -> dict[CodeType, str]:
    codes: dict[CodeType, str] = {}
    for name, (function, _options) in tasks.items():
        function = inspect.unwrap(getattr(function, "__func__", function))
        code = getattr(function, "__code__", None)
        if code is not None:
            codes[code] = name
    return codes


def describe_blocker(frame: FrameType | None, codes: dict[CodeType, str]) -> tuple[str | None, str]:
    """(task name or None, ``function (file:line)``) for the innermost @task function on the stack.

    Without a task on the stack, the innermost frame outside trio and
    trioschedule (a hook, say).
    """
    innermost_user: FrameType | None = None
    while frame is not None:
        code = frame.f_code
        name = codes.get(code)
        if name is not None:
            return name, f"{code.co_name} ({code.co_filename}:{frame.f_lineno})"
        if innermost_user is None and not code.co_filename.startswith(_OURS):
            innermost_user = frame
        frame = frame.f_back
    if innermost_user is None:
        return None, "trioschedule itself"
    code = innermost_user.f_code
    return None, f"{code.co_name} ({code.co_filename}:{innermost_user.f_lineno})"


class Watchdog:
    """A thread that watches the worker's event loop (see the module's docstring).

    ``warn_after`` seconds without a tick is a blocked loop.  Heartbeats go
    out from the thread once the loop has been blocked for the worker's
    ``heartbeat_interval``, and every ``heartbeat_interval`` after that.
    """

    def __init__(self, worker: Worker, warn_after: float) -> None:
        self.worker = worker
        self.warn_after = warn_after
        self._codes = _task_codes(worker.tasks)
        self._tick = time.monotonic()
        self._stopped = threading.Event()
        self._loop_thread = threading.get_ident()
        #: How many times the loop was found blocked (the tests read it).
        self.episodes = 0

    async def run(self) -> None:
        """Bump the tick until cancelled, with the thread watching it."""
        self._loop_thread = threading.get_ident()
        thread = threading.Thread(target=self._watch, name="trioschedule-watchdog", daemon=True)
        self._tick = time.monotonic()
        thread.start()
        try:
            period = self.warn_after / 4
            while True:
                self._tick = time.monotonic()
                await trio.sleep(period)
        finally:
            self._stopped.set()

    # ------------------------------------------------------ the thread's side
    def _watch(self) -> None:
        check = min(0.25, self.warn_after / 4)
        blocked_by: str | None = None  # what the warning named, while the loop stays blocked
        blocked_since = 0.0
        sent_at = 0.0
        while not self._stopped.wait(check):
            now = time.monotonic()
            stalled = now - self._tick
            if stalled < self.warn_after:
                if blocked_by is not None:
                    log.warning("the event loop ran again after %.1f s blocked by %s", self._tick - blocked_since, blocked_by)
                    blocked_by = None
            elif blocked_by is None:
                self.episodes += 1
                blocked_since = self._tick
                blocked_by = self._warn(stalled)
            interval = self.worker.heartbeat_interval
            if stalled < interval or now - sent_at < interval:
                continue
            send = self.worker._beat_from_thread  # set and cleared by the event loop with each connection
            if send is not None and send():
                sent_at = now

    def _warn(self, stalled: float) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        name, where = describe_blocker(frame, self._codes)
        if name is None:
            blocked_by = where
            log.warning("the event loop has been blocked for %.1f s by %s: blocking code must not run in the event loop "
                        "(use trio.to_thread.run_sync)", stalled, where)  # fmt: skip
            return blocked_by
        task_ids = []
        try:
            task_ids = [task_id for task_id, running in list(self.worker._running.items()) if running.spec.name == name]
        except RuntimeError:  # changed size: the loop ran meanwhile
            pass
        ident = f" (id {task_ids[0]})" if len(task_ids) == 1 else ""
        blocked_by = f"task {name!r}{ident}"
        log.warning("the event loop has been blocked for %.1f s by task %r%s in %s: %s", stalled, name, ident, where,
                    FIX, extra=context(task_name=name, task_id=task_ids[0] if len(task_ids) == 1 else None))  # fmt: skip
        return blocked_by
