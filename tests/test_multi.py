"""Workers and clients given several dispatcher addresses, over real TCP.

A stand-in standby (tests/standby.py) answers every hello with the
``not-leader`` error frame, as a standby of a shared store does; the leaders
are real dispatchers.  The last tests kill a real dispatcher process and
start it again on another port with the same SQLite journal: workers and
clients given both addresses carry on, and every outcome reaches the client
exactly once.
"""

from __future__ import annotations

import collections
import json
import logging

import pytest
import trio

from trioschedule import Dispatcher, NotLeader, open_client

from .conftest import MathWorker
from .processes import APP, free_port, processes, wait_for
from .standby import stand_in
from .test_durable import ran_args, sigkill


def fast_worker(**kwargs) -> MathWorker:
    return MathWorker(heartbeat_interval=0.2, heartbeat_timeout=2.0, reconnect_max=0.2, **kwargs)


async def test_a_worker_and_a_client_given_a_standby_first_end_up_on_the_leader(nursery):
    dispatcher = Dispatcher("127.0.0.1", 0)
    port = await nursery.start(dispatcher.serve)
    leader = f"127.0.0.1:{port}"
    with trio.fail_after(20):
        async with stand_in(None) as silent, stand_in(leader) as pointing:
            # One standby knows no leader (next address), the other names it (followed at once).
            worker = fast_worker(addresses=[silent.address, pointing.address, leader])
            await nursery.start(worker.run)
            assert worker.address == ("127.0.0.1", port)
            async with open_client(addresses=[pointing.address, silent.address, leader]) as client:
                assert client.address == ("127.0.0.1", port)
                assert await client.map("add", [(i, 1) for i in range(50)]) == [i + 1 for i in range(50)]
            assert silent.hellos == ["worker"]
            assert pointing.hellos == ["worker", "client"]
        worker.stop(0)


async def test_a_redirect_to_a_leader_missing_from_the_list_is_followed(nursery, caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = Dispatcher("127.0.0.1", 0)
    port = await nursery.start(dispatcher.serve)
    with trio.fail_after(20):
        async with stand_in(f"127.0.0.1:{port}") as standby:
            worker = fast_worker(addresses=[standby.address])
            await nursery.start(worker.run)
            async with open_client(addresses=[standby.address]) as client:
                assert await client.call("add", 2, 3) == 5
            assert standby.hellos == ["worker", "client"]
        worker.stop(0)
    redirects = [r.getMessage() for r in caplog.records if "is a standby" in r.getMessage()]
    assert redirects == [f"{standby.address} is a standby; following it to the leader at 127.0.0.1:{port}"] * 2


async def test_two_standbys_naming_each_other_fail_a_client_clearly_and_keep_a_worker_trying(nursery):
    dispatcher = Dispatcher("127.0.0.1", 0)
    port = await nursery.start(dispatcher.serve)
    with trio.fail_after(30):
        async with stand_in() as one, stand_in() as two:
            one.leader, two.leader = two.address, one.address
            start = trio.current_time()
            with pytest.raises(NotLeader) as caught:
                async with open_client(addresses=[one.address, two.address], leader_wait=1.0):
                    pass  # pragma: no cover
            assert trio.current_time() - start < 10
            assert str(caught.value) == (
                f"no dispatcher at {one.address}, {two.address} leads "
                f"({one.address}: not-leader: leader {two.address}; {two.address}: not-leader: leader {one.address})"
            )
            # Bounded: one hello each per round, rounds spaced by the backoff (at most 5 s apart).
            assert 1 <= len(one.hellos) == len(two.hellos) <= 30

            # A worker keeps going round with backoff until one of them names a real leader.
            worker = fast_worker(addresses=[one.address, two.address])
            async with trio.open_nursery() as inner:
                inner.start_soon(worker.run)
                await wait_for(lambda: len(one.hellos) >= 5, timeout=15)
                assert not worker.connected
                one.leader = f"127.0.0.1:{port}"
                await wait_for(lambda: worker.connected, timeout=15)
                assert worker.address == ("127.0.0.1", port)
                async with open_client("127.0.0.1", port) as client:
                    assert await client.call("add", 1, 1) == 2
                worker.stop(0)


async def test_a_client_whose_dispatchers_are_unreachable_names_them_all():
    ports = [free_port(), free_port()]
    with trio.fail_after(10), pytest.raises(Exception) as caught:
        async with open_client(addresses=[f"127.0.0.1:{p}" for p in ports]):
            pass  # pragma: no cover
    assert str(caught.value) == f"cannot reach any dispatcher at 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]} (connection refused)"


def start_worker(procs, addresses: str, name: str):
    return procs.start("worker", f"{APP}:AppWorker", "--connect", addresses, "--concurrency", "8",
                       "--heartbeat-interval", "0.5", "--heartbeat-timeout", "3", name=name)  # fmt: skip


async def test_a_dispatcher_killed_and_restarted_elsewhere_on_its_journal_loses_and_repeats_nothing(tmp_path):
    """The client and the workers know both addresses; the journal moves from the first to the second.

    While the second address is a stand-in standby (no leader yet), the client
    keeps waiting, and submits made meanwhile wait too; once the dispatcher is
    back there, the client reattaches to every task by id, the waiting
    submits are accepted, and the workers resume their sessions.
    """
    first, second = free_port(), free_port()
    addresses = f"127.0.0.1:{first},127.0.0.1:{second}"
    journal = tmp_path / "journal.sqlite3"
    args = ("--store", f"sqlite:{journal}", "--session-grace", "15")
    with processes(tmp_path, E2E_DIR=str(tmp_path)) as procs:
        d1, _ = await procs.start_dispatcher(*args, port=first, name="d1")
        for i in range(2):
            start_worker(procs, addresses, f"w{i}")
        async with open_client(addresses=addresses.split(",")) as client:
            await wait_for(lambda: client.address == ("127.0.0.1", first))
            handles = [await client.submit("slow_add", [i, 1], {"seconds": 0.05}) for i in range(200)]
            await wait_for(lambda: len(ran_args(tmp_path)) >= 40, timeout=30)
            await sigkill(d1)
            late = []  # submitted while no dispatcher leads: each submit returns once the new one accepted it

            async def submit_late() -> None:
                for i in range(200, 220):
                    late.append(await client.submit("slow_add", [i, 1], {"seconds": 0.05}))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit_late)
                async with stand_in(None, port=second) as standby:  # a failover under way: nobody leads yet
                    await wait_for(lambda: "client" in standby.hellos and "worker" in standby.hellos, timeout=30)
                assert late == []
                await procs.start_dispatcher(*args, port=second, name="d2")
            handles += late
            with trio.fail_after(60):
                outcomes = [await h.outcome() for h in handles]
            assert client.address == ("127.0.0.1", second)
        assert [(o.id, o.status, o.value) for o in outcomes] == [(h.id, "ok", i + 1) for i, h in enumerate(handles)]
        counts = collections.Counter(ran_args(tmp_path))
        assert set(counts) == set(range(220))
        assert all(n == 1 for n in counts.values()), {a: n for a, n in counts.items() if n > 1}
        logs = procs.log("w0") + procs.log("w1")
        assert "connected to" in logs and f"127.0.0.1:{second}" in logs
        assert "resumed session" in logs, logs[-3000:]


