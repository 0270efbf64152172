"""How a dispatcher serves: recover, listen, run its task tree, drain; with a shared store, stand by first.

:class:`Serving` is a base class of :class:`~.dispatcher.Dispatcher` (the
public class keeps the API; this is its life between ``serve()`` and its
return).  Alone, a dispatcher opens its journal, recovers, listens and runs
one task tree (:meth:`Serving._run`: the accept loop, one handler per
connection, the timer task, the schedules, the hook runner, the operations
endpoint) until :meth:`~.dispatcher.Dispatcher.stop`, then drains.  On a
shared store (docs/HA.md) it listens at once and stands by, refusing every
hello with ``not-leader`` (:mod:`.leadership`), until it wins the lease;
then it recovers under that term and runs the same tree, and it steps down,
dropping everything, when the lease is lost.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .._errors import ConnectionClosed, StoreFenced
from .._logging import context
from .._net.connection import Connection
from .._net.security import Secrets, warn_if_exposed
from .._protocol import messages as m
from .._protocol.connection import WORKER
from .._store.base import Store
from .._util import one_error
from .leadership import Election, KeptOpen, refuse

if TYPE_CHECKING:
    import ssl

    from .._core.scheduler import Scheduler
    from .._hooks import HookRunner
    from .effects import Effects
    from .journal import StoreJournal
    from .schedules import ScheduleShell

__all__ = ["UNOFFERED_CHECK", "Serving"]

#: Seconds between checks for tasks whose name no connected worker offers.
UNOFFERED_CHECK = 2.0

log = logging.getLogger("trioschedule.dispatcher")


class Serving:
    """A dispatcher's serving life; the state it reads is the :class:`~.dispatcher.Dispatcher`'s own."""

    # Set by Dispatcher.__init__ (docs there).
    host: str
    port: int
    name: str
    secrets: Secrets
    ssl_context: ssl.SSLContext | None
    store: Store
    handshake_timeout: float
    max_frame_size: int
    http: str | None
    http_port: int | None
    lease_ttl: float
    advertise: str | None
    _journal: StoreJournal
    _election: Election | None
    _spent: bool
    _core: Scheduler
    _hooks: HookRunner
    _effects: Effects
    _schedules: ScheduleShell
    _links: dict[str, Connection]
    _stop_requested: trio.Event
    _stop_grace: float
    _stop_workers: bool
    _started_at: float
    _serving: bool
    _schedules_open: bool
    # The Dispatcher's hooks and connection handler.
    on_start: Callable[[], Awaitable[None]]
    on_stop: Callable[[], Awaitable[None]]
    handle_stream: Callable[[trio.abc.Stream], Awaitable[None]]

    async def _serve(self, open_listeners: Callable[[], Any], task_status: trio.TaskStatus[int]) -> None:
        if self._serving:
            raise RuntimeError("this Dispatcher is already serving")
        if self._spent:
            raise RuntimeError("this Dispatcher stepped down after losing its lease and dropped its state: "
                               "make a new one to stand by again")  # fmt: skip
        self._serving = True
        try:
            leadership = self.store.leadership() if self.store.shared else None
            if leadership is None:
                await self._serve_alone(open_listeners, task_status)
            else:
                election = Election(leadership, ttl=self.lease_ttl, name=self.name)
                await self._serve_shared(election, open_listeners, task_status)
        finally:
            self._serving = False

    async def _serve_alone(self, open_listeners: Callable[[], Any], task_status: trio.TaskStatus[int]) -> None:
        listening = False
        try:
            # The journal first: a refused journal must fail before we listen.
            stored = await self._journal.open()
            self._core.journal_opened(True)
            self._core.recover(stored, self.store.url)
            await self._schedules.restore()
            self._schedules_open = True
            try:
                listeners = await open_listeners()
                self.port = _bound_port(listeners, self.port)
                listening = True
                warn_if_exposed(log, self.host, self.secrets, self.ssl_context)
                await self._run(listeners, task_status)
            finally:
                await self._close_journal()
        finally:
            if listening:  # a start that failed says why, not "stopped"
                log.info("%s stopped", self.name)

    async def _serve_shared(self, election: Election, open_listeners: Callable[[], Any],
                            task_status: trio.TaskStatus[int]) -> None:  # fmt: skip
        """Several dispatchers on one store: listen at once, stand by until this one leads, then serve.

        Losing the lease ends it with :class:`StoreFenced`: nothing of this
        leader's memory can be trusted once another one leads, so it is all
        dropped (docs/HA.md).
        """
        self._election = election
        opened: list[Any] = []
        try:
            opened = await open_listeners()
            self.port = _bound_port(opened, self.port)
            listeners: list[trio.abc.Listener[Any]] = [KeptOpen(listener) for listener in opened]
            election.address = self.advertise or _advertised(self.host, self.port)
            warn_if_exposed(log, self.host, self.secrets, self.ssl_context)
            log.info("%s listening on %s:%s as a standby (store %s, node %s, lease %g s, advertising %s)",
                     self.name, self.host, self.port, self.store.url, election.holder, election.ttl,
                     election.address)  # fmt: skip
            # The operations endpoint serves while standing by too (its status and /metrics say who
            # leads), so that a monitoring system sees every dispatcher up, not only the leader.
            async with trio.open_nursery() as operations:
                try:
                    if self.http is not None:
                        from .._http import serve_operations  # (prometheus-client is loaded only for this)

                        self.http_port = await operations.start(serve_operations, self, self.http)
                    await self._stand_by_then_lead(election, listeners, task_status)
                finally:
                    operations.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await election.leadership.aclose()
                for listener in opened:  # closed now: a new Dispatcher in this process may listen here
                    await listener.aclose()
            if opened:  # a start that failed says why, not "stopped"
                log.info("%s stopped", self.name)
        if election.lost_reason != "stopped" and election.lost.is_set():
            self._spent = True
            log.error("%s stepped down: %s; it dropped its state and serves no more", self.name,
                      election.lost_reason)  # fmt: skip
            raise StoreFenced(f"this dispatcher stepped down: {election.lost_reason}", term=election.term)

    async def _stand_by_then_lead(self, election: Election, listeners: list[trio.abc.Listener[Any]],
                                  task_status: trio.TaskStatus[int]) -> None:  # fmt: skip
        """Stand by until this dispatcher wins the lease, then recover the journal and lead until it stops."""
        # The standby's refusals in flight when it wins finish beside the leader (naming it now):
        # cut off, their peers would see a reset instead of a redirect.
        async with one_error() as refusals:
            try:
                term = await self._stand_by(election, listeners, task_status, refusals)
                if term is None:  # stopped while standing by
                    return
                self._journal.on_fenced = lambda exc: election.step_down(f"a journal write was fenced: {exc}")
                try:
                    self.store.fence(term)
                    stored = await self._journal.open()
                    self._core.journal_opened(True)
                    self._core.recover(stored, self.store.url)
                    log.info("%s leads (term %d, node %s): recovered %d task(s) from %s", self.name, term,
                             election.holder, len(stored), self.store.url)  # fmt: skip
                    await self._schedules.restore()  # they fire from the leader only
                    self._schedules_open = True
                    await self._run(listeners, trio.TASK_STATUS_IGNORED, election)
                finally:
                    await self._close_journal()
                    with trio.CancelScope(shield=True):
                        await election.resign()  # after the journal's last write: nothing of ours is fenced
            finally:
                refusals.cancel_scope.cancel()

    async def _stand_by(self, election: Election, listeners: list[trio.abc.Listener[Any]],
                        task_status: trio.TaskStatus[int], refusals: trio.Nursery) -> int | None:  # fmt: skip
        """Answer every hello with ``not-leader`` until this dispatcher wins the lease (its term) or stops (None)."""
        won: int | None = None

        async def redirect(stream: trio.abc.Stream) -> None:
            await refuse(stream, election, max_frame_size=self.max_frame_size, timeout=self.handshake_timeout)

        async with trio.open_nursery() as nursery:

            async def campaign() -> None:
                nonlocal won
                won = await election.wait_to_lead()
                nursery.cancel_scope.cancel()

            async def stopped() -> None:
                await self._stop_requested.wait()
                nursery.cancel_scope.cancel()

            # KeptOpen: serve_listeners cannot close them, the leader's accept loop takes them over.
            nursery.start_soon(functools.partial(trio.serve_listeners, redirect, listeners, handler_nursery=refusals))
            nursery.start_soon(campaign)
            nursery.start_soon(stopped)
            task_status.started(self.port)
        return won

    async def _close_journal(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._hooks.call_now(self.on_stop)
            self._schedules_open = False
            self._core.journal_opened(False)
            try:
                await self._journal.close()
            except StoreFenced as exc:
                log.info("the journal %s refused the last writes: %s", self.store.url, exc)
            except Exception:
                log.exception("closing the journal %s failed", self.store.url)

    async def _run(self, listeners: list[trio.abc.Listener[Any]], task_status: trio.TaskStatus[int],
                   election: Election | None = None) -> None:  # fmt: skip
        self._started_at = time.time()
        # Stepping down cancels everything below at once: its own scope, outside the nurseries, absorbs
        # the cancellation however the nested nurseries group it.
        with trio.CancelScope() as leading:
            async with one_error() as nursery:
                nursery.start_soon(self._run_timers)
                nursery.start_soon(self._schedules.run)
                nursery.start_soon(self._hooks.run)
                nursery.start_soon(self._warn_unoffered)
                if election is not None:
                    nursery.start_soon(self._keep_leading, election, leading)
                if self.http is not None and election is None:  # (a shared store's serves from standing by on)
                    from .._http import serve_operations  # (prometheus-client is loaded only for this)

                    self.http_port = await nursery.start(serve_operations, self, self.http)
                async with one_error() as connections:
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
                    await self._drain(self._stop_grace, stop_accepting=accepting.cancel)
                    accepting.cancel()
                    connections.cancel_scope.cancel()
                nursery.cancel_scope.cancel()

    async def _keep_leading(self, election: Election, scope: trio.CancelScope) -> None:
        """Lead until the lease is lost, then step down at once: refuse work, close every connection."""
        await election.keep_leading()
        self._core.draining = True  # nothing more is accepted meanwhile
        log.error("%s is stepping down: %s", self.name, election.lost_reason)
        scope.cancel()  # every connection closes: its peers reconnect and are sent to the new leader

    async def _run_timers(self) -> None:
        core, effects = self._core, self._effects
        core.start_purging()
        election = self._election
        while True:
            if election is not None:
                try:
                    election.ensure_trusted()  # a timer that fires after a pause past the lease does nothing
                except StoreFenced:
                    return
            if core.timers.fire_due(trio.current_time()):
                effects.flush()
            core.timers.changed = False
            effects.timer_wakeup = trio.Event()
            with trio.move_on_at(core.timers.next_deadline()):
                await effects.timer_wakeup.wait()

    async def _warn_unoffered(self) -> None:
        """Say so when tasks wait for a name that no connected worker offers (a typo, or a worker not started).

        Once per name, after two checks in a row (workers reconnecting after
        a restart get a moment first), and again only after it was offered.
        """
        placement = self._core.placement
        seen: set[str] = set()
        warned: set[str] = set()
        while True:
            await trio.sleep(UNOFFERED_CHECK)
            names = set(placement.unoffered())
            for name in sorted((names & seen) - warned):
                offered = ", ".join(sorted(placement.offered())) or "nothing: no worker is connected"
                log.warning("tasks named %r are waiting: no connected worker offers that task (workers offer: %s)",
                            name, offered, extra=context(task_name=name))  # fmt: skip
            warned = (warned | (names & seen)) & names
            seen = names

    async def _drain(self, grace: float, stop_accepting: Callable[[], Any] = lambda: None) -> None:
        core = self._core
        core.draining = True
        log.info("drain started: %d task(s) running, grace %g s", core.running, grace)
        started = trio.current_time()
        with trio.move_on_after(grace):
            await self._effects.wait_idle()
        if core.running:
            log.warning("drain finished: grace period over with %d task(s) still running", core.running)
        else:
            log.info("drain finished: no task running after %.1f s", trio.current_time() - started)
        if not self.store.durable:
            core.lose_unfinished("the dispatcher stopped before the task finished")
        self._effects.flush()
        # Workers that reconnected during the grace period had their chance; one that came back
        # after its goodbye would only be dropped without one.
        stop_accepting()
        for conn in list(self._links.values()):
            if not conn.closed:
                try:
                    worker = conn.protocol.peer_role == WORKER
                    conn.send(m.Goodbye(reason="dispatcher stopping", stop=worker and self._stop_workers))
                    with trio.move_on_after(1.0):
                        await conn.flush()
                except ConnectionClosed:
                    pass
        await self._journal.flush()


def _advertised(host: str, port: int) -> str:
    """The ``HOST:PORT`` peers reach a dispatcher listening on ``host:port`` at (without ``advertise``)."""
    if host in ("", "0.0.0.0", "::"):
        name = socket.gethostname()
        log.warning("listening on all interfaces: advertising %s:%d to peers (pass advertise= or --advertise "
                    "HOST:PORT to name the address peers should use)", name, port)  # fmt: skip
        host = name
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bound_port(listeners: list[Any], default: int) -> int:
    for listener in listeners:
        inner = getattr(listener, "transport_listener", listener)
        sock = getattr(inner, "socket", None)
        if sock is not None:
            return int(sock.getsockname()[1])
    return default
