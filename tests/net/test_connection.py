"""The connection layer over trio streams: coalesced writes, slow readers, broken streams."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
import trustme

from trioschedule import ConnectionClosed
from trioschedule._errors import RemoteProtocolError
from trioschedule._net.connection import Connection, describe_address, plain_socket
from trioschedule._protocol import messages as m
from trioschedule._protocol.connection import CLIENT, DISPATCHER, WORKER, ProtocolConnection
from trioschedule._protocol.framing import DEFAULT_MAX_FRAME_SIZE, encode_frame

HOST = "127.0.0.1"


def _ready_pair(stream_a, stream_b, *, max_frame_size=DEFAULT_MAX_FRAME_SIZE, **kwargs):
    """A dispatcher-side and a client-side Connection, handshake done by hand."""
    server = ProtocolConnection(DISPATCHER, max_frame_size=max_frame_size)
    client = ProtocolConnection(CLIENT, max_frame_size=max_frame_size)
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
    server, _client = _ready_pair(a, b)
    await b.aclose()
    with pytest.raises(ConnectionClosed, match="peer closed the connection|connection broke"):
        await server.receive_batch()


# ------------------------------------------------ real sockets (the fast path)
# Over a plain trio.SocketStream the Connection reads and writes the socket
# itself; these tests run it over real TCP connections on 127.0.0.1.

BIG = 8 * 1024 * 1024  # far more than loopback takes from a peer that does not read (~160 KB here)


@contextlib.asynccontextmanager
async def _tcp_streams():
    """Both ends of a real TCP connection: (the accepted end, the connecting end)."""
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    accepted = connecting = None
    try:
        connecting = await trio.open_tcp_stream(HOST, listener.socket.getsockname()[1])
        accepted = await listener.accept()
        yield accepted, connecting
    finally:
        with trio.CancelScope(shield=True):
            for resource in (accepted, connecting, listener):
                if resource is not None:
                    await resource.aclose()


@contextlib.asynccontextmanager
async def _stream_pair(kind):
    """Two connected streams: plain TCP, TLS over TCP, or in memory."""
    if kind == "memory":
        yield trio.testing.memory_stream_pair()
        return
    async with _tcp_streams() as (accepted, connecting):
        if kind == "tcp":
            yield accepted, connecting
            return
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(HOST).configure_cert(server_context)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        server_tls = trio.SSLStream(accepted, server_context, server_side=True)
        client_tls = trio.SSLStream(connecting, client_context, server_hostname=HOST)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_tls.do_handshake)
            nursery.start_soon(client_tls.do_handshake)
        yield server_tls, client_tls


def _data(messages):
    return [message.data for message in messages]


async def _receive(conn, count):
    """The data of the next ``count`` messages on ``conn``."""
    received = []
    while len(received) < count:
        received += _data(await conn.receive_batch())
    assert len(received) == count
    return received


def _linger_zero(stream):
    """Make closing ``stream`` reset the connection (RST) instead of closing it cleanly (FIN)."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_only_a_plain_socket_stream_takes_the_socket_path():
    with trio.fail_after(5):
        async with _stream_pair("tcp") as (a, b):
            sock = plain_socket(a)
            assert isinstance(sock, socket.socket) and sock.fileno() == a.socket.fileno()
            assert _ready_pair(a, b)[0]._socket is sock
        async with _stream_pair("tls") as (a, b):
            assert plain_socket(a) is None and plain_socket(a.transport_stream) is not None
            assert _ready_pair(a, b)[0]._socket is None
        a, b = trio.testing.memory_stream_pair()
        assert plain_socket(a) is None and _ready_pair(a, b)[0]._socket is None