async def test_the_command_line_takes_address_lists(tmp_path):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:")
        start_worker(procs, f"127.0.0.1:{free_port()},127.0.0.1:{port}", "w")
        async with stand_in() as standby, stand_in() as other:
            status = await procs.run("status", f"{standby.address},127.0.0.1:{port}", "--json")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["address"].endswith(f":{port}")

            await wait_for(lambda: "connected to" in procs.log("w"))
            submitted = await procs.run("submit", f"{standby.address},127.0.0.1:{port}", "add", "2", "3", "--wait")
            assert (submitted.returncode, submitted.stdout.strip()) == (0, "5"), submitted.stderr

            tasks = await procs.run("tasks", f"{standby.address},127.0.0.1:{port}", "--json")
            assert tasks.returncode == 0 and json.loads(tasks.stdout)[0]["name"] == "add"

            nobody = await procs.run("status", f"{standby.address},{other.address}", "--leader-wait", "1")
            assert nobody.returncode == 3
            assert nobody.stderr.strip().splitlines()[-1] == (
                f"trioschedule: no dispatcher at {standby.address}, {other.address} leads (not-leader: no leader yet)"
            )
            assert len(standby.hellos) >= 2  # it kept trying for the leader wait, not once

            stopped = await procs.run("stop", f"{standby.address},127.0.0.1:{port}")
            assert stopped.returncode == 0 and f"dispatcher at 127.0.0.1:{port} is stopping" in stopped.stdout



async def test_a_first_connection_waits_for_a_leader_while_standbys_answer(nursery):
    """A failover under way when the client starts: it keeps trying for leader_wait, and connects once one leads."""
    dispatcher = Dispatcher("127.0.0.1", 0)
    port = await nursery.start(dispatcher.serve)
    with trio.fail_after(20):
        async with stand_in(None) as standby:

            async def elect() -> None:
                await wait_for(lambda: len(standby.hellos) >= 3)
                standby.leader = f"127.0.0.1:{port}"

            nursery.start_soon(elect)
            async with open_client(addresses=[standby.address], role="admin", reconnect_attempts=0, leader_wait=15) as client:
                assert client.address == ("127.0.0.1", port)
                assert (await client.status())["address"].endswith(f":{port}")
            assert len(standby.hellos) >= 4
