"""``trioschedule tasks`` against real processes (issue 15's task history), each stopped by PID."""

from __future__ import annotations

import json

from .processes import processes
from .test_security_cli import connected_workers


async def test_tasks_failed_json_and_queued_and_status_failures(tmp_path):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:", "--history", "100")
        address = f"127.0.0.1:{port}"
        procs.start_worker(port)
        await connected_workers(procs, address)
        for args in (("add", "2", "3"), ("fail", "out of cheese"), ("add", "4", "5")):
            done = await procs.run("submit", address, *args, "--wait")
            assert done.returncode == (1 if args[0] == "fail" else 0), done

        listed = await procs.run("tasks", address, "--failed", "--json")
        assert listed.returncode == 0, listed.stderr
        (failure,) = json.loads(listed.stdout)
        assert failure["name"] == "fail" and failure["status"] == "error" and failure["args"] == "'out of cheese'"
        assert failure["error"] == {"type": "RuntimeError", "message": "out of cheese"}
        assert failure["worker"] and failure["attempt"] == 1

        every = json.loads((await procs.run("tasks", address, "--json")).stdout)
        assert [e["name"] for e in every] == ["add", "fail", "add"]  # newest first
        table = await procs.run("tasks", address)
        assert table.returncode == 0 and table.stdout.count("\n") == 3 and "(4, 5)" in table.stdout, table

        slow = (await procs.run("submit", address, "slow_add", "1", "1", "60")).stdout.strip()
        queued = json.loads((await procs.run("tasks", address, "--queued", "--json")).stdout)
        assert [e["id"] for e in queued] == [slow], queued

        status = await procs.run("status", address)
        assert f"{failure['id']}  fail  error: RuntimeError: out of cheese" in status.stdout, status.stdout
