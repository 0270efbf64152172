"""Serving one connection: handshake, then a reader that feeds the scheduler what the peer says."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .._core.metrics import HEARTBEAT_BUCKETS, Histogram
from .._core.sessions import ClientRecord, WorkerSession
from .._core.tasks import Task, check_options
from .._errors import (
    AuthenticationError,
    ConnectionClosed,
    LocalProtocolError,
    RemoteProtocolError,
    StoreError,
    StoreFenced,
)
from .._logging import context
from .._net.connection import Connection, describe_address
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
from .._util import one_error, until_closed
from .status import tasks_listing

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

__all__ = ["ConnectionHandler"]

log = logging.getLogger("trioschedule.dispatcher")


class ConnectionHandler:
    """One per dispatcher: every connection's handshake and reader, and the clients connected now."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.core = dispatcher._core
        self.effects = dispatcher._effects
        self.journal = dispatcher._journal
        self.hooks = dispatcher._hooks
        self.clients: dict[str, ClientRecord] = {}
        self.count = 0  # connections open now, handshaken or not
        # Heartbeat round trips (workers that said hello.echo): the ping each session waits for, the
        # last round trip of each, and all of them as a histogram (for /metrics).
        self._pings: dict[str, tuple[int, float]] = {}
        self.round_trips: dict[str, float] = {}
        self.heartbeat_rtt = Histogram(HEARTBEAT_BUCKETS)

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it closes; a failure ends this connection alone."""
        d = self.d
        address = describe_address(stream)
        conn = Connection(stream, ProtocolConnection(DISPATCHER, max_frame_size=d.max_frame_size),
                          send_timeout=d.send_timeout, address=address)  # fmt: skip
        self.count += 1
        where = context(peer=address)
        try:
            if self.count > d.max_connections:
                await conn.send_error("too-many-connections",
                                      f"the dispatcher serves at most {d.max_connections} connections")  # fmt: skip
                log.warning("%s: refused: %d connections is the limit", address, d.max_connections, extra=where)
                return
            try:
                with trio.fail_after(d.handshake_timeout):
                    hello, proof = await self._handshake(conn)
            except trio.TooSlowError:
                await conn.send_error("handshake-timeout", f"no complete handshake within {d.handshake_timeout:g} s")
                log.warning("%s: closed: no handshake within %g s", address, d.handshake_timeout, extra=where)
                return
            await self._serve_peer(conn, hello, proof)  # logs its own connected and disconnected lines
        except RemoteProtocolError as exc:
            log.warning("%s: closed: protocol error (%s): %s", address, exc.code, exc, extra=where)
        except AuthenticationError as exc:
            log.warning("%s: closed: authentication failed: %s", address, exc, extra=where)
        except ConnectionClosed as exc:
            log.info("%s: closed before the handshake ended: %s", address, exc.reason, extra=where)
        except StoreFenced as exc:  # this dispatcher lost its lease: it steps down, its peers go elsewhere
            log.info("%s: closed: %s", address, exc, extra=where)
        except Exception:  # a bug while serving one peer must not take the others down
            log.exception("%s: closed after an internal error", address, extra=where)
        finally:
            self.count -= 1
            await conn.aclose()

    async def _handshake(self, conn: Connection) -> tuple[m.Hello, str | None]:
        hello = await conn.receive_one(m.Hello)
        if hello.version != m.PROTOCOL_VERSION:
            await conn.send_error(
                "version-mismatch", f"this dispatcher speaks protocol version {m.PROTOCOL_VERSION}, not {hello.version}"
            )
            raise RemoteProtocolError(f"peer speaks protocol version {hello.version}", code="version-mismatch")
        try:
            secret = self.d.secrets.for_role(hello.role)
        except AuthenticationError:
            await conn.send_error("auth-failed", f"authentication failed: the role {hello.role!r} may not connect here")
            raise
        if secret is None:
            return hello, None
        nonce = new_nonce()
        await conn.send_now(m.Challenge(nonce=nonce))
        auth = await conn.receive_one(m.Auth)
        if hello.nonce is None or not proofs_match(peer_proof(secret, hello.role, hello.nonce, nonce), auth.proof):
            await conn.send_error("auth-failed", "authentication failed: check the token for this role")
            raise AuthenticationError(f"{hello.role} {hello.name!r} sent a wrong proof")
        return hello, dispatcher_proof(secret, hello.role, hello.nonce, nonce)

    def _welcome(self, session_id: str, proof: str | None, resumed: bool | None = None) -> m.Welcome:
        d = self.d
        extra = {} if resumed is None else {"resumed": resumed}
        return m.Welcome(version=m.PROTOCOL_VERSION, session=session_id, heartbeat=d.heartbeat_interval,
                         timeout=d.heartbeat_timeout, name=d.name, proof=proof, max_frame_size=d.max_frame_size,
                         **extra)  # fmt: skip

    async def _serve_peer(self, conn: Connection, hello: m.Hello, proof: str | None) -> None:
        d, core = self.d, self.core
        serve: Callable[[], Any]
        leave: Callable[[bool], None]
        if hello.role == WORKER:
            session, resumed = core.attach_worker(conn, hello, conn.address)
            welcome = self._welcome(session.id, proof, resumed)
            serve = lambda: self._serve_worker(session)
            make_heartbeat: Callable[[], Any] = lambda: m.Heartbeat(ack=session.acked)
            leave = lambda clean: core.detach_worker(session, clean)
            peer = session.peer
            d._links[peer.id] = conn
        else:
            peer = Peer(id=uuid.uuid4().hex, role=hello.role, name=hello.name or f"{hello.role}-{hello.pid}",
                        address=conn.address, pid=hello.pid, host=hello.host, connected_at=time.time())  # fmt: skip
            client = ClientRecord(peer, conn)
            self.clients[peer.id] = client
            welcome = self._welcome(peer.id, proof)
            serve = lambda: self._serve_client(client)
            leave = lambda clean: self._client_left(client)
            make_heartbeat = m.Heartbeat
            d._links[peer.id] = conn
        if self.journal.active:  # write-ahead: tasks, acknowledgements and outcomes only once journaled
            mark, conn.before_write = self.journal.barrier(refuse_after_failure=hello.role == WORKER)
            if mark is not None:
                conn.write_mark = mark

        async def heartbeats() -> None:
            await conn.run_heartbeat(d.heartbeat_interval, d.heartbeat_timeout, make_heartbeat)

        async def pings() -> None:
            """Once per heartbeat interval, a heartbeat the worker echoes at once: the round trip, measured."""
            echo = 0
            while True:
                await trio.sleep(d.heartbeat_interval)
                echo += 1
                self._pings[session.id] = (echo, trio.current_time())
                conn.send(m.Heartbeat(ack=session.acked, echo=echo))

        clean = False
        fields = context(peer=peer.name, worker_pid=peer.pid if hello.role == WORKER else None)
        why: str | None = "the dispatcher stopped"  # unless the connection ends first
        level, exc_info = logging.INFO, False
        try:
            await conn.send_now(welcome)
            log.info("%s: %s %r connected (pid %d)", conn.address, peer.role, peer.name, peer.pid, extra=fields)
            if hello.role == WORKER:
                for task_id in session.buffer_cancel:
                    conn.send(m.Cancel(id=task_id, reason="the dispatcher no longer expects this task"))
                session.buffer_cancel.clear()
                self.effects.flush()
            await self.hooks.call_now(d.on_connect, peer)
            async with one_error() as nursery:  # serve()'s ConnectionClosed or ProtocolError comes out as it is
                nursery.start_soon(until_closed, conn.run_writer, nursery.cancel_scope)
                nursery.start_soon(until_closed, heartbeats, nursery.cancel_scope)
                if hello.role == WORKER and hello.echo:
                    nursery.start_soon(until_closed, pings, nursery.cancel_scope)
                clean = await serve()
                nursery.cancel_scope.cancel()
            why = "said goodbye" if clean else f"connection lost: {conn.closed_reason or 'closed'}"
        # Every way a served peer leaves ends in the one line of the finally clause below.
        except RemoteProtocolError as exc:
            why, level = f"protocol error ({exc.code}): {exc}", logging.WARNING
        except ConnectionClosed as exc:
            why = f"connection lost: {exc.reason}"
        except Exception:  # noqa: BLE001 - a bug while serving one peer must not take the others down
            why, level, exc_info = "internal error", logging.ERROR, True
        finally:
            peer.connected = False
            d._links.pop(peer.id, None)
            if hello.role == WORKER:
                self._pings.pop(session.id, None)
                self.round_trips.pop(session.id, None)
            held = len(session.assigned) if hello.role == WORKER else 0
            log.log(level, "%s: closed: %s (%s %r%s)", conn.address, why, peer.role, peer.name,
                    f", {held} task(s) assigned" if held else "", exc_info=exc_info, extra=fields)  # fmt: skip
            leave(clean)
            self.effects.flush()
            with trio.CancelScope(shield=True):
                await self.hooks.call_now(d.on_close, peer)

    def _echoed(self, session: WorkerSession, echo: int) -> None:
        """A worker answered a ping: from queuing it (behind any frame before it) to reading the answer."""
        sent = self._pings.get(session.id)
        if sent is not None and sent[0] == echo:
            del self._pings[session.id]
            rtt = trio.current_time() - sent[1]
            self.round_trips[session.id] = rtt
            self.heartbeat_rtt.observe(rtt)

    def _client_left(self, client: ClientRecord) -> None:
        self.clients.pop(client.peer.id, None)
        self.core.client_left(client)

    async def _serve_worker(self, session: WorkerSession) -> bool:
        conn: Connection = session.conn
        core, effects, d = self.core, self.effects, self.d
        election = d._election
        while True:
            messages = await conn.receive_batch()
            if election is not None:  # not after a pause past the lease (docs/HA.md)
                election.ensure_trusted()
            for message in messages:
                kind = type(message)
                if kind is m.Results:
                    try:
                        core.on_results(session, message)
                    except RemoteProtocolError as exc:
                        await conn.send_error(exc.code, str(exc))
                        raise
                elif kind is m.Heartbeat:
                    if message.echo:
                        self._echoed(session, message.echo)
                elif kind is m.Message:
                    self.hooks.call(d.on_message, session.peer, message.data)
                elif kind is m.Release:
                    core.on_release(session, message)
                elif kind is m.Goodbye:
                    effects.flush()
                    return True
            # Acknowledged with the next frame to this worker, which a worker
            # takes as leave to drop those results.  With a journal, that frame
            # waits in the writer task for the commit of everything journaled
            # before it (the write barrier): these outcomes, and the starts of
            # the tasks it carries; this reader goes on reading meanwhile.
            session.acked = session.last_seq
            if core.journaling:
                effects.flush(wake=True)
            else:
                effects.flush(wake=False)
                await effects.write_now()  # its next tasks (and outcomes to clients) from this task

    async def _serve_client(self, client: ClientRecord) -> bool:
        conn: Connection = client.conn
        core, effects, d = self.core, self.effects, self.d
        is_admin = client.peer.role == ADMIN
        election = d._election
        while True:
            messages = await conn.receive_batch()
            if election is not None:
                election.ensure_trusted()
            for message in messages:
                kind = type(message)
                if kind is m.Submit:
                    await self._on_submit(client, message)
                elif kind is m.Watch:
                    for task_id in message.ids:
                        core.watch(task_id, client)
                elif kind is m.Cancel:
                    core.cancel(message.id, message.reason)
                elif kind is m.Broadcast:
                    try:
                        d.broadcast_nowait(message.data)
                    except LocalProtocolError as exc:
                        log.warning("%s: broadcast from %r dropped: %s", conn.address, client.peer.name, exc)
                elif kind is m.Message:
                    self.hooks.call(d.on_message, client.peer, message.data)
                elif kind is m.Heartbeat:
                    pass
                elif kind is m.StatusRequest and is_admin:
                    document = d.status()
                    document["clients"] = [c for c in document["clients"] if c["id"] != client.peer.id]  # not the asker
                    conn.send(m.StatusReply(status=document))
                elif kind is m.TasksRequest and is_admin:
                    conn.send(tasks_listing(d, message))
                elif kind is m.ScheduleRequest and is_admin:
                    conn.send(await d._schedules.answer(message))
                elif kind is m.Stop and is_admin:
                    grace = d.drain_grace if message.grace is None else message.grace
                    conn.send(m.Stopping(grace=grace))
                    log.info("stop requested by %s (%s), grace %g s%s", client.peer.name, conn.address, grace,
                             ", workers too" if message.workers else "", extra=context(peer=client.peer.name))  # fmt: skip
                    d.stop(grace, workers=message.workers)
                elif kind is m.Goodbye:
                    if message.cancel_pending:
                        core.cancel_owned(client, "the client that submitted it left")
                    effects.flush()
                    return True
            effects.flush(wake=False)
            await effects.write_now()

    async def _on_submit(self, client: ClientRecord, submit: m.Submit) -> None:
        core = self.core
        accepted: list[str] = []
        rejected: list[m.Rejection] = []
        new: list[tuple[Task, float | None]] = []
        for sub in submit.tasks:
            existing = core.tasks.get(sub.id)
            if existing is not None:  # a resubmission after a reconnect: idempotent
                accepted.append(sub.id)
                core.watch_task(existing, client)
                continue
            problem = core.bad_id(sub.id) or await self._problem(client, sub.name, submit.wait)
            if problem is None and (sub.timeout is not None or sub.retries is not None or sub.delay is not None):
                try:
                    check_options(sub.timeout, sub.retries, sub.delay)
                except ValueError as exc:
                    problem = ("bad-request", str(exc))
            if problem is not None:
                rejected.append(m.Rejection(id=sub.id, code=problem[0], message=problem[1]))
                continue
            task = core.new_task(sub.id, sub.name, sub.args, sub.kwargs, sub.priority, sub.retries, sub.timeout,
                                 sub.delay, client)  # fmt: skip
            task.watchers = [client]  # new: nobody else watches it yet
            client.owned += 1
            new.append((task, sub.delay))
            accepted.append(sub.id)
        if new:
            try:
                await self.journal.add_new([task for task, _ in new])
            except StoreFenced:  # not refused: the client resubmits them to the new leader
                raise
            except trio.Cancelled:
                # The client's connection went away while the journal committed (a slow commit:
                # a database restarting).  The store commits the tasks anyway, and the client
                # resubmits them after reconnecting, which finds them known: place them now, or
                # nobody would.  Their Run frames still wait for the commit (the write barrier).
                for task, delay in new:
                    core.place(task, delay)
                core.dispatch()
                self.effects.flush()
                raise
            except StoreError as exc:  # the journal failed: refuse, never pretend
                log.error("journal %s failed; refusing %d submission(s): %s", self.d.store.url, len(new), exc)
                for task, _ in new:
                    core.withdraw(task)
                    accepted.remove(task.id)
                    rejected.append(m.Rejection(id=task.id, code="store-failed",
                                                message=f"the dispatcher's journal failed: {exc}"))  # fmt: skip
                new = []
            for task, delay in new:
                core.place(task, delay)
            core.dispatch()
        client.conn.send(m.Accepted(ids=tuple(accepted), rejected=tuple(rejected)))

    async def _problem(self, client: ClientRecord, name: str, wait: bool) -> tuple[str, str] | None:
        """Why a client's submission of ``name`` is refused, or None; waits for room if ``wait``."""
        core = self.core
        limits = core.limits
        problem = core.refusal(name)
        if problem is None and client.owned >= limits.max_client_queued:
            problem = ("limit", f"this client already has {client.owned} unfinished tasks (limit {limits.max_client_queued})")
        if problem is None and core.unfinished >= limits.max_queued:
            if wait:
                core.dispatch()
                self.effects.flush()
                await self.effects.wait_room(1)
                problem = core.refusal(name)
            else:
                problem = ("queue-full", f"the dispatcher's queue is full ({limits.max_queued} unfinished tasks)")
        return problem
