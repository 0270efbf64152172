"""The dispatcher's one line per event, with its structured fields (``extra=``), read through caplog."""

from __future__ import annotations

import logging
import os

import pytest
import trio

from trioschedule import Dispatcher, TaskError, Worker, task
from trioschedule.testing import open_cluster


class Jobs(Worker):
    @task
    async def nap(self, seconds):
        await trio.sleep(seconds)
        return "rested"

    @task(retries=1, retry_delay=0.5)
    async def broken(self):
        raise ValueError("always")


def lines(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_task_lines_carry_id_and_name(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    worker = Jobs(name="w1", blocked_warning=None)
    async with open_cluster(Dispatcher(), worker) as cluster, cluster.client() as client:
        late = await client.submit("nap", [5], timeout=1)
        with pytest.raises(TaskError):
            await late.result()
        nobody = await client.submit("nobody_offers_this", timeout=2)
        with pytest.raises(TaskError):
            await nobody.result()
        broken = await client.submit("broken")
        with pytest.raises(TaskError):
            await broken.result()
        ok = await client.submit("nap", [0.1])
        assert await ok.result() == "rested"

    [timed_out] = lines(caplog, f"task {late.id} (nap) ended timeout")
    assert (timed_out.task_id, timed_out.task_name, timed_out.levelno) == (late.id, "nap", logging.WARNING)
    [queued_out] = lines(caplog, f"task {nobody.id} (nobody_offers_this) ended timeout")
    assert "deadline passed while queued" in queued_out.getMessage() and queued_out.task_id == nobody.id
    [retry] = lines(caplog, f"task {broken.id} (broken) failed with ValueError; retry 1/1")
    assert retry.task_id == broken.id
    [failed] = lines(caplog, f"task {broken.id} (broken) ended error after 2 attempt(s) on 'w1': ValueError: always")
    assert failed.peer == "w1"
    assert not lines(caplog, f"task {ok.id}")  # success is not logged
    [connected] = lines(caplog, "worker 'w1' connected")
    assert (connected.peer, connected.worker_pid) == ("w1", os.getpid())  # in memory: the worker is this process


async def test_cancellations_are_debug_lines(autojump_clock, caplog):
    caplog.set_level(logging.DEBUG, logger="trioschedule")
    async with open_cluster(Dispatcher(), Jobs(blocked_warning=None)) as cluster, cluster.client() as client:
        handle = await client.submit("nap", [30])
        await trio.sleep(1)
        await handle.cancel("changed my mind")
        with pytest.raises(TaskError):
            await handle.result()
    [cancelled] = lines(caplog, f"task {handle.id} (nap) ended cancelled")
    assert cancelled.levelno == logging.DEBUG and "changed my mind" in cancelled.getMessage()
