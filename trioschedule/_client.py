"""The client: submit tasks to a dispatcher from any process and await their outcomes.

Task ids are chosen here, so a submission that was in flight when the
connection broke is simply sent again after reconnecting: the dispatcher
accepts each id once.  Every task still awaited is watched again on the new
connection, so outcomes that arrived while we were away are not lost, and a
cancel not yet answered by an outcome is sent again.  The new connection may
be to another dispatcher of the same store (a standby that took over: the
client is given every address), which knows the same ids.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from . import _defaults as defaults
from ._client_admin import AdminRequests
from ._core.tasks import IdSequence
from ._core.tasks import check_options as _check_options
from ._errors import (
    AuthenticationError,
    ConnectionClosed,
    LocalProtocolError,
    NotLeader,
    ProtocolError,
    QueueFull,
    Rejected,
)  # fmt: skip
from ._handles import OutcomeSlot, TaskHandle, values_of
from ._json import json_encoder
from ._net.addresses import Address, Rotation, dispatchers_at, format_address, peer_addresses
from ._net.connection import Connection
from ._net.peerconn import Backoff, open_connection, stay_connected
from ._net.splitting import send_split
from ._protocol import messages as m
from ._protocol.connection import ADMIN, CLIENT
from ._util import background
from ._util import until_closed as _until_closed

__all__ = ["Client", "open_client"]

log = logging.getLogger("trioschedule.client")

SUBMIT_CHUNK = 1000  # submissions per frame in map(): one frame, one journal transaction


class _Acceptance:
    """The dispatcher's answers to one submit call: one object (and one event) for all its tasks."""

    __slots__ = ("event", "left", "rejection")

    def __init__(self, count: int) -> None:
        self.event = trio.Event()
        self.left = count
        self.rejection: m.Rejection | None = None  # the first refusal

    def answer(self, rejection: m.Rejection | None = None) -> None:
        """One task accepted (``rejection`` None) or refused."""
        if rejection is not None and self.rejection is None:
            self.rejection = rejection
        self.left -= 1
        if not self.left:
            self.event.set()

    def fail(self, rejection: m.Rejection) -> None:
        """No answers will come (the client gave up on its dispatcher)."""
        if self.rejection is None:
            self.rejection = rejection
        self.event.set()


class _Outcomes:
    """The client's :class:`~trioschedule._handles.OutcomeSource`: what its task handles ask."""

    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client = client

    async def wait_outcome(self, task_id: str) -> m.Outcome:
        return await self._client.task(task_id).outcome()

    def peek_outcome(self, task_id: str) -> m.Outcome | None:
        slot = self._client._slots.get(task_id)
        return slot.outcome if slot is not None else None

    async def cancel_task(self, task_id: str, reason: str | None) -> None:
        client = self._client
        conn = await client._connection()
        slot = client._slots.get(task_id)
        if slot is not None and slot.outcome is None:  # sent again after a reconnect until the outcome comes
            client._cancels[task_id] = reason
        conn.send(m.Cancel(id=task_id, reason=reason))


