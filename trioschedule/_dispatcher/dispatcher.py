"""The dispatcher: accepts tasks, places them on workers, reports how each one ended.

Everything lives in one Trio task tree under :meth:`Dispatcher.serve`: an
accept loop, one handler task per connection (its reader), that connection's
writer and heartbeat tasks, a timer task for delays, deadlines and session
expiry, and a hook task for ``on_task_done``.  State changes happen in plain
synchronous methods (``_accept``, ``_dispatch``, ``_finish``...), so there is
no await between reading a task's state and changing it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import trio

from .._errors import (
    AuthenticationError,
    ConnectionClosed,
    LocalProtocolError,
    ProtocolError,
    QueueFull,
    Rejected,
    RemoteProtocolError,
    TriosError,
    UnknownTaskId,
)
from .._handles import OutcomeSlot, TaskHandle, unwrap, values_of
from .._hooks import HookRunner
from .._net.connection import Connection, describe_address
from .._net.security import Secrets, warn_if_exposed
from .._peer import Peer
from .._protocol import messages as m
from .._protocol.connection import (
    ADMIN,
    DISPATCHER,
    WORKER,
    ProtocolConnection,
    dispatcher_proof,
    new_nonce,
    peer_proof,
    proofs_match,
)
from .._protocol.framing import DEFAULT_MAX_FRAME_SIZE, encode_frame
from .._store.base import Store, StoredTask, open_store
from .._util import IdSequence
from .._util import check_options as _check_options
from .._util import until_closed as _until_closed

__all__ = ["Dispatcher"]

log = logging.getLogger("trioschedule.dispatcher")

MAP_CHUNK = 1000  # map() journals and places tasks this many at a time
MAP_YIELD_EVERY = 0.05  # seconds: how long queuing a map() may keep the event loop to itself
MAP_WINDOW = 4 * MAP_CHUNK  # unfinished tasks one map() keeps at least (more if its workers hold more)
_NO_KWARGS: dict[str, Any] = {}  # shared, never mutated: most tasks have no keyword arguments
QUEUED = "queued"
DELAYED = "delayed"
RUNNING = "running"
DONE = "done"


class _Task:
    """A task as the dispatcher tracks it (one per accepted submission)."""

    __slots__ = (
        "id", "name", "args", "kwargs", "priority", "retries", "deadline", "state", "attempt",
        "failures", "losses", "session", "started", "outcome", "slot", "watchers", "owner",
        "cancel_reason", "submitted_at", "finished_at", "seq", "not_before", "batch", "batch_index", "reclaiming",
        "expires",
    )  # fmt: skip

    def __init__(self, task_id: str, name: str, args: list[Any], kwargs: dict[str, Any], priority: int,
                 retries: int | None, deadline: float | None, owner: Any, seq: int, submitted_at: float) -> None:  # fmt: skip
        self.id = task_id
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.priority = priority
        self.retries = retries
        self.deadline = deadline  # trio clock
        self.state = QUEUED
        self.attempt = 0
        self.failures = 0
        self.losses = 0
        self.session: _WorkerSession | None = None
        self.started = False
        self.outcome: m.Outcome | None = None
        self.slot: OutcomeSlot | None = None  # for handles waiting in this process
        self.batch: _Batch | None = None  # for the map() it belongs to
        self.batch_index = 0  # its place in that map()'s results
        self.reclaiming = False  # asked back from its worker for an idle one
        self.expires = 0.0  # trio clock: when a finished outcome may be forgotten
        self.watchers: list[_ClientState] | None = None
        self.owner = owner
        self.cancel_reason: str | None = None
        self.submitted_at = submitted_at  # wall clock
        self.finished_at = 0.0
        self.seq = seq
        self.not_before: float | None = None  # wall clock, while delayed (journaled)


class _TaskQueue:
    """The queued tasks of one name: higher priority first, first come first served within one.

    A deque per priority level (most workloads use one) instead of a heap:
    O(1) per task.  Tasks that left the queue some other way (cancelled) are
    skipped when they come up, not searched for.
    """

    __slots__ = ("_levels", "_order")

    def __init__(self) -> None:
        self._levels: dict[int, deque[_Task]] = {}
        self._order: list[int] = []  # priorities present, highest first

    def push(self, task: _Task, front: bool = False) -> None:
        level = self._levels.get(task.priority)
        if level is None:
            level = self._levels[task.priority] = deque()
            self._order.append(task.priority)
            self._order.sort(reverse=True)
        if front:
            level.appendleft(task)
        else:
            level.append(task)

    def extend(self, tasks: list[_Task], priority: int) -> None:
        """Queue ``tasks``, all of ``priority``, in order (a ``map()`` chunk)."""
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = deque()
            self._order.append(priority)
            self._order.sort(reverse=True)
        level.extend(tasks)

    def take(self, count: int) -> list[_Task]:
        """Up to ``count`` next tasks still queued, in order."""
        taken: list[_Task] = []
        while count and self._order:
            priority = self._order[0]
            level = self._levels[priority]
            while count and level:
                task = level.popleft()
                if task.state == QUEUED:
                    taken.append(task)
                    count -= 1
            if not level:
                del self._levels[priority]
                self._order.pop(0)
        return taken

    def head_key(self) -> tuple[int, int]:
        """(-priority, submission order) of the next task: orders names against each other."""
        for priority in self._order:
            for task in self._levels[priority]:
                if task.state == QUEUED:
                    return (-priority, task.seq)
        return (0, 0)

    def __bool__(self) -> bool:
        for level in self._levels.values():
            while level and level[0].state != QUEUED:
                level.popleft()  # left the queue some other way: take() would skip it too
            if level:
                return True
        return False


class _WorkerSession:
    """A worker's session: survives a dropped connection for ``session_grace`` seconds."""

    __slots__ = ("id", "peer", "conn", "names", "window", "assigned", "buffer", "buffer_cancel", "last_seq", "acked",
                 "detached_at", "draining", "retries", "no_retry", "expiry")  # fmt: skip

    def __init__(self, session_id: str, peer: Peer, names: frozenset[str] = frozenset(), window: int = 1) -> None:
        self.id = session_id
        self.peer = peer
        self.conn: Connection | None = None
        self.names = names
        self.window = window
        self.assigned: dict[str, _Task] = {}
        self.buffer: list[dict[str, Any]] = []  # TaskSpecs in wire form (m.spec_payload), for the next Run
        self.buffer_cancel: list[str] = []  # held by the worker, wanted by nobody: cancel once connected
        self.last_seq = 0  # the newest Results frame processed
        self.acked = 0  # the newest Results frame we acknowledge (with a journal: once the frame's commit is done)
        self.detached_at: float | None = None
        self.draining = False
        self.retries: dict[str, int] = {}
        self.no_retry: dict[str, tuple[str, ...]] = {}
        self.expiry = 0


class _ClientState:
    """A connected client or admin: where its tasks' outcomes go."""

    __slots__ = ("peer", "conn", "pending", "owned")

    def __init__(self, peer: Peer, conn: Connection) -> None:
        self.peer = peer
        self.conn = conn
        self.pending: list[m.Outcome] = []
        self.owned = 0


