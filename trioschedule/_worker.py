"""The worker: connects to a dispatcher, runs the tasks it declares, reports every outcome.

Running tasks do not belong to a connection: they live in :meth:`Worker.run`'s
nursery, so a dropped connection does not kill them.  When the worker comes
back within the dispatcher's grace window it resumes its session, resends
results the dispatcher had not acknowledged, and nothing runs twice.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import traceback
import types
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from . import _defaults as defaults
from ._errors import AuthenticationError, ConnectionClosed, LocalProtocolError, ProtocolError
from ._hooks import HookRunner
from ._net.connection import Connection
from ._net.peerconn import Backoff, open_connection, stay_connected
from ._net.splitting import send_split
from ._protocol import messages as m
from ._protocol.connection import WORKER
from ._protocol.framing import encode_frame
from ._task import TaskOptions, collect_tasks
from ._util import one_error
from ._util import until_closed as _until_closed

__all__ = ["Worker"]

log = logging.getLogger("trioschedule.worker")


class _Running:
    __slots__ = ("cancel_reason", "scope", "spec")

    def __init__(self, spec: m.TaskSpec, scope: trio.CancelScope) -> None:
        self.spec = spec
        self.scope = scope  # the runner's, or the task's own if it has a deadline
        self.cancel_reason: str | None = None


_UNCLAIMED = object()  # _ReadTurn.runner: handed to the runners, not yet taken by one


class _ReadTurn:
    """Which task reads one connection: its reader task, or, while the worker is idle, one of the runners.

    A runner that reads runs what arrives in the same pass of the scheduler,
    where the reader would have had to wake it for the next pass (for a small
    task, a third of the worker's share of a round trip).  Exactly one task
    reads at a time; the reader hands the turn to an idle runner that asked
    for it, and the runner hands it back as soon as a task it runs waits for
    anything, or when reading fails (the reader then raises that error).
    """

    __slots__ = ("conn", "error", "goodbye", "reader_lot", "reader_scope", "runner", "shared", "wanted")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # Handing the turn over cancels the reader's read; trio's SSLStream may
        # not survive that (a cancelled read during a renegotiation breaks it),
        # so over TLS the reader keeps the turn.
        self.shared = not isinstance(conn.stream, trio.SSLStream)
        self.runner: object | None = None  # None: the reader reads; else the runner that does (or _UNCLAIMED)
        self.wanted = False  # an idle runner asked for the turn
        self.reader_lot = trio.lowlevel.ParkingLot()  # the reader waits here while a runner reads
        self.reader_scope: trio.CancelScope | None = None  # around the reader's read (cancelled to hand over)
        self.error: BaseException | None = None  # reading failed in a runner: the reader raises it
        self.goodbye = False  # a runner read the dispatcher's Goodbye

    def give_back(self, error: BaseException | None = None, goodbye: bool = False) -> None:
        self.runner = None
        self.error = error
        self.goodbye = goodbye
        self.reader_lot.unpark()


@types.coroutine
def _resume(coro: Any, trap: Any) -> Any:
    """Go on with a coroutine whose first step was taken by hand: what ``await coro`` would have done."""
    while True:
        try:
            sent = yield trap
        except BaseException as exc:  # noqa: BLE001 - thrown into the coroutine, as await would
            try:
                trap = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class Worker:
    """Runs the ``@task`` methods of its subclass for a dispatcher.

    ``await worker.run()`` connects, reconnects with backoff whenever the
    connection is lost, and returns only after :meth:`stop` has drained it
    (or raises when cancelled, or when the credentials are refused).

    ``concurrency`` tasks run at once; the dispatcher may send ``prefetch``
    more ahead so the worker never waits for its next task (default
    ``max(128, 4 * concurrency)``: small tasks need a deep pipeline to be
    fast, and the dispatcher takes unstarted tasks back for any worker that
    goes idle, so they never wait behind a long one).  ``drain_grace`` is how
    long :meth:`stop` lets running tasks finish.
    """

    def __init__(
        self,
        host: str = defaults.HOST,
        port: int = defaults.PORT,
        *,
        token: str | None = None,
        ssl_context: Any = None,
        concurrency: int = defaults.CONCURRENCY,
        prefetch: int | None = None,
        name: str | None = None,
        heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        reconnect_initial: float = defaults.RECONNECT_INITIAL,
        reconnect_max: float = defaults.RECONNECT_MAX,
        reconnect_attempts: int | None = defaults.RECONNECT_ATTEMPTS,
        max_frame_size: int = defaults.MAX_FRAME_SIZE,
        drain_grace: float = defaults.DRAIN_GRACE,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.host = host
        self.port = port
        self.token = token
        self.ssl_context = ssl_context
        self.concurrency = concurrency
        if prefetch is None:
            prefetch = max(defaults.PREFETCH_MIN, defaults.PREFETCH_PER_RUNNER * concurrency)
        self.prefetch = prefetch
        self.name = name or f"{type(self).__name__}@{socket.gethostname()}:{os.getpid()}"
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_attempts = reconnect_attempts
        self.max_frame_size = max_frame_size
        self.drain_grace = drain_grace
        self._backoff = Backoff(reconnect_initial, reconnect_max)
        #: How to open a stream to the dispatcher; None means TCP (and TLS).
        #: trioschedule.testing sets it to an in-memory network.
        self.connector: Callable[[], Awaitable[trio.abc.Stream]] | None = None
        self.tasks: dict[str, tuple[Any, TaskOptions]] = {
            name: (getattr(self, attribute), options) for name, (attribute, options) in collect_tasks(type(self)).items()
        }
        self._queue: deque[m.TaskSpec] = deque()
        self._running: dict[str, _Running] = {}
        # Started since the last report and still running (a result says it started).
        self._started: dict[str, None] = {}
        self._results: list[m.Outcome] = []
        self._unacked: deque[m.Results] = deque()
        self._seq = 0
        self._session: str | None = None
        self._conn: Connection | None = None
        self._turn: _ReadTurn | None = None
        self._work = trio.lowlevel.ParkingLot()
        self._report = trio.Event()
        self._idle = trio.lowlevel.ParkingLot()
        self._stop = trio.Event()
        self._stop_grace = drain_grace
        self._hooks = HookRunner(self, log)
        self.done = 0
        self.failed = 0

    # ================================================================ hooks
    async def on_start(self) -> None:
        """Called once when :meth:`run` starts, before the first connection."""

    async def on_connect(self) -> None:
        """Called each time a connection to the dispatcher is established."""

    async def on_message(self, message: Any) -> None:
        """Called for each broadcast or custom message from the dispatcher."""

    async def on_close(self) -> None:
        """Called each time the connection to the dispatcher ends."""

    async def on_stop(self) -> None:
        """Called once when the worker stops."""

    # ============================================================ public API
    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def send(self, message: Any) -> None:
        """Send a custom message to the dispatcher's ``on_message``."""
        if self._conn is None:
            raise ConnectionClosed("the worker is not connected to its dispatcher")
        self._conn.send(m.Message(data=message))

    def stop(self, grace: float | None = None) -> None:
        """Drain: take no new tasks, hand back unstarted ones, finish running ones within ``grace``, exit."""
        if grace is not None:
            self._stop_grace = grace
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the dispatcher until stopped; ``task_status.started()`` fires once first connected."""
        if not self.tasks:
            log.warning("%s has no @task methods: it will never run anything", type(self).__name__)
        try:
            async with one_error() as nursery:  # refused credentials come out alone, not in a group
                await self._hooks.call_now(self.on_start)
                nursery.start_soon(self._hooks.run)
                for _ in range(self.concurrency):
                    nursery.start_soon(self._runner)
                nursery.start_soon(self._drain_on_stop, nursery.cancel_scope)
                await stay_connected(
                    self._connect, self._serve, retry=self._retry, backoff=self._backoff,
                    done=self._stop.is_set, log=log, pause=self._pause, task_status=task_status,
                )  # fmt: skip
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._hooks.call_now(self.on_stop)

    # ============================================================ connection
    async def _connect(self) -> tuple[Connection, m.Welcome]:
        """One attempt: the Hello says which tasks we offer and which we still hold (to resume a session)."""
        return await open_connection(
            self.host, self.port, role=WORKER, token=self.token, ssl_context=self.ssl_context,
            max_frame_size=self.max_frame_size, connect_timeout=self.connect_timeout, connector=self.connector,
            name=self.name, host=socket.gethostname(), pid=os.getpid(),
            tasks=tuple(self.tasks), concurrency=self.concurrency, prefetch=self.prefetch,
            session=self._session, running=self._held(),
            retries={n: o.retries for n, (_, o) in self.tasks.items() if o.retries},
            no_retry={n: o.no_retry for n, (_, o) in self.tasks.items() if o.no_retry},
        )  # fmt: skip

    def _retry(self, exc: Exception, attempts: int, connected_once: bool) -> str:
        """A worker keeps trying (up to ``reconnect_attempts``) unless retrying cannot help."""
        if isinstance(exc, AuthenticationError):
            raise exc
        if isinstance(exc, ProtocolError):
            if exc.code in ("version-mismatch", "bad-role"):
                raise exc
            return f"protocol error while connecting: {exc}"
        if self.reconnect_attempts is not None and attempts > self.reconnect_attempts:
            raise ConnectionClosed(f"gave up after {attempts} attempts to reach {self.host}:{self.port}: {exc}") from None
        return f"cannot reach the dispatcher at {self.host}:{self.port}: {exc}"

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` before the next attempt, or until told to stop."""
        with trio.move_on_after(delay):
            await self._stop.wait()

    def _held(self) -> dict[str, int]:
        """Every task this worker still holds (queued, running, or with an unacknowledged result) -> attempt."""
        held = {spec.id: spec.attempt for spec in self._queue}
        held.update((task_id, running.spec.attempt) for task_id, running in self._running.items())
        held.update((o.id, o.attempt) for o in self._results)
        for frame in self._unacked:
            held.update((o.id, o.attempt) for o in frame.results)
        return held

    async def _serve(self, conn: Connection, welcome: m.Welcome, ready: Callable[[], None]) -> None:
        ready()
        if welcome.resumed and welcome.session == self._session:
            log.info("resumed session %s with the dispatcher %s", welcome.session[:8], welcome.name)
            for frame in self._unacked:
                conn.send(frame)
        else:
            if self._session is not None:
                log.info("new session with the dispatcher %s: dropping %d held task(s)", welcome.name, len(self._held()))
            self._reset()
        self._session = welcome.session
        self._conn = conn
        self._turn = _ReadTurn(conn)
        log.info("connected to %s at %s:%s", welcome.name, self.host, self.port)
        await self._hooks.call_now(self.on_connect)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, conn.run_writer, nursery.cancel_scope)
                nursery.start_soon(_until_closed, self._heartbeat, nursery.cancel_scope)
                nursery.start_soon(_until_closed, self._reporter, nursery.cancel_scope)
                self._report.set()
                await _until_closed(self._reader, nursery.cancel_scope)
        finally:
            self._conn = None
            self._turn = None  # closing the stream below stops a runner that reads it
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await conn.aclose()
            log.info("disconnected from the dispatcher: %s", conn.closed_reason)
            with trio.CancelScope(shield=True):
                await self._hooks.call_now(self.on_close)

    async def _heartbeat(self) -> None:
        conn = self._conn
        assert conn is not None
        await conn.run_heartbeat(self.heartbeat_interval, self.heartbeat_timeout)

    def _reset(self) -> None:
        """A new session: the dispatcher no longer expects anything we hold."""
        self._queue.clear()
        for running in self._running.values():
            running.cancel_reason = "the dispatcher started a new session"
            running.scope.cancel()
        self._started.clear()
        self._results.clear()
        self._unacked.clear()

    async def _reader(self) -> None:
        conn, turn = self._conn, self._turn
        assert conn is not None and turn is not None
        while True:
            if turn.runner is not None:  # a runner reads: wait until it hands the turn back
                await turn.reader_lot.park()
                if turn.error is not None:
                    raise turn.error
                if turn.goodbye:
                    return
                continue
            if turn.wanted and not self._queue and self._work:  # an idle runner asked to read
                turn.wanted = False
                turn.runner = _UNCLAIMED
                self._work.unpark()
                continue
            with trio.CancelScope() as scope:
                turn.reader_scope = scope
                messages = await conn.receive_batch()
            turn.reader_scope = None
            if scope.cancelled_caught:
                continue  # cancelled to hand the turn over
            if not self._handle(conn, messages):
                return

    def _handle(self, conn: Connection, messages: list[Any]) -> bool:
        """Act on a batch of messages from the dispatcher; False once it said goodbye."""
        for message in messages:
            kind = type(message)
            if kind is m.Run:
                self._ack(message.ack)
                if self._stop.is_set():
                    conn.send(m.Release(ids=tuple(spec.id for spec in message.tasks), stopping=True))
                else:
                    self._queue.extend(message.tasks)
                    if self._work:  # runners waiting for work (unpark() costs even with nobody parked)
                        self._work.unpark(count=len(message.tasks))
            elif kind is m.Reclaim:
                self._reclaim(conn, message.ids)
            elif kind is m.Heartbeat:
                self._ack(message.ack)
            elif kind is m.Cancel:
                self._cancel(message.id, message.reason or "cancelled")
            elif kind is m.Message:
                self._hooks.call(self.on_message, message.data)
            elif kind is m.Goodbye:
                log.info("the dispatcher said goodbye: %s", message.reason)
                return False
        return True

    def _reclaim(self, conn: Connection, ids: tuple[str, ...]) -> None:
        """Hand back the requested tasks that have not started (another worker sits idle)."""
        wanted = set(ids)
        queue = self._queue
        released = [spec.id for spec in queue if spec.id in wanted]
        if released:
            kept = [spec for spec in queue if spec.id not in wanted]
            queue.clear()
            queue.extend(kept)  # the same deque: the runners hold it
            conn.send(m.Release(ids=tuple(released)))

    def _ack(self, seq: int) -> None:
        unacked = self._unacked
        while unacked and unacked[0].seq <= seq:
            unacked.popleft()

    def _cancel(self, task_id: str, reason: str) -> None:
        running = self._running.get(task_id)
        if running is not None:
            running.cancel_reason = reason
            running.scope.cancel()
            return
        for spec in self._queue:
            if spec.id == task_id:
                self._queue.remove(spec)
                self._outcome(m.Outcome(id=spec.id, status=m.CANCELLED, attempt=spec.attempt, reason=reason))
                return

    # ============================================================= reporting
    def _outcome(self, outcome: m.Outcome) -> None:
        self._results.append(outcome)
        self._report.set()

    async def _reporter(self) -> None:
        """Turn finished attempts into Results frames: one frame for all that ended since the last."""
        while True:
            await self._report.wait()
            self._report = trio.Event()
            self._send_report()

    def _send_report(self, wake: bool = True) -> None:
        conn = self._conn
        if conn is None or not (self._started or self._results):
            return
        started, results = tuple(self._started), self._results
        self._started, self._results = {}, []
        self._send_results(conn, started, results, wake)

    def _send_results(self, conn: Connection, started: tuple[str, ...], results: list[m.Outcome], wake: bool = True) -> None:
        """One Results frame, kept until acknowledged (so a broken connection loses nothing)."""
        frame = m.new_results(self._seq + 1, started, tuple(results))
        try:
            conn.send(frame, wake=wake)
        except LocalProtocolError:
            self._send_results_split(conn, started, results, wake)
            return
        except ConnectionClosed:
            pass  # resent from _unacked when the session resumes
        self._seq += 1
        self._unacked.append(frame)

    def _send_results_split(self, conn: Connection, started: tuple[str, ...], results: list[m.Outcome], wake: bool) -> None:
        """Results that do not fit one frame: halved by :func:`send_split`, ``started`` in the first part sent.

        A result that cannot be sent even alone (not JSON, too large) is
        reported as the task's error.
        """
        pending = started

        def send(part: list[m.Outcome]) -> None:
            nonlocal pending
            frame = m.new_results(self._seq + 1, pending, tuple(part))
            try:
                conn.send(frame, wake=wake)
            except ConnectionClosed:
                pass  # resent from _unacked when the session resumes
            self._seq += 1
            self._unacked.append(frame)
            pending = ()

        send_split(send, results, lambda outcome, _: send([_encodable(outcome, self.max_frame_size)]))

    # =============================================================== running
    async def _runner(self) -> None:
        """Run queued tasks one after another (``concurrency`` of these loops run side by side).

        Entering a cancel scope costs more than a small task itself, so one
        scope serves every task without a deadline; cancelling such a task
        cancels its runner's scope, and the runner then opens a fresh one.
        """
        queue = self._queue
        me = object()  # who holds a _ReadTurn
        while True:
            current: _Running | None = None
            with trio.CancelScope() as scope:
                while True:
                    while not queue:
                        # Nothing more to run right now: report at once, from this
                        # task, instead of waking the reporter and the writer.
                        if self._results and self._conn is not None:
                            conn = self._conn
                            self._send_report(wake=False)
                            try:
                                await conn.write_now()
                            finally:
                                conn.wake_writer()  # if interrupted; a no-op once written
                            continue
                        if self._stop.is_set() and not self._running:
                            self._idle.unpark_all()
                        turn = self._turn
                        if turn is not None:
                            if turn.runner is _UNCLAIMED:
                                turn.runner = me
                            if turn.runner is me:
                                await self._read_for_runner(turn)
                                continue
                            if turn.runner is None and not turn.wanted and turn.shared:
                                turn.wanted = True  # idle: ask the reader for the turn
                                if turn.reader_scope is not None:
                                    turn.reader_scope.cancel()
                        await self._work.park()
                    current = _Running(queue.popleft(), scope)
                    turn = self._turn
                    if turn is not None and turn.runner is me:
                        await self._run_reading(current, turn)
                    else:
                        await self._run(current)
                    current = None
            if current is not None:  # the scope caught the cancellation of ``current``
                spec = current.spec
                self._running.pop(spec.id, None)
                self._started.pop(spec.id, None)
                reason = current.cancel_reason or "cancelled"
                self._outcome(m.Outcome(id=spec.id, status=m.CANCELLED, attempt=spec.attempt, reason=reason))
                self._wake_if_idle()

    async def _read_for_runner(self, turn: _ReadTurn) -> None:
        """Read and act on the next batch from the dispatcher, in a runner that holds the read turn."""
        try:
            messages = await turn.conn.receive_batch()
        except Exception as exc:  # noqa: BLE001 - the connection failed or closed: the reader raises it, as if it had read
            turn.give_back(error=exc)
            return
        if not self._handle(turn.conn, messages):
            turn.give_back(goodbye=True)

    async def _run_reading(self, running: _Running, turn: _ReadTurn) -> None:
        """Run a task in a runner that holds the read turn: hand the turn back if the task waits for anything.

        The task's first step is taken by hand.  Most small tasks end in it,
        and the runner goes on reading with no hand-over at all; a task that
        waits for something gives the reader the turn first, then goes on as
        ``await`` would (the coroutine never leaves this task).
        """
        coro = self._run(running, announce=False)
        try:
            trap = coro.send(None)
        except StopIteration:
            return  # ended in its first step: this runner reports it with the rest of its batch
        self._report.set()  # it waits: report that it started
        if turn.runner is not None:
            turn.give_back()
        await _resume(coro, trap)
        self._report.set()  # and its outcome now, not after the tasks queued behind it

    async def _run(self, running: _Running, announce: bool = True) -> None:
        """Run one task and record its outcome; ``announce=False`` leaves waking the reporter to the caller."""
        spec = running.spec
        task_id = spec.id
        entry = self.tasks.get(spec.name)
        if entry is None:
            offered = ", ".join(sorted(self.tasks)) or "nothing"
            error = m.RemoteError(type="UnknownTask", message=f"this worker has no task {spec.name!r} (it offers: {offered})")
            self._outcome(m.Outcome(id=task_id, status=m.ERROR, attempt=spec.attempt, error=error))
            return
        fn, options = entry
        self._running[task_id] = running
        self._started[task_id] = None  # the dispatcher must know it started: only started tasks count a loss
        if announce:
            self._report.set()
        outcome: m.Outcome | None = None
        try:
            # The call is spelled out here, not in a helper coroutine: for a
            # small task, one more coroutine per call is a measurable share.
            if spec.timeout is None:
                if options.is_async:
                    value = await (fn(*spec.args, **spec.kwargs) if spec.kwargs else fn(*spec.args))
                else:
                    value = await self._call_sync(fn, options, spec)
            else:
                with trio.CancelScope(deadline=trio.current_time() + spec.timeout) as scope:
                    running.scope = scope
                    if options.is_async:
                        value = await fn(*spec.args, **spec.kwargs)
                    else:
                        value = await self._call_sync(fn, options, spec)
                if scope.cancelled_caught:  # ours (a cancel message), or the deadline
                    if running.cancel_reason is not None:
                        outcome = m.Outcome(id=task_id, status=m.CANCELLED, attempt=spec.attempt, reason=running.cancel_reason)
                    else:
                        reason = f"the task ran past its deadline ({spec.timeout:g} s left when it started)"
                        outcome = m.Outcome(id=task_id, status=m.TIMEOUT, attempt=spec.attempt, reason=reason)
        except Exception as exc:  # noqa: BLE001 - the task's failure is its outcome
            self.failed += 1
            outcome = m.Outcome(id=task_id, status=m.ERROR, attempt=spec.attempt, error=describe_exception(exc))
        if outcome is None:
            self.done += 1
            outcome = m.new_outcome(task_id, m.OK, spec.attempt, value, None, None)
        del self._running[task_id]
        self._started.pop(task_id, None)  # the outcome says it started
        self._results.append(outcome)
        if announce:
            self._report.set()
        self._wake_if_idle()

    @staticmethod
    async def _call_sync(fn: Any, options: TaskOptions, spec: m.TaskSpec) -> Any:
        if options.thread:
            return await trio.to_thread.run_sync(functools.partial(fn, *spec.args, **spec.kwargs), abandon_on_cancel=True)
        return fn(*spec.args, **spec.kwargs)

    def _wake_if_idle(self) -> None:
        if not self._running and not self._queue and self._idle:  # unpark_all() costs microseconds, even idle
            self._idle.unpark_all()

    # ================================================================= drain
    async def _drain_on_stop(self, scope: trio.CancelScope) -> None:
        await self._stop.wait()
        grace = self._stop_grace
        log.info("stopping: %d running, %d prefetched to hand back, grace %g s", len(self._running), len(self._queue), grace)
        released = [spec.id for spec in self._queue]
        self._queue.clear()
        if self._conn is not None and released:
            try:
                self._conn.send(m.Release(ids=tuple(released), stopping=True))
            except ConnectionClosed:
                pass
        with trio.move_on_after(grace):
            while self._running:
                await self._idle.park()
        for running in self._running.values():
            running.cancel_reason = "the worker stopped before the task finished"
            running.scope.cancel()
        with trio.move_on_after(1):
            while self._running:
                await self._idle.park()
        conn = self._conn
        if conn is not None:
            with trio.move_on_after(min(5.0, max(grace, 1.0))):
                try:
                    self._send_report()
                    conn.send(m.Goodbye(reason="worker stopping"))
                    await conn.flush()
                except ConnectionClosed:
                    pass
        scope.cancel()


_INTERNAL = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(trio.__file__), "outcome")


def describe_exception(exc: BaseException) -> m.RemoteError:
    """The wire form of an exception: type name, message and traceback text (never the object).

    Frames of trioschedule and trio themselves are left out of the traceback:
    the reader wants to see the task's own code.
    """
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename.startswith(_INTERNAL[:2]) or "/outcome/" in tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return m.RemoteError(
        type=type(exc).__qualname__,
        message=str(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__)),
    )


def _encodable(outcome: m.Outcome, max_frame_size: int) -> m.Outcome:
    """``outcome`` if it can be sent in a frame on its own, else an error outcome saying why."""
    try:
        encode_frame(m.encode(m.Results(seq=0, results=(outcome,))), max_frame_size - 1024)
        return outcome
    except LocalProtocolError as exc:
        error = m.RemoteError(type="TypeError", message=f"the task's result cannot be sent: {exc}")
        return m.Outcome(id=outcome.id, status=m.ERROR, attempt=outcome.attempt, error=error)
