"""A dispatcher, two workers and a client in one Trio program.

    python examples/embedded.py

Everything runs in one nursery: ``nursery.start(dispatcher.serve)`` returns
the bound port once the dispatcher listens, workers are plain tasks, and
cancelling the nursery stops them all (structured concurrency: nothing
outlives the block).
"""

from __future__ import annotations

import trio

from trioschedule import Dispatcher, Worker, open_client, task


class Squares(Worker):
    @task
    async def square(self, x):
        await trio.sleep(0.01)
        return x * x

    async def on_message(self, message):
        print(f"[{self.name}] broadcast: {message}")


class Reporter(Dispatcher):
    async def on_task_done(self, task_id, name, outcome):
        if outcome.value == 81:
            print(f"[dispatcher] {name} produced 81 (task {task_id[:8]})")


async def main() -> None:
    async with trio.open_nursery() as nursery:
        dispatcher = Reporter(host="127.0.0.1", port=0)
        port = await nursery.start(dispatcher.serve)
        for i in range(2):
            nursery.start_soon(Squares(host="127.0.0.1", port=port, name=f"squares-{i}", concurrency=8).run)
        async with open_client("127.0.0.1", port) as client:
            print("squares:", await client.map("square", range(20)))
            await client.broadcast("hello from the client")
            print("from the dispatcher itself:", await dispatcher.call("square", 12))
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
