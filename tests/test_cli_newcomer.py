"""The command line as a newcomer uses it (issue 16): real processes, each stopped by PID.

``stop --workers`` ends the workers too; ``result``, ``cancel``, ``broadcast``
and ``--version`` reach a real dispatcher; options go after the command; bad
usage is one line and exit code 2.
"""

from __future__ import annotations

import glob
import json
import os
import signal

import trio

from .processes import processes, wait_for
from .test_security_cli import connected_workers


def one_line_usage_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.args, result.returncode, result.stderr)
    assert result.stderr.startswith("trioschedule: error: ") and result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


async def test_stop_workers_ends_the_worker_processes_with_exit_0(tmp_path):
    with processes(tmp_path) as procs:
        dispatcher, port = await procs.start_dispatcher("--store", "memory:")
        address = f"127.0.0.1:{port}"
        workers = [procs.start_worker(port, name=f"worker{i}") for i in range(2)]
        await connected_workers(procs, address, count=2)
        stopped = await procs.run("stop", address, "--workers", "--log-level", "warning")
        assert stopped.returncode == 0 and "workers too" in stopped.stdout, stopped
        for proc in [dispatcher, *workers]:
            code = await wait_for(lambda proc=proc: proc.poll() is not None and (proc.returncode,), timeout=30)
            assert code == (0,), procs.log("worker0") + procs.log("dispatcher")
        assert "asked its workers to stop" in procs.log("worker0")


async def test_workers_wait_quietly_for_a_dispatcher_that_said_goodbye(tmp_path):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = f"127.0.0.1:{port}"
        worker = procs.start_worker(port)
        await connected_workers(procs, address)
        assert (await procs.run("stop", address)).returncode == 0
        await wait_for(lambda: "has stopped; waiting for it to come back" in procs.log("worker"))
        await trio.sleep(3)  # several attempts at the backoff's pace
        log = procs.log("worker")
        assert worker.poll() is None, log
        assert log.count("waiting for it to come back") == 1 and "cannot reach" not in log, log


async def test_result_cancel_broadcast_and_version(tmp_path):
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = f"127.0.0.1:{port}"
        procs.start_worker(port)
        await connected_workers(procs, address)

        submitted = await procs.run("submit", address, "add", "2", "3")
        assert submitted.returncode == 0, submitted.stderr
        task_id = submitted.stdout.strip()
        waited = await procs.run("result", address, task_id, "--wait")
        assert (waited.returncode, waited.stdout.strip()) == (0, "5"), waited.stderr
        again = await procs.run("result", address, task_id)  # ended: no --wait needed
        assert (again.returncode, again.stdout.strip()) == (0, "5"), again.stderr

        slow = (await procs.run("submit", address, "slow_add", "1", "1", "60")).stdout.strip()
        pending = await procs.run("result", address, slow)
        assert pending.returncode == 4 and "has not finished" in pending.stderr, pending
        cancelled = await procs.run("cancel", address, slow, "--reason", "changed my mind")
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled
        after = await procs.run("result", address, slow)
        assert after.returncode == 1 and "changed my mind" in after.stderr, after
        twice = await procs.run("cancel", address, slow)  # it is cancelled: that is what was asked
        assert twice.returncode == 0, twice
        ended = await procs.run("cancel", address, task_id)
        assert ended.returncode == 1 and "already ended (ok)" in ended.stderr, ended

        unknown = await procs.run("result", address, "no-such-task")
        assert unknown.returncode == 1 and "knows no task" in unknown.stderr, unknown

        sent = await procs.run("broadcast", address, '{"hello": "workers"}')
        assert sent.returncode == 0, sent.stderr

        def messages():
            paths = glob.glob(os.path.join(tmp_path, "message-*.jsonl"))
            return [json.loads(line)["message"] for path in paths for line in open(path)]

        assert await wait_for(messages) == [{"hello": "workers"}]

        version = await procs.run("--version")
        assert version.returncode == 0 and version.stdout.startswith("trioschedule "), version


