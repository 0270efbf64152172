"""The quick-start demo: a dispatcher and two worker processes doing real work.

    python examples/demo.py

It starts ``python -m trioschedule dispatcher`` and two ``python -m
trioschedule worker`` processes on 127.0.0.1, then acts as a client: it maps
hundreds of tasks, runs slow ones side by side, retries a flaky one, lets one
fail on purpose, broadcasts to every worker, runs an allow-listed command,
prints the dispatcher's status table and stops everything gracefully.
Every process it starts is stopped by PID before it exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import trio

from trioschedule import ConnectionClosed, TaskCancelled, TaskFailed, TaskTimeout, open_client
from trioschedule.cli import format_status

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(*args: str, cwd: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "trioschedule", "--log-level", "WARNING", *args], cwd=cwd, env=env)


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


async def wait_for_workers(port: int, count: int) -> None:
    with trio.fail_after(30):
        while True:
            try:
                async with open_client("127.0.0.1", port, role="admin") as admin:
                    while len([w for w in (await admin.status())["workers"] if w["connected"]]) < count:
                        await trio.sleep(0.1)
                    return
            except (ConnectionClosed, OSError):  # the dispatcher is still starting
                await trio.sleep(0.1)


async def client_side(port: int, worker_pids: list[int]) -> None:
    await wait_for_workers(port, 2)
    say(f"two workers connected (pids {', '.join(map(str, worker_pids))})")
    async with open_client("127.0.0.1", port) as client:
        started = time.perf_counter()
        results = await client.map("add", [(i, i) for i in range(500)])
        elapsed = time.perf_counter() - started
        assert results == [2 * i for i in range(500)]
        say(f"map: 500 add tasks -> sum {sum(results)} in {elapsed * 1000:.0f} ms")

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            squares: dict[int, int] = {}

            async def square(x: int) -> None:
                squares[x] = await client.call("slow_square", x, seconds=0.5)

            for x in range(8):
                nursery.start_soon(square, x)
        say(f"8 slow_square tasks of 0.5 s each, side by side: {dict(sorted(squares.items()))} "
            f"in {time.perf_counter() - started:.2f} s")  # fmt: skip

        pids = await client.map("whoami", [()] * 40)
        by_pid: dict[int, int] = {}
        for info in pids:
            by_pid[info["pid"]] = by_pid.get(info["pid"], 0) + 1
        say(f"40 whoami tasks were placed on: {by_pid}")

        say(f"checksum (a plain function, run in a worker thread): {await client.call('checksum', 'hello world')}")
        say(f"flaky task, retried with backoff: {await client.call('flaky', 'job-1')!r}")

        try:
            await client.call("fail", "this task fails on purpose")
        except TaskFailed as exc:
            say(f"a failing task reached us as TaskFailed: {exc.remote_type}: {exc.remote_message}")

        output = await client.call("run_command", "echo", "hello from an allow-listed command")
        say(f"run_command echo -> {output['stdout'].strip()!r}")
        try:
            await client.call("run_command", "rm", "-rf", "/")
        except TaskFailed as exc:
            say(f"run_command rm refused by the worker: {exc.remote_message}")

        await client.broadcast({"ping": "everyone"})
        say("broadcast {'ping': 'everyone'} sent; each worker answers the dispatcher (see its lines above)")
        await trio.sleep(0.5)

        handle = await client.submit("slow_square", [9], {"seconds": 60})
        await trio.sleep(0.2)
        await handle.cancel("changed my mind")
        try:
            await handle.result()
        except TaskCancelled as exc:
            say(f"a running task cancelled over the wire: {type(exc).__name__}: {exc}")

        handle = await client.submit("no_such_task", timeout=1.0)
        try:
            await handle.result()
        except TaskTimeout:
            say("a task no worker offers waited in the queue until its 1 s deadline, then timed out")


async def show_status_and_stop(port: int) -> None:
    async with open_client("127.0.0.1", port, role="admin") as admin:
        print(format_status(await admin.status()), flush=True)
        grace = await admin.stop_dispatcher(grace=10)
        say(f"asked the dispatcher to stop (grace {grace:g} s)")


def main() -> int:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="trioschedule-demo-")
    say(f"starting a dispatcher on 127.0.0.1:{port} and two worker processes (working directory {workdir})")
    procs = [start("dispatcher", f"{HERE}/dispatcher.py:JobDispatcher", "--listen", f"127.0.0.1:{port}", cwd=workdir)]
    try:
        time.sleep(0.3)
        workers = [start("worker", f"{HERE}/worker.py:JobWorker", "--connect", f"127.0.0.1:{port}", "--concurrency", "4",
                         cwd=workdir) for _ in range(2)]  # fmt: skip
        procs += workers

        async def run() -> None:
            with trio.fail_after(120):
                await client_side(port, [w.pid for w in workers])
                await show_status_and_stop(port)

        trio.run(run)
        code = procs[0].wait(30)
        say(f"dispatcher exited with code {code}")
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)
        say("workers stopped. Done.")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)  # the journal the demo's dispatcher kept


if __name__ == "__main__":
    sys.exit(main())