@pytest.mark.parametrize("kind", ["tcp", "tls", "memory"])
async def test_the_same_frames_arrive_whichever_path_the_stream_takes(kind):
    # Small frames coalesced by the writer, frames written from the caller's
    # task, and frames larger than one read (RECEIVE_SIZE), both ways.
    sent = [*range(100), "x" * 300_000, *range(100, 110), "y" * 2_000_000, "done"]
    with trio.fail_after(10):
        async with _stream_pair(kind) as (a, b):
            server, client = _ready_pair(a, b)
            assert (server._socket is not None) == (kind == "tcp")

            async def send_all(conn):
                for i, data in enumerate(sent):
                    if i % 3:
                        conn.send(m.Message(data=data))  # for the writer task
                    else:
                        conn.send(m.Message(data=data), wake=False)
                        await conn.write_now()  # from this task

            async with trio.open_nursery() as nursery:
                for conn in (server, client):
                    nursery.start_soon(conn.run_writer)
                    nursery.start_soon(send_all, conn)
                assert await _receive(client, len(sent)) == sent
                assert await _receive(server, len(sent)) == sent
                nursery.cancel_scope.cancel()
            assert not server.closed and not client.closed


async def test_a_frame_larger_than_the_socket_buffers_reaches_a_slow_reader_intact():
    big = os.urandom(BIG // 2).hex()  # BIG characters that differ, so any lost or repeated chunk shows
    with trio.fail_after(10):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b, max_frame_size=4 * BIG)
            for data in (1, big, 2):
                server.send(m.Message(data=data), wake=False)
            reading_from = written_at = None

            async def write():
                nonlocal written_at
                await server.write_now()  # the kernel takes what fits; the rest is the writer task's
                written_at = trio.current_time()
                assert server._outbox, "write_now() does not wait for a slow reader"

            async def read_slowly():
                nonlocal reading_from
                await trio.sleep(0.3)
                reading_from = trio.current_time()
                while True:
                    data = await b.receive_some(16384)
                    assert data
                    client.protocol.receive_data(data)
                    received.extend(client.protocol.messages())
                    if len(received) == 3:
                        return
                    await trio.sleep(0.0005)

            received = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                nursery.start_soon(server.run_writer)  # writes the rest as room appears
                await read_slowly()
                nursery.cancel_scope.cancel()
            assert written_at < reading_from  # write_now() returned without waiting for the reader
            assert _data(received) == [1, big, 2]
            assert not server.closed and server._outbox == []


async def test_a_peer_that_never_reads_is_dropped_after_the_send_timeout():
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, _ = _ready_pair(a, b, max_frame_size=2 * BIG, send_timeout=0.5)
            server.send(m.Message(data="x" * BIG))
            start = trio.current_time()
            with pytest.raises(ConnectionClosed, match=r"peer did not read for 0\.5 s"):
                await server.run_writer()
            assert 0.45 <= trio.current_time() - start < 2.5
            assert "did not read for 0.5 s" in server.closed_reason
            with pytest.raises(ConnectionClosed, match="did not read"):
                server.send(m.Message(data="after"))


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_peer_that_goes_away_is_connection_closed_for_the_reader(how):
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b)
            client.send(m.Message(data="last words"), wake=False)
            await client.write_now()
            if how == "reset":
                _linger_zero(b)
            await b.aclose()
            assert _data(await server.receive_batch()) == ["last words"]
            reason = "peer closed the connection" if how == "close" else "connection broke while receiving"
            with pytest.raises(ConnectionClosed, match=reason):  # not an OSError
                await server.receive_batch()
            assert server.closed


async def test_a_write_pending_when_the_peer_goes_away_is_connection_closed():
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, _ = _ready_pair(a, b, max_frame_size=2 * BIG)
            server.send(m.Message(data="x" * BIG))

            async def go_away():
                await trio.sleep(0.2)  # the writer is waiting for room by now
                assert server._writing
                _linger_zero(b)
                await b.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(go_away)
                with pytest.raises(ConnectionClosed, match="connection broke while sending"):  # not an OSError
                    await server.run_writer()
            with pytest.raises(ConnectionClosed, match="broke while sending"):
                await server.receive_batch()


async def test_write_now_writes_without_the_writer_task():
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b)  # no writer task runs at all
            server.send(m.Message(data=1), wake=False)
            server.send(m.Message(data=2), wake=False)
            assert not server._wakeup.is_set()
            await server.write_now()
            assert server._outbox == [] and not server._wakeup.is_set()
            assert await _receive(client, 2) == [1, 2]


