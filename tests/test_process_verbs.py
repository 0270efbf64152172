"""Workerman's process verbs on real processes (issue 15): per-child limits, reload, crash loops, status.

Every process is started by tests/processes.py and stopped by PID in its
``finally``; every wait is bounded.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import textwrap
import time

import trio

from trioschedule import open_client

from .processes import processes, wait_for

JOBS = '''
import os
import trio
from trioschedule import Worker, task

VERSION = {version}
KEEP = []


class Jobs(Worker):
    @task
    async def whoami(self, seconds=0.0):
        if seconds:
            await trio.sleep(seconds)
        return {{"version": VERSION, "pid": os.getpid()}}

    @task
    async def grow(self, mib):
        KEEP.append(b"x" * (mib << 20))  # every page written: resident, not just reserved
        return os.getpid()
'''

CRASHY = '''
from trioschedule import Worker, task


class Crashy(Worker):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("cannot open the database (on purpose)")

    @task
    async def add(self, a, b):
        return a + b
'''


def write_jobs(tmp_path, version: int) -> str:
    path = os.path.join(tmp_path, "jobs.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(JOBS.format(version=version)))
    return path


async def serving(address: tuple[str, int]) -> list[dict]:
    """The workers that take tasks now: connected and not draining."""
    async with open_client(*address, role="admin", reconnect_attempts=0) as admin:
        document = await admin.status()
    return [w for w in document["workers"] if w["connected"] and not w["draining"]]


async def wait_serving(address, count: int, timeout: float = 60, exclude: set[int] = frozenset()) -> list[dict]:
    async def enough():
        workers = [w for w in await serving(address) if w["pid"] not in exclude]
        return workers if len(workers) >= count else None

    return await wait_for(enough, timeout=timeout, interval=0.2)


async def test_max_tasks_per_child_replaces_children_and_loses_nothing(tmp_path):
    write_jobs(tmp_path, 1)
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = ("127.0.0.1", port)
        supervisor = procs.start("worker", "jobs.py:Jobs", "--connect", f"127.0.0.1:{port}", "--processes", "2",
                                 "--max-tasks-per-child", "5", name="workers")  # fmt: skip
        await wait_serving(address, 2)
        async with open_client(*address) as client:
            with trio.fail_after(120):
                results = await client.map("whoami", [() for _ in range(60)])
            async with open_client(*address, role="admin") as admin:
                document = await admin.status()
        per_pid = collections.Counter(r["pid"] for r in results)
        assert len(results) == 60 and all(r["version"] == 1 for r in results)
        assert max(per_pid.values()) <= 5, per_pid  # no child ran more than its limit
        assert len(per_pid) >= 12, per_pid  # 60 tasks, 5 per child: at least 12 children ran them
        counts = document["tasks"]
        assert (counts["done"], counts["failed"], counts["lost"], counts["cancelled"]) == (60, 0, 0, 0), counts
        assert supervisor.poll() is None, procs.log("workers")
        log = procs.log("workers")
        assert "retired after draining" in log and "Traceback" not in log, log
        # The replacements' hellos carry their slot's restarts: status lists each child with them.
        # 12 children or more ran tasks over 2 slots: the slots were restarted 10 times or more in all.
        async def restarted():
            workers = await serving(address)
            return len(workers) == 2 and sum(w["restarts"] for w in workers) >= len(per_pid) - 2

        await wait_for(restarted, timeout=60, interval=0.2)
        table = await procs.run("status", f"127.0.0.1:{port}")
        assert "restarts" in table.stdout.splitlines()[3], table.stdout


async def test_max_memory_per_child_replaces_a_child_that_grew(tmp_path):
    write_jobs(tmp_path, 1)
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = ("127.0.0.1", port)
        procs.start("worker", "jobs.py:Jobs", "--connect", f"127.0.0.1:{port}", "--max-memory-per-child", "200",
                    name="workers")  # fmt: skip
        (first,) = await wait_serving(address, 1)
        async with open_client(*address) as client:
            with trio.fail_after(30):
                assert await client.call("grow", 10) == first["pid"]  # under the limit: it stays
            await trio.sleep(2.5)  # two looks at its memory
            assert [w["pid"] for w in await serving(address)] == [first["pid"]]
            with trio.fail_after(30):
                assert await client.call("grow", 300) == first["pid"]  # now over it
            (second,) = await wait_serving(address, 1, exclude={first["pid"]}, timeout=30)
            assert second["restarts"] == 1
            with trio.fail_after(30):
                assert (await client.call("whoami"))["pid"] == second["pid"]
        log = procs.log("workers")
        assert "over max_memory 200 MiB" in log and "retired after draining" in log, log


async def test_reload_under_load_replaces_both_children_with_new_code_and_loses_nothing(tmp_path):
    write_jobs(tmp_path, 1)
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = ("127.0.0.1", port)
        supervisor = procs.start("worker", "jobs.py:Jobs", "--connect", f"127.0.0.1:{port}", "--processes", "2",
                                 "--concurrency", "2", name="workers")  # fmt: skip
        old = {w["pid"] for w in await wait_serving(address, 2)}
        fewest = [2]  # workers serving, at the lowest point seen while the reload runs
        async with open_client(*address) as client:
            with trio.fail_after(180):
                async with trio.open_nursery() as nursery:
                    results: list[dict] = []

                    async def load() -> None:
                        while len(results) < 400 or not reloaded.is_set():
                            results.extend(await client.map("whoami", [(0.02,) for _ in range(40)]))

                    async def watch() -> None:
                        while not reloaded.is_set():
                            fewest[0] = min(fewest[0], len(await serving(address)))
                            await trio.sleep(0.1)

                    reloaded = trio.Event()
                    nursery.start_soon(load)
                    await wait_for(lambda: len(results) >= 80, timeout=60)
                    write_jobs(tmp_path, 2)  # new code on disk, then SIGHUP: Workerman's reload
                    supervisor.send_signal(signal.SIGHUP)
                    nursery.start_soon(watch)
                    new = await wait_serving(address, 2, exclude=old, timeout=120)
                    reloaded.set()
            assert supervisor.poll() is None, procs.log("workers")
            assert {w["pid"] for w in new}.isdisjoint(old) and all(w["restarts"] == 1 for w in new), new
            assert {r["version"] for r in results} == {1, 2}, "tasks ran on old and new code, none failed"
            with trio.fail_after(30):
                after = await client.map("whoami", [() for _ in range(20)])
            assert {r["version"] for r in after} == {2} and {r["pid"] for r in after} <= {w["pid"] for w in new}
            async with open_client(*address, role="admin") as admin:
                counts = (await admin.status())["tasks"]
        assert counts["done"] == len(results) + 20 and (counts["failed"], counts["lost"], counts["cancelled"]) == (0, 0, 0)
        # The issue asks for never fewer than N-1; the new child connects before the old one drains, so N.
        assert fewest[0] >= 2, fewest
        # The last old child may still be finishing its drain: the supervisor says when it is done.
        log = await wait_for(lambda: "reload done" in procs.log("workers") and procs.log("workers"), timeout=60)
        assert log.count("connected; draining process") == 2, log


async def test_a_crash_loop_backs_off_then_gives_up_with_a_message(tmp_path):
    with open(os.path.join(tmp_path, "crashy.py"), "w") as f:
        f.write(CRASHY)
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        began = time.monotonic()
        supervisor = procs.start("worker", "crashy.py:Crashy", "--connect", f"127.0.0.1:{port}", "--processes", "2",
                                 "--log-format", "json", name="workers")  # fmt: skip
        with trio.fail_after(120):
            code = await trio.to_thread.run_sync(supervisor.wait)
        took = time.monotonic() - began
        log = procs.log("workers")
        assert code == 1, log
        lines = [json.loads(line) for line in log.splitlines()]  # the children's crashes are JSON lines too
        [gave_up] = [line for line in lines if line["logger"] == "trioschedule.supervisor" and line["level"] == "ERROR"]
        assert "keep crashing at start" in gave_up["event"] and "5 times in a row; giving up" in gave_up["event"]
        crashes = [line for line in lines if line["level"] == "CRITICAL"]
        assert len(crashes) >= 5 and "cannot open the database (on purpose)" in crashes[0]["exception"], crashes
        # It backed off: 0.5 + 1 + 2 + 4 seconds between the five crashes of a slot.
        assert took >= 7.5, took
        assert "restarting it in 4.0 s" in log, log


async def test_stop_workers_ends_a_supervisor_with_exit_0(tmp_path):
    """A child that exits 0 was asked to stop: it is not replaced, and the supervisor follows."""
    write_jobs(tmp_path, 1)
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        supervisor = procs.start("worker", "jobs.py:Jobs", "--connect", f"127.0.0.1:{port}", "--processes", "2",
                                 name="workers")  # fmt: skip
        await wait_serving(("127.0.0.1", port), 2)
        stopped = await procs.run("stop", f"127.0.0.1:{port}", "--workers")
        assert stopped.returncode == 0, stopped
        with trio.fail_after(60):
            code = await trio.to_thread.run_sync(supervisor.wait)
        assert code == 0, procs.log("workers")
        assert "every worker process stopped" in procs.log("workers")


async def test_a_killed_child_is_restarted_and_status_counts_it(tmp_path):
    write_jobs(tmp_path, 1)
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = ("127.0.0.1", port)
        procs.start("worker", "jobs.py:Jobs", "--connect", f"127.0.0.1:{port}", "--processes", "2", name="workers")
        first = await wait_serving(address, 2)
        await trio.sleep(5.5)  # past the crash window: this is a crash in service, restarted at once
        victim = first[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        workers = await wait_serving(address, 2, exclude={victim}, timeout=60)
        assert sorted(w["restarts"] for w in workers) == [0, 1], workers
        assert f"worker process {victim} exited with signal SIGKILL; restarting it (restart 1)" in procs.log("workers")


def test_children_are_in_their_own_process_group(tmp_path):
    """Ctrl-C in a terminal reaches the supervisor alone, which passes it on once: each child drains."""
    from trioschedule.cli._supervisor import _child_setup

    child = subprocess.Popen(["sleep", "5"], preexec_fn=_child_setup)  # noqa: PLW1509
    try:
        assert os.getpgid(child.pid) == child.pid != os.getpgid(0)
    finally:
        child.kill()
        child.wait()
