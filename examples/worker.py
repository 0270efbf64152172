"""A worker, in the spirit of Workerman's worker.php, made safe.

Workerman's article runs ``exec($data)`` on whatever the dispatcher sends.
This worker runs only what it declares: the ``@task`` methods below, and for
external programs only the commands in ``ALLOWED_COMMANDS``, started with
``trio.run_process`` and an argv list (never a shell string from the network).

Run it (after ``python examples/dispatcher.py start`` in another terminal):

    python examples/worker.py start                 # one process, under a supervisor; pid in ./worker.pid
    python examples/worker.py start --processes 2 --max-tasks-per-child 1000
    python examples/worker.py status                # this supervisor's processes, with their restarts
    python examples/worker.py reload                # new code: the processes are replaced one at a time
    python examples/worker.py stop                  # SIGTERM: every process drains, then exits

``start`` is the same as ``python -m trioschedule worker
examples/worker.py:JobWorker --processes 1``.
"""

from __future__ import annotations

import os
import sys
import time

import trio

from trioschedule import Worker, task
from trioschedule.cli import run_script

# The only external programs this worker will start: name -> fixed argv prefix.
ALLOWED_COMMANDS = {
    "uptime": ["uptime"],
    "disk": ["df", "-h", "."],
    "echo": ["echo"],
}


class JobWorker(Worker):
    @task
    async def add(self, a, b):
        """An async task runs on the worker's event loop."""
        return a + b

    @task
    def checksum(self, text):
        """A plain function runs in a thread, so it can block without stalling the connection."""
        return sum(text.encode()) % 65536

    @task
    async def slow_square(self, x, seconds=0.5):
        await trio.sleep(seconds)
        return x * x

    @task
    async def fail(self, message="this task fails on purpose"):
        raise RuntimeError(message)

    @task(retries=2)
    async def flaky(self, key):
        """Fails on its first attempts: the dispatcher retries it with backoff."""
        count = self.attempts.get(key, 0) + 1
        self.attempts[key] = count
        if count < 3:
            raise ConnectionError(f"transient failure {count} for {key}")
        return f"{key} ok after {count} attempts"

    @task
    async def run_command(self, name, *args):
        """Run an allow-listed program; extra arguments are passed as argv entries, never to a shell."""
        if name not in ALLOWED_COMMANDS:
            raise PermissionError(f"command {name!r} is not allowed; allowed: {sorted(ALLOWED_COMMANDS)}")
        if not all(isinstance(a, str) for a in args):
            raise TypeError("command arguments must be strings")
        result = await trio.run_process([*ALLOWED_COMMANDS[name], *args], capture_stdout=True, capture_stderr=True, check=False)
        return {"returncode": result.returncode, "stdout": result.stdout.decode(errors="replace")}

    @task
    async def whoami(self):
        return {"pid": os.getpid(), "name": self.name, "time": time.time()}

    async def on_start(self):
        self.attempts = {}

    async def on_message(self, message):
        """Broadcasts land here; answer ``{"ping": ...}`` so the dispatcher sees every worker."""
        if isinstance(message, dict) and "ping" in message:
            await self.send({"pong": message["ping"], "pid": os.getpid(), "worker": self.name})


if __name__ == "__main__":
    sys.exit(run_script(JobWorker))
