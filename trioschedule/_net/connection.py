"""A :class:`ProtocolConnection` driven over a :class:`trio.abc.Stream`.

One reader (whoever calls :meth:`Connection.receive_batch`), one writer task
(:meth:`Connection.run_writer`) that coalesces every frame queued since its
last write into a single ``send_all``, and a liveness task
(:meth:`Connection.run_heartbeat`).

Over plain TCP (a ``trio.SocketStream``) the connection reads and writes the
socket itself: a ``send`` that the kernel takes at once needs no cancel scope
and no trip through the scheduler, and a read that finds data waiting costs
one checkpoint instead of trio's two plus its context managers: that is
most of what a frame costs (docs/PERFORMANCE.md has the figures).  TLS and
in-memory streams go through the stream API.

Every way a stream can fail, from a reset socket to a TLS error, becomes one
:class:`ConnectionClosed` with a reason; a send cancelled half way marks the
connection broken, so nobody can write a desynchronised stream afterwards.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .. import _defaults as defaults
from .._errors import ConnectionClosed, LocalProtocolError, RemoteProtocolError
from .._protocol import messages as m
from .._protocol.connection import SEND, ProtocolConnection
from .._protocol.framing import encode_frame

__all__ = ["Connection", "describe_address", "describe_error"]

log = logging.getLogger("trioschedule")

RECEIVE_SIZE = 1 << 16
DEFAULT_MAX_OUTBOX = 64 * 1024 * 1024
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError)


def _no_mark() -> None:
    """``Connection.write_mark`` when frames need no particular journal position: the barrier decides."""


def describe_error(exc: BaseException) -> str:
    """A readable reason for a stream failure: trio wraps the real cause (an SSL error...) in ``__cause__``."""
    cause = exc.__cause__
    return str(cause or "") or str(exc) or type(cause or exc).__name__


def plain_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The non-blocking stdlib socket under a plain ``trio.SocketStream``, else None (TLS, memory streams...)."""
    if type(stream) is not trio.SocketStream:
        return None
    sock = getattr(stream.socket, "_sock", None)  # trio's socket wrapper keeps the stdlib socket here
    return sock if isinstance(sock, socket.socket) and not sock.getblocking() else None


def describe_address(stream: trio.abc.Stream) -> str:
    """``host:port`` of the far end of ``stream`` if it has one, else a short label."""
    inner: Any = stream
    while hasattr(inner, "transport_stream"):
        inner = inner.transport_stream
    sock = getattr(inner, "socket", None)
    if sock is not None:
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        if peer:  # a Unix socket's path
            return str(peer)
    return type(inner).__name__


