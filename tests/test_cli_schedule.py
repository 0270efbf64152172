"""``trioschedule schedule ...`` against real processes: every operation, the tables, and the refusals."""

from __future__ import annotations

import json

from trioschedule.cli._parser import build_parser

from .processes import processes, wait_for
from .test_security_cli import connected_workers


def test_the_parser_takes_the_issue_s_command_line() -> None:
    args = build_parser().parse_args([
        "schedule", "add", "127.0.0.1:7311", "nightly", "add", "1", "two", "--cron", "0 2 * * 1-5",
        "--tz", "Europe/Berlin", "--misfire-grace", "300", "--coalesce", "earliest", "--overlap", "buffer-one",
        "--timeout", "60", "--retries", "2",
    ])  # fmt: skip
    assert (args.command, args.op, args.name, args.task, args.args) == ("schedule", "add", "nightly", "add", ["1", "two"])
    assert (args.cron, args.tz, args.misfire_grace, args.coalesce, args.overlap) == (
        "0 2 * * 1-5", "Europe/Berlin", 300.0, "earliest", "buffer-one")  # fmt: skip
    assert (args.timeout, args.retries, args.every, args.at) == (60.0, 2, None, None)


async def test_schedule_add_list_pause_resume_trigger_remove(tmp_path) -> None:
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        address = f"127.0.0.1:{port}"
        procs.start_worker(port)
        await connected_workers(procs, address)

        added = await procs.run("schedule", "add", address, "nightly", "add", "2", "3", "--cron", "0 2 * * 1-5",
                                "--tz", "Europe/Berlin")  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert added.stdout.startswith("schedule nightly: add 0 2 * * 1-5 Europe/Berlin, next run 20")
        once = await procs.run("schedule", "add", address, "later", "add", "1", "1", "--at", "2099-01-01T09:00:00",
                               "--tz", "Europe/Berlin")  # fmt: skip
        assert "at 2099-01-01T08:00:00Z, next run 2099-01-01T08:00:00Z" in once.stdout, once

        listed = json.loads((await procs.run("schedule", "list", address, "--json")).stdout)
        assert [(s["name"], s["kind"], s["paused"]) for s in listed] == [("later", "once", False),
                                                                          ("nightly", "cron", False)]  # fmt: skip
        assert listed[1]["next_run"].endswith(":00:00Z") and listed[1]["args"] == [2, 3]
        table = (await procs.run("schedule", "list", address)).stdout
        assert table.splitlines()[0].split()[:3] == ["name", "task", "spec"] and "nightly" in table, table

        assert (await procs.run("schedule", "pause", address, "nightly")).stdout.strip() == "schedule nightly paused"
        assert "paused" in (await procs.run("schedule", "list", address)).stdout
        resumed = await procs.run("schedule", "resume", address, "nightly")
        assert resumed.stdout.startswith("schedule nightly resumed, next run 20"), resumed

        run_id = (await procs.run("schedule", "trigger", address, "nightly")).stdout.strip()
        assert run_id.startswith("sched:nightly:manual:")
        result = await procs.run("result", address, run_id, "--wait")
        assert result.stdout.strip() == "5", result

        status = (await procs.run("status", address)).stdout
        assert "schedules: 2" in status and "0 2 * * 1-5 Europe/Berlin" in status, status
        document = json.loads((await procs.run("status", address, "--json")).stdout)
        nightly = {s["name"]: s for s in document["schedules"]}["nightly"]
        assert nightly["last_runs"][0]["task_id"] == run_id and nightly["runs"] == 1

        assert (await procs.run("schedule", "remove", address, "later")).returncode == 0
        gone = await procs.run("schedule", "remove", address, "later")
        assert gone.returncode == 1 and "no schedule named 'later'" in gone.stderr

        # Refusals: clear messages, and the dispatcher goes on.
        bad = await procs.run("schedule", "add", address, "bad", "add", "--cron", "0 25 * * *")
        assert bad.returncode == 2 and "bad cron expression '0 25 * * *'" in bad.stderr, bad
        zone = await procs.run("schedule", "add", address, "bad", "add", "--cron", "0 2 * * *", "--tz", "Mars/Base")
        assert zone.returncode == 2 and "unknown time zone 'Mars/Base'" in zone.stderr, zone
        past = await procs.run("schedule", "add", address, "bad", "add", "--at", "2001-01-01T00:00:00Z")
        assert past.returncode == 2 and "in the past" in past.stderr, past
        unknown = await procs.run("schedule", "pause", address, "nope")
        assert unknown.returncode == 1 and "no schedule named 'nope'" in unknown.stderr, unknown
        neither = await procs.run("schedule", "add", address, "x", "add")
        assert neither.returncode == 2 and "--every" in neither.stderr

        async def one_left() -> bool:
            listed = json.loads((await procs.run("schedule", "list", address, "--json")).stdout)
            return [s["name"] for s in listed] == ["nightly"]

        assert await wait_for(one_left, timeout=20)
