"""A dispatcher, in the spirit of Workerman's dispatcher.php.

It accepts jobs from clients (``python -m trioschedule submit``, or
``open_client`` from Python), hands each to the least-loaded worker that
offers the task, or broadcasts a message to every worker, and the results come
back to whoever submitted the job.  The hooks below print what happens.

    python examples/dispatcher.py start            # listens on 127.0.0.1:7311, pid in ./dispatcher.pid
    python examples/dispatcher.py start --listen 0.0.0.0:7311 --token s3cret
    python examples/dispatcher.py status           # or: python -m trioschedule status 127.0.0.1:7311
    python examples/dispatcher.py stop             # SIGTERM to the pid in ./dispatcher.pid, waits for the drain
    python examples/dispatcher.py restart          # stop, then start (workers reconnect and resume)
    python -m trioschedule schedule list 127.0.0.1:7311   # the schedule declared in on_start

``start`` is the same as ``python -m trioschedule dispatcher
examples/dispatcher.py:JobDispatcher``.  ``start -d`` does not fork: run it
under systemd instead (docs/OPERATIONS.md has the unit).
"""

from __future__ import annotations

import sys

from trioschedule import Dispatcher
from trioschedule.cli import run_script


class JobDispatcher(Dispatcher):
    """The library already logs every connection; the hooks add what only the application knows."""

    async def on_start(self):
        self.offered = {}  # peer id -> the task names it offers (not self.workers: that is the connected workers)
        # A schedule in code, as Workerman's Timer::add in onWorkerStart: add(1, 1) every minute.  Its
        # name is its identity: declaring it again at the next start changes nothing, and with a
        # journal (the command line's default) it resumes where it was, catching up what it missed.
        # A cron schedule: self.add_schedule("nightly", "add", [2, 2], cron="0 2 * * 1-5", tz="Europe/Berlin")
        await self.add_schedule("every-minute", "add", [1, 1], every=60)
        print(f"[dispatcher] ready on {self.host}:{self.port}", flush=True)

    async def on_connect(self, peer):
        if peer.role == "worker":
            self.offered[peer.id] = peer.tasks
            print(f"[dispatcher] {len(self.offered)} worker(s); {peer.name} offers {', '.join(sorted(peer.tasks))}",
                  flush=True)  # fmt: skip

    async def on_close(self, peer):
        if self.offered.pop(peer.id, None) is not None:
            print(f"[dispatcher] {len(self.offered)} worker(s) left", flush=True)

    async def on_message(self, peer, message):
        """Custom messages: workers answer broadcasts here."""
        print(f"[dispatcher] message from {peer.name}: {message}", flush=True)

    async def on_task_done(self, task_id, name, outcome):
        if outcome.status != "ok":
            # The whole id: ids from one client share their first part (the client's), then count up.
            print(f"[dispatcher] task {name} {task_id} ended {outcome.status}: {outcome.reason or ''}", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(JobDispatcher))
