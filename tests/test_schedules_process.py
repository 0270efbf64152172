"""Schedules in real processes: a command-line dispatcher on an SQLite journal, a worker, `schedule add`,
SIGKILL and restart; no fire time runs twice (checked on every run's task id)."""

from __future__ import annotations

import collections
import itertools
import json
import os
import signal
from datetime import datetime

import trio

from tests.processes import free_port, processes, wait_for


def records(directory, kind: str) -> list[dict]:
    return [json.loads(line) for name in os.listdir(directory) if name.startswith(f"{kind}-")
            for line in open(directory / name) if line.endswith("\n")]  # fmt: skip


def fire_time(task_id: str) -> float:
    """The fire time in a run id ``sched:<name>:<ISO UTC>``."""
    return datetime.fromisoformat(task_id.split(":", 2)[2].replace("Z", "+00:00")).timestamp()


async def sigkill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    with trio.fail_after(10):
        await trio.to_thread.run_sync(proc.wait)


async def test_a_schedule_every_second_survives_sigkill_with_no_fire_time_run_twice(tmp_path):
    port = free_port()
    journal = tmp_path / "journal.sqlite3"
    args = ("--store", f"sqlite:{journal}", "--session-grace", "15")
    done = lambda: records(tmp_path, "sched-done")
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        d1, _ = await procs.start_dispatcher(*args, port=port, name="d1")
        procs.start_worker(port, name="w")
        added = await procs.run("schedule", "add", f"127.0.0.1:{port}", "heartbeat", "tick", "beat", "--every", "1")
        assert added.returncode == 0, added.stderr
        assert "schedule heartbeat: tick every 1s" in added.stdout

        # The runs arrive on time: one a second.
        await wait_for(lambda: len(done()) >= 4, timeout=20)
        listed = await procs.run("schedule", "list", f"127.0.0.1:{port}", "--json")
        entry = {e["name"]: e for e in json.loads(listed.stdout)}["heartbeat"]
        assert entry["task"] == "tick" and entry["paused"] is False and entry["next_run"].endswith("Z")
        before = sorted(fire_time(r["id"]) for r in done())
        gaps = [b - a for a, b in itertools.pairwise(before)]
        # Whole seconds apart, mostly one (a loaded machine may stall the loop past a fire time: coalesced).
        assert all(g >= 1 and g == int(g) for g in gaps) and gaps.count(1.0) >= 3, before

        await sigkill(d1)
        killed_at = max(before)
        await trio.sleep(2.5)  # fire times pass while nobody is there
        await procs.start_dispatcher(*args, port=port, name="d2")
        await wait_for(lambda: sum(fire_time(r["id"]) > killed_at + 3 for r in done()) >= 3, timeout=30)

        removed = await procs.run("schedule", "remove", f"127.0.0.1:{port}", "heartbeat")
        assert removed.returncode == 0, removed.stderr
        await trio.sleep(1.5)  # the runs in flight end

        ids = [r["id"] for r in done()]
        counts = collections.Counter(ids)
        assert all(n == 1 for n in counts.values()), {i: n for i, n in counts.items() if n > 1}
        ticks = records(tmp_path, "tick")
        assert len(ticks) == len(ids), (len(ticks), sorted(ids))  # every run the worker did ended once
        fires = sorted(fire_time(i) for i in ids)
        assert len(set(fires)) == len(fires)
        log = procs.log("d2")
        assert "recovered 1 schedule(s)" in log, log
        # The fire times missed while the dispatcher was down became one run (coalesce latest).
        assert "due at once" in log and "running 1 (coalesce=latest)" in log, log