async def test_write_now_during_a_write_leaves_the_frame_to_the_writer_task_in_order():
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b, max_frame_size=2 * BIG)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.run_writer)
                server.send(m.Message(data="a" * BIG), wake=False)
                nursery.start_soon(server.write_now)  # the client does not read yet: this write waits
                await trio.testing.wait_all_tasks_blocked()
                assert server._writing and server._outbox == []
                server.send(m.Message(data="b"), wake=False)
                with trio.fail_after(1):
                    await server.write_now()  # returns at once, writes nothing
                assert len(server._outbox) == 1
                assert await _receive(client, 2) == ["a" * BIG, "b"]  # no other wake-up needed
                server.send(m.Message(data="c"))
                assert await _receive(client, 1) == ["c"]
                assert server._outbox == [] and not server.closed
                nursery.cancel_scope.cancel()


async def test_wake_writer_writes_frames_queued_without_a_wake_up():
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.run_writer)
                server.send(m.Message(data=1), wake=False)
                server.send(m.Message(data=2), wake=False)
                with trio.move_on_after(0.2) as nothing_yet:
                    await client.receive_batch()
                assert nothing_yet.cancelled_caught  # the writer task slept through them
                server.wake_writer()
                assert await _receive(client, 2) == [1, 2]
                nursery.cancel_scope.cancel()


async def test_closing_wakes_a_waiting_reader_at_once():
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, _ = _ready_pair(a, b)
            woken_after = None

            async def read():
                nonlocal woken_after
                with pytest.raises(ConnectionClosed, match="closed locally"):
                    await server.receive_batch()
                woken_after = trio.current_time() - closed_at

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                closed_at = trio.current_time()
                await server.aclose()
            assert woken_after is not None and woken_after < 0.5


async def test_a_cancelled_reader_does_not_read_even_when_data_is_waiting():
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b)
            client.send(m.Message(data=1), wake=False)
            await client.write_now()
            await trio.lowlevel.wait_readable(a.socket)
            with trio.CancelScope() as scope:
                scope.cancel()
                await server.receive_batch()
                pytest.fail("receive_batch() returned in a cancelled scope")
            assert scope.cancelled_caught
            assert _data(await server.receive_batch()) == [1]  # nothing was lost


async def test_a_reader_loop_is_cancelled_at_its_next_receive_while_data_keeps_waiting():
    # A busy peer: every read finds data waiting.  Cancellation must still
    # land at the next receive, not once the peer pauses; what is unread stays.
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b)
            for i in range(4000):  # about 100 KB: more than one read
                client.send(m.Message(data=i), wake=False)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run_writer)  # writes what write_now() leaves to it
                await client.write_now()
                await trio.sleep(0.05)
                received = []
                with trio.CancelScope() as scope:
                    while True:
                        batch = await server.receive_batch()
                        assert not scope.cancel_called, "receive_batch() returned after the reader was cancelled"
                        received += _data(batch)
                        scope.cancel()
                assert 0 < len(received) < 4000
                assert received + await _receive(server, 4000 - len(received)) == list(range(4000))
                nursery.cancel_scope.cancel()


def _first_write_stalls(conn: Connection) -> tuple[list[int], trio.CancelScope, Any]:
    """Make ``conn``'s first before_write hang, like a journal flush that gets cancelled.

    Returns the call count (a one-item list), the scope that interrupts the
    stalled write, and a ``write_now`` to run as a task inside that scope.
    """
    calls = [0]

    async def before_write(_mark: object) -> None:
        calls[0] += 1
        if calls[0] == 1:
            await trio.sleep_forever()

    conn.before_write = before_write
    interrupted = trio.CancelScope()

    async def write_now() -> None:
        with interrupted:
            await conn.write_now()

    return calls, interrupted, write_now