class Client(AdminRequests):
    """A connection to a dispatcher for submitting tasks.

    :func:`open_client` gives one, connected for the length of a block; to run
    one in a nursery of your own, ``await nursery.start(client.run)`` and
    ``await client.aclose()`` when done.

    ``addresses=["HOST:PORT", ...]`` names every dispatcher sharing one store
    (docs/HA.md), in place of ``host`` and ``port``: the client connects to
    the one that leads, following a standby's ``not-leader`` answer, and
    after losing it goes through the list again.  While the dispatchers it
    reaches say that none leads (a failover under way) it keeps trying for
    ``leader_wait`` seconds, even for the first connection.
    """

    def __init__(
        self,
        host: str = defaults.HOST,
        port: int = defaults.PORT,
        *,
        addresses: Iterable[str | Address] | None = None,
        token: str | None = None,
        ssl_context: Any = None,
        role: str = CLIENT,
        name: str | None = None,
        cancel_on_exit: bool = defaults.CANCEL_ON_EXIT,
        heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        reconnect_initial: float = defaults.RECONNECT_INITIAL,
        reconnect_max: float = defaults.RECONNECT_MAX,
        reconnect_attempts: int | None = defaults.RECONNECT_ATTEMPTS,
        max_frame_size: int = defaults.MAX_FRAME_SIZE,
        leader_wait: float = defaults.LEADER_WAIT,
    ) -> None:
        if role not in (CLIENT, ADMIN):
            raise ValueError("role must be 'client' or 'admin'")
        #: Every dispatcher address, as ``(host, port)``; ``host``/``port`` are the first.
        self.addresses = peer_addresses(host, port, addresses)
        self.host, self.port = self.addresses[0]
        #: The address of the dispatcher connected to now (or last).
        self.address: Address = self.addresses[0]
        self.leader_wait = leader_wait
        self.token = token
        self.ssl_context = ssl_context
        self.role = role
        self.name = name or f"client@{socket.gethostname()}:{os.getpid()}"
        self.cancel_on_exit = cancel_on_exit
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_attempts = reconnect_attempts
        self.max_frame_size = max_frame_size
        self._backoff = Backoff(reconnect_initial, reconnect_max)
        self._rotation = Rotation(self.addresses)
        self._waiting_since = 0.0  # trio time the client started, or last lost its dispatcher
        #: How to open a stream to the dispatcher; None means TCP (and TLS).
        #: trioschedule.testing sets it to an in-memory network.
        self.connector: Callable[[], Awaitable[trio.abc.Stream]] | None = None
        self._conn: Connection | None = None
        self._connected = trio.Event()
        self._unaccepted: dict[str, m.Submission] = {}
        self._acceptances: dict[str, _Acceptance] = {}
        self._wait_flags: dict[str, bool] = {}
        self._slots: dict[str, OutcomeSlot] = {}
        self._accepted: set[str] = set()  # accepted by the dispatcher, outcome not yet known
        self._cancels: dict[str, str | None] = {}  # cancels asked for, outcome not yet known -> reason
        self._replies: deque[tuple[type, OutcomeSlot | Any]] = deque()
        self._closing = False
        self._fatal: BaseException | None = None
        self.dispatcher_name = ""
        self._ids = IdSequence()  # one random 128-bit prefix per client
        self._outcomes = _Outcomes(self)

    # ============================================================ public API
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
        wait: bool = True,
    ) -> TaskHandle:
        """Submit a task; returns once the dispatcher has accepted (and journaled) it.

        ``timeout``: absolute deadline in seconds from now, queueing included.
        ``retries``: retries after the task raises (default: the task's own).
        ``delay``: seconds before it may start.  ``priority``: higher first.
        ``wait=False``: raise :class:`QueueFull` instead of waiting when the
        dispatcher's queue is full.  Raises :class:`Rejected` if refused.
        """
        _check_options(timeout, retries, delay)
        sub = m.Submission(
            id=task_id or self._ids.next(), name=name, args=list(args), kwargs=dict(kwargs or {}),
            timeout=timeout, retries=retries, delay=delay, priority=priority,
        )  # fmt: skip
        [slot] = await self._submit([sub], wait)
        return TaskHandle(self._outcomes, sub.id, name, slot)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Submit ``name(*args, **kwargs)`` and wait for its value (raises if the task failed)."""
        handle = await self.submit(name, args, kwargs)
        return await handle.result()

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
        """Run ``name`` once per item, submitted in batches; results in order.

        Each item is a tuple/list of positional arguments (any other value is
        the single argument).  With ``return_exceptions=True`` failures take
        their place in the list; otherwise the first failure in order is
        raised once every task has ended.
        """
        _check_options(timeout, retries, None)
        items = list(iterable_of_args)
        new = m.new_submission
        subs = [
            new(task_id, name, list(item) if type(item) is tuple or type(item) is list else [item], {},
                timeout, retries, None, priority)
            for task_id, item in zip(self._ids.take(len(items)), items)
        ]
        slots = await self._submit(subs, True)
        return values_of([slot.outcome or await slot.wait() for slot in slots], return_exceptions)

    def task(self, task_id: str) -> TaskHandle:
        """A handle to any task by id (from another process, or before a restart).

        Awaiting its result asks the dispatcher to report it;
        :class:`UnknownTaskId` is raised if the dispatcher does not know it.
        """
        slot = self._slots.get(task_id)
        if slot is None:
            slot = self._slots[task_id] = OutcomeSlot()
            self._send_quietly(m.Watch(ids=(task_id,)))
        return TaskHandle(self._outcomes, task_id, "", slot)

    async def broadcast(self, message: Any) -> None:
        """Deliver ``message`` to every connected worker's ``on_message``."""
        (await self._connection()).send(m.Broadcast(data=message))

    async def send(self, message: Any) -> None:
        """Send a custom message to the dispatcher's ``on_message``."""
        (await self._connection()).send(m.Message(data=message))

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    # ============================================================= internals
    async def _submit(self, subs: list[m.Submission], wait: bool) -> list[OutcomeSlot]:
        """Send ``subs``; once all are accepted, their outcome slots, in order (raises if any was refused)."""
        if self._fatal is not None:
            raise self._fatal
        acceptances, slots = self._acceptances, self._slots
        for sub in subs:
            if sub.id in acceptances or sub.id in slots:
                raise Rejected(f"task id {sub.id!r} is already in use by this client", code="duplicate")
        acceptance = _Acceptance(len(subs))
        unaccepted, wait_flags = self._unaccepted, self._wait_flags
        new_slots = []
        for sub in subs:
            acceptances[sub.id] = acceptance
            unaccepted[sub.id] = sub
            wait_flags[sub.id] = wait
            slot = slots[sub.id] = OutcomeSlot()
            new_slots.append(slot)
        conn = self._conn
        if conn is not None:
            unsendable = self._send_submissions(conn, subs, wait, wake=False)
            if unsendable:  # refused here, before the dispatcher saw it: say why, resend nothing
                for sub in subs:
                    self._acceptances.pop(sub.id, None)
                    self._unaccepted.pop(sub.id, None)
                    self._wait_flags.pop(sub.id, None)
                    self._slots.pop(sub.id, None)
                raise unsendable[0][1]
            await conn.write_now()  # from this task: no writer wake-up on the way
        if subs:
            await acceptance.event.wait()
        first_rejection = acceptance.rejection
        if first_rejection is not None:
            for sub in subs:
                self._slots.pop(sub.id, None)
            if first_rejection.code == "queue-full":
                raise QueueFull(first_rejection.message)
            raise Rejected(first_rejection.message, code=first_rejection.code)
        return new_slots

    def _send_submissions(self, conn: Connection, subs: list[m.Submission], wait: bool,
                          wake: bool = True) -> list[tuple[m.Submission, Exception]]:  # fmt: skip
        """Send in frames of up to SUBMIT_CHUNK, halving a frame that comes out too large (:func:`send_split`).

        Returns the submissions that cannot be sent at all (arguments that are
        not JSON, or too large for the dispatcher's frame limit), with why.
        What a closed connection did not take is sent again after reconnecting.
        """
        unsendable: list[tuple[m.Submission, Exception]] = []

        def send(chunk: list[m.Submission]) -> None:
            conn.send(m.Submit(tasks=tuple(chunk), wait=wait), wake=wake)

        def refuse(sub: m.Submission, exc: Exception) -> None:
            unsendable.append((sub, _name_the_argument(sub, exc)))

        for start in range(0, len(subs), SUBMIT_CHUNK):
            send_split(send, subs[start : start + SUBMIT_CHUNK], refuse)
        return unsendable

    def _send_quietly(self, message: Any) -> None:
        if self._conn is not None:
            try:
                self._conn.send(message)
            except ConnectionClosed:
                pass

    async def _connection(self) -> Connection:
        if self._fatal is not None:
            raise self._fatal
        while self._conn is None or self._conn.closed:
            await self._connected.wait()
            if self._fatal is not None:
                raise self._fatal
        return self._conn

    async def _request(self, message: Any, reply_type: type) -> Any:
        conn = await self._connection()
        slot = OutcomeSlot()
        self._replies.append((reply_type, slot))
        conn.send(message)
        reply: Any = await slot.wait()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    # ============================================================ connection
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then stay connected (reconnecting with backoff) until :meth:`aclose`.

        For running a client in a nursery of your own: ``await
        nursery.start(client.run)`` returns once connected, or raises
        :class:`ConnectionClosed` or :class:`AuthenticationError` as
        :func:`open_client` would.  :func:`open_client` is this, in a nursery
        of its own, with :meth:`aclose` on the way out.
        """
        self._waiting_since = trio.current_time()
        await stay_connected(
            self._connect, self._serve, retry=self._retry, backoff=self._backoff, rotation=self._rotation,
            done=lambda: self._closing, log=log, task_status=task_status,
        )  # fmt: skip

    async def _connect(self, address: Address) -> tuple[Connection, m.Welcome]:
        conn, welcome = await open_connection(
            *address, role=self.role, token=self.token, ssl_context=self.ssl_context,
            max_frame_size=self.max_frame_size, connect_timeout=self.connect_timeout, connector=self.connector,
            name=self.name, host=socket.gethostname(), pid=os.getpid(),
        )  # fmt: skip
        self.address = address
        return conn, welcome

    def _retry(self, exc: Exception, attempts: int, connected_once: bool) -> str | None:
        """The first connection must succeed (open_client raises); later, keep trying up to ``reconnect_attempts``.

        Either way, while the dispatchers answer that none of them leads, the
        client waits up to ``leader_wait`` for a failover to finish.  Giving
        up fails every pending submission and outcome (None: stop).
        """
        if isinstance(exc, (AuthenticationError, ProtocolError)):
            if not connected_once:
                raise exc
            self._fail(exc)
            return None
        if isinstance(exc, NotLeader):  # "no dispatcher at A, B leads (...)": a failover may be under way
            if trio.current_time() - self._waiting_since < self.leader_wait:
                return f"{exc}; waiting up to {self.leader_wait:g} s for a leader"
            if not connected_once:
                raise exc
        elif not connected_once:
            if len(self.addresses) > 1:  # the round's error names every address already
                raise exc
            raise ConnectionClosed(f"cannot reach {dispatchers_at(self.addresses)}: {exc}") from None
        if self.reconnect_attempts is not None and attempts > self.reconnect_attempts:
            self._fail(ConnectionClosed(f"gave up reconnecting to {dispatchers_at(self.addresses)} after {attempts} attempts: {exc}"))
            return None
        return f"cannot reach {dispatchers_at(self.addresses)} ({exc})"

    async def _serve(self, conn: Connection, welcome: m.Welcome, ready: Callable[[], None]) -> None:
        self.dispatcher_name = welcome.name
        self._conn = conn
        self._resend(conn)
        self._connected.set()
        ready()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, conn.run_writer, nursery.cancel_scope)
                heartbeat = partial(conn.run_heartbeat, self.heartbeat_interval, self.heartbeat_timeout)
                nursery.start_soon(_until_closed, heartbeat, nursery.cancel_scope)
                await _until_closed(partial(self._reader, conn), nursery.cancel_scope)
        finally:
            self._conn = None
            self._connected = trio.Event()
            self._waiting_since = trio.current_time()
            with trio.CancelScope(shield=True):
                await conn.aclose()
        for _, slot in self._replies:
            slot.set(ConnectionClosed("the connection closed before the dispatcher replied"))  # type: ignore[arg-type]
        self._replies.clear()
        if not self._closing:
            log.info("lost the dispatcher at %s (%s); reconnecting", format_address(self.address), conn.closed_reason)

    def _resend(self, conn: Connection) -> None:
        """After (re)connecting: submit what was never accepted, watch what is still awaited."""
        if self._unaccepted:
            for wait in (True, False):
                subs = [s for s in self._unaccepted.values() if self._wait_flags.get(s.id, True) is wait]
                for sub, exc in self._send_submissions(conn, subs, wait) if subs else ():
                    # e.g. the new dispatcher allows smaller frames: refuse it instead of looping
                    self._unaccepted.pop(sub.id, None)
                    acceptance = self._acceptances.pop(sub.id, None)
                    if acceptance is not None:
                        acceptance.answer(m.Rejection(id=sub.id, code="too-large", message=str(exc)))
        watched = [task_id for task_id, slot in self._slots.items() if slot.outcome is None and task_id not in self._unaccepted]
        for start in range(0, len(watched), SUBMIT_CHUNK):
            conn.send(m.Watch(ids=tuple(watched[start : start + SUBMIT_CHUNK])))
        for task_id, reason in list(self._cancels.items()):
            slot = self._slots.get(task_id)
            if slot is None or slot.outcome is not None:
                del self._cancels[task_id]
            else:
                conn.send(m.Cancel(id=task_id, reason=reason))

    def _fail(self, exc: BaseException) -> None:
        self._fatal = exc
        for acceptance in self._acceptances.values():
            acceptance.fail(m.Rejection(id="", code="connection", message=str(exc)))
        for task_id, slot in self._slots.items():
            slot.set(m.Outcome(id=task_id, status=m.LOST, reason=f"the client lost its dispatcher: {exc}"))
        self._connected.set()

    async def _reader(self, conn: Connection) -> None:
        while True:
            for message in await conn.receive_batch():
                kind = type(message)
                if kind is m.Outcomes:
                    slots, cancels = self._slots, self._cancels
                    for outcome in message.results:
                        slot = slots.pop(outcome.id, None)
                        if cancels:
                            cancels.pop(outcome.id, None)
                        if outcome.id in self._accepted:
                            self._accepted.discard(outcome.id)
                            if outcome.status == m.UNKNOWN:  # it accepted the task, then forgot it
                                outcome = m.Outcome(id=outcome.id, status=m.LOST, reason=(
                                    "the dispatcher no longer knows this task: it restarted without a journal"))  # fmt: skip
                        if slot is not None:
                            slot.set(outcome)
                elif kind is m.Accepted:
                    for task_id in message.ids:
                        if task_id in self._slots:
                            self._accepted.add(task_id)
                        self._unaccepted.pop(task_id, None)
                        self._wait_flags.pop(task_id, None)
                        acceptance = self._acceptances.pop(task_id, None)
                        if acceptance is not None:
                            acceptance.answer()
                    for rejection in message.rejected:
                        self._unaccepted.pop(rejection.id, None)
                        self._wait_flags.pop(rejection.id, None)
                        acceptance = self._acceptances.pop(rejection.id, None)
                        if acceptance is not None:
                            acceptance.answer(rejection)
                elif kind in (m.StatusReply, m.TasksReply, m.Stopping, m.ScheduleReply):
                    if self._replies:
                        _, slot = self._replies.popleft()
                        slot.set(message)
                elif kind is m.Goodbye:
                    log.info("the dispatcher said goodbye: %s", message.reason)
                    return

    async def aclose(self) -> None:
        """Leave: say goodbye to the dispatcher (waiting at most 2 s), close the connection, stop reconnecting.

        Tasks still running are kept, unless ``cancel_on_exit`` was set.
        :meth:`run` returns once the connection is closed.
        """
        self._closing = True
        conn = self._conn
        if conn is not None and not conn.closed:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    conn.send(m.Goodbye(reason="client closing", cancel_pending=self.cancel_on_exit))
                    await conn.flush()
                except ConnectionClosed:
                    pass
                await conn.aclose()


_check_json = json_encoder(check_circular=True)


def _name_the_argument(sub: m.Submission, exc: Exception) -> Exception:
    """A submission that is not JSON: say which argument is at fault, not which message."""
    if not (isinstance(exc, LocalProtocolError) and exc.code == "not-json"):
        return exc
    named = [(f"argument {i}", value) for i, value in enumerate(sub.args)]
    named += [(f"keyword argument {key!r}", value) for key, value in (sub.kwargs or {}).items()]
    for label, value in named:
        try:
            _check_json(value)
        except (TypeError, ValueError, RecursionError) as error:
            return LocalProtocolError(
                f"{label} of task {sub.name!r} cannot be sent as JSON ({error}): task arguments must be JSON "
                "values (str, int, float, bool, None, list, dict)", code="not-json",
            )  # fmt: skip
    return exc


@asynccontextmanager
async def open_client(
    host: str = defaults.HOST,
    port: int = defaults.PORT,
    *,
    addresses: Iterable[str | Address] | None = None,
    token: str | None = None,
    ssl_context: Any = None,
    **options: Any,
) -> AsyncIterator[Client]:
    """Connect to a dispatcher; the client reconnects on its own until the block ends.

    ``addresses=["HOST:PORT", ...]`` instead of ``host``/``port`` names every
    dispatcher sharing one store; the client finds the one that leads, and
    keeps waiting on its tasks across a failover (see :class:`Client`).
    Raises :class:`ConnectionClosed` if the first connection cannot be made
    (:class:`NotLeader` if dispatchers answered but none led within
    ``leader_wait``) and :class:`AuthenticationError` if the token is
    refused.  On exit the connection is closed cleanly; tasks still running
    are kept (pass ``cancel_on_exit=True`` to cancel them).  Exceptions from
    the body come out unchanged, never wrapped in an exception group.
    """
    client = Client(host, port, addresses=addresses, token=token, ssl_context=ssl_context, **options)
    async with background(client.run):
        try:
            yield client
        finally:
            await client.aclose()
