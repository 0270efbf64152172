"""The dispatcher: accepts tasks, places them on workers, reports how each one ended.

This is the trio shell around the scheduling core (``trioschedule._core``):
it listens, serves each connection (``connections.py``), feeds the core what
happens, carries out what the core decides (``effects.py``), journals through
one seam (``journal.py``), and offers the public API (this module).
Everything lives in one task tree under :meth:`Dispatcher.serve`
(``serving.py``): an accept loop, one handler task per connection (its
reader) with that connection's writer and heartbeat tasks, a timer task, and
a hook task.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, overload

import trio

from .. import _defaults as defaults
from .._core.lifecycle import Limits
from .._core.scheduler import Scheduler
from .._core.tasks import check_options
from .._errors import ConnectionClosed, Rejected, UnknownTaskId
from .._handles import OutcomeSlot, TaskHandle, unwrap
from .._hooks import HookRunner
from .._net.connection import Connection
from .._net.security import Secrets
from .._peer import Peer
from .._protocol import messages as m
from .._protocol.framing import encode_frame
from .._store.base import Store
from .._store.registry import open_store
from .batch import Batch
from .connections import ConnectionHandler
from .effects import Effects
from .journal import StoreJournal
from .leadership import LEADER, Election
from .schedules import ScheduleShell
from .serving import Serving
from .status import status_document

__all__ = ["Dispatcher"]

log = logging.getLogger("trioschedule.dispatcher")

MAP_CHUNK = 1000  # map() journals and places tasks this many at a time
MAP_YIELD_EVERY = 0.05  # seconds: how long queuing a map() may keep the event loop to itself
MAP_WINDOW = 4 * MAP_CHUNK  # unfinished tasks one map() keeps at least (more if its workers hold more)


T = TypeVar("T")


class _FromLimits(Generic[T]):
    """A dispatcher setting kept in its scheduling core's :class:`Limits`: read (and set) through the dispatcher."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, dispatcher: None, owner: type) -> _FromLimits[T]: ...
    @overload
    def __get__(self, dispatcher: Dispatcher, owner: type) -> T: ...
    def __get__(self, dispatcher: Dispatcher | None, owner: type) -> T | _FromLimits[T]:
        if dispatcher is None:
            return self
        value: T = getattr(dispatcher._core.limits, self.name)
        return value

    def __set__(self, dispatcher: Dispatcher, value: T) -> None:
        setattr(dispatcher._core.limits, self.name, value)


