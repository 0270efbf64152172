"""An in-memory cluster for testing code that uses trioschedule.

A dispatcher and any number of workers and clients, wired together with
memory streams instead of sockets, so that tests run under pytest-trio's
``autojump_clock`` and heartbeats, retries, deadlines and delays take no real
time.  Connections can be cut (like a reset), stalled (like a network
partition: nothing gets through until resumed), workers can be killed
mid-task, and the dispatcher restarted::

    from trioschedule.testing import open_cluster

    async def test_add(autojump_clock):
        async with open_cluster(MyDispatcher(), MyWorker(), MyWorker()) as cluster:
            async with cluster.client() as client:
                assert await client.call("add", 1, 2) == 3
            cluster.kill(cluster.workers[0])      # SIGKILL, as far as the dispatcher can tell
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from ._client import Client
from ._dispatcher.dispatcher import Dispatcher
from ._util import background
from ._worker import Worker

__all__ = ["Cluster", "Link", "open_cluster"]


class Link:
    """One in-memory connection between a peer and the dispatcher."""

    def __init__(self, name: str) -> None:
        self.name = name
        to_dispatcher = trio.testing.memory_stream_one_way_pair()
        to_peer = trio.testing.memory_stream_one_way_pair()
        self._streams = (*to_dispatcher, *to_peer)
        self.peer_end = _End(self, to_dispatcher[0], to_peer[1])
        self.dispatcher_end = _End(self, to_peer[0], to_dispatcher[1])
        self.cut_off = False
        self._flowing = trio.Event()
        self._flowing.set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def cut(self) -> None:
        """Break the connection at once, both ways (like a reset or a killed process)."""
        self.cut_off = True
        self._flowing.set()
        for stream in self._streams:
            stream.close()

    def stall(self) -> None:
        """Let nothing through either way until :meth:`resume` (like a partition)."""
        if not self.cut_off and self._flowing.is_set():
            self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    async def wait_flowing(self) -> None:
        """Return once the link lets data through (at once unless stalled)."""
        await self._flowing.wait()


class _End(trio.abc.Stream):
    def __init__(self, link: Link, send: Any, receive: Any) -> None:
        self._link = link
        self._send = send
        self._receive = receive
        self._held: bytes | None = None  # received while stalled: delivered once flowing, even after a cancel

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        while self._link.stalled:
            await self._link.wait_flowing()
        if self._link.cut_off:
            raise trio.BrokenResourceError("the link was cut")
        await self._send.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._send.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._held is None:
            self._held = bytes(await self._receive.receive_some(max_bytes))
        while self._link.stalled:  # a cancelled wait here keeps the bytes for the next call, as a socket would
            await self._link.wait_flowing()
        if self._link.cut_off:
            raise trio.BrokenResourceError("the link was cut")
        data, self._held = self._held, None
        return data

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class _MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](float("inf"))

    def put_nowait(self, stream: trio.abc.Stream) -> None:
        """Queue ``stream`` for :meth:`accept`: the dispatcher's end of a new connection.

        Raises ``trio.BrokenResourceError`` once the listener is closed.
        """
        self._send.send_nowait(stream)

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()


class Cluster:
    """The running cluster that :func:`open_cluster` yields."""

    def __init__(self, nursery: trio.Nursery, dispatcher: Dispatcher) -> None:
        self._nursery = nursery
        self.dispatcher = dispatcher
        self.workers: list[Worker] = []
        self.links: dict[Any, list[Link]] = {}
        self._listener: _MemoryListener | None = None
        self._dispatcher_scope: trio.CancelScope | None = None
        self._dispatcher_stopped = trio.Event()
        self._worker_scopes: dict[Worker, trio.CancelScope] = {}
        self._stalled: set[Any] = set()

    # ------------------------------------------------------------ plumbing
    def _connector(self, owner: Any) -> Any:
        async def connect() -> trio.abc.Stream:
            listener = self._listener
            if listener is None:
                raise OSError("connection refused: the dispatcher is not running")
            link = Link(getattr(owner, "name", repr(owner)))
            if owner in self._stalled:
                link.stall()
            self.links.setdefault(owner, []).append(link)
            try:
                listener.put_nowait(link.dispatcher_end)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise OSError("connection refused: the dispatcher is not running") from None
            await trio.lowlevel.checkpoint()
            return link.peer_end

        return connect

    def link(self, peer: Any) -> Link:
        """The current (latest) link of a worker or client."""
        return self.links[peer][-1]

    # ---------------------------------------------------------- dispatcher
    async def start_dispatcher(self, dispatcher: Dispatcher | None = None) -> Dispatcher:
        """Start (or, after :meth:`stop_dispatcher`, restart) a dispatcher; peers reconnect to it."""
        if dispatcher is not None:
            self.dispatcher = dispatcher
        listener = _MemoryListener()
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def serve(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await self.dispatcher.serve_listeners([listener], task_status=task_status)
            finally:
                stopped.set()

        await self._nursery.start(serve)
        self._listener, self._dispatcher_scope, self._dispatcher_stopped = listener, scope, stopped
        return self.dispatcher

    async def stop_dispatcher(self) -> None:
        """Kill the dispatcher abruptly (all its connections break)."""
        if self._dispatcher_scope is not None:
            self._listener = None
            for links in self.links.values():
                for link in links:
                    link.cut()
            self._dispatcher_scope.cancel()
            await self._dispatcher_stopped.wait()  # its journal is closed too

    # ------------------------------------------------------------- workers
    async def start_worker(self, worker: Worker) -> Worker:
        """Connect another worker (returns once it is connected)."""
        worker.connector = self._connector(worker)
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await worker.run(task_status=task_status)

        await self._nursery.start(run)
        self.workers.append(worker)
        self._worker_scopes[worker] = scope
        return worker

    def kill(self, worker: Worker) -> None:
        """Kill a worker as SIGKILL would: its connection breaks and its running tasks vanish."""
        if worker in self.links:
            self.link(worker).cut()
        self._worker_scopes[worker].cancel()
        if worker in self.workers:
            self.workers.remove(worker)

    def cut(self, peer: Any) -> None:
        """Break a peer's current connection (it reconnects on its own)."""
        self.link(peer).cut()

    def stall(self, peer: Any) -> None:
        """Partition a peer: nothing gets through on its connections, new ones included, until :meth:`resume`."""
        self._stalled.add(peer)
        for link in self.links.get(peer, ()):
            link.stall()

    def resume(self, peer: Any) -> None:
        """Heal the partition made by :meth:`stall`."""
        self._stalled.discard(peer)
        for link in self.links.get(peer, ()):
            link.resume()

    # ------------------------------------------------------------- clients
    @asynccontextmanager
    async def client(self, **options: Any) -> AsyncIterator[Client]:
        """A connected :class:`Client` on the in-memory network (options as for ``open_client``)."""
        client = Client("memory", 0, **options)
        client.connector = self._connector(client)
        async with background(client.run):
            try:
                yield client
            finally:
                await client.aclose()


@asynccontextmanager
async def open_cluster(dispatcher: Dispatcher | None = None, *workers: Worker) -> AsyncIterator[Cluster]:
    """Run ``dispatcher`` (a plain :class:`Dispatcher` if None) and ``workers`` on an in-memory network."""
    async with background() as nursery:
        cluster = Cluster(nursery, dispatcher or Dispatcher())
        await cluster.start_dispatcher()
        for worker in workers:
            await cluster.start_worker(worker)
        yield cluster
