"""The worker's life: connect, resume its session after a reconnect, drain when stopped.

Running tasks do not belong to a connection: they live in :meth:`Worker.run`'s
nursery, so a dropped connection does not kill them.  When the worker comes
back within the dispatcher's grace window it resumes its session, resends
results the dispatcher had not acknowledged, and nothing runs twice.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from .. import _defaults as defaults
from .._errors import AuthenticationError, ConnectionClosed, NotLeader, ProtocolError
from .._hooks import HookRunner
from .._logging import context
from .._net.addresses import Address, Rotation, dispatchers_at, format_address, format_addresses, peer_addresses
from .._net.connection import Connection
from .._net.peerconn import Backoff, open_connection, stay_connected
from .._protocol import messages as m
from .._protocol.connection import WORKER
from .._task import TaskOptions, collect_tasks
from .._util import one_error
from .._util import until_closed as _until_closed
from .readturn import ReadTurn
from .runner import TaskRunner
from .watchdog import Watchdog

__all__ = ["Worker"]

log = logging.getLogger("trioschedule.worker")


class Worker(TaskRunner):
    """Runs the ``@task`` methods of its subclass for a dispatcher.

    ``await worker.run()`` connects, reconnects with backoff whenever the
    connection is lost, and returns only after :meth:`stop` has drained it
    (or raises when cancelled, or when the credentials are refused).

    ``concurrency`` tasks run at once; the dispatcher may send ``prefetch``
    more ahead so the worker never waits for its next task (default
    ``max(128, 4 * concurrency)``: small tasks need a deep pipeline to be
    fast, and the dispatcher takes unstarted tasks back for any worker that
    goes idle, so they never wait behind a long one).  ``drain_grace`` is how
    long :meth:`stop` lets running tasks finish.  ``blocked_warning`` is how
    long the event loop may be blocked (an ``async def`` task that calls
    blocking code) before a watchdog thread logs which task does it; the
    watchdog also keeps the heartbeats flowing meanwhile, so a busy worker
    is not mistaken for a dead one (None turns it off).

    ``max_tasks`` and ``max_memory`` (MiB of resident memory, read once a
    second from the first task on) retire the worker: it hands back what it
    has not started, finishes what it runs, and :meth:`run` returns with
    :attr:`retired` saying why, so a supervisor can replace the process
    (``worker --max-tasks-per-child``, docs/OPERATIONS.md).  ``restarts``
    is how many times a supervisor replaced it (sent in its hello; status
    shows it).

    ``addresses=["HOST:PORT", ...]`` names every dispatcher sharing one store
    (docs/HA.md), in place of ``host`` and ``port``: the worker serves the
    one that leads, following a standby's ``not-leader`` answer, and after
    losing it goes through the list again and resumes its session with
    whichever dispatcher leads then (the session lives in the shared store).

    This class is the worker's life: the public API, its hooks, connecting
    and resuming a session, heartbeats, and draining.  Running tasks and
    reporting them is its base class's, :class:`TaskRunner`.
    """

    def __init__(
        self,
        host: str = defaults.HOST,
        port: int = defaults.PORT,
        *,
        addresses: Iterable[str | Address] | None = None,
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
        blocked_warning: float | None = defaults.BLOCKED_WARNING,
        max_tasks: int | None = None,
        max_memory: float | None = None,
        restarts: int = 0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_tasks is not None and max_tasks < 1:
            raise ValueError("max_tasks must be at least 1 (or None: no limit)")
        if max_memory is not None and max_memory <= 0:
            raise ValueError("max_memory must be positive, in MiB (or None: no limit)")
        #: Every dispatcher address, as ``(host, port)``; ``host``/``port`` are the first.
        self.addresses = peer_addresses(host, port, addresses)
        self.host, self.port = self.addresses[0]
        #: The address of the dispatcher connected to now (or last).
        self.address: Address = self.addresses[0]
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
        self.blocked_warning = blocked_warning
        self.max_tasks = max_tasks
        self.max_memory = max_memory
        #: How many times a supervisor has replaced this worker's process (told to the dispatcher; status shows it).
        self.restarts = restarts
        #: Why the worker retired (ran ``max_tasks`` tasks, or grew past ``max_memory``), or None.
        self.retired: str | None = None
        self._backoff = Backoff(reconnect_initial, reconnect_max)
        self._rotation = Rotation(self.addresses)
        #: How to open a stream to the dispatcher; None means TCP (and TLS).
        #: trioschedule.testing sets it to an in-memory network.
        self.connector: Callable[[], Awaitable[trio.abc.Stream]] | None = None
        self.tasks: dict[str, tuple[Any, TaskOptions]] = {
            name: (getattr(self, attribute), options) for name, (attribute, options) in collect_tasks(type(self)).items()
        }
        super().__init__()
        self._session: str | None = None  # the dispatcher's, resumed after a reconnect
        self._beat_from_thread: Callable[[], bool] | None = None  # Connection.thread_heartbeat() while connected
        self._stop_grace = drain_grace
        self._stop_why = ""
        self._budget = max_tasks
        self._hooks = HookRunner(self, log)

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
                if self.blocked_warning is not None:
                    nursery.start_soon(Watchdog(self, self.blocked_warning).run)
                for _ in range(self.concurrency):
                    nursery.start_soon(self._runner)
                nursery.start_soon(self._drain_on_stop, nursery.cancel_scope)
                if self.max_tasks is not None or self.max_memory is not None:
                    nursery.start_soon(self._retire_when_due)
                await stay_connected(
                    self._connect, self._serve, retry=self._retry, backoff=self._backoff, rotation=self._rotation,
                    done=self._stop.is_set, log=log, pause=self._pause, task_status=task_status,
                )  # fmt: skip
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._hooks.call_now(self.on_stop)

    # ============================================================ connection
    async def _connect(self, address: Address) -> tuple[Connection, m.Welcome]:
        """One attempt: the Hello says which tasks we offer and which we still hold (to resume a session).

        The session id goes to whichever dispatcher ``address`` is: after a
        failover the new leader knows it from the shared store.
        """
        conn, welcome = await open_connection(
            *address, role=WORKER, token=self.token, ssl_context=self.ssl_context,
            max_frame_size=self.max_frame_size, connect_timeout=self.connect_timeout, connector=self.connector,
            name=self.name, host=socket.gethostname(), pid=os.getpid(),
            tasks=tuple(self.tasks), concurrency=self.concurrency, prefetch=self.prefetch, restarts=self.restarts,
            session=self._session, running=self._held(),
            retries={n: o.retries for n, (_, o) in self.tasks.items() if o.retries},
            no_retry={n: o.no_retry for n, (_, o) in self.tasks.items() if o.no_retry},
            retry_delay={n: o.retry_delay for n, (_, o) in self.tasks.items() if o.retry_delay is not None},
            retry_timeout=tuple(n for n, (_, o) in self.tasks.items() if o.retry_on_timeout),
            echo=True,  # we answer the dispatcher's timed heartbeats (its round-trip metric)
        )  # fmt: skip
        self.address = address
        return conn, welcome

    def _retry(self, exc: Exception, attempts: int, connected_once: bool) -> str:
        """A worker keeps trying (up to ``reconnect_attempts`` rounds through its addresses) unless retrying cannot help.

        Standbys that know no leader yet (:class:`NotLeader`) are waited for
        like an unreachable dispatcher: a failover is under way.
        """
        if isinstance(exc, AuthenticationError):
            raise exc
        if isinstance(exc, ProtocolError):
            if exc.code in ("version-mismatch", "bad-role"):
                raise exc
            return f"protocol error while connecting: {exc}"
        if self.reconnect_attempts is not None and attempts > self.reconnect_attempts:
            raise ConnectionClosed(f"gave up after {attempts} attempts to reach {dispatchers_at(self.addresses)}: {exc}") from None
        if self._dispatcher_left:  # it said it was stopping: say so once, then wait quietly
            if attempts == 1:
                then = "for it to come back" if len(self.addresses) == 1 else f"for one of {format_addresses(self.addresses)}"
                return (f"the dispatcher at {format_address(self.address)} has stopped; waiting {then} "
                        "(further attempts are logged at DEBUG)")  # fmt: skip
            return ""
        if isinstance(exc, NotLeader) or len(self.addresses) > 1:  # the error names the addresses
            return str(exc)
        return f"cannot reach {dispatchers_at(self.addresses)}: {exc}"

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
        self._dispatcher_left = False
        self._conn = conn
        # For the watchdog's thread, should a task block the event loop.
        self._beat_from_thread = conn.thread_heartbeat() if self.blocked_warning is not None else None
        self._turn = ReadTurn(conn)
        log.info("connected to %s at %s", welcome.name, format_address(self.address), extra=context(peer=welcome.name))
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
            self._beat_from_thread = None
            self._turn = None  # closing the stream below stops a runner that reads it
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await conn.aclose()
            log.info("disconnected from the dispatcher: %s", conn.closed_reason, extra=context(peer=welcome.name))
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

    # ============================================================== recycling
    async def _retire_when_due(self) -> None:
        """Drain and stop once ``max_tasks`` have run or the process outgrew ``max_memory`` (a supervisor replaces it).

        The memory is read every MEMORY_CHECK_INTERVAL seconds, not per task:
        reading it costs microseconds, and memory grows slowly.
        """
        limit = None if self.max_memory is None else self.max_memory * 2**20
        while not self._stop.is_set():
            if self._retiring:  # it took its last task: stop once that has run
                while (self._running or self._queue) and not self._stop.is_set():
                    with trio.move_on_after(0.5):
                        await self._idle.park()
                self._retire(f"ran its {self.max_tasks} task(s) (max_tasks)")
                return
            if limit is not None and self.done + self.failed:  # it grew by running tasks (a fresh one would only loop)
                used = resident_memory()
                if used > limit:
                    self._retire(f"uses {used / 2**20:.0f} MiB, over max_memory {self.max_memory:g} MiB")
                    return
            with trio.move_on_after(defaults.MEMORY_CHECK_INTERVAL):
                await self._stop.wait()

    def _retire(self, why: str) -> None:
        if self._stop.is_set():  # stopped for another reason meanwhile
            return
        self.retired = why
        self._stop_why = f" (retiring: it {why})"
        self.stop()

    # ================================================================= drain
    async def _drain_on_stop(self, scope: trio.CancelScope) -> None:
        await self._stop.wait()
        grace = self._stop_grace
        log.info("drain started%s: %d running, %d prefetched to hand back, grace %g s", self._stop_why,
                 len(self._running), len(self._queue), grace)  # fmt: skip
        released = [spec.id for spec in self._queue]
        self._queue.clear()
        if self._conn is not None:  # even with nothing to hand back: status shows it draining
            try:
                self._conn.send(m.Release(ids=tuple(released), stopping=True))
            except ConnectionClosed:
                pass
        with trio.move_on_after(grace):
            while self._running:
                await self._idle.park()
        given_up = len(self._running)
        for running in self._running.values():
            running.cancel_reason = "the worker stopped before the task finished"
            running.scope.cancel()
        with trio.move_on_after(1):
            while self._running:
                await self._idle.park()
        if given_up:
            log.warning("drain finished: %d task(s) still running after the grace were cancelled", given_up)
        else:
            log.info("drain finished: every running task ended, %d handed back", len(released))
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


def resident_memory() -> int:
    """This process's resident memory in bytes: /proc/self/statm on Linux, else the peak from getrusage."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
