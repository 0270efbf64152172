"""An ``async def`` task that blocks the event loop: real processes, as a newcomer writes it.

The worker's watchdog names the task and the fix, and keeps the heartbeats
flowing, so the dispatcher does not declare the blocked worker lost and the
task runs once (issue 16, point 1).
"""

from __future__ import annotations

import glob
import json
import os

from .processes import processes, wait_for


async def test_a_task_that_blocks_the_loop_runs_once_and_is_named(tmp_path):
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = f"127.0.0.1:{port}"
        procs.start_worker(port)
        # 5 s blocked: past the heartbeat timeout (3 s) and the session grace (1 s) together.
        result = await procs.run("submit", address, "hog", "5", "--wait", timeout=60)
        assert (result.returncode, result.stdout.strip()) == (0, '"done"'), (result.stderr, procs.log("worker"))
        runs = [json.loads(line) for path in glob.glob(os.path.join(tmp_path, "ran-*.jsonl")) for line in open(path)]
        assert runs == [{"task": "hog"}], procs.log("worker")
        log = await wait_for(lambda: (text := procs.log("worker")) and "ran again" in text and text)
        assert "blocked for" in log and "task 'hog'" in log and "trio.to_thread.run_sync" in log, log
        assert "heartbeat timeout" not in log and "disconnected" not in log, log
        assert "heartbeat timeout" not in procs.log("dispatcher"), procs.log("dispatcher")