class Connection:
    """Messages in and out of one stream.  Not for users; see Dispatcher, Worker and Client."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: ProtocolConnection,
        *,
        send_timeout: float = defaults.SEND_TIMEOUT,
        max_outbox: int = DEFAULT_MAX_OUTBOX,
        address: str | None = None,
    ) -> None:
        self.stream = stream
        self._socket = plain_socket(stream)
        self.protocol = protocol
        self.send_timeout = send_timeout
        self.max_outbox = max_outbox
        self.address = address or describe_address(stream)
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._wakeup = trio.Event()
        # The writer task, flush() and send_error() take turns without a
        # checkpoint when nobody else is writing (trio.Lock always yields).
        self._writing = False
        self._write_turn = trio.lowlevel.ParkingLot()
        self._closed_reason: str | None = None
        self._held: list[Any] = []  # messages that came with the last handshake step (see receive_one)
        #: Awaited before every write, with the mark that ``write_mark()``
        #: gave when the last frame being written was queued: a durable
        #: dispatcher waits for its journal, so no task leaves for a worker
        #: before its assignment is on disk (write-ahead).  The mark says how
        #: much of the journal that is: the frames do not wait for what was
        #: journaled after them (the next group commit, one fsync later).
        self.before_write: Callable[[Any], Awaitable[None]] | None = None
        self.write_mark: Callable[[], Any] = _no_mark
        self._mark: Any = None  # write_mark() when the last frame was queued
        # Set by thread_heartbeat(): a thread may then write whole heartbeat
        # frames between ours, so every socket write takes this lock.
        self._guard: threading.Lock | None = None
        self._partial = False  # the last socket write ended inside a frame (under _guard)
        self._thread_broke: str | None = None
        now = trio.current_time()
        self.last_received = now
        self.last_sent = now

    # -------------------------------------------------------------- status
    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    def _mark_closed(self, reason: str) -> ConnectionClosed:
        if self._closed_reason is None:
            self._closed_reason = reason
        self._wakeup.set()
        return ConnectionClosed(self._closed_reason)

    # ------------------------------------------------------------- sending
    def send(self, message: Any, *, wake: bool = True) -> None:
        """Queue ``message`` for the writer task.  Never blocks.

        A peer that stops reading is disconnected once ``max_outbox`` bytes are
        waiting for it, instead of letting memory grow without limit.
        ``wake=False`` leaves the writer task asleep: for a caller that calls
        :meth:`write_now` next (waking a task that finds nothing to do costs
        more than encoding the frame).
        """
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        self._queue(self.protocol.send(message), wake)

    def send_payload(self, kind: type, payload: bytes, *, wake: bool = True) -> None:
        """Like :meth:`send`, for a message of type ``kind`` whose payload is already encoded."""
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        self._queue(self.protocol.send_payload(kind, payload), wake)

    def send_encoded(self, message: Any, frame: bytes) -> None:
        """Like :meth:`send`, with the frame already encoded (one broadcast, many peers)."""
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        self.protocol.check_send(message)
        self._queue(frame, True)

    def _queue(self, frame: bytes, wake: bool) -> None:
        if self.before_write is not None:
            self._mark = self.write_mark()
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        if self._outbox_bytes > self.max_outbox:
            raise self._mark_closed(f"peer is not reading: more than {self.max_outbox} bytes are waiting to be sent")
        if wake:
            self._wakeup.set()

    def wake_writer(self) -> None:
        """Let the writer task write what is queued (after ``send(..., wake=False)`` without a write_now)."""
        if self._outbox:
            self._wakeup.set()

    async def send_now(self, message: Any) -> None:
        """Send ``message`` directly (the handshake, before the writer runs)."""
        frame = self.protocol.send(message)
        if self.before_write is not None:
            self._mark = self.write_mark()
        await self._write(frame)

    async def _write(self, data: bytes | None = None) -> None:
        """Write ``data``, or (None) everything queued once it is our turn.

        Whoever waits for the turn takes the outbox only once it has it: data
        taken earlier would overtake what an interrupted write puts back.
        """
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        while self._writing:
            await self._write_turn.park()
        if data is None:
            if not self._outbox:  # written meanwhile (by write_now())
                self._write_turn.unpark()
                return
            data = self._take_outbox()
        self._writing = True
        if self.before_write is not None:
            try:
                await self.before_write(self._mark)
            except BaseException:
                self._put_back(data)  # nothing was written
                self._writing = False
                self._write_turn.unpark()
                raise
        try:
            await self._send_all(data)
        except ConnectionClosed:
            raise
        except _STREAM_ERRORS as exc:
            raise self._mark_closed(f"connection broke while sending: {describe_error(exc)}") from None
        except BaseException:
            # Cancelled half way through a frame: the stream is desynchronised.
            self._mark_closed("a send was interrupted")
            raise
        finally:
            self._writing = False
            self._write_turn.unpark()
        self.last_sent = trio.current_time()

    def _take_outbox(self) -> bytes:
        """Everything queued, as one buffer; the outbox is empty afterwards."""
        outbox = self._outbox
        data = b"".join(outbox) if len(outbox) > 1 else outbox[0]
        outbox.clear()
        self._outbox_bytes = 0
        return data

    def _put_back(self, data: bytes) -> None:
        """Queue ``data`` (taken but not written) ahead of everything else, for the writer task."""
        self._outbox.insert(0, data)
        self._outbox_bytes += len(data)
        self._wakeup.set()

    def _send_nowait(self, sock: socket.socket, data: bytes) -> int:
        """Bytes of ``data`` the kernel takes at once (0 if its buffer is full); OSError if the socket broke."""
        guard = self._guard
        if guard is None:
            try:
                return sock.send(data)
            except BlockingIOError:
                return 0
        with guard:  # held for one non-blocking send: never long
            if self._thread_broke is not None:
                raise OSError(self._thread_broke)
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent:  # ``data`` always ends at a frame boundary: all of it sent means we are at one
                self._partial = sent < len(data)
            return sent

    def thread_heartbeat(self) -> Callable[[], bool] | None:
        """A function that any thread may call to write one heartbeat frame now; None if it cannot be done safely.

        Call this from the event loop (it installs the socket lock); the
        function it returns is the one for other threads.

        For a worker whose event loop is blocked (a task that calls blocking
        code): its watchdog thread keeps the heartbeats flowing, so the
        dispatcher does not mistake a busy worker for a dead one.  Only over
        plain TCP (a TLS stream's state belongs to the event loop), and only
        in the protocol state this is called in (after the handshake).  The frame goes out whole, between two of the event loop's
        frames: the socket lock is held for every write, and the thread
        writes only when the event loop is not half way through a frame.
        """
        sock = self._socket
        if sock is None:
            return None
        state = self.protocol.state
        if SEND.get((self.protocol.our_role, state), {}).get(m.Heartbeat) != state:
            raise LocalProtocolError(f"a heartbeat from a thread is not allowed in state {state!r}")
        frame = encode_frame(m.encode(m.Heartbeat()), self.protocol.max_send_size)
        if self._guard is None:
            self._guard = threading.Lock()
        guard = self._guard

        def send_heartbeat() -> bool:
            with guard:
                if self._partial or self._closed_reason is not None or self._thread_broke is not None:
                    return False
                if self.protocol.state != state:  # closing, or an error frame sent
                    return False
                try:
                    if not select.select([], [sock], [], 0)[1]:
                        return False  # the peer is not reading: nothing to gain
                    sent = sock.send(frame)
                except OSError:
                    return False
                if sent != len(frame):  # cannot happen on a writable socket, but never desynchronise
                    self._thread_broke = "a heartbeat frame from the watchdog thread was cut short"
                    return False
                return True

        return send_heartbeat

    async def _send_all(self, data: bytes) -> None:
        sock = self._socket
        if sock is not None:
            sent = self._send_nowait(sock, data)
            if sent == len(data):
                return  # the usual case: no cancel scope, no checkpoint
            data = memoryview(data)[sent:]  # type: ignore[assignment]
        # A bare CancelScope, not fail_after(): the context manager wrapper costs more than a send.
        with trio.CancelScope(deadline=trio.current_time() + self.send_timeout) as scope:
            if sock is None:
                await self.stream.send_all(data)
            else:
                while data:
                    await trio.lowlevel.wait_writable(sock)
                    data = data[self._send_nowait(sock, data) :]
        if scope.cancelled_caught:
            raise self._mark_closed(f"peer did not read for {self.send_timeout:g} s")

    async def _receive_some(self) -> bytes | bytearray:
        sock = self._socket
        if sock is None:
            return await self.stream.receive_some(RECEIVE_SIZE)
        # Like trio: a cancelled reader stops here, even if data keeps arriving
        # (the checkpoint after the read is shielded, so it cannot notice).
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data = sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    return sock.recv(RECEIVE_SIZE)
                except BlockingIOError:
                    pass
        # Data was waiting: still give the other tasks their turn (shielded:
        # the bytes are read, a cancellation now would lose them).
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def run_writer(self) -> None:
        """Write queued frames until the connection closes; raises ConnectionClosed."""
        while True:
            await self._wakeup.wait()
            if self._closed_reason is not None:
                raise ConnectionClosed(self._closed_reason)
            self._wakeup = trio.Event()
            if self._outbox:
                await self._write()

    async def write_now(self) -> None:
        """Write what is queued from this task, if no write is in progress (saves waking the writer).

        Never waits for another write: if one is in progress, the writer task
        is woken to write this after it.  Over plain TCP it never waits for
        the peer either: what the kernel does not take at once goes back to
        the front of the outbox for the writer task, so a slow reader cannot
        hold up the task that produced the frame (a dispatcher's reader
        serving one worker, say, writing outcomes to a slow client).  Errors
        are left for the writer and the reader to notice.
        """
        if not self._outbox or self._closed_reason is not None:
            return
        if self._writing:
            self._wakeup.set()
            return
        data = self._take_outbox()
        sock = self._socket
        if sock is not None and self.before_write is None:
            try:
                sent = self._send_nowait(sock, data)
            except OSError as exc:
                self._mark_closed(f"connection broke while sending: {describe_error(exc)}")
                return
            if sent < len(data):
                self._put_back(data[sent:])  # the rest is the writer task's, first in line
            else:
                self.last_sent = trio.current_time()
            return
        try:
            await self._write(data)
        except ConnectionClosed:
            pass

    async def flush(self) -> None:
        """Write whatever is queued now (used before closing cleanly)."""
        if self._outbox and self._closed_reason is None:
            await self._write()

    async def run_heartbeat(self, interval: float, timeout: float, make: Callable[[], Any] = m.Heartbeat) -> None:
        """Send a heartbeat when quiet for ``interval``; close if the peer is silent for ``timeout``."""
        period = min(interval, timeout) / 2
        while True:
            woke = trio.current_time() + period
            await trio.sleep(period)
            now = trio.current_time()
            if now - woke > period:
                # Woken late: this event loop was blocked, and what the peer
                # sent meanwhile may be waiting unread.  Let the reader catch
                # up before blaming the peer for our own silence.
                if now - self.last_sent >= interval and not self._outbox:
                    self.send(make())
                continue
            if now - self.last_received > timeout:
                raise self._mark_closed(f"no frame from the peer for {timeout:g} s (heartbeat timeout)")
            if now - self.last_sent >= interval and not self._outbox:
                self.send(make())

    # ----------------------------------------------------------- receiving
    async def receive_batch(self) -> list[Any]:
        """Every message that has arrived, waiting for at least one.

        Raises :class:`ConnectionClosed` at end of stream or on a broken
        stream, and :class:`RemoteProtocolError` on a bad frame (after
        sending the peer an error frame that says what was wrong).
        """
        if self._held:
            messages, self._held = self._held, []
            return messages
        protocol = self.protocol
        while True:
            try:
                messages = protocol.messages()
            except RemoteProtocolError as exc:
                await self.send_error(exc.code, str(exc))
                raise
            if messages:
                if type(messages[-1]) is m.Error:
                    error = messages[-1]
                    closed = self._mark_closed(f"peer reported error {error.code}: {error.message}")
                    closed.code, closed.leader = error.code, error.leader
                    raise closed
                return messages
            if self._closed_reason is not None:
                raise ConnectionClosed(self._closed_reason)
            try:
                data = await self._receive_some()
            except _STREAM_ERRORS as exc:
                raise self._mark_closed(f"connection broke while receiving: {describe_error(exc)}") from None
            if not data:
                raise self._mark_closed("peer closed the connection")
            self.last_received = trio.current_time()
            try:
                protocol.receive_data(data)
            except RemoteProtocolError as exc:
                await self.send_error(exc.code, str(exc))
                raise

    async def receive_one(self, *types: type) -> Any:
        """The next message (a handshake step), which must be one of ``types``.

        What arrived with it stays for the next :meth:`receive_batch`: the
        dispatcher is ready the moment it has sent its Welcome, so a broadcast
        or the worker's first tasks may well share a read with it.  (Anything
        the handshake does not allow yet, the transition table has refused.)
        """
        messages = await self.receive_batch()
        first = messages[0]
        if not isinstance(first, types):
            expected = " or ".join(getattr(kind, "TYPE", kind.__name__) for kind in types)
            raise RemoteProtocolError(f"expected {expected} during the handshake, got {first.TYPE!r}", code="unexpected-message")
        self._held = messages[1:]
        return first

    async def send_error(self, code: str, message: str, *, leader: str | None = None) -> None:
        """Best effort: tell the peer why we close, without waiting long for it (``leader``: see ``not-leader``)."""
        try:
            frame = self.protocol.error_frame(code, message, leader=leader)
            data = b"".join(self._outbox) + frame if self._outbox else frame
            self._outbox.clear()
            with trio.move_on_after(1.0):
                await self._write(data)
        except (*_STREAM_ERRORS, LocalProtocolError, ConnectionClosed):
            pass
        self._outbox.clear()
        self._mark_closed(f"{code}: {message}")

    async def aclose(self) -> None:
        """Close the stream (never raises, never blocks for long)."""
        self._mark_closed("closed locally")
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except _STREAM_ERRORS:
                pass
