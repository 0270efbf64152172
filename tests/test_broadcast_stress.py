"""Whatever the dispatcher sends right behind its Welcome reaches the worker.

The dispatcher counts a worker as connected (``Dispatcher.workers``) as soon
as it has sent the Welcome, and may send at once: a broadcast, a message from
``on_connect``, the first Run.  On a busy machine the worker reads the Welcome
and those frames in one piece.  The worker used to refuse that as "peer sent
more than one message during the handshake", drop the connection and with it
the frames, and reconnect under a new session: benchmarks/run.py's W3 then
waited forever for an acknowledgement (a broadcast is fire-and-forget).

The worker's first read is delayed here (``SlowFirstRead``), which makes that
coalescing certain instead of a matter of scheduling luck.  What the
connection itself does with frames behind the Welcome is tested in
tests/net/test_connection.py.
"""

from __future__ import annotations

import trio
import trio.testing

from trioschedule import Dispatcher, Worker, task
from trioschedule.testing import open_cluster

from .conftest import quick_dispatcher

HOST = "127.0.0.1"
READ_DELAY = 0.2  # the worker's first read waits this long: everything sent meanwhile arrives together


class SlowFirstRead(trio.abc.Stream):
    """A stream whose first read waits a moment (a peer that is slow to be scheduled)."""

    def __init__(self, stream: trio.abc.Stream, delay: float = READ_DELAY) -> None:
        self.transport_stream = stream
        self._delay = delay

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._delay:
            delay, self._delay = self._delay, 0.0
            await trio.sleep(delay)
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


class SlowReadingWorker(Worker):
    """Records broadcasts and how often it connected; every connection's first read is slow."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("heartbeat_interval", 1.0)
        kwargs.setdefault("heartbeat_timeout", 5.0)
        super().__init__(*args, **kwargs)
        self.messages: list[object] = []
        self.got_message = trio.Event()
        self.connections = 0

    # trioschedule.testing (and the TCP test below) set ``connector``: wrap whatever it is.
    @property
    def connector(self):
        return self._slow_connector

    @connector.setter
    def connector(self, connect):
        if connect is None:
            self._slow_connector = None
            return

        async def slow_connect() -> trio.abc.Stream:
            self.connections += 1
            return SlowFirstRead(await connect())

        self._slow_connector = slow_connect

    async def on_message(self, message):
        self.messages.append(message)
        self.got_message.set()

    @task
    async def add(self, a, b):
        return a + b


async def broadcast_once_connected(dispatcher: Dispatcher, message: object) -> int:
    """What W3 does: broadcast the moment the dispatcher counts the worker as connected."""
    while not dispatcher.workers:
        await trio.sleep(0.001)
    return dispatcher.broadcast_nowait(message)


# ---------------------------------------------------------------- end to end
async def test_broadcast_sent_as_the_worker_connects_reaches_it(autojump_clock):
    worker = SlowReadingWorker(name="slow")
    async with open_cluster(quick_dispatcher()) as cluster:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cluster.start_worker, worker)
                assert await broadcast_once_connected(cluster.dispatcher, {"round": 0}) == 1
                await worker.got_message.wait()
        assert worker.messages == [{"round": 0}]
        assert worker.connections == 1  # the handshake did not fail and reconnect


async def test_message_sent_from_on_connect_reaches_the_worker(autojump_clock):
    class Greeter(Dispatcher):
        async def on_connect(self, peer):
            if peer.role == "worker":
                await self.send(peer, {"hello": peer.name})

    worker = SlowReadingWorker(name="slow")
    async with open_cluster(Greeter(heartbeat_interval=1.0, heartbeat_timeout=5.0)) as cluster:
        with trio.fail_after(5):  # every connection used to fail the same way: never started
            await cluster.start_worker(worker)
            await worker.got_message.wait()
        assert worker.messages == [{"hello": "slow"}]
        assert worker.connections == 1


async def test_tasks_queued_before_the_worker_connects_run_on_its_first_connection(autojump_clock):
    # The first Run leaves right behind the Welcome.  Refusing it used to park the task on a
    # session that nobody would resume, and every later connection failed the same way.
    worker = SlowReadingWorker(name="slow")
    async with open_cluster(quick_dispatcher()) as cluster:
        async with cluster.client() as client:
            handle = await client.submit("add", args=[1, 2])
            with trio.fail_after(2):  # well inside the dispatcher's session grace (3 s)
                await cluster.start_worker(worker)
                assert await handle.result() == 3
        assert worker.connections == 1


async def test_broadcasts_to_many_slow_workers_over_tcp_all_arrive(autojump_clock):
    """W3's shape: several workers over real sockets, a broadcast as soon as all are connected, all answer."""

    class Counting(Dispatcher):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.acks: set[str] = set()
            self.all_acked = trio.Event()
            self.expected = 0

        async def on_message(self, peer, message):
            self.acks.add(message["name"])
            if len(self.acks) == self.expected:
                self.all_acked.set()

    class Acking(SlowReadingWorker):
        async def on_message(self, message):
            await super().on_message(message)
            await self.send({"ack": message["round"], "name": self.name})

    dispatcher = Counting(HOST, 0, heartbeat_interval=1.0, heartbeat_timeout=5.0)
    workers = [Acking(HOST, 0, name=f"w{i}") for i in range(5)]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(dispatcher.serve)

        async def connect() -> trio.abc.Stream:
            return await trio.open_tcp_stream(HOST, port)

        for worker in workers:
            worker.port = port
            worker.connector = connect
            nursery.start_soon(worker.run)
        with trio.fail_after(10):
            await dispatcher.wait_workers(len(workers))
            dispatcher.expected = len(workers)
            assert dispatcher.broadcast_nowait({"round": 0}) == len(workers)
            await dispatcher.all_acked.wait()
        assert dispatcher.acks == {w.name for w in workers}
        assert [w.connections for w in workers] == [1] * len(workers)
        nursery.cancel_scope.cancel()