async def test_a_write_whose_before_write_fails_goes_back_to_the_outbox_in_order():
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b)
            calls, interrupted, write_now = _first_write_stalls(server)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.run_writer)
                server.send(m.Message(data=1), wake=False)
                nursery.start_soon(write_now)
                await trio.testing.wait_all_tasks_blocked()
                assert calls == [1] and server._outbox == []  # taken, waiting in before_write
                server.send(m.Message(data=2), wake=False)
                server.send(m.Message(data=3), wake=False)
                interrupted.cancel()
                assert await _receive(client, 3) == [1, 2, 3]
                assert calls == [2] and not server.closed
                nursery.cancel_scope.cancel()


async def test_frames_the_writer_task_took_meanwhile_still_go_after_an_interrupted_write():
    # The writer task is woken while an earlier write waits in before_write:
    # it must not overtake the frames that write puts back when interrupted.
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b)
            _, interrupted, write_now = _first_write_stalls(server)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.run_writer)
                server.send(m.Message(data=1), wake=False)
                nursery.start_soon(write_now)
                await trio.testing.wait_all_tasks_blocked()
                server.send(m.Message(data=2))  # wakes the writer task, which waits for its turn
                await trio.testing.wait_all_tasks_blocked()
                interrupted.cancel()
                await trio.testing.wait_all_tasks_blocked()
                server.send(m.Message(data=3))
                assert await _receive(client, 3) == [1, 2, 3]
                assert not server.closed
                nursery.cancel_scope.cancel()


async def test_before_write_gets_the_mark_of_the_last_frame_written_not_a_later_one():
    # A journal's mark moves on as more is journaled; the frames wait only for
    # what was journaled before they were queued.
    with trio.fail_after(5):
        async with _tcp_streams() as (a, b):
            server, client = _ready_pair(a, b)
            position = [0]
            waited_for: list[int] = []

            async def before_write(mark: int) -> None:
                waited_for.append(mark)
                await trio.lowlevel.checkpoint()

            server.write_mark, server.before_write = (lambda: position[0]), before_write
            position[0] = 1
            server.send(m.Message(data=1), wake=False)
            position[0] = 2
            server.send(m.Message(data=2), wake=False)
            position[0] = 3  # journaled after both frames were queued
            await server.write_now()
            assert waited_for == [2]
            position[0] = 4
            await server.send_now(m.Message(data=3))
            assert waited_for == [2, 4]
            assert await _receive(client, 3) == [1, 2, 3]


