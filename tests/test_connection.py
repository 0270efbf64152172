"""The connection layer over trio streams: coalesced writes, slow readers, broken streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioschedule import ConnectionClosed
from trioschedule import _messages as m
from trioschedule._connection import Connection
from trioschedule._protocol import CLIENT, DISPATCHER, ProtocolConnection


def _ready_pair(stream_a, stream_b, **kwargs):
    """A dispatcher-side and a client-side Connection, handshake done by hand."""
    server, client = ProtocolConnection(DISPATCHER), ProtocolConnection(CLIENT)
    server.receive_data(client.send(m.Hello(version=1, role="client")))
    server.next_message()
    client.receive_data(server.send(m.Welcome(version=1, session="s", heartbeat=1, timeout=5)))
    client.next_message()
    return Connection(stream_a, server, **kwargs), Connection(stream_b, client)


async def test_frames_queued_together_are_written_together(autojump_clock):
    a, b = trio.testing.memory_stream_pair()
    server, client = _ready_pair(a, b)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run_writer)
        for i in range(50):
            server.send(m.Message(data=i))
        received = []
        with trio.fail_after(5):
            while len(received) < 50:
                received += await client.receive_batch()
        assert [msg.data for msg in received] == list(range(50))
        nursery.cancel_scope.cancel()


async def test_a_peer_that_stops_reading_is_disconnected_after_the_send_timeout(autojump_clock):
    a, b = trio.testing.lockstep_stream_pair()  # a send blocks until the other side reads
    server, _ = _ready_pair(a, b, send_timeout=3)
    server.send(m.Message(data="x" * 1000))
    start = trio.current_time()
    with pytest.raises(ConnectionClosed, match="did not read for 3 s"):
        await server.run_writer()
    assert trio.current_time() - start == pytest.approx(3)
    with pytest.raises(ConnectionClosed):
        server.send(m.Message(data="after"))


async def test_a_peer_that_stops_reading_cannot_make_us_buffer_without_limit():
    a, b = trio.testing.lockstep_stream_pair()
    server, _ = _ready_pair(a, b, max_outbox=100_000)
    with pytest.raises(ConnectionClosed, match="not reading"):
        for _ in range(1000):
            server.send(m.Message(data="x" * 1000))


async def test_heartbeats_are_sent_when_quiet_and_silence_closes(autojump_clock):
    a, b = trio.testing.memory_stream_pair()
    server, client = _ready_pair(a, b)
    heartbeats = []

    async def read_heartbeats():
        while True:
            heartbeats.extend(type(msg) for msg in await client.receive_batch())

    async def writer():
        with pytest.raises(ConnectionClosed):  # it ends with the connection
            await server.run_writer()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        nursery.start_soon(read_heartbeats)
        start = trio.current_time()
        with pytest.raises(ConnectionClosed, match="heartbeat timeout"):
            await server.run_heartbeat(interval=1, timeout=5)  # the client never writes
        assert 5 <= trio.current_time() - start <= 6
        assert len(heartbeats) >= 4 and set(heartbeats) == {m.Heartbeat}
        nursery.cancel_scope.cancel()


async def test_a_broken_stream_is_one_connection_closed_with_a_reason():
    a, b = trio.testing.memory_stream_pair()
    server, client = _ready_pair(a, b)
    await b.aclose()
    with pytest.raises(ConnectionClosed, match="peer closed the connection|connection broke"):
        await server.receive_batch()