class Dispatcher:
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
    * ``drain_grace``: how long :meth:`stop` lets running tasks finish.
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
        heartbeat_interval: float = 2.0,
        heartbeat_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        session_grace: float = 5.0,
        send_timeout: float = 30.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_connections: int = 10_000,
        max_queued: int = 1_000_000,
        max_client_queued: int = 1_000_000,
        max_losses: int = 3,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 60.0,
        cancel_timeout: float | None = None,
        result_ttl: float = 3600.0,
        max_results: int = 10_000,
        drain_grace: float = 30.0,
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
        self.session_grace = session_grace
        self.send_timeout = send_timeout
        self.max_frame_size = max_frame_size
        self.max_connections = max_connections
        self.max_queued = max_queued
        self.max_client_queued = max_client_queued
        self.max_losses = max_losses
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.cancel_timeout = heartbeat_timeout if cancel_timeout is None else cancel_timeout
        self.result_ttl = result_ttl
        self.max_results = max_results
        self.drain_grace = drain_grace

        self._tasks: dict[str, _Task] = {}
        self._queues: dict[str, _TaskQueue] = {}
        self._ready_names: set[str] = set()
        self._sessions: dict[str, _WorkerSession] = {}
        self._by_name: dict[str, set[_WorkerSession]] = {}
        self._clients: dict[str, _ClientState] = {}
        self._connections = 0
        self._timers: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._timer_wakeup = trio.Event()
        self._dirty_sessions: set[_WorkerSession] = set()
        self._dirty_clients: set[_ClientState] = set()
        self._queued_on: set[Connection] = set()  # connections _flush() queued frames on, for _write_now()
        self._finished: deque[_Task] = deque()
        self._room = trio.lowlevel.ParkingLot()
        self._room_waiters = 0
        self._idle = trio.lowlevel.ParkingLot()
        self._seq = 0
        self._unfinished = 0
        self._running = 0
        self._counts = {m.OK: 0, m.ERROR: 0, m.CANCELLED: 0, m.TIMEOUT: 0, m.LOST: 0}
        self._hooks = HookRunner(self, log)
        self._stop_requested = trio.Event()
        self._stop_grace = drain_grace
        self._draining = False
        self._started_at = 0.0
        self._serving = False
        self._journaling = False
        self._task_done_hook = self._hooks.overridden(self.on_task_done)
        self._ids = IdSequence(12)  # task ids unique to this dispatcher instance

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
            listeners: list[Any] = await trio.open_tcp_listeners(self.port, host=self.host)
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

    async def _serve(self, open_listeners: Callable[[], Any], task_status: trio.TaskStatus[int]) -> None:
        if self._serving:
            raise RuntimeError("this Dispatcher is already serving")
        self._serving = True
        try:
            # The journal first: a refused journal must fail before we listen.
            stored = await self.store.open()
            self._store_open = True
            await self._recover(stored)
            try:
                listeners = await open_listeners()
                self.port = _bound_port(listeners, self.port)
                warn_if_exposed(log, self.host, self.secrets, self.ssl_context)
                await self._run(listeners, task_status)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._hooks.call_now(self.on_stop)
                    self._store_open = False
                    try:
                        await self.store.close()
                    except Exception:
                        log.exception("closing the journal %s failed", self.store.url)
        finally:
            self._serving = False
            log.info("%s stopped", self.name)

    async def _run(self, listeners: list[trio.abc.Listener[Any]], task_status: trio.TaskStatus[int]) -> None:
        self._started_at = time.time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_timers)
            nursery.start_soon(self._hooks.run)
            async with trio.open_nursery() as connections:
                accepting = trio.CancelScope()

                async def accept() -> None:
                    with accepting:
                        await trio.serve_listeners(self.handle_stream, listeners, handler_nursery=connections)

                connections.start_soon(accept)
                log.info("%s listening on %s:%s (store %s)", self.name, self.host, self.port, self.store.url)
                task_status.started(self.port)
                # on_start may wait for workers: it runs beside everything else.
                nursery.start_soon(self._hooks.call_now, self.on_start)
                await self._stop_requested.wait()
                await self._drain(self._stop_grace)
                accepting.cancel()
                connections.cancel_scope.cancel()
            nursery.cancel_scope.cancel()

    def stop(self, grace: float | None = None) -> None:
        """Begin a graceful stop: refuse new tasks, let running ones finish within ``grace`` seconds, exit."""
        if grace is not None:
            self._stop_grace = grace
        self._stop_requested.set()

    @property
    def draining(self) -> bool:
        return self._draining

    async def _drain(self, grace: float) -> None:
        self._draining = True
        log.info("draining: %d task(s) running, grace %g s", self._running, grace)
        with trio.move_on_after(grace):
            while self._running:
                await self._idle.park()
        if self._running:
            log.warning("grace period over with %d task(s) still running", self._running)
        reason = "the dispatcher stopped before the task finished"
        if not self.store.durable:
            for task in list(self._tasks.values()):
                if task.state != DONE:
                    self._finish(task, m.Outcome(id=task.id, status=m.LOST, attempt=task.attempt, reason=reason))
        self._flush()
        connections = [c.conn for c in self._clients.values()] + [s.conn for s in self._sessions.values() if s.conn]
        for conn in connections:
            if conn is not None and not conn.closed:
                try:
                    conn.send(m.Goodbye(reason="dispatcher stopping"))
                    with trio.move_on_after(1.0):
                        await conn.flush()
                except ConnectionClosed:
                    pass
        await self.store.flush()

    # ============================================================ connection
    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it closes (public so tests can hand in memory streams)."""
        address = describe_address(stream)
        conn = Connection(
            stream,
            ProtocolConnection(DISPATCHER, max_frame_size=self.max_frame_size),
            send_timeout=self.send_timeout,
            address=address,
        )
        self._connections += 1
        try:
            if self._connections > self.max_connections:
                await conn.send_error("too-many-connections", f"the dispatcher serves at most {self.max_connections} connections")
                log.warning("%s: refused: %d connections is the limit", address, self.max_connections)
                return
            try:
                with trio.fail_after(self.handshake_timeout):
                    hello, welcome_extra = await self._handshake(conn)
            except trio.TooSlowError:
                await conn.send_error("handshake-timeout", f"no complete handshake within {self.handshake_timeout:g} s")
                log.warning("%s: closed: no handshake within %g s", address, self.handshake_timeout)
                return
            await self._serve_peer(conn, hello, welcome_extra)
        except RemoteProtocolError as exc:
            log.warning("%s: closed: protocol error (%s): %s", address, exc.code, exc)
        except AuthenticationError as exc:
            log.warning("%s: closed: authentication failed: %s", address, exc)
        except ConnectionClosed as exc:
            log.info("%s: connection closed: %s", address, exc.reason)
        except Exception:  # a bug while serving one peer must not take the others down
            log.exception("%s: closed after an internal error", address)
        finally:
            self._connections -= 1
            await conn.aclose()

    async def _handshake(self, conn: Connection) -> tuple[m.Hello, dict[str, Any]]:
        hello = await conn.receive_one(m.Hello)
        if hello.version != m.PROTOCOL_VERSION:
            await conn.send_error(
                "version-mismatch", f"this dispatcher speaks protocol version {m.PROTOCOL_VERSION}, not {hello.version}"
            )
            raise RemoteProtocolError(f"peer speaks protocol version {hello.version}", code="version-mismatch")
        try:
            secret = self.secrets.for_role(hello.role)
        except AuthenticationError:
            await conn.send_error("auth-failed", f"authentication failed: the role {hello.role!r} may not connect here")
            raise
        proof = None
        if secret is not None:
            nonce = new_nonce()
            await conn.send_now(m.Challenge(nonce=nonce))
            auth = await conn.receive_one(m.Auth)
            if hello.nonce is None or not proofs_match(peer_proof(secret, hello.role, hello.nonce, nonce), auth.proof):
                await conn.send_error("auth-failed", "authentication failed: check the token for this role")
                raise AuthenticationError(f"{hello.role} {hello.name!r} sent a wrong proof")
            proof = dispatcher_proof(secret, hello.role, hello.nonce, nonce)
        return hello, {"proof": proof}

    async def _serve_peer(self, conn: Connection, hello: m.Hello, extra: dict[str, Any]) -> None:
        peer = Peer(
            id=uuid.uuid4().hex,
            role=hello.role,
            name=hello.name or f"{hello.role}-{hello.pid}",
            address=conn.address,
            pid=hello.pid,
            host=hello.host,
            connected_at=time.time(),
            connection=conn,
        )
        if hello.role == WORKER:
            session, resumed = self._attach_worker(conn, peer, hello)
            welcome = m.Welcome(
                version=m.PROTOCOL_VERSION, session=session.id, heartbeat=self.heartbeat_interval,
                timeout=self.heartbeat_timeout, name=self.name, proof=extra["proof"], resumed=resumed,
                max_frame_size=self.max_frame_size,
            )  # fmt: skip
            serve: Callable[[], Any] = lambda: self._serve_worker(session)
            make_heartbeat: Callable[[], Any] = lambda: m.Heartbeat(ack=session.acked)
            leave: Callable[[bool], None] = lambda clean: self._detach_worker(session, clean)
            peer = session.peer
        else:
            client = _ClientState(peer, conn)
            self._clients[peer.id] = client
            welcome = m.Welcome(
                version=m.PROTOCOL_VERSION, session=peer.id, heartbeat=self.heartbeat_interval,
                timeout=self.heartbeat_timeout, name=self.name, proof=extra["proof"],
                max_frame_size=self.max_frame_size,
            )  # fmt: skip
            serve = lambda: self._serve_client(client)
            leave = lambda clean: self._detach_client(client)
            make_heartbeat = m.Heartbeat

        async def heartbeats() -> None:
            await conn.run_heartbeat(self.heartbeat_interval, self.heartbeat_timeout, make_heartbeat)

        clean = False
        if self._journaling:  # write-ahead: tasks, acknowledgements and outcomes only once journaled
            store = self.store
            flush: Callable[[Any], Awaitable[None]]
            if type(store).mark is not Store.mark:  # frames wait for what was journaled before them only
                conn.write_mark, flush = store.mark, store.flush
            else:  # a store without marks (and perhaps an older flush() without the argument)
                flush = lambda _mark: store.flush()  # noqa: E731
            # A worker gets nothing more once the journal has failed (a task must not
            # run unjournaled); a client still hears why its submissions are refused.
            conn.before_write = flush if hello.role == WORKER else partial(_flush_unless_failed, flush)
        try:
            await conn.send_now(welcome)
            log.info("%s: %s %r connected (pid %d)", conn.address, peer.role, peer.name, peer.pid)
            if hello.role == WORKER:
                for task_id in session.buffer_cancel:
                    conn.send(m.Cancel(id=task_id, reason="the dispatcher no longer expects this task"))
                session.buffer_cancel.clear()
                self._flush()
            await self._hooks.call_now(self.on_connect, peer)
            failure: BaseException | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, conn.run_writer, nursery.cancel_scope)
                nursery.start_soon(_until_closed, heartbeats, nursery.cancel_scope)
                try:
                    clean = await serve()
                except (ConnectionClosed, ProtocolError) as exc:  # raised below, unwrapped
                    failure = exc
                nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
            if not clean and conn.closed_reason:
                raise ConnectionClosed(conn.closed_reason)
        finally:
            peer.connected = False
            leave(clean)
            self._flush()
            with trio.CancelScope(shield=True):
                await self._hooks.call_now(self.on_close, peer)

    # ============================================================== workers
    def _attach_worker(self, conn: Connection, peer: Peer, hello: m.Hello) -> tuple[_WorkerSession, bool]:
        """Attach a worker's connection to its session: a new one, or the one it resumes.

        A worker resumes its session (names it in its hello) whenever that
        session is not attached elsewhere: back within the grace window, or
        after the dispatcher itself restarted.  It keeps the tasks it still
        holds; those it no longer holds go back to the queue; held tasks the
        dispatcher had queued again (its journal lagged) are adopted, and
        held tasks that ended or run elsewhere are cancelled on the worker.
        """
        session = self._sessions.get(hello.session) if hello.session else None
        resumed = hello.session is not None and (session is None or session.conn is None)
        if not resumed:
            session = _WorkerSession(uuid.uuid4().hex, peer)
            self._sessions[session.id] = session
        else:
            assert hello.session is not None
            if session is None:  # a session from before a restart that the journal did not name
                session = self._sessions[hello.session] = _WorkerSession(hello.session, peer)
            held = hello.running
            for task in [t for t in session.assigned.values() if t.id not in held]:
                self._requeue(session, task, lost=task.started)
            peer.done, peer.failed = session.peer.done, session.peer.failed
            session.peer = peer
            session.detached_at = None
            session.expiry += 1
            for task_id, attempt in held.items():
                known = self._tasks.get(task_id)
                if known is not None and known.session is session:
                    known.attempt = max(known.attempt, attempt)
                elif known is not None and known.state in (QUEUED, DELAYED) and attempt >= known.attempt:
                    known.state, known.session, known.attempt, known.started = RUNNING, session, attempt, True
                    known.not_before = None
                    session.assigned[known.id] = known
                    self._running += 1
                    self._journal(known)
                else:
                    session.buffer_cancel.append(task_id)
        assert session is not None
        session.names = peer.tasks = frozenset(hello.tasks)
        session.window = max(1, hello.concurrency + hello.prefetch)
        peer.concurrency = hello.concurrency
        peer.prefetch = hello.prefetch
        peer._running = session.assigned  # noqa: SLF001 - Peer reports the live count
        session.retries = dict(hello.retries)
        session.no_retry = dict(hello.no_retry)
        session.conn = conn
        session.draining = False
        for name in session.names:
            self._by_name.setdefault(name, set()).add(session)
        self._dispatch()
        self._steal_for(session)
        return session, resumed

    def _detach_worker(self, session: _WorkerSession, clean: bool) -> None:
        session.conn = None
        for name in session.names:
            group = self._by_name.get(name)
            if group is not None:
                group.discard(session)
        if clean or not session.assigned:
            self._expire_session(session)
        else:
            session.detached_at = trio.current_time()
            session.expiry += 1
            self._after(self.session_grace, self._expire_session_timer, (session, session.expiry))
        log.info("worker %r detached with %d task(s) assigned", session.peer.name, len(session.assigned))

    def _expire_session_timer(self, arg: tuple[_WorkerSession, int]) -> None:
        session, expiry = arg
        if session.conn is None and session.expiry == expiry:
            self._expire_session(session)

    def _expire_session(self, session: _WorkerSession) -> None:
        """The worker is gone for good: take its tasks back.

        A task counts a loss if the worker said it started it.  A worker can
        die before its "started" report leaves (a task that crashes it at
        once), so the oldest unreported tasks, up to the worker's
        concurrency, count as started too: a poison task cannot loop forever.
        """
        self._sessions.pop(session.id, None)
        tasks = list(session.assigned.values())  # in assignment order
        unreported_slots = max(0, session.peer.concurrency - sum(t.started for t in tasks))
        for task in tasks:
            lost = task.started
            if not lost and unreported_slots:
                lost, unreported_slots = True, unreported_slots - 1
            self._requeue(session, task, lost=lost)
        self._dispatch()

    def _requeue(self, session: _WorkerSession, task: _Task, *, lost: bool) -> None:
        """Take ``task`` back from ``session``; a started attempt counts as lost."""
        del session.assigned[task.id]
        self._running -= 1
        self._return_to_queue(task, lost=lost)

    def _return_to_queue(self, task: _Task, *, lost: bool) -> None:
        task.session = None
        task.started = False
        task.reclaiming = False
        if task.cancel_reason is not None:
            self._finish(task, m.Outcome(id=task.id, status=m.CANCELLED, attempt=task.attempt, reason=task.cancel_reason))
            return
        if lost:
            task.losses += 1
            if task.losses > self.max_losses:
                reason = f"the task's worker was lost {task.losses} times (limit {self.max_losses})"
                log.warning("task %s (%s) given up: %s", task.id, task.name, reason)
                self._finish(task, m.Outcome(id=task.id, status=m.LOST, attempt=task.attempt, reason=reason))
                return
        # ``attempt`` numbers deliveries and only grows, so a late result from
        # an earlier delivery is always recognised; a delivery that never
        # started costs nothing: only ``losses`` and ``failures`` are limited.
        self._enqueue(task, front=True)  # it waited its turn once already
        self._journal(task)
        self._wake_idle()

    async def _serve_worker(self, session: _WorkerSession) -> bool:
        conn = session.conn
        assert conn is not None
        while True:
            messages = await conn.receive_batch()
            for message in messages:
                kind = type(message)
                if kind is m.Results:
                    self._on_results(session, message)
                elif kind is m.Heartbeat:
                    pass
                elif kind is m.Message:
                    self._hooks.call(self.on_message, session.peer, message.data)
                elif kind is m.Release:
                    self._on_release(session, message)
                elif kind is m.Goodbye:
                    self._flush()
                    return True
            # Acknowledged with the next frame to this worker, which a worker
            # takes as leave to drop those results.  With a journal, each frame
            # waits in the writer task for the commit of everything journaled
            # before it was queued (Connection.before_write): these outcomes,
            # and the starts of the tasks it carries.  So neither overtakes the
            # journal, and this reader goes on reading meanwhile instead of
            # waiting for every commit (one fsync) with the worker idle.
            session.acked = session.last_seq
            if self._journaling:
                self._flush(wake=True)
            else:
                self._flush(wake=False)
                await self._write_now()  # its next tasks (and outcomes to clients) from this task

    def _on_results(self, session: _WorkerSession, results: m.Results) -> None:
        if results.seq > session.last_seq:
            session.last_seq = results.seq
        assigned = session.assigned
        for task_id in results.started:
            task = assigned.get(task_id)
            if task is not None:
                task.started = True
        peer = session.peer
        now, wall = trio.current_time(), time.time()
        for outcome in results.results:
            task = assigned.get(outcome.id)
            if task is None or task.attempt != outcome.attempt:
                continue  # a stale attempt, or a result already counted: report once
            del assigned[outcome.id]
            self._running -= 1
            task.session = None
            if outcome.status == m.OK:
                peer.done += 1
                self._finish(task, outcome, now, wall)
            else:
                peer.failed += 1
                self._attempt_failed(session, task, outcome)
        if not self._running:
            self._wake_idle()
        self._dispatch()
        if len(assigned) < peer.concurrency:
            self._steal_for(session)

    def _on_release(self, session: _WorkerSession, release: m.Release) -> None:
        if release.stopping:
            session.draining = True
        for task_id in release.ids:
            task = session.assigned.get(task_id)
            if task is not None and not task.started:
                self._requeue(session, task, lost=False)
        self._dispatch()

    def _steal_for(self, hungry: _WorkerSession) -> None:
        """Work stealing: a worker with idle runners and nothing queued for it gets prefetched tasks back.

        Prefetching keeps fast workers busy, but a long task would otherwise
        hold the tasks queued behind it on its worker while another worker
        sits idle (Celery's complaint).  The dispatcher asks the worker with
        the most unstarted tasks to hand back as many as the idle worker can
        start now; they are requeued without costing an attempt.
        """
        idle = hungry.peer.concurrency - len(hungry.assigned)
        if idle <= 0 or hungry.draining or hungry.conn is None or self._running == len(hungry.assigned):
            return  # (the last: no other worker holds anything to hand over)
        names = hungry.names
        if any(self._queues.get(name) for name in names):
            return  # plain dispatching will feed it
        best: list[_Task] = []
        donor: _WorkerSession | None = None
        for name in names:
            for session in self._by_name.get(name, ()):
                if session is hungry or session.conn is None or len(session.assigned) <= session.peer.concurrency:
                    continue
                spare = [t for t in session.assigned.values() if not t.started and not t.reclaiming and t.name in names]
                if len(spare) > len(best):
                    best, donor = spare, session
        if donor is None or not best:
            return
        take = best[-idle:]  # the newest: they would have waited longest
        for task in take:
            task.reclaiming = True
        self._send_to(donor, m.Reclaim(ids=tuple(t.id for t in take)))

    def _attempt_failed(self, session: _WorkerSession, task: _Task, outcome: m.Outcome) -> None:
        if outcome.status == m.CANCELLED and task.cancel_reason is None:
            # Nobody asked: the worker gave the task up (it was stopping). Run it elsewhere.
            self._return_to_queue(task, lost=True)
            return
        if outcome.status == m.ERROR and task.cancel_reason is None and not self._draining:
            limit = task.retries if task.retries is not None else session.retries.get(task.name, 0)
            error_type = outcome.error.type if outcome.error else ""
            if task.failures < limit and error_type not in session.no_retry.get(task.name, ()):
                task.failures += 1
                backoff = min(self.retry_backoff_max, self.retry_backoff * 2 ** (task.failures - 1))
                delay = random.uniform(backoff / 2, backoff)  # "equal jitter": never retry at once
                log.info("task %s (%s) failed with %s; retry %d/%d in %.2f s",
                         task.id, task.name, error_type, task.failures, limit, delay)  # fmt: skip
                self._delay(task, delay)
                self._journal(task)
                return
        if task.cancel_reason is not None and outcome.status in (m.CANCELLED, m.ERROR):
            outcome = m.Outcome(id=task.id, status=m.CANCELLED, attempt=outcome.attempt, reason=task.cancel_reason)
        self._finish(task, outcome)

    # ============================================================== clients
    def _detach_client(self, client: _ClientState) -> None:
        self._clients.pop(client.peer.id, None)
        self._dirty_clients.discard(client)

    async def _serve_client(self, client: _ClientState) -> bool:
        conn = client.conn
        is_admin = client.peer.role == ADMIN
        while True:
            messages = await conn.receive_batch()
            for message in messages:
                kind = type(message)
                if kind is m.Submit:
                    await self._on_submit(client, message)
                elif kind is m.Watch:
                    self._on_watch(client, message.ids)
                elif kind is m.Cancel:
                    self.cancel_nowait(message.id, message.reason)
                elif kind is m.Broadcast:
                    try:
                        self.broadcast_nowait(message.data)
                    except LocalProtocolError as exc:
                        log.warning("%s: broadcast from %r dropped: %s", conn.address, client.peer.name, exc)
                elif kind is m.Message:
                    self._hooks.call(self.on_message, client.peer, message.data)
                elif kind is m.Heartbeat:
                    pass
                elif kind is m.StatusRequest and is_admin:
                    conn.send(m.StatusReply(status=self.status()))
                elif kind is m.Stop and is_admin:
                    grace = self.drain_grace if message.grace is None else message.grace
                    conn.send(m.Stopping(grace=grace))
                    log.info("stop requested by %s (%s), grace %g s", client.peer.name, conn.address, grace)
                    self.stop(grace)
                elif kind is m.Goodbye:
                    if message.cancel_pending:
                        self._cancel_owned(client, "the client that submitted it left")
                    self._flush()
                    return True
            self._flush(wake=False)
            await self._write_now()

    async def _on_submit(self, client: _ClientState, submit: m.Submit) -> None:
        accepted: list[str] = []
        rejected: list[m.Rejection] = []
        new: list[tuple[_Task, float | None]] = []
        for sub in submit.tasks:
            existing = self._tasks.get(sub.id)
            if existing is not None:  # a resubmission after a reconnect: idempotent
                accepted.append(sub.id)
                self._watch(existing, client)
                continue
            problem = self._refusal(sub.name)
            if problem is None and client.owned >= self.max_client_queued:
                problem = ("limit", f"this client already has {client.owned} unfinished tasks (limit {self.max_client_queued})")
            if problem is None and self._unfinished >= self.max_queued:
                if submit.wait:
                    self._dispatch()
                    self._flush()
                    await self._wait_room(1)
                    problem = self._refusal(sub.name)
                else:
                    problem = ("queue-full", f"the dispatcher's queue is full ({self.max_queued} unfinished tasks)")
            if problem is not None:
                rejected.append(m.Rejection(id=sub.id, code=problem[0], message=problem[1]))
                continue
            if sub.timeout is not None or sub.retries is not None or sub.delay is not None:
                try:
                    _check_options(sub.timeout, sub.retries, sub.delay)
                except ValueError as exc:
                    rejected.append(m.Rejection(id=sub.id, code="bad-request", message=str(exc)))
                    continue
            task = self._new_task(sub.id, sub.name, sub.args, sub.kwargs, sub.priority, sub.retries, sub.timeout, sub.delay, client)
            task.watchers = [client]  # new: nobody else watches it yet
            client.owned += 1
            new.append((task, sub.delay))
            accepted.append(sub.id)
        if new:
            try:
                await self._persist([task for task, _ in new])
            except TriosError as exc:  # the journal failed: refuse, never pretend
                log.error("journal %s failed; refusing %d submission(s): %s", self.store.url, len(new), exc)
                for task, _ in new:
                    del self._tasks[task.id]
                    self._unfinished -= 1
                    client.owned -= 1
                    accepted.remove(task.id)
                    rejected.append(m.Rejection(id=task.id, code="store-failed", message=f"the dispatcher's journal failed: {exc}"))
                new = []
            for task, delay in new:
                self._place(task, delay)
            self._dispatch()
        client.conn.send(m.Accepted(ids=tuple(accepted), rejected=tuple(rejected)))

    def _refusal(self, name: str) -> tuple[str, str] | None:
        if self._draining:
            return ("draining", "the dispatcher is shutting down and accepts no new tasks")
        if not name:
            return ("bad-request", "a task name must not be empty")
        return None

    def _on_watch(self, client: _ClientState, ids: Iterable[str]) -> None:
        for task_id in ids:
            task = self._tasks.get(task_id)
            if task is None:
                client.pending.append(m.Outcome(id=task_id, status=m.UNKNOWN))
                self._dirty_clients.add(client)
            else:
                self._watch(task, client)

    def _watch(self, task: _Task, client: _ClientState) -> None:
        if task.outcome is not None:
            client.pending.append(task.outcome)
            self._dirty_clients.add(client)
        elif task.watchers is None:
            task.watchers = [client]
        elif client not in task.watchers:
            task.watchers.append(client)

    def _cancel_owned(self, client: _ClientState, reason: str) -> None:
        for task in list(self._tasks.values()):
            if task.owner is client and task.state != DONE:
                self.cancel_nowait(task.id, reason)

    # =========================================================== task flow
    def _new_task(self, task_id: str, name: str, args: Any, kwargs: Any, priority: int, retries: int | None,
                  timeout: float | None, delay: float | None, owner: Any) -> _Task:  # fmt: skip
        deadline = trio.current_time() + timeout if timeout is not None else None
        self._seq += 1
        task = _Task(task_id, name, args, kwargs or _NO_KWARGS, priority, retries, deadline, owner, self._seq, time.time())
        if delay:
            task.state = DELAYED
            task.not_before = time.time() + delay
        self._tasks[task_id] = task
        self._unfinished += 1
        return task

    def _new_tasks(self, name: str, args_list: list[Any], priority: int, retries: int | None,
                   deadline: float | None) -> list[_Task]:  # fmt: skip
        """The tasks of one ``map()`` chunk: the same options, ids from the dispatcher's sequence."""
        count = len(args_list)
        seq = self._seq + 1
        self._seq += count
        wall = time.time()
        chunk = [
            _Task(task_id, name, args, _NO_KWARGS, priority, retries, deadline, None, seq + i, wall)
            for i, (task_id, args) in enumerate(zip(self._ids.take(count), args_list))
        ]
        self._tasks.update([(task.id, task) for task in chunk])
        self._unfinished += count
        return chunk

    def _map_window(self, name: str) -> int:
        """How many unfinished tasks one ``map()`` may have: twice what the workers offering ``name`` hold, or more."""
        capacity = sum(session.window for session in self._by_name.get(name, ()) if session.conn is not None)
        return max(MAP_WINDOW, 2 * capacity + MAP_CHUNK)

    def _place_chunk(self, name: str, chunk: list[_Task], priority: int) -> None:
        """Queue a ``map()`` chunk (tasks cancelled meanwhile stay finished)."""
        live = [task for task in chunk if task.state == QUEUED]
        if live and live[0].deadline is not None:
            for task in live:
                self._at(task.deadline, self._deadline_passed, task)  # type: ignore[arg-type]
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _TaskQueue()
        queue.extend(live, priority)
        self._ready_names.add(name)

    def _enqueue(self, task: _Task, *, front: bool = False) -> None:
        task.state = QUEUED
        queue = self._queues.get(task.name)
        if queue is None:
            queue = self._queues[task.name] = _TaskQueue()
        queue.push(task, front)
        self._ready_names.add(task.name)

    def _delay_over(self, task: _Task) -> None:
        if task.state == DELAYED:
            task.not_before = None
            self._enqueue(task)
            self._dispatch()

    def _deadline_passed(self, task: _Task) -> None:
        if task.state == DONE:
            return
        if task.state == RUNNING:
            # The worker enforces the deadline itself and will report; if it has
            # gone quiet, the dispatcher gives it up shortly after.
            self._after(self.heartbeat_timeout, self._deadline_enforced, task)
            return
        self._finish(task, m.Outcome(id=task.id, status=m.TIMEOUT, attempt=task.attempt, reason="deadline passed while queued"))

    def _deadline_enforced(self, task: _Task) -> None:
        if task.state == RUNNING and task.session is not None:
            session = task.session
            del session.assigned[task.id]
            self._running -= 1
            if session.conn is not None:
                self._send_to(session, m.Cancel(id=task.id, reason="deadline passed"))
            task.session = None
            self._finish(task, m.Outcome(id=task.id, status=m.TIMEOUT, attempt=task.attempt, reason="deadline passed; the worker did not report in time"))
            self._dispatch()

    def _dispatch(self) -> None:
        """Give queued tasks to workers that offer them and have room, least loaded first."""
        if not self._ready_names or self._draining:
            return
        ready = self._ready_names
        order = sorted(ready, key=lambda n: self._queues[n].head_key()) if len(ready) > 1 else list(ready)
        for name in order:
            queue = self._queues[name]
            candidates = [
                (len(s.assigned) / s.window, i, s)
                for i, s in enumerate(self._by_name.get(name, ()))
                if s.conn is not None and not s.draining and len(s.assigned) < s.window
            ]
            if candidates:
                heapq.heapify(candidates)
                now = trio.current_time()
                while candidates:
                    _, i, session = heapq.heappop(candidates)
                    room = session.window - len(session.assigned)
                    if candidates:
                        # Up to where it would be more loaded than the next least loaded one.
                        room = min(room, max(1, math.ceil((candidates[0][0] - len(session.assigned) / session.window) * session.window)))
                    tasks = queue.take(room)
                    if tasks:
                        self._assign_all(tasks, session, now)
                    if len(tasks) < room:
                        break  # the queue is empty
                    if len(session.assigned) < session.window:
                        heapq.heappush(candidates, (len(session.assigned) / session.window, i, session))
            if not queue:
                ready.discard(name)

    def _assign_all(self, tasks: list[_Task], session: _WorkerSession, now: float) -> None:
        """Hand ``tasks`` to ``session``: they go out in its next Run frame (see :meth:`_flush`)."""
        assigned, buffer, journaling = session.assigned, session.buffer, self._journaling
        spec_payload = m.spec_payload
        first: list[str] | None = [] if journaling and self._narrow else None  # first attempts: journaled as one
        for task in tasks:
            task.state = RUNNING
            attempt = task.attempt = task.attempt + 1
            task.session = session
            task.started = False
            assigned[task.id] = task
            deadline = task.deadline
            buffer.append(spec_payload(task.id, task.name, task.args, task.kwargs, attempt,
                                       None if deadline is None else max(0.0, deadline - now)))  # fmt: skip
            if journaling:
                if first is not None and attempt == 1 and not task.failures and not task.losses:
                    first.append(task.id)
                else:
                    self._journal(task)
        if first:
            self.store.update_running_many(first, 1, 0, 0, session.id)
        self._running += len(tasks)
        self._dirty_sessions.add(session)

    def _finish(self, task: _Task, outcome: m.Outcome, now: float | None = None, wall: float | None = None) -> None:
        """Record the one outcome of ``task`` and tell everyone who waits for it.

        ``now`` (trio clock) and ``wall`` (``time.time()``) may be passed in
        by a caller that finishes many tasks at once.
        """
        if task.state == DONE:
            return
        if task.state == RUNNING and task.session is not None:
            task.session.assigned.pop(task.id, None)
            self._running -= 1
            task.session = None
        task.state = DONE
        task.outcome = outcome
        task.finished_at = time.time() if wall is None else wall
        task.expires = (trio.current_time() if now is None else now) + self.result_ttl
        self._unfinished -= 1
        counts = self._counts
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if task.owner is not None:
            task.owner.owned -= 1
        task.args = task.kwargs = None  # type: ignore[assignment]  # not needed any more
        # A map() task nobody else looked up goes with its outcome to map() alone:
        # its id was never handed out, so it is not kept for reattaching (and a
        # large map() does not push everyone else's outcomes out of max_results).
        private = task.batch is not None and task.slot is None and not task.watchers
        if task.slot is not None:
            task.slot.set(outcome)
        if task.batch is not None:
            task.batch.one_done(task.batch_index, outcome)
            task.batch = None
        if task.watchers:
            for client in task.watchers:
                client.pending.append(outcome)
                self._dirty_clients.add(client)
            task.watchers = None
        if private:
            self._forget(task)  # journaled as forgotten: its outcome is never needed again
        else:
            finished = self._finished
            finished.append(task)
            if len(finished) > self.max_results:
                self._forget(finished.popleft())
            if self._journaling:
                self._journal(task)
        if self._room_waiters:  # someone waits for room in the queue
            self._room.unpark()
        if self._task_done_hook:
            self._hooks.call(self.on_task_done, task.id, task.name, outcome)

    def _forget(self, task: _Task) -> None:
        if self._tasks.get(task.id) is task:
            del self._tasks[task.id]
            if self._journaling:
                self.store.forget([task.id])

    def _wake_idle(self) -> None:
        if not self._running and self._idle:  # unpark_all() costs microseconds even with nobody parked
            self._idle.unpark_all()

    def _flush(self, wake: bool = True) -> None:
        """Send what the last state changes produced: task batches to workers, outcomes to clients.

        ``wake=False`` leaves the connections' writer tasks asleep; the caller
        must then ``await self._write_now()`` (which wakes them if it is
        interrupted).
        """
        while self._dirty_sessions:
            session = self._dirty_sessions.pop()
            if session.buffer and session.conn is not None:
                conn = session.conn
                if not wake:
                    self._queued_on.add(conn)
                batch, session.buffer = session.buffer, []
                try:
                    conn.send_payload(m.Run, m.encode_run(batch, session.acked), wake=wake)
                except ConnectionClosed:
                    pass  # its reader notices; the tasks are requeued from session.assigned
                except LocalProtocolError:  # too large, or not JSON: split it up
                    _send_split(partial(_send_run, conn, session.acked, wake), batch,
                                partial(self._unsendable_task, session))  # fmt: skip
        while self._dirty_clients:
            client = self._dirty_clients.pop()
            if client.pending:
                if not wake:
                    self._queued_on.add(client.conn)
                outcomes, client.pending = client.pending, []
                _send_split(partial(_send_outcomes, client.conn, wake), outcomes,
                            partial(self._unsendable_outcome, client))  # fmt: skip

    async def _write_now(self) -> None:
        """Write what :meth:`_flush` queued, from this task (no writer wake-ups on the way)."""
        queued = self._queued_on
        try:
            while queued:
                await queued.pop().write_now()
        finally:
            while queued:  # interrupted: the writer tasks take over
                queued.pop().wake_writer()

    def _unsendable_task(self, session: _WorkerSession, spec: dict[str, Any], exc: Exception) -> None:
        task = session.assigned.get(spec["id"])
        if task is not None and task.attempt == spec.get("attempt", 1):
            error = m.RemoteError(type="EncodingError", message=f"the task cannot be sent to a worker: {exc}")
            self._finish(task, m.Outcome(id=task.id, status=m.ERROR, attempt=task.attempt, error=error))

    def _unsendable_outcome(self, client: _ClientState, outcome: m.Outcome, exc: Exception) -> None:
        error = m.RemoteError(type="EncodingError", message=f"the task's outcome cannot be sent: {exc}")
        replacement = m.Outcome(id=outcome.id, status=m.ERROR, attempt=outcome.attempt, error=error)
        _send_split(partial(_send_outcomes, client.conn, True), [replacement], lambda *_: None)

    def _send_to(self, session: _WorkerSession, message: Any) -> None:
        conn = session.conn
        if conn is None:
            return
        try:
            conn.send(message)
        except ConnectionClosed:
            pass  # the reader notices and the session's grace period starts
        except LocalProtocolError as exc:
            log.warning("cannot send %s to worker %r: %s", type(message).TYPE, session.peer.name, exc)

    # ================================================================ timers
    def _at(self, when: float, callback: Callable[[Any], None], arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, callback, arg))
        if self._timers[0][1] == self._seq:
            self._timer_wakeup.set()

    def _after(self, delay: float, callback: Callable[[Any], None], arg: Any) -> None:
        self._at(trio.current_time() + delay, callback, arg)

    async def _run_timers(self) -> None:
        self._after(min(60.0, self.result_ttl), self._purge, None)
        while True:
            now = trio.current_time()
            fired = False
            while self._timers and self._timers[0][0] <= now:
                _, _, callback, arg = heapq.heappop(self._timers)
                callback(arg)
                fired = True
            if fired:
                self._flush()
            next_at = self._timers[0][0] if self._timers else math.inf
            self._timer_wakeup = trio.Event()
            with trio.move_on_at(next_at):
                await self._timer_wakeup.wait()

    def _purge(self, _: Any) -> None:
        """Forget outcomes older than ``result_ttl`` (on the trio clock, so tests can mock it)."""
        now = trio.current_time()
        finished = self._finished
        while finished and finished[0].expires <= now:
            self._forget(finished.popleft())
        self._after(min(60.0, self.result_ttl), self._purge, None)

    # ========================================================= persistence
    _narrow = False  # the store takes update_running/update_done (set with _store_open)
    _unstructure_outcome = staticmethod(m.converter.get_unstructure_hook(m.Outcome))

    @property
    def _store_open(self) -> bool:
        return self._journaling

    @_store_open.setter
    def _store_open(self, value: bool) -> None:
        # One attribute read on the hot path instead of two.
        self._journaling = value and self.store.durable
        # Running and done are journaled as narrow updates if the store has them (docs/STORE.md).
        self._narrow = self._journaling and type(self.store).narrow_updates()

    async def _persist(self, tasks: list[_Task]) -> None:
        """Journal newly accepted tasks; return once they are durable."""
        if self._journaling and tasks:
            now_trio, now_wall = trio.current_time(), time.time()
            if all(t.attempt == 0 and t.state != DONE for t in tasks):  # as accepted: only what is not a default
                await self.store.add_new([
                    (t.id, t.name, t.args, t.kwargs, t.priority, t.retries,
                     None if t.deadline is None else now_wall + (t.deadline - now_trio), t.not_before, t.submitted_at)
                    for t in tasks
                ])  # fmt: skip
            else:
                await self.store.add([self._stored(t, now_trio, now_wall) for t in tasks])

    async def _persist_chunk(self, chunk: list[_Task], args_list: list[Any]) -> None:
        """:meth:`_persist` for a ``map()`` chunk (see :meth:`_new_tasks`): the tasks differ only in id and args."""
        if self._journaling and chunk:
            first = chunk[0]
            deadline = first.deadline
            if deadline is not None:
                deadline = time.time() + (deadline - trio.current_time())
            await self.store.add_new_many(
                [task.id for task in chunk], args_list, first.name, first.kwargs, first.priority, first.retries,
                deadline, first.not_before, first.submitted_at,
            )  # fmt: skip

    def _journal(self, task: _Task) -> None:
        if self._journaling:
            if self._narrow:
                state = task.state
                if state == RUNNING and task.session is not None:
                    self.store.update_running(task.id, task.attempt, task.failures, task.losses, task.session.id)
                    return
                if state == DONE and task.outcome is not None:
                    self.store.update_done(
                        task.id, task.attempt, task.failures, task.losses, self._unstructure_outcome(task.outcome),
                        task.finished_at,
                    )  # fmt: skip
                    return
            self.store.update(self._stored(task))

    def _stored(self, task: _Task, now_trio: float | None = None, now_wall: float | None = None) -> StoredTask:
        if now_trio is None or now_wall is None:
            now_trio, now_wall = trio.current_time(), time.time()
        return StoredTask(
            id=task.id, name=task.name, args=task.args or [], kwargs=task.kwargs or {}, priority=task.priority,
            retries=task.retries, deadline=None if task.deadline is None else now_wall + (task.deadline - now_trio),
            not_before=task.not_before, state=task.state if task.state != DELAYED else QUEUED,
            attempt=task.attempt, failures=task.failures, losses=task.losses,
            session=task.session.id if task.session else None,
            outcome=None if task.outcome is None else m.converter.unstructure(task.outcome),
            submitted_at=task.submitted_at, finished_at=task.finished_at or None,
        )  # fmt: skip

    async def _recover(self, stored: list[StoredTask]) -> None:
        """Rebuild the live state from the journal after a restart.

        Queued tasks are queued again (delayed ones keep their time).  A task
        that was running stays with its worker's session, detached: if the
        worker reconnects within ``session_grace`` and still holds it, it
        carries on and nothing runs twice; otherwise it is requeued with a
        loss counted.  Outcomes within ``result_ttl`` are kept for reattaching.
        """
        if self._journaling:
            # Tasks submitted before the journal opened: whole, so that the
            # narrow updates that follow (see _journal) find them there.
            for task in list(self._tasks.values()):
                self.store.update(self._stored(task))
        if not stored:
            return
        now_trio, now_wall = trio.current_time(), time.time()
        cutoff = now_wall - self.result_ttl
        expired: list[str] = []
        detached: dict[str, _WorkerSession] = {}
        requeued = 0
        for row in stored:
            if row.state == DONE:
                if row.outcome is None or (row.finished_at or now_wall) < cutoff:
                    expired.append(row.id)
                    continue
            deadline = None if row.deadline is None else now_trio + (row.deadline - now_wall)
            self._seq += 1
            task = _Task(row.id, row.name, row.args, row.kwargs, row.priority, row.retries, deadline, None, self._seq,
                         row.submitted_at)  # fmt: skip
            task.attempt, task.failures, task.losses = row.attempt, row.failures, row.losses
            self._tasks[task.id] = task
            if row.state == DONE:
                task.state = DONE
                task.outcome = m.converter.structure(row.outcome, m.Outcome)
                task.finished_at = row.finished_at or now_wall
                task.expires = now_trio + self.result_ttl - (now_wall - task.finished_at)
                task.args = task.kwargs = None  # type: ignore[assignment]
                self._finished.append(task)
                continue
            self._unfinished += 1
            if deadline is not None:
                self._at(deadline, self._deadline_passed, task)
            if row.state == RUNNING and row.session:
                session = detached.get(row.session)
                if session is None:
                    peer = Peer(id=row.session, role=WORKER, name=f"worker of session {row.session[:8]}", address="", connected=False)
                    session = detached[row.session] = _WorkerSession(row.session, peer)
                    peer._running = session.assigned  # noqa: SLF001
                    self._sessions[row.session] = session
                task.state = RUNNING
                task.session = session
                task.started = True  # it may well have been: count a loss unless its worker comes back
                session.assigned[task.id] = task
                self._running += 1
                continue
            if row.not_before is not None and row.not_before > now_wall:
                task.state = DELAYED
                task.not_before = row.not_before
                self._after(row.not_before - now_wall, self._delay_over, task)
            else:
                self._enqueue(task)
            self._journal(task)
            requeued += 1
        for session in detached.values():
            session.detached_at = now_trio
            session.expiry += 1
            self._after(self.session_grace, self._expire_session_timer, (session, session.expiry))
        while len(self._finished) > self.max_results:
            expired.append(self._finished.popleft().id)
            del self._tasks[expired[-1]]
        if expired:
            self.store.forget(expired)
        log.info(
            "recovered from %s: %d task(s) queued, %d running on %d worker session(s) awaiting their worker, "
            "%d outcome(s) kept, %d expired",
            self.store.url, requeued, self._running, len(detached), len(self._finished), len(expired),
        )  # fmt: skip

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
        task = self._submit_now(name, args, kwargs, timeout, retries, delay, priority, task_id, wake=True)
        return TaskHandle(self, task.id, name)

    def _submit_now(self, name: str, args: Iterable[Any], kwargs: dict[str, Any] | None, timeout: float | None,
                    retries: int | None, delay: float | None, priority: int, task_id: str | None, *,
                    wake: bool) -> _Task:  # fmt: skip
        problem = self._refusal(name)
        if problem is not None:
            raise Rejected(problem[1], code=problem[0])
        if self._unfinished >= self.max_queued:
            raise QueueFull()
        task = self._submit_one(name, args, kwargs, timeout, retries, delay, priority, task_id)
        if delay or not self._assign_at_once(task):
            self._place(task, delay)
            self._journal(task)  # durable soon (group commit); submit() waits for it
            self._dispatch()
        self._flush(wake)
        return task

    def _submit_one(self, name: str, args: Iterable[Any], kwargs: dict[str, Any] | None, timeout: float | None,
                    retries: int | None, delay: float | None, priority: int, task_id: str | None) -> _Task:  # fmt: skip
        _check_options(timeout, retries, delay)
        task_id = task_id or self._ids.next()
        if task_id in self._tasks:
            raise Rejected(f"a task with id {task_id!r} exists already", code="duplicate")
        return self._new_task(task_id, name, list(args), kwargs, priority, retries, timeout, delay, None)

    def _assign_at_once(self, task: _Task) -> bool:
        """Give a new task straight to the least loaded worker with room, if none of its name are queued.

        What queuing it and then dispatching would do, without the queue: a
        single ``submit()``/``call()`` is latency, and this is its path.
        """
        queue = self._queues.get(task.name)
        if self._draining or (queue is not None and queue):
            return False
        best: _WorkerSession | None = None
        best_load = 1.0
        for session in self._by_name.get(task.name, ()):
            if session.conn is not None and not session.draining:
                load = len(session.assigned) / session.window
                if load < best_load:
                    best, best_load = session, load
        if best is None:
            return False
        if task.deadline is not None:
            self._at(task.deadline, self._deadline_passed, task)
        self._journal(task)  # as queued first: the journal's row for it (submit() waits for it)
        self._assign_all([task], best, trio.current_time())
        return True

    def _place(self, task: _Task, delay: float | None) -> None:
        if task.deadline is not None:
            self._at(task.deadline, self._deadline_passed, task)
        if delay:
            self._delay(task, delay)
        else:
            self._enqueue(task)

    def _delay(self, task: _Task, delay: float) -> None:
        task.state = DELAYED
        task.not_before = time.time() + delay
        self._after(delay, self._delay_over, task)

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
        await self._wait_room(1)
        journaling = self._journaling
        task = self._submit_now(name, args, kwargs, timeout, retries, delay, priority, task_id, wake=journaling)
        if journaling:
            await self.store.flush()
        await self._write_now()  # on its way now, not after a writer wakes
        return TaskHandle(self, task.id, name)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Submit ``name(*args, **kwargs)`` and wait for its value (raises if the task failed)."""
        # submit() and handle.result() without the handle: this is a round trip's latency.
        if self._unfinished >= self.max_queued:
            await self._wait_room(1)
        journaling = self._journaling
        task = self._submit_now(name, args, kwargs, None, None, None, 0, None, wake=journaling)
        if task.outcome is not None:  # it ended at once (its arguments could not be sent)
            return unwrap(task.outcome)
        slot = task.slot = OutcomeSlot()  # before anything else can finish it
        if journaling:
            await self.store.flush()
        await self._write_now()
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
        _check_options(timeout, retries, None)
        problem = self._refusal(name)
        if problem is not None:
            raise Rejected(problem[1], code=problem[0])
        batch = _Batch()
        items = iter(iterable_of_args)
        deadline = None if timeout is None else trio.current_time() + timeout  # the same for every task
        yielded_at = trio.current_time()
        while True:
            room = self.max_queued - self._unfinished
            if room <= 0:
                await self._wait_room(1)
                if self._draining:
                    raise Rejected("the dispatcher is shutting down and accepts no new tasks", code="draining")
                continue
            window = self._map_window(name)
            if batch.unfinished > window - MAP_CHUNK:
                # Enough of this map() is queued to keep every worker busy: add
                # more as they drain, so that a large map() neither holds the
                # queue against everyone else nor keeps all its records alive.
                await batch.wait_unfinished(window - MAP_CHUNK)
                if self._draining:
                    raise Rejected("the dispatcher is shutting down and accepts no new tasks", code="draining")
                continue
            args_list = [
                item if type(item) is tuple or type(item) is list else (item,)
                for item in itertools.islice(items, min(room, MAP_CHUNK))
            ]
            if not args_list:
                break
            chunk = self._new_tasks(name, args_list, priority, retries, deadline)
            batch.add(chunk)  # before any checkpoint: one may be cancelled by id from now on
            await self._persist_chunk(chunk, args_list)  # journaled before any of them can run
            self._place_chunk(name, chunk, priority)
            self._dispatch()
            self._flush(wake=self._journaling)
            await self._write_now()
            # Without a journal nothing above waits: let the connections' readers
            # (results, heartbeats) run at least every MAP_YIELD_EVERY seconds
            # while a large map() is queued.  Not after every chunk: measured,
            # interleaving that often made W1 5-8% slower.
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
        for session in list(self._sessions.values()):
            conn = session.conn
            if conn is not None and not conn.closed:
                try:
                    conn.send_encoded(wrapped, frame)
                    sent += 1
                except ConnectionClosed:
                    pass
        return sent

    async def send(self, peer: Peer, message: Any) -> None:
        """Send a custom message to one peer (a worker's or client's ``on_message``)."""
        conn = peer._connection  # noqa: SLF001
        if conn is None or conn.closed or not peer.connected:
            raise ConnectionClosed(f"peer {peer.name!r} is not connected")
        conn.send(m.Message(data=message))

    def cancel_nowait(self, task_id: str, reason: str | None = None) -> bool:
        """Cancel a task: at once if queued, over the wire if running.  False if unknown or ended."""
        task = self._tasks.get(task_id)
        if task is None or task.state == DONE:
            return False
        reason = reason or "cancelled"
        if task.state == RUNNING and task.session is not None and task.session.conn is not None:
            if task.cancel_reason is None:
                task.cancel_reason = reason
                self._send_to(task.session, m.Cancel(id=task.id, reason=reason))
                self._after(self.cancel_timeout, self._cancel_unacknowledged, task)
            return True
        self._finish(task, m.Outcome(id=task.id, status=m.CANCELLED, attempt=task.attempt, reason=reason))
        self._dispatch()
        self._flush()
        return True

    def _cancel_unacknowledged(self, task: _Task) -> None:
        if task.state == RUNNING and task.cancel_reason is not None:
            log.warning("task %s: the worker did not acknowledge its cancellation in time", task.id)
            self._finish(task, m.Outcome(id=task.id, status=m.CANCELLED, attempt=task.attempt, reason=task.cancel_reason))
            self._dispatch()

    def task(self, task_id: str) -> TaskHandle:
        """A handle to a known task by id (raises :class:`UnknownTaskId` if none)."""
        if task_id not in self._tasks:
            raise UnknownTaskId(f"no task {task_id!r}")
        return TaskHandle(self, task_id, self._tasks[task_id].name)

    @property
    def workers(self) -> list[Peer]:
        """The workers connected now."""
        return [s.peer for s in self._sessions.values() if s.conn is not None]

    async def wait_workers(self, count: int = 1) -> None:
        """Wait until at least ``count`` workers are connected (handy in tests and on_start)."""
        while len(self.workers) < count:
            await trio.sleep(0.01)

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: counts, workers, clients (what ``trioschedule status`` shows)."""
        queued = delayed = 0
        waiting: dict[str, int] = {}
        offered = {name for name, group in self._by_name.items() if any(s.conn is not None for s in group)}
        for task in self._tasks.values():
            if task.state == QUEUED:
                queued += 1
                if task.name not in offered:
                    waiting[task.name] = waiting.get(task.name, 0) + 1
            elif task.state == DELAYED:
                delayed += 1
        return {
            "name": self.name,
            "pid": os.getpid(),
            "address": f"{self.host}:{self.port}",
            "protocol": m.PROTOCOL_VERSION,
            "started_at": self._started_at,
            "uptime": time.time() - self._started_at if self._started_at else 0.0,
            "draining": self._draining,
            "store": self.store.url,
            "tasks": {
                "queued": queued,
                "delayed": delayed,
                "running": self._running,
                "done": self._counts[m.OK],
                "failed": self._counts[m.ERROR],
                "cancelled": self._counts[m.CANCELLED],
                "timeout": self._counts[m.TIMEOUT],
                "lost": self._counts[m.LOST],
            },
            "waiting_for_worker": waiting,
            "workers": [
                {**s.peer.describe(), "session": s.id, "connected": s.conn is not None, "draining": s.draining}
                for s in self._sessions.values()
            ],
            "clients": [c.peer.describe() for c in self._clients.values()],
            "hook_errors": self._hooks.errors,
        }

    # ------------------------------------------------ handle owner protocol
    def _slot(self, task_id: str) -> OutcomeSlot:
        task = self._tasks.get(task_id)
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

    async def _wait_outcome(self, task_id: str) -> m.Outcome:
        return await self._slot(task_id).wait()

    def _peek_outcome(self, task_id: str) -> m.Outcome | None:
        task = self._tasks.get(task_id)
        return task.outcome if task is not None else None

    async def _cancel_task(self, task_id: str, reason: str | None) -> None:
        self.cancel_nowait(task_id, reason)

    async def _wait_room(self, count: int) -> None:
        while self._unfinished + count > self.max_queued and not self._draining:
            self._room_waiters += 1  # an int for _finish to check: cheaper than the ParkingLot's __bool__
            try:
                await self._room.park()
            finally:
                self._room_waiters -= 1


