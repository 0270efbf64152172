"""A dispatcher, in the spirit of Workerman's dispatcher.php.

It accepts jobs from clients (``python -m trioschedule submit``, or
``open_client`` from Python), hands each to the least-loaded worker that
offers the task, or broadcasts a message to every worker, and the results come
back to whoever submitted the job.  The hooks below print what happens.

    python examples/dispatcher.py start            # listens on 127.0.0.1:7311
    python examples/dispatcher.py start --listen 0.0.0.0:7311 --token s3cret
    python examples/dispatcher.py status           # or: python -m trioschedule status 127.0.0.1:7311
    python examples/dispatcher.py stop

which is the same as ``python -m trioschedule dispatcher examples/dispatcher.py:JobDispatcher``.
"""

from __future__ import annotations

import os
import sys

from trioschedule import Dispatcher
from trioschedule.cli import DEFAULT_ADDRESS, main


class JobDispatcher(Dispatcher):
    async def on_start(self):
        print(f"[dispatcher] ready on {self.host}:{self.port}", flush=True)

    async def on_connect(self, peer):
        print(f"[dispatcher] {peer.role} {peer.name} connected from {peer.address} (pid {peer.pid})", flush=True)

    async def on_close(self, peer):
        print(f"[dispatcher] {peer.role} {peer.name} disconnected", flush=True)

    async def on_message(self, peer, message):
        """Custom messages: workers answer broadcasts here."""
        print(f"[dispatcher] message from {peer.name}: {message}", flush=True)

    async def on_task_done(self, task_id, name, outcome):
        if outcome.status != "ok":
            print(f"[dispatcher] task {name} {task_id[:8]} ended {outcome.status}", flush=True)


if __name__ == "__main__":
    command, rest = (sys.argv[1] if len(sys.argv) > 1 else ""), sys.argv[2:]
    if command == "start":
        sys.exit(main(["dispatcher", f"{os.path.abspath(__file__)}:JobDispatcher", *rest]))
    if command in ("status", "stop"):
        if not rest or rest[0].startswith("-"):
            rest = [DEFAULT_ADDRESS, *rest]
        sys.exit(main([command, *rest]))
    sys.exit(f"usage: python {sys.argv[0]} start|status|stop [options]")