class Dispatcher(Serving):
    """Hands tasks to connected workers and reports how each one ended.

    Subclass it and override the ``on_*`` hooks, or use it as it is.  Start it
    with ``port = await nursery.start(dispatcher.serve)``; stop it gracefully
    with :meth:`stop` or by cancelling the nursery.

    Parameters (all keyword-only but ``host`` and ``port``):

    * ``token``: shared secret every peer must prove it knows (a string, or a
      mapping ``{"worker": ..., "client": ..., "admin": ...}`` for separate
      secrets per role); ``ssl_context``: serve TLS.
    * ``store``: ``None``/``"memory:"`` (default) or ``"sqlite:PATH"`` or a
      :class:`~trioschedule.Store`.
    * ``heartbeat_interval``/``heartbeat_timeout``: liveness, seconds.
    * ``session_grace``: how long a disconnected worker keeps its tasks.
    * ``max_queued``: unfinished tasks accepted at once (``submit`` waits beyond).
    * ``max_client_queued``: unfinished tasks per client connection.
    * ``max_losses``: how often a task may lose its worker before it ends as lost.
    * ``retry_backoff``/``retry_backoff_max``: base and cap of retry delays.
    * ``result_ttl``/``max_results``: how long/how many finished outcomes are kept.
    * ``history``: how many ended tasks are kept for ``trioschedule tasks`` and
      the failures in ``status`` (0 keeps none; bounded memory either way).
    * ``drain_grace``: how long :meth:`stop` lets running tasks finish.
    * ``http``: ``"HOST:PORT"`` to serve ``/metrics``, ``/api/status`` and a
      live status page there (off by default; behind the admin token; see
      docs/OPERATIONS.md).  The bound port is :attr:`http_port` once started.
    * ``wall_clock``: the time of day as epoch seconds (default ``time.time``),
      for cron and one-shot schedules and what is journaled; a test passes one
      that follows trio's virtual clock, so a week of schedules passes in
      milliseconds (docs/SCHEDULES.md).
    * ``lease_ttl``: with a shared store (``postgresql://...``, several
      dispatchers on one database, docs/HA.md), how long the leader's lease
      lasts without a renewal: a dead leader is replaced within about
      ``lease_ttl * 7/6`` plus recovery.  ``advertise``: the ``HOST:PORT``
      standbys send peers to while this dispatcher leads (default: the
      listening address).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | dict[str, str] | None = None,
        ssl_context: Any = None,
        store: str | Store | None = None,
        name: str | None = None,
        heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT,
        handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT,
        session_grace: float = defaults.SESSION_GRACE,
        send_timeout: float = defaults.SEND_TIMEOUT,
        max_frame_size: int = defaults.MAX_FRAME_SIZE,
        max_connections: int = defaults.MAX_CONNECTIONS,
        max_queued: int = defaults.MAX_QUEUED,
        max_client_queued: int = defaults.MAX_CLIENT_QUEUED,
        max_losses: int = defaults.MAX_LOSSES,
        retry_backoff: float = defaults.RETRY_BACKOFF,
        retry_backoff_max: float = defaults.RETRY_BACKOFF_MAX,
        cancel_timeout: float | None = None,
        result_ttl: float = defaults.RESULT_TTL,
        max_results: int = defaults.MAX_RESULTS,
        history: int = defaults.HISTORY,
        drain_grace: float = defaults.DRAIN_GRACE,
        http: str | None = None,
        wall_clock: Callable[[], float] = time.time,
        lease_ttl: float = defaults.LEASE_TTL,
        advertise: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name or f"dispatcher@{socket.gethostname()}:{os.getpid()}"
        self.secrets = Secrets.from_token(token)
        self.ssl_context = ssl_context
        self.store = open_store(store)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.handshake_timeout = handshake_timeout
        self.send_timeout = send_timeout
        self.max_frame_size = max_frame_size
        self.max_connections = max_connections
        self.drain_grace = drain_grace
        self.http = http or None
        if self.http is not None:
            from .._http import parse_address

            parse_address(self.http)  # a typo fails here, not once serving
        self.http_port: int | None = None
        if not (isinstance(lease_ttl, (int, float)) and math.isfinite(lease_ttl) and lease_ttl > 0):
            raise ValueError(f"lease_ttl must be a positive number of seconds, not {lease_ttl!r}")
        self.lease_ttl = float(lease_ttl)
        self.advertise = advertise
        limits = Limits(
            max_queued=max_queued, max_client_queued=max_client_queued, max_losses=max_losses,
            retry_backoff=retry_backoff, retry_backoff_max=retry_backoff_max, heartbeat_timeout=heartbeat_timeout,
            cancel_timeout=heartbeat_timeout if cancel_timeout is None else cancel_timeout,
            session_grace=session_grace, result_ttl=result_ttl, max_results=max_results,
            history=history,
        )  # fmt: skip
        self._journal = StoreJournal(self.store, clock=trio.current_time, wall_clock=wall_clock)
        self._election: Election | None = None  # with a shared store, while serving
        self._spent = False  # stepped down: its state is gone, it serves no more
        self._core = Scheduler(limits, self._journal, clock=trio.current_time, wall_clock=wall_clock,
                               rng=random.Random())  # fmt: skip
        self._hooks = HookRunner(self, log)
        self._core.report_ended = self._hooks.overridden(self.on_task_done)
        self._effects = Effects(self._core, self._hooks, self.on_task_done)
        self._schedules = ScheduleShell(self._core, self._journal, self._effects)
        self._links: dict[str, Connection] = {}  # peer id -> its connection, for send()
        self._connections = ConnectionHandler(self)
        self._stop_requested = trio.Event()
        self._stop_grace = drain_grace
        self._stop_workers = False
        self._started_at = 0.0
        self._serving = False
        self._schedules_open = False  # the journal is open and its schedules restored
        self._outcomes = _DispatcherOutcomes(self)

    # Settings that live in the scheduling core, readable here as before.
    session_grace: _FromLimits[float] = _FromLimits()
    max_queued: _FromLimits[int] = _FromLimits()
    max_client_queued: _FromLimits[int] = _FromLimits()
    max_losses: _FromLimits[int] = _FromLimits()
    retry_backoff: _FromLimits[float] = _FromLimits()
    retry_backoff_max: _FromLimits[float] = _FromLimits()
    cancel_timeout: _FromLimits[float] = _FromLimits()
    result_ttl: _FromLimits[float] = _FromLimits()
    max_results: _FromLimits[int] = _FromLimits()

    # ================================================================ hooks
    async def on_start(self) -> None:
        """Called once the dispatcher is listening (runs beside serving, so it may wait for workers)."""

    async def on_connect(self, peer: Peer) -> None:
        """Called when a worker, client or admin completes its handshake."""

    async def on_message(self, peer: Peer, message: Any) -> None:
        """Called for each custom message (``Worker.send``/``Client.send``) from ``peer``."""

    async def on_close(self, peer: Peer) -> None:
        """Called when a peer's connection ends (for whatever reason)."""

    async def on_task_done(self, task_id: str, name: str, outcome: m.Outcome) -> None:
        """Called once for every task that ends, with its final :class:`Outcome`."""

    async def on_stop(self) -> None:
        """Called when the dispatcher stops (after draining, or when cancelled)."""

    # ================================================================ serve
    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` and serve until :meth:`stop` or cancellation.

        ``task_status.started()`` reports the bound port, once the journal is
        recovered and the listener is open.
        """

        async def open_listeners() -> list[trio.abc.Listener[Any]]:
            try:
                listeners: list[Any] = await trio.open_tcp_listeners(self.port, host=self.host)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: the address is already in use "
                                         "(another dispatcher, or another program, is listening there)") from None  # fmt: skip
            if self.ssl_context is not None:
                listeners = [trio.SSLListener(lst, self.ssl_context, https_compatible=False) for lst in listeners]
            return listeners

        await self._serve(open_listeners, task_status)

    async def serve_listeners(
        self, listeners: list[trio.abc.Listener[Any]], *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on already-open listeners (``trioschedule.testing`` passes memory listeners here)."""

        async def given() -> list[trio.abc.Listener[Any]]:
            return listeners

        await self._serve(given, task_status)

    def stop(self, grace: float | None = None, *, workers: bool = False) -> None:
        """Begin a graceful stop: refuse new tasks, let running ones finish within ``grace`` seconds, exit.

        ``workers=True`` stops the connected workers too: their goodbye says
        so, and they exit instead of waiting for the dispatcher to come back.
        """
        if grace is not None:
            self._stop_grace = grace
        self._stop_workers = self._stop_workers or workers
        self._stop_requested.set()

    @property
    def leading(self) -> bool:
        """True while this dispatcher serves: always with its own store, only as the leader with a shared one."""
        if self._election is None:
            return self._serving
        return self._election.role == LEADER and not self._election.lost.is_set() and self._journal.active

    async def wait_leading(self) -> None:
        """Wait until this dispatcher leads (at once with a store it does not share; docs/HA.md)."""
        while not self.leading:
            await trio.sleep(0.05)

    def _check_leading(self) -> None:
        if not self.leading:
            raise Rejected("this dispatcher is a standby: the leader accepts tasks (docs/HA.md)", code="not-leader")

    @property
    def draining(self) -> bool:
        return self._core.draining

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it closes (public so tests can hand in memory streams)."""
        await self._connections.handle_stream(stream)

    # ============================================================ public API
    def submit_nowait(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        delay: float | None = None,
        priority: int = 0,
        task_id: str | None = None,
    ) -> TaskHandle:
        """Queue a task now or raise :class:`QueueFull`/:class:`Rejected`; see :meth:`submit`."""
        if self._election is not None:
            self._check_leading()
        task = self._core.new_local_task(name, args, kwargs, timeout, retries, delay, priority, task_id)
        self._effects.flush()
        return TaskHandle(self._outcomes, task.id, name)

    async def submit(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        delay: float | None = None,
        priority: int = 0,
        task_id: str | None = None,
    ) -> TaskHandle:
        """Submit a task from inside the dispatcher; waits while the queue is full.

        ``timeout`` is an absolute deadline in seconds from now (queueing
        included); ``retries`` how often to retry after the task raises;
        ``delay`` seconds before it may start; higher ``priority`` runs first.
        Returns once the task is journaled.
        """
        if self._election is not None:
            self._check_leading()
        await self._effects.wait_room(1)
        journaling = self._core.journaling
        task = self._core.new_local_task(name, args, kwargs, timeout, retries, delay, priority, task_id)
        self._effects.flush(wake=journaling)
        if journaling:
            await self._journal.flush()
        await self._effects.write_now()  # on its way now, not after a writer wakes
        return TaskHandle(self._outcomes, task.id, name)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Submit ``name(*args, **kwargs)`` and wait for its value (raises if the task failed)."""
        # submit() and handle.result() without the handle: this is a round trip's latency.
        if self._election is not None:
            self._check_leading()
        core = self._core
        if core.unfinished >= core.limits.max_queued:
            await self._effects.wait_room(1)
        journaling = core.journaling
        task = core.new_local_task(name, args, kwargs, None, None, None, 0, None)
        if task.outcome is not None:  # it ended at once (its arguments could not be sent)
            self._effects.flush(wake=journaling)
            return unwrap(task.outcome)
        slot = task.slot = OutcomeSlot()  # before anything else can finish it
        self._effects.flush(wake=journaling)
        if journaling:
            await self._journal.flush()
        await self._effects.write_now()
        return unwrap(await slot.wait())

    async def map(
        self,
        name: str,
        iterable_of_args: Iterable[Any],
        *,
        return_exceptions: bool = False,
        timeout: float | None = None,
        retries: int | None = None,
        priority: int = 0,
    ) -> list[Any]:
        """Run ``name`` once per item and return the results in order.

        Each item is a tuple/list of positional arguments (any other value is
        the single argument).  With ``return_exceptions=True`` a failed task
        puts its exception in its place; otherwise, once all have ended, the
        first failure in order is raised.
        """
        check_options(timeout, retries, None)
        if self._election is not None:
            self._check_leading()
        core, effects = self._core, self._effects
        problem = core.refusal(name)
        if problem is not None:
            raise Rejected(problem[1], code=problem[0])
        batch = Batch()
        items = iter(iterable_of_args)
        deadline = None if timeout is None else trio.current_time() + timeout  # the same for every task
        yielded_at = trio.current_time()
        while True:
            room = core.limits.max_queued - core.unfinished
            window = core.map_window(name, MAP_WINDOW, MAP_CHUNK)
            if room <= 0 or batch.unfinished > window - MAP_CHUNK:
                # Full, or enough of this map() is queued to keep every worker
                # busy: add more as they drain, so that a large map() neither
                # holds the queue against everyone else nor keeps all its
                # records alive.
                if room <= 0:
                    await effects.wait_room(1)
                else:
                    await batch.wait_unfinished(window - MAP_CHUNK)
                if core.draining:
                    raise Rejected("the dispatcher is shutting down and accepts no new tasks", code="draining")
                continue
            args_list = [
                item if type(item) is tuple or type(item) is list else (item,)
                for item in itertools.islice(items, min(room, MAP_CHUNK))
            ]
            if not args_list:
                break
            chunk = core.new_chunk(name, args_list, priority, retries, deadline)
            batch.add(chunk)  # before any checkpoint: one may be cancelled by id from now on
            await self._journal.add_chunk(chunk, args_list)  # journaled before any of them can run
            core.place_chunk(name, chunk, priority)
            effects.flush(wake=core.journaling)
            await effects.write_now()
            # Without a journal nothing above waits: let the connections'
            # readers (results, heartbeats) run at least every MAP_YIELD_EVERY
            # seconds while a large map() is queued (not after every chunk:
            # see docs/PERFORMANCE.md).
            now = trio.current_time()
            if now - yielded_at >= MAP_YIELD_EVERY:
                await trio.lowlevel.checkpoint()
                yielded_at = now
        return await batch.results(return_exceptions)

    async def broadcast(self, message: Any) -> int:
        """Send ``message`` to every connected worker's ``on_message``; returns how many."""
        return self.broadcast_nowait(message)

    def broadcast_nowait(self, message: Any) -> int:
        """:meth:`broadcast` without waiting (it never needs to: sending is queued)."""
        wrapped = m.Message(data=message)
        frame = encode_frame(m.encode(wrapped), self.max_frame_size)  # once, for every worker
        sent = 0
        for session in list(self._core.sessions.values()):
            conn: Connection | None = session.conn
            if conn is not None and not conn.closed:
                try:
                    conn.send_encoded(wrapped, frame)
                    sent += 1
                except ConnectionClosed:
                    pass
        return sent

    async def send(self, peer: Peer, message: Any) -> None:
        """Send a custom message to one peer (a worker's or client's ``on_message``)."""
        conn = self._links.get(peer.id)
        if conn is None or conn.closed or not peer.connected:
            raise ConnectionClosed(f"peer {peer.name!r} is not connected")
        conn.send(m.Message(data=message))

    def cancel_nowait(self, task_id: str, reason: str | None = None) -> bool:
        """Cancel a task: at once if queued, over the wire if running.  False if unknown or ended."""
        cancelled = self._core.cancel(task_id, reason)
        self._effects.flush()
        return cancelled

    def task(self, task_id: str) -> TaskHandle:
        """A handle to a known task by id (raises :class:`UnknownTaskId` if none)."""
        task = self._core.tasks.get(task_id)
        if task is None:
            raise UnknownTaskId(f"no task {task_id!r}")
        return TaskHandle(self._outcomes, task_id, task.name)

    @property
    def workers(self) -> list[Peer]:
        """The workers connected now."""
        return [s.peer for s in self._core.sessions.values() if s.conn is not None]

    async def wait_workers(self, count: int = 1) -> None:
        """Wait until at least ``count`` workers are connected (handy in tests and on_start)."""
        while len(self.workers) < count:
            await trio.sleep(0.01)

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: counts, workers, clients (what ``trioschedule status`` shows)."""
        return status_document(self)

    # ============================================================ schedules
    async def add_schedule(
        self,
        name: str,
        task: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        every: float | None = None,
        start: Any = None,
        cron: str | None = None,
        tz: str | None = None,
        at: Any = None,
        misfire_grace: float | None = None,
        coalesce: str = "latest",
        overlap: str = "skip",
        jitter: float = 0.0,
        timeout: float | None = None,
        retries: int | None = None,
        priority: int = 0,
    ) -> dict[str, Any]:
        """Run ``task(*args, **kwargs)`` in time: ``every`` N seconds, on a ``cron`` expression, or once ``at`` a time.

        ``name`` is the schedule's stable identity: adding the same name
        again updates it (the same definition again changes nothing), so
        ``on_start`` may declare its schedules at every start.  ``start``
        anchors an interval; ``tz`` is the cron expression's IANA zone
        (default UTC) and the zone of a naive ``at``/``start``.
        ``misfire_grace`` (seconds late a run may still start; None: no
        limit), ``coalesce`` (``latest``, ``earliest``, ``all``: what several
        missed fire times become), ``overlap`` (``skip``, ``buffer-one``,
        ``allow``: a run due while the previous one runs) and ``jitter``
        (seconds, deterministic per fire time) are in docs/SCHEDULES.md;
        ``timeout``, ``retries`` and ``priority`` apply to each run as in
        :meth:`submit`.  Returns the schedule's status entry once it is
        journaled.  Raises ValueError for a definition that cannot work.
        """
        self._schedules_ready()
        return await self._schedules.add({
            "name": name, "task": task, "args": args, "kwargs": kwargs, "every": every, "start": start,
            "cron": cron, "tz": tz, "at": at, "misfire_grace": misfire_grace, "coalesce": coalesce,
            "overlap": overlap, "jitter": jitter, "timeout": timeout, "retries": retries, "priority": priority,
        })  # fmt: skip

    async def remove_schedule(self, name: str) -> bool:
        """Remove the schedule ``name`` (its running run goes on); False if there is none."""
        self._schedules_ready()
        return await self._schedules.remove(name)

    async def pause_schedule(self, name: str) -> dict[str, Any]:
        """Stop running ``name`` until :meth:`resume_schedule` (raises :class:`UnknownSchedule`)."""
        self._schedules_ready()
        return await self._schedules.pause(name)

    async def resume_schedule(self, name: str) -> dict[str, Any]:
        """Run ``name`` again from now on (fire times while it was paused are not caught up)."""
        self._schedules_ready()
        return await self._schedules.resume(name)

    async def trigger_schedule(self, name: str) -> str:
        """Run ``name``'s task now, once, besides its fire times; returns the run's task id."""
        self._schedules_ready()
        return await self._schedules.trigger(name)

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule's status entry, by name (the ``schedules`` of :meth:`status`)."""
        return self._schedules.list()

    def _schedules_ready(self) -> None:
        if not self._schedules_open:
            raise RuntimeError("schedules are journaled: add and change them once the dispatcher serves "
                               "(in on_start, say)")  # fmt: skip


class _DispatcherOutcomes:
    """The :class:`~trioschedule._handles.OutcomeSource` of a dispatcher's task handles."""

    __slots__ = ("_dispatcher",)

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def _slot(self, task_id: str) -> OutcomeSlot:
        task = self._dispatcher._core.tasks.get(task_id)
        slot = OutcomeSlot()
        if task is None:
            slot.set(m.Outcome(id=task_id, status=m.UNKNOWN))
        elif task.outcome is not None:
            slot.set(task.outcome)
        elif task.slot is None:
            task.slot = slot
        else:
            slot = task.slot
        return slot

    async def wait_outcome(self, task_id: str) -> m.Outcome:
        return await self._slot(task_id).wait()

    def peek_outcome(self, task_id: str) -> m.Outcome | None:
        task = self._dispatcher._core.tasks.get(task_id)
        return task.outcome if task is not None else None

    async def cancel_task(self, task_id: str, reason: str | None) -> None:
        self._dispatcher.cancel_nowait(task_id, reason)