class _Batch:
    """The tasks of one ``map()``: their outcomes in order, one object for the whole batch.

    A task hands its outcome to its place here as it ends (``_finish``), and
    the dispatcher forgets it, so a finished task's record is freed at once.
    Tasks arrive a chunk at a time and earlier chunks may finish before later
    ones are added, so only once ``results()`` says every chunk is in does the
    count reaching zero mean the batch is done.
    """

    __slots__ = ("outcomes", "unfinished", "_done", "_complete", "_drained", "_drained_at")

    def __init__(self) -> None:
        self.outcomes: list[m.Outcome | None] = []
        self.unfinished = 0
        self._done = trio.Event()
        self._complete = False  # every chunk added
        self._drained: trio.Event | None = None  # for wait_unfinished()
        self._drained_at = -1

    def add(self, tasks: list[_Task]) -> None:
        base = len(self.outcomes)
        for i, task in enumerate(tasks):
            task.batch = self
            task.batch_index = base + i
        self.outcomes += [None] * len(tasks)
        self.unfinished += len(tasks)

    def one_done(self, index: int, outcome: m.Outcome) -> None:  # called by Dispatcher._finish
        self.outcomes[index] = outcome
        self.unfinished -= 1
        if self.unfinished == self._drained_at:
            self._drained.set()  # type: ignore[union-attr]
        if not self.unfinished and self._complete:
            self._done.set()

    async def wait_unfinished(self, count: int) -> None:
        """Wait until at most ``count`` tasks added so far are unfinished."""
        if self.unfinished > count:
            self._drained, self._drained_at = trio.Event(), count
            try:
                await self._drained.wait()
            finally:
                self._drained, self._drained_at = None, -1

    async def results(self, return_exceptions: bool) -> list[Any]:
        """Once every chunk is added: wait for the last task to end, then the values in order."""
        self._complete = True
        if self.unfinished:
            await self._done.wait()
        return values_of(self.outcomes, return_exceptions)  # type: ignore[arg-type]


