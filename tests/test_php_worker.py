"""examples/php/worker.php against a real dispatcher process: the minimal worker profile, run for real.

Skipped only when ``php`` is not on PATH (.ci/run installs php-cli then).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest
import trio

from trioschedule import TaskCancelled, TaskFailed, TaskTimeout, open_client

from .processes import ROOT, processes, wait_for

PHP = shutil.which("php")
WORKER = os.path.join(ROOT, "examples", "php", "worker.php")

pytestmark = pytest.mark.skipif(PHP is None, reason="php is not on PATH (.ci/run installs php-cli)")


async def _php_workers(procs, port: int, pid: int) -> list[dict]:
    result = await procs.run("status", f"127.0.0.1:{port}", "--json")
    assert result.returncode == 0, result.stderr
    return [w for w in json.loads(result.stdout)["workers"] if w["pid"] == pid and w["connected"]]


async def test_the_php_worker_runs_tasks_errors_cancels_and_deadlines(tmp_path):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        log_path = tmp_path / "php.log"
        with open(log_path, "w") as log:
            php = subprocess.Popen([PHP, WORKER], env={**procs.env, "TRIOSCHEDULE_CONNECT": f"127.0.0.1:{port}"},
                                   stdout=log, stderr=log, cwd=tmp_path)  # fmt: skip
        procs.procs.append(php)  # stopped by PID in the finally of processes()
        [worker] = await wait_for(lambda: _php_workers(procs, port, php.pid), timeout=30, interval=0.2)
        assert set(worker["tasks"]) == {"add", "checksum", "slow_square", "fail", "whoami"}

        async with open_client("127.0.0.1", port) as client:
            with trio.fail_after(30):
                # ok
                assert await client.call("add", 2, 3) == 5
                assert await client.call("add", 0.5, 1) == 1.5
                assert await client.call("checksum", "abc") == 294
                assert await client.call("slow_square", 7, 0.05) == 49
                assert (await client.call("whoami"))["pid"] == php.pid
                # keyword arguments
                handle = await client.submit("slow_square", kwargs={"x": 3, "seconds": 0.01})
                assert await handle.result() == 9
                # error, with the remote type and message
                with pytest.raises(TaskFailed) as excinfo:
                    await client.call("fail", "custom message")
                assert excinfo.value.remote_type == "RuntimeException"
                assert excinfo.value.remote_message == "custom message"
                # cancel of a running task
                running = await client.submit("slow_square", args=[5, 60])
                await wait_for(lambda: _running(procs, port, php.pid), timeout=20, interval=0.1)
                await running.cancel(reason="user asked")
                with pytest.raises(TaskCancelled, match="user asked"):
                    await running.result()
                # a deadline that passes while the task runs
                late = await client.submit("slow_square", args=[6, 60], timeout=1.0)
                with pytest.raises(TaskTimeout):
                    await late.result()
                # and the worker carries on
                assert await client.call("add", 40, 2) == 42
                await client.broadcast({"hello": "php"})
                await wait_for(lambda: '{"hello":"php"}' in log_path.read_text(), timeout=10)

        # a graceful stop: goodbye, then the process exits by itself
        php.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await trio.to_thread.run_sync(php.wait) == 0
        assert not await _php_workers(procs, port, php.pid)
        assert "protocol error" not in procs.log("dispatcher")


async def _running(procs, port: int, pid: int) -> bool:
    workers = await _php_workers(procs, port, pid)
    return bool(workers) and workers[0]["running"] == 1
