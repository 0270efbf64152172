"""High availability: a dispatcher on a shared store stands by, campaigns, leads, renews, steps down.

Several dispatchers may open one shared store (PostgreSQL); exactly one of
them leads, the one holding the store's lease (docs/HA.md).  This module is
the trio side of that: :class:`Election` watches and takes the lease through
the store's :class:`~trioschedule._store.base.Leadership` and keeps it,
and :func:`refuse` answers a peer that reached a standby.  The scheduling
core knows nothing of it: a dispatcher that loses its lease drops its whole
state (``Dispatcher.serve`` raises :class:`~trioschedule.StoreFenced`) and
its writes are refused by the store's fence meanwhile.

Timing, all on this process's monotonic clock (trio's), with ``ttl`` the
lease's length: the leader renews every ``ttl/3``; a renewal that succeeded
after being *sent* at ``t`` lets it trust its lease until ``t + ttl -
margin`` (the database set the expiry to at least ``t + ttl``); if no
renewal succeeds within that window it steps down by itself, before any
standby can take over.  Standbys poll every ``ttl/6`` and campaign once the
lease has expired, so a dead leader is replaced within about
``ttl + ttl/6`` plus recovery.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from .._errors import AuthenticationError, ConnectionClosed, RemoteProtocolError, StoreError, StoreFenced
from .._net.connection import Connection, describe_address
from .._protocol import messages as m
from .._protocol.connection import DISPATCHER, ProtocolConnection
from .._store.base import Leadership, Lease, Member

__all__ = ["LEADER", "STANDBY", "Election", "KeptOpen", "refuse"]

log = logging.getLogger("trioschedule.dispatcher")

LEADER = "leader"
STANDBY = "standby"

#: Part of the lease a leader keeps back: it stops trusting its lease this long before it could expire.
MARGIN_SHARE = 1 / 6
#: At least this long for one call to the database (the first one connects and prepares the schema).
ATTEMPT_TIMEOUT = 3.0
#: A standby is listed while it announced itself within this many of its polls.
SEEN_POLLS = 4

T = TypeVar("T")


class Election:
    """One dispatcher's view of its shared store's lease: standing by, campaigning, leading.

    ``holder`` is this dispatcher's node id (new for every ``Election``, so a
    restarted process is a new candidate); ``address`` the ``HOST:PORT``
    peers should use, set once the dispatcher listens.
    """

    def __init__(self, leadership: Leadership, *, ttl: float, name: str = "") -> None:
        if not (isinstance(ttl, (int, float)) and math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"lease_ttl must be a positive number of seconds, not {ttl!r}")
        self.leadership = leadership
        self.ttl = float(ttl)
        self.renew_every = self.ttl / 3
        self.poll_every = self.ttl / 6
        self.margin = self.ttl * MARGIN_SHARE
        self.name = name
        self.holder = uuid.uuid4().hex
        self.address = ""
        self.role = STANDBY
        self.term: int | None = None  # the term this dispatcher holds (leader) or held last
        self.lease: Lease | None = None  # the lease as last read (a standby's idea of who leads)
        self.members: list[Member] = []  # as last read, for status
        self.trusted_until = -math.inf  # the leader's own deadline, trio clock
        self.lost = trio.Event()
        self.lost_reason = ""
        self._complained = False

    # ------------------------------------------------------------ standby
    @property
    def leader_address(self) -> str | None:
        """Where peers should go: the live lease's address, or None while nobody leads."""
        if self.role == LEADER:
            return self.address or None
        lease = self.lease
        if lease is None or lease.expires_in <= 0 or not lease.address:
            return None
        return lease.address

    async def wait_to_lead(self) -> int:
        """Stand by until this dispatcher wins the lease; returns its term.

        Each poll announces this dispatcher as a standby, reads the lease,
        and campaigns when nobody holds a live one.  Failing to reach the
        database is logged (once per outage) and retried at the next poll.
        """
        while True:
            sent = trio.current_time()
            term = await self._attempt(self._poll, "watching the lease")
            if term is not None:
                self.role = LEADER
                self.term = term
                self.trusted_until = sent + self.ttl - self.margin
                self.lease = Lease(term=term, holder=self.holder, address=self.address, expires_in=self.ttl)
                return term
            await trio.sleep(self.poll_every)

    async def _poll(self) -> int | None:
        await self.leadership.announce(self.holder, self.address, STANDBY)
        lease = self.lease = await self.leadership.current()
        if lease is not None and lease.expires_in > 0:
            return None
        return await self.leadership.campaign(self.holder, self.address, self.ttl)

    # ------------------------------------------------------------ leader
    async def keep_leading(self) -> None:
        """Renew the lease every ``ttl/3`` until it is lost; returns then (``lost`` is set).

        A separate watch ends the leadership when the trust window passes
        without a renewal, even if a renewal hangs in the database driver.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew_loop)
            nursery.start_soon(self._watch_trust)
            nursery.start_soon(self._announce_loop)
            await self.lost.wait()
            nursery.cancel_scope.cancel()

    def step_down(self, reason: str) -> None:
        """Stop leading now (idempotent): the dispatcher drops everything and serves no more."""
        if not self.lost.is_set():
            self.lost_reason = reason
            self.role = STANDBY
            self.lost.set()

    def ensure_trusted(self) -> None:
        """Step down and raise :class:`StoreFenced` unless the lease is still ours by our own clock.

        Checked before acting on what a peer said or a timer fired: a leader
        that wakes from a pause past its trust window drops everything before
        it runs a hook or finishes a task, not only once a write is fenced.
        """
        if self.lost.is_set() or trio.current_time() >= self.trusted_until:
            self.step_down(f"the lease of term {self.term} could not be renewed within {self.ttl - self.margin:g} s "
                           "(the database was unreachable or this process was paused)")  # fmt: skip
            raise StoreFenced(f"this dispatcher no longer leads: {self.lost_reason}", term=self.term)

    async def _renew_loop(self) -> None:
        assert self.term is not None
        term = self.term
        while True:
            await trio.sleep(self.renew_every)
            sent = trio.current_time()
            with trio.move_on_at(self.trusted_until):
                renewed = await self._attempt(lambda: self.leadership.renew(term, self.ttl), "renewing the lease")
                if renewed is False:
                    self.step_down(f"the lease of term {term} was taken over (a newer term leads)")
                    return
                if renewed:
                    self.trusted_until = max(self.trusted_until, sent + self.ttl - self.margin)

    async def _watch_trust(self) -> None:
        while trio.current_time() < self.trusted_until:
            await trio.sleep_until(self.trusted_until)
        with contextlib.suppress(StoreFenced):
            self.ensure_trusted()

    async def _announce_loop(self) -> None:
        while True:
            await self._attempt(self._announce_leader, "listing the dispatchers")
            await trio.sleep(self.renew_every)

    async def _announce_leader(self) -> None:
        await self.leadership.announce(self.holder, self.address, LEADER)
        self.members = await self.leadership.members(self.seen_within)

    async def resign(self) -> None:
        """Hand the lease over at once (a clean stop): a standby takes over at its next poll."""
        if self.term is None or self.lost.is_set():
            return
        term = self.term
        self.step_down("stopped")
        with trio.move_on_after(max(1.0, self.renew_every)):
            try:
                await self.leadership.resign(term)
                log.info("resigned the lease of term %d", term)
            except StoreError as exc:
                log.warning("could not resign the lease of term %d (a standby takes over when it expires): %s",
                            term, exc)  # fmt: skip

    # ------------------------------------------------------------ status
    @property
    def seen_within(self) -> float:
        return max(self.poll_every * SEEN_POLLS, self.renew_every * 2)

    def describe(self) -> dict[str, Any]:
        """The ``"ha"`` block of the status document (docs/HA.md)."""
        lease = self.lease
        if self.role == LEADER:
            holder, address, term = self.holder, self.address, self.term
        else:
            holder = lease.holder if lease is not None and lease.expires_in > 0 else ""
            address = self.leader_address or ""
            term = lease.term if lease is not None else self.term
        standbys = [
            {"holder": member.holder, "address": member.address, "seen_ago": round(member.seen_ago, 3)}
            for member in self.members
            if member.role == STANDBY and member.holder != self.holder
        ]
        return {"role": self.role, "holder": holder, "address": address, "term": term or 0,
                "standbys": standbys, "node": self.holder, "lease_ttl": self.ttl}  # fmt: skip

    # ------------------------------------------------------------ helpers
    async def _attempt(self, call: Callable[[], Awaitable[T]], what: str) -> T | None:
        """``call()``, or None (logged once per outage) if the database cannot be reached."""
        try:
            with trio.fail_after(max(self.renew_every, ATTEMPT_TIMEOUT)):
                result = await call()
        except (StoreError, OSError, trio.TooSlowError) as exc:
            if not self._complained:
                log.warning("%s failed (retrying every %g s): %s", what, self.poll_every, str(exc) or type(exc).__name__)
                self._complained = True
            return None
        if self._complained:
            log.info("%s works again", what)
            self._complained = False
        return result


async def refuse(stream: trio.abc.Stream, election: Election, *, max_frame_size: int, timeout: float) -> None:
    """Serve one connection on a standby: read its hello, answer ``not-leader`` naming the leader, close."""
    address = describe_address(stream)
    conn = Connection(stream, ProtocolConnection(DISPATCHER, max_frame_size=max_frame_size), address=address)
    try:
        with trio.move_on_after(timeout):
            await conn.receive_one(m.Hello)
            leader = election.leader_address
            text = (f"this dispatcher is a standby; the leader is {leader}" if leader
                    else "this dispatcher is a standby; no leader yet (one takes over within the lease time)")  # fmt: skip
            await conn.send_error("not-leader", text, leader=leader)
            log.debug("%s: redirected to %s", address, leader)
    except (RemoteProtocolError, AuthenticationError, ConnectionClosed) as exc:
        log.debug("%s: closed on a standby: %s", address, exc)
    finally:
        await conn.aclose()


class KeptOpen(trio.abc.Listener[Any]):
    """A listener that ``trio.serve_listeners`` cannot close: the standby's accept loop hands it to the leader's.

    The dispatcher closes the real listener itself when it stops serving.
    """

    def __init__(self, listener: trio.abc.Listener[Any]) -> None:
        self.listener = listener

    async def accept(self) -> Any:
        return await self.listener.accept()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
