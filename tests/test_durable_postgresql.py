"""The PostgreSQL journal under a real dispatcher: a SIGKILLed dispatcher and a restarted database lose nothing.

Real processes (the command line's dispatcher and workers, tests/processes.py)
on the suite's real PostgreSQL server (tests/postgres.py).
"""

from __future__ import annotations

import collections

import pytest
import trio

from trioschedule import open_client
from trioschedule.testing import open_cluster

from .conftest import MathWorker
from .processes import free_port, processes, wait_for
from .test_durable import ran_args, sigkill

pytestmark = pytest.mark.postgresql


async def test_a_dispatcher_in_process_recovers_from_the_database(postgres_url):
    from trioschedule import Dispatcher

    def dispatcher() -> Dispatcher:
        return Dispatcher(store=postgres_url, heartbeat_interval=0.2, heartbeat_timeout=2.0, session_grace=5.0)

    workers = [MathWorker(name=n, concurrency=4, heartbeat_interval=0.2, heartbeat_timeout=2.0, reconnect_max=0.2)
               for n in ("a", "b")]  # fmt: skip
    with trio.fail_after(60):
        async with open_cluster(dispatcher(), *workers) as cluster, cluster.client() as client:
            handles = [await client.submit("sleep", [0.3, i]) for i in range(40)]
            assert await cluster.dispatcher.map("add", [(i, 1) for i in range(200)]) == [i + 1 for i in range(200)]
            await cluster.stop_dispatcher()
            await cluster.start_dispatcher(dispatcher())
            assert [await h.result() for h in handles] == list(range(40))
    runs = collections.Counter(args for w in workers for name, args in w.ran if name == "sleep")
    assert sum(runs.values()) == 40, "a task that was running on a returning worker is not run again"


async def start(procs, port: int, url: str, name: str):
    args = ("--store", url, "--session-grace", "15")
    dispatcher, _ = await procs.start_dispatcher(*args, port=port, name=name)
    return args, dispatcher


async def test_dispatcher_sigkilled_with_hundreds_of_tasks(tmp_path, postgres_url):
    port = free_port()
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        args, dispatcher = await start(procs, port, postgres_url, "d1")
        for i in range(2):
            procs.start_worker(port, "--concurrency", "8", name=f"w{i}")
        async with open_client("127.0.0.1", port) as client:
            handles = [await client.submit("slow_add", [i, 1], {"seconds": 0.05}) for i in range(300)]
            await wait_for(lambda: len(ran_args(tmp_path)) >= 60, timeout=30)
            await sigkill(dispatcher)
            assert len(ran_args(tmp_path)) < 300, "everything ran before the kill: nothing was tested"
            # The dead dispatcher's database session ends with its socket, and its lock with it.
            await procs.start_dispatcher(*args, port=port, name="d2")
            with trio.fail_after(90):
                results = [await h.result() for h in handles]  # the client reconnects on its own
            assert results == [i + 1 for i in range(300)]
        counts = collections.Counter(ran_args(tmp_path))
        assert set(counts) == set(range(300))
        assert all(n == 1 for n in counts.values()), {a: n for a, n in counts.items() if n > 1}


async def test_the_database_restarted_under_load_loses_nothing_accepted(tmp_path, postgres_server, postgres_url):
    port = free_port()
    accepted = []
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        await start(procs, port, postgres_url, "d1")
        for i in range(2):
            procs.start_worker(port, "--concurrency", "8", name=f"w{i}")
        try:
            async with open_client("127.0.0.1", port) as client:

                async def submit_all() -> None:
                    for i in range(400):
                        accepted.append(await client.submit("slow_add", [i, 1], {"seconds": 0.01}))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(submit_all)
                    await wait_for(lambda: len(accepted) >= 100, timeout=30)
                    # Down for a second with tasks being submitted, started and finished.
                    await trio.to_thread.run_sync(lambda: postgres_server.restart(down=1.0))
                with trio.fail_after(120):
                    results = [await h.result() for h in accepted]
                assert results == [i + 1 for i in range(400)]
        finally:
            if postgres_server.pid is None:
                postgres_server.start()
        log = procs.log("d1")
        assert "reconnect" in log, log[-3000:]
        assert set(ran_args(tmp_path)) == set(range(400))
