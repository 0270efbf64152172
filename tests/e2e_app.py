"""Worker and dispatcher classes that the end-to-end tests run through the command line.

Side effects go to files under $E2E_DIR so that the test process can check
what every worker process did.
"""

from __future__ import annotations

import gc
import json
import os
import time

import trio

from trioschedule import Dispatcher, Worker, task


def _record(kind: str, **data) -> None:
    directory = os.environ.get("E2E_DIR")
    if directory:
        with open(os.path.join(directory, f"{kind}-{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(data) + "\n")


class AppWorker(Worker):
    @task
    async def add(self, a, b):
        return a + b

    @task
    async def slow_add(self, a, b, seconds=0.5):
        await trio.sleep(seconds)
        _record("ran", task="slow_add", a=a)
        return a + b

    @task
    async def fail(self, message="failed on purpose"):
        raise RuntimeError(message)

    @task
    async def hog(self, seconds):
        _record("ran", task="hog")
        time.sleep(seconds)  # the mistake: blocking code in an async def task
        return "done"

    @task
    async def tick(self, label):
        _record("tick", label=label, at=time.time())
        return label

    @task
    async def pid(self):
        return os.getpid()

    @task
    async def frozen(self):
        return gc.get_freeze_count()

    async def on_message(self, message):
        _record("message", message=message)
        await self.send({"ack": message, "pid": os.getpid()})


class AppDispatcher(Dispatcher):
    async def on_task_done(self, task_id, name, outcome):
        if task_id.startswith("sched:"):  # every schedule run that ended, for the schedule tests
            _record("sched-done", id=task_id, status=outcome.status)

    async def on_message(self, peer, message):
        _record("dispatcher-message", peer=peer.name, message=message)
        if isinstance(message, dict) and "map_slow_add" in message:  # a map() from inside the dispatcher
            count, seconds = message["map_slow_add"], message.get("seconds", 0.05)
            results = await self.map("slow_add", [(i, 1, seconds) for i in range(count)])
            _record("map-done", results=results)