async def test_describe_address_names_tcp_peers_and_survives_unix_sockets() -> None:
    """An AF_UNIX peer has no (host, port): the label falls back instead of raising."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    with trio.fail_after(5):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    assert describe_address(client) == f"127.0.0.1:{port}"
    assert describe_address(server).startswith("127.0.0.1:")
    a, b = trio.socket.socketpair()
    assert describe_address(trio.SocketStream(a)) == "SocketStream"
    for stream in (client, server, trio.SocketStream(a), trio.SocketStream(b)):
        await stream.aclose()
    await listener.aclose()


# ------------------------------------------------ frames behind the handshake
# (see tests/test_broadcast_stress.py: the dispatcher may send right behind its Welcome)
async def _handshaken_pair(role: str = WORKER) -> tuple[Connection, Connection]:
    """(dispatcher side, peer side) of a memory connection, the Hello already across."""
    a, b = trio.testing.memory_stream_pair()
    disp = Connection(a, ProtocolConnection(DISPATCHER))
    peer = Connection(b, ProtocolConnection(role))
    await peer.send_now(m.Hello(version=m.PROTOCOL_VERSION, role=role, name="w"))
    assert type(await disp.receive_one(m.Hello)) is m.Hello
    return disp, peer


async def test_frames_right_behind_the_welcome_are_kept_for_the_reader():
    with trio.fail_after(5):
        disp, peer = await _handshaken_pair()
        welcome = m.Welcome(version=m.PROTOCOL_VERSION, session="s1", heartbeat=1.0, timeout=5.0, name="d")
        disp.send(welcome)
        disp.send(m.Message(data={"round": 0}))
        disp.send(m.Message(data={"round": 1}))
        await disp.flush()  # one write: the peer reads all three frames at once
        reply = await peer.receive_one(m.Challenge, m.Welcome)
        assert type(reply) is m.Welcome and reply.session == "s1"
        assert not peer.closed
        assert [msg.data for msg in await peer.receive_batch()] == [{"round": 0}, {"round": 1}]


async def test_a_peer_that_does_not_wait_for_our_answer_is_still_refused():
    """Only what follows a completed handshake is kept: a message pipelined behind the Hello is refused."""
    with trio.fail_after(5):
        a, b = trio.testing.memory_stream_pair()
        disp = Connection(a, ProtocolConnection(DISPATCHER))
        hello = encode_frame(m.encode(m.Hello(version=m.PROTOCOL_VERSION, role=CLIENT, name="c")))
        early = encode_frame(m.encode(m.Heartbeat()))
        await b.send_all(hello + early)  # both at once: the client did not wait for the Welcome
        try:
            await disp.receive_one(m.Hello)
        except RemoteProtocolError as exc:
            assert exc.code == "unexpected-message"
        else:
            raise AssertionError("a Submit before the Welcome was accepted")
        assert disp.closed


# ----------------------------------------------- a blocked event loop (issue 16)
async def test_a_thread_writes_whole_heartbeats_between_the_loops_frames():
    import threading
    import time

    async with _tcp_streams() as (accepted, connecting):
        server, client = _ready_pair(accepted, connecting)
        send = server.thread_heartbeat()
        assert send is not None
        stop = threading.Event()
        sent = []

        def hammer():
            # Bounded: on a loaded machine the thread may run on long after the loop stopped reading,
            # and an unbounded stream of unread heartbeats would fill the socket's buffers, so that the
            # send()s below find it unwritable (2,000 heartbeats are under 50 KB).
            while not stop.is_set() and len(sent) < 2000:
                sent.append(send())

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.run_writer)
                for i in range(2000):  # frames from the loop, while the thread writes heartbeats between them
                    server.send(m.Message(data="x" * (i % 300)))
                    if i % 7 == 0:
                        await server.write_now()
                    if i % 50 == 0:
                        await trio.lowlevel.checkpoint()
                received: list[Any] = []
                with trio.fail_after(20):
                    while sum(type(msg) is m.Message for msg in received) < 2000:
                        received += await client.receive_batch()
                nursery.cancel_scope.cancel()
        finally:
            stop.set()
            thread.join()
        assert [len(msg.data) for msg in received if type(msg) is m.Message] == [i % 300 for i in range(2000)]
        assert any(sent) and all(type(msg) in (m.Message, m.Heartbeat) for msg in received)
        # The loop blocked for longer than the peer's timeout: the thread's heartbeats keep it content.
        watched = trio.current_time()
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:  # the mistake under test: blocking the event loop
            assert send()
            time.sleep(0.1)
        with trio.fail_after(5):
            while client.last_received < watched:
                await client.receive_batch()


async def test_no_thread_heartbeat_over_memory_streams_or_a_closed_connection():
    a, b = trio.testing.memory_stream_pair()
    server, _ = _ready_pair(a, b)
    assert server.thread_heartbeat() is None
    async with _tcp_streams() as (accepted, connecting):
        server, _ = _ready_pair(accepted, connecting)
        send = server.thread_heartbeat()
        assert send is not None and send()
        await server.aclose()
        assert not send()


async def test_a_late_wakeup_is_not_blamed_on_the_peer():
    import time

    async with _tcp_streams() as (accepted, connecting):
        server, client = _ready_pair(accepted, connecting)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run_writer)
            nursery.start_soon(client.run_writer)
            nursery.start_soon(server.run_heartbeat, 0.1, 0.4)
            nursery.start_soon(client.run_heartbeat, 0.1, 0.4)

            async def read(conn):
                while True:
                    await conn.receive_batch()

            nursery.start_soon(read, client)
            nursery.start_soon(read, server)
            await trio.sleep(0.3)
            time.sleep(0.8)  # the whole loop blocked for twice the timeout; the peer kept talking
            await trio.sleep(0.5)
            assert not client.closed, client.closed_reason
            nursery.cancel_scope.cancel()
