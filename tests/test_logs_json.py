"""``--log-format json`` on real processes: every line parses, and the events that matter are there with their fields."""

from __future__ import annotations

import datetime
import json
import logging
import signal

import pytest
import trio

from trioschedule import TaskFailed, open_client
from trioschedule.cli._logs import JsonFormatter

from .processes import processes, wait_for
from .test_process_verbs import wait_serving


def records(procs, name: str) -> list[dict]:
    """Every whole line of the process's log, each parsed as JSON (a line that is not JSON fails the test)."""
    lines = procs.log(name).split("\n")[:-1]
    parsed = []
    for line in lines:
        document = json.loads(line)
        assert {"time", "level", "logger", "event", "pid"} <= set(document), document
        stamp = datetime.datetime.fromisoformat(document["time"])
        assert stamp.utcoffset() == datetime.timedelta(0), document["time"]
        parsed.append(document)
    return parsed


def find(items: list[dict], text: str, **fields) -> dict | None:
    for item in items:
        if text in item["event"] and all(item.get(k) == v for k, v in fields.items()):
            return item
    return None


async def test_dispatcher_and_worker_json_lines(tmp_path):
    json_logs = ("--log-format", "json")
    with processes(tmp_path) as procs:
        dispatcher, port = await procs.start_dispatcher("--store", f"sqlite:{tmp_path}/journal.sqlite3", *json_logs)
        address = ("127.0.0.1", port)
        worker = procs.start_worker(port, "--name", "w1", *json_logs)
        (info,) = await wait_serving(address, 1)
        async with open_client(*address) as client:
            with trio.fail_after(30), pytest.raises(TaskFailed):
                await client.call("fail", "broken on purpose")
            handle = await client.submit("fail", ["again"])
            with trio.fail_after(30), pytest.raises(TaskFailed):
                await handle.result()
            assert await client.call("add", 1, 2) == 3
            waiting = await client.submit("no_such_task")  # stays queued: the journal keeps it
        worker.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await trio.to_thread.run_sync(worker.wait) == 0

        lines = await wait_for(lambda: find(records(procs, "dispatcher"), "closed: said goodbye") and records(procs, "dispatcher"))
        connected = find(lines, "worker 'w1' connected", peer="w1", worker_pid=info["pid"])
        assert connected and connected["level"] == "INFO" and connected["logger"] == "trioschedule.dispatcher", lines
        failed = find(lines, "ended error", task_id=handle.id, task_name="fail")
        assert failed and failed["level"] == "WARNING" and "RuntimeError: again" in failed["event"], lines
        assert failed["peer"] == "w1"
        assert len([line for line in lines if line.get("task_name") == "fail"]) == 2  # one line per failed task
        assert not find(lines, "ended ok")  # a task that succeeds logs nothing
        left = find(lines, "closed: said goodbye", peer="w1", worker_pid=info["pid"])
        assert left, lines

        worker_lines = records(procs, "worker")
        assert find(worker_lines, "connected to")["peer"]  # the dispatcher's name
        assert find(worker_lines, "drain started") and find(worker_lines, "drain finished"), worker_lines

        dispatcher.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await trio.to_thread.run_sync(dispatcher.wait) == 0
        lines = records(procs, "dispatcher")
        assert find(lines, "drain started") and find(lines, "drain finished"), lines

        # Restarted on the same journal: one line says what it recovered.
        await procs.start_dispatcher("--store", f"sqlite:{tmp_path}/journal.sqlite3", *json_logs, name="again")
        recovered = await wait_for(lambda: find(records(procs, "again"), "recovered from"))
        assert "1 task(s) queued" in recovered["event"], recovered
        assert waiting.id


async def test_refused_connections_are_one_line_each(tmp_path):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:", "--token", "right", "--log-format", "json")
        result = await procs.run("status", f"127.0.0.1:{port}", "--token", "wrong")
        assert result.returncode == 3, result
        line = await wait_for(lambda: find(records(procs, "dispatcher"), "closed: authentication failed"))
        assert line["level"] == "WARNING" and line["peer"].startswith("127.0.0.1:"), line


def test_the_formatter_writes_fields_and_the_exception_on_one_line():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("trioschedule.dispatcher", logging.ERROR, __file__, 1, "task %s failed", ("t1",),
                                   exc_info=__import__("sys").exc_info())  # fmt: skip
    record.task_id, record.task_name, record.peer, record.worker_pid = "t1", "add", "w1", 42
    text = JsonFormatter().format(record)
    assert "\n" not in text
    document = json.loads(text)
    assert document["event"] == "task t1 failed" and document["level"] == "ERROR"
    assert (document["task_id"], document["task_name"], document["peer"], document["worker_pid"]) == ("t1", "add", "w1", 42)
    assert "ValueError: bad\nvalue" in document["exception"]
    plain = json.loads(JsonFormatter().format(logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)))
    assert set(plain) == {"time", "level", "logger", "pid", "event"}