async def test_options_after_the_command_and_bad_values_refused(tmp_path):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = f"127.0.0.1:{port}"
        status = await procs.run("status", address, "--json", "--log-level", "debug", "--log-format", "json")
        assert status.returncode == 0, status.stderr
        procs.start_worker(port, "--log-format", "json", "--log-level", "DEBUG")
        await connected_workers(procs, address)
        lines = await wait_for(lambda: procs.log("worker").split("\n")[:-1])  # whole lines only
        assert all(json.loads(line)["level"] for line in lines), lines
        one_line_usage_error(await procs.run("status", address, "--log-level", "verbose"), "DEBUG, INFO")
        one_line_usage_error(await procs.run("dispatcher", "--log-format", "xml"), "'text', 'json'")


async def test_bad_usage_is_one_line_and_exit_2(tmp_path):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = f"127.0.0.1:{port}"
        results = {}

        async def run(name, *args):
            results[name] = await procs.run(*args)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "module", "worker", "nosuchmodule:JobWorker")
            nursery.start_soon(run, "port", "dispatcher", "--listen", address, "--store", "memory:")
            nursery.start_soon(run, "nan", "submit", address, "add", "1", "NaN")
            nursery.start_soon(run, "no command", "--log-level", "INFO")
        one_line_usage_error(results["module"], "no module named 'nosuchmodule'")
        one_line_usage_error(results["port"], "already in use", "--listen")
        assert "stopped" not in results["port"].stderr
        one_line_usage_error(results["nan"], "argument 2 ('NaN')")
        one_line_usage_error(results["no command"], "COMMAND")


async def test_submit_wait_for_a_task_no_worker_offers_says_so(tmp_path):
    with processes(tmp_path) as procs:
        _dispatcher, port = await procs.start_dispatcher("--store", "memory:")
        address = f"127.0.0.1:{port}"
        procs.start_worker(port)
        await connected_workers(procs, address)
        refused = await procs.run("submit", address, "ad", "1", "2", "--require-worker")
        assert refused.returncode == 1 and "no connected worker offers task 'ad'" in refused.stderr, refused
        assert "workers offer: add, fail, frozen, hog, pid, slow_add" in refused.stderr, refused

        waiting = procs.start("submit", address, "ad", "1", "2", "--wait", name="submit")
        try:
            line = await wait_for(lambda: "warning" in procs.log("submit") and procs.log("submit"), timeout=20)
            assert "no connected worker offers task 'ad'" in line and "workers offer: add," in line, line
            assert "trioschedule cancel" in line, line
            assert waiting.poll() is None
            waiting.send_signal(signal.SIGINT)  # Ctrl-C: the task stays, and the way to it is printed
            assert await trio.to_thread.run_sync(waiting.wait, 20) == 130
            assert "interrupted: task" in procs.log("submit") and "trioschedule cancel" in procs.log("submit")
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait(10)
        log = await wait_for(lambda: "are waiting" in procs.log("dispatcher") and procs.log("dispatcher"))
        assert "tasks named 'ad' are waiting: no connected worker offers that task (workers offer: add," in log, log
        status = json.loads((await procs.run("status", address, "--json")).stdout)
        [waiting_id] = status["waiting_ids"]["ad"]  # the way to the forgotten task, to cancel it
        assert status["waiting_for_worker"] == {"ad": 1} and waiting_id in (await procs.run("status", address)).stdout
        assert (await procs.run("cancel", address, waiting_id)).returncode == 0


async def test_quiet_start_and_honest_status(tmp_path):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher()  # the command line's default journal, new
        address = f"127.0.0.1:{port}"
        procs.start_worker(port)
        [_worker] = await connected_workers(procs, address)
        status = json.loads((await procs.run("status", address, "--json")).stdout)
        assert status["clients"] == [], status  # the status command does not count itself
        table = (await procs.run("status", address)).stdout
        assert "add,fail,frozen,hog,pid,slow_add" in table, table
        log = procs.log("dispatcher")
        assert log.count("created the journal") == 1 and "migrating" not in log, log