async def _flush_unless_failed(flush: Callable[[Any], Awaitable[None]], mark: Any) -> None:
    """A client's write barrier: wait for the journal, unless it failed (then nothing more becomes durable)."""
    try:
        await flush(mark)
    except TriosError:  # StoreError: submissions are refused with "store-failed" from now on
        pass


def _send_run(conn: Connection, ack: int, wake: bool, specs: list[dict[str, Any]]) -> None:
    conn.send_payload(m.Run, m.encode_run(specs, ack), wake=wake)


def _send_outcomes(conn: Connection, wake: bool, outcomes: list[m.Outcome]) -> None:
    conn.send(m.Outcomes(results=tuple(outcomes)), wake=wake)


def _send_split(send: Callable[[list[Any]], None], items: list[Any],
                unsendable: Callable[[Any, Exception], None]) -> None:  # fmt: skip
    """``send(items)`` as one frame; if it cannot be encoded (too large, or a bad value), halve it.

    An item that cannot be sent even alone goes to ``unsendable`` so that its
    task ends with an error instead of vanishing.  A closed connection is
    left to its reader, which notices and recovers.
    """
    try:
        send(items)
    except ConnectionClosed:
        pass
    except LocalProtocolError as exc:
        if len(items) == 1:
            unsendable(items[0], exc)
            return
        middle = len(items) // 2
        _send_split(send, items[:middle], unsendable)
        _send_split(send, items[middle:], unsendable)


def _bound_port(listeners: list[Any], default: int) -> int:
    for listener in listeners:
        inner = getattr(listener, "transport_listener", listener)
        sock = getattr(inner, "socket", None)
        if sock is not None:
            return int(sock.getsockname()[1])
    return default
