"""Heartbeat round trips: the dispatcher pings workers that said ``hello.echo`` and times their answer.

Raw peers speak the protocol by hand here, so the tests see exactly which
frames the dispatcher sends: a worker that did not offer ``echo`` (the
minimal worker profile, a PHP worker, an older trioschedule) never gets a
ping; one that did gets one per heartbeat interval, and its answer becomes
the round trip.
"""

from __future__ import annotations

from typing import Any

import trio

from trioschedule import Dispatcher, Worker, task
from trioschedule._protocol import messages as m
from trioschedule._protocol.framing import FrameDecoder, encode_frame


class AddWorker(Worker):
    @task
    async def add(self, a, b):
        return a + b


class RawWorker:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, message: Any) -> None:
        await self.stream.send_all(encode_frame(m.encode(message)))

    async def receive(self) -> Any:
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return m.decode(frame)
            data = await self.stream.receive_some(65536)
            assert data, "the dispatcher closed the connection"
            self.decoder.receive_data(data)

    async def receive_for(self, seconds: float) -> list[Any]:
        got = []
        with trio.move_on_after(seconds):
            while True:
                got.append(await self.receive())
        return got


async def _raw_worker(port: int, **hello: Any) -> RawWorker:
    raw = RawWorker(await trio.open_tcp_stream("127.0.0.1", port))
    await raw.send(m.Hello(version=m.PROTOCOL_VERSION, role="worker", name="raw", tasks=("add",), **hello))
    assert isinstance(await raw.receive(), m.Welcome)
    return raw


async def test_a_worker_without_echo_is_never_pinged_and_one_with_it_is_timed():
    async with trio.open_nursery() as nursery:
        d = Dispatcher(port=0, heartbeat_interval=0.1, heartbeat_timeout=5)
        port = await nursery.start(d.serve)
        handler = d._connections
        plain = await _raw_worker(port)
        frames = await plain.receive_for(0.8)
        heartbeats = [f for f in frames if isinstance(f, m.Heartbeat)]
        assert heartbeats and all(f.echo == 0 for f in heartbeats)  # liveness heartbeats only

        echoing = await _raw_worker(port, echo=True)
        with trio.fail_after(10):
            ping = await echoing.receive()
            while not (isinstance(ping, m.Heartbeat) and ping.echo):
                ping = await echoing.receive()
            await echoing.send(m.Heartbeat(echo=ping.echo + 1000))  # not the ping sent: ignored
            await trio.sleep(0.05)
            assert not handler.round_trips and handler.heartbeat_rtt.count == 0
            await echoing.send(m.Heartbeat(echo=ping.echo))
            while not handler.round_trips:
                await trio.sleep(0.01)
        (rtt,) = handler.round_trips.values()
        assert 0 < rtt < 5 and handler.heartbeat_rtt.count == 1
        nursery.cancel_scope.cancel()


async def test_trioschedule_workers_echo_so_every_worker_has_a_round_trip():
    async with trio.open_nursery() as nursery:
        d = Dispatcher(port=0, heartbeat_interval=0.1, heartbeat_timeout=5)
        port = await nursery.start(d.serve)
        for _ in range(2):
            nursery.start_soon(AddWorker(port=port).run)
        with trio.fail_after(10):
            while len(d._connections.round_trips) < 2 or d._connections.heartbeat_rtt.count < 4:
                await trio.sleep(0.05)
        assert all(0 < rtt < 5 for rtt in d._connections.round_trips.values())
        assert await d.call("add", 1, 2) == 3  # pings never get in the way of work
        nursery.cancel_scope.cancel()
    assert not d._connections.round_trips  # forgotten with their connections
