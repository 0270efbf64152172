"""The client run by a caller's own nursery: Client.run until Client.aclose, as open_client does."""

from __future__ import annotations

import pytest
import trio

from trioschedule import Client, ConnectionClosed

from .conftest import MathWorker, quick_dispatcher

HOST = "127.0.0.1"


async def test_a_client_runs_in_the_callers_nursery_until_aclose():
    dispatcher = quick_dispatcher(host=HOST, port=0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(dispatcher.serve)
        await nursery.start(MathWorker(HOST, port).run)
        client = Client(HOST, port)
        returned = trio.Event()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await client.run(task_status=task_status)
            returned.set()

        with trio.fail_after(10):
            await nursery.start(run)  # returns once connected
            assert client.connected
            assert await client.call("add", 1, 2) == 3
            await client.aclose()
            await returned.wait()  # run returns on its own once the client has left
        assert not client.connected
        nursery.cancel_scope.cancel()


async def test_run_raises_when_the_first_connection_cannot_be_made():
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    client = Client(HOST, port)
    with trio.fail_after(10), pytest.raises(ConnectionClosed, match="cannot reach the dispatcher"):
        await client.run()


async def test_a_cancel_lost_with_its_connection_is_sent_again_after_reconnecting(autojump_clock):
    from trioschedule import TaskCancelled
    from trioschedule.testing import open_cluster

    worker = MathWorker(name="w")
    async with open_cluster(quick_dispatcher(), worker) as cluster, cluster.client(reconnect_max=0.5) as client:
        handle = await client.submit("sleep", [60, "finished"])
        await trio.sleep(1)  # running on the worker
        cluster.link(client).stall()  # the cancel goes into a connection that delivers nothing...
        await handle.cancel("changed my mind")
        cluster.cut(client)  # ...and then breaks: the dispatcher never heard of it
        with trio.fail_after(20):
            with pytest.raises(TaskCancelled, match="changed my mind"):
                await handle.result()
        assert trio.current_time() < 30  # cancelled, not waited out
