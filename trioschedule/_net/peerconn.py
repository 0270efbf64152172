"""The peer side of a connection: connect, say hello, authenticate, back off and retry.

Workers and clients differ only in what they do with a connection and in
which failures are worth another attempt; :func:`stay_connected` is the one
loop around :class:`Backoff`, the :class:`~trioschedule._net.addresses.Rotation`
through the dispatchers' addresses, and :func:`open_connection` they share.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from .. import _defaults as defaults
from .._errors import AuthenticationError, ConnectionClosed, NotLeader, ProtocolError, RemoteProtocolError
from .._protocol import messages as m
from .._protocol.connection import ProtocolConnection, dispatcher_proof, new_nonce, peer_proof, proofs_match
from .addresses import Address, Rotation, format_address, format_addresses, parse_address
from .connection import Connection, describe_error

__all__ = [
    "CONNECT_ERRORS", "FATAL_CODES", "Backoff", "Retry", "is_fatal", "leader_of", "open_connection", "round_error",
    "stay_connected",
]  # fmt: skip

log = logging.getLogger("trioschedule")

# Error codes after which retrying cannot help.  ``not-leader`` is not one: the
# standby names where to go, or a leader will be elected soon.
FATAL_CODES = frozenset({"auth-failed", "version-mismatch", "bad-role"})


class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(maximum, initial * 2**n))``."""

    def __init__(self, initial: float = defaults.RECONNECT_INITIAL, maximum: float = defaults.RECONNECT_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(0, ceiling)

    def reset(self) -> None:
        self.failures = 0


async def open_connection(
    host: str,
    port: int,
    /,
    *,
    role: str,
    token: str | None,
    ssl_context: ssl.SSLContext | None,
    max_frame_size: int = defaults.MAX_FRAME_SIZE,
    send_timeout: float = defaults.SEND_TIMEOUT,
    connect_timeout: float = defaults.CONNECT_TIMEOUT,
    connector: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    **hello: Any,
) -> tuple[Connection, m.Welcome]:
    """Connect and complete the handshake; returns the connection and the dispatcher's Welcome.

    Raises :class:`AuthenticationError` when the credentials do not match
    (retrying will not help), and :class:`ConnectionClosed`/``OSError`` when
    the dispatcher cannot be reached (retrying may).
    """
    with trio.fail_after(connect_timeout):
        stream: trio.abc.Stream
        if connector is not None:  # trioschedule.testing: an in-memory network
            stream = await connector()
        else:
            stream = await trio.open_tcp_stream(host, port)
        try:
            if ssl_context is not None:
                stream = trio.SSLStream(stream, ssl_context, server_hostname=host)
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                    raise ConnectionClosed(f"TLS handshake with {host}:{port} failed: {describe_error(exc)}") from None
            conn = Connection(stream, ProtocolConnection(role, max_frame_size=max_frame_size), send_timeout=send_timeout)
            reply = await _handshake(conn, role, token, hello)
            if reply.max_frame_size:
                conn.protocol.max_send_size = min(max_frame_size, reply.max_frame_size)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()
            raise
    return conn, reply


async def _handshake(conn: Connection, role: str, token: str | None, hello: dict[str, Any]) -> m.Welcome:
    """Hello, then the token's challenge and proofs both ways if there is a token; returns the Welcome."""
    nonce = new_nonce() if token else None
    await conn.send_now(m.Hello(version=m.PROTOCOL_VERSION, role=role, nonce=nonce, **hello))
    try:
        reply = await conn.receive_one(m.Challenge, m.Welcome)
        challenge = None
        if isinstance(reply, m.Challenge):
            if not token or nonce is None:
                raise AuthenticationError("the dispatcher requires a token: pass token= or set TRIOSCHEDULE_TOKEN")
            challenge = reply.nonce
            await conn.send_now(m.Auth(proof=peer_proof(token, role, nonce, challenge)))
            reply = await conn.receive_one(m.Welcome)
    except ConnectionClosed as exc:
        if exc.code == "not-leader":
            raise NotLeader(exc.reason, leader=exc.leader) from None
        if exc.code == "auth-failed":
            raise AuthenticationError(f"the dispatcher refused our credentials: {exc.reason}") from None
        if exc.code in FATAL_CODES:
            raise RemoteProtocolError(exc.reason, code=exc.code) from None
        raise
    if token:
        if challenge is None or nonce is None:
            raise AuthenticationError("the dispatcher did not ask for a token, so it cannot prove who it is; refusing it")
        if not proofs_match(dispatcher_proof(token, role, nonce, challenge), reply.proof):
            raise AuthenticationError("the dispatcher's proof is wrong: it does not know our token")
    return reply  # type: ignore[no-any-return]


#: What a failed attempt to connect may raise; the caller's ``retry`` decides what each one means.
CONNECT_ERRORS = (OSError, ConnectionClosed, trio.TooSlowError, ProtocolError, AuthenticationError)


class Retry(Protocol):
    """A caller's policy for a failed attempt to connect (see :func:`stay_connected`)."""

    def __call__(self, exc: Exception, attempts: int, connected_once: bool) -> str | None: ...


def is_fatal(exc: Exception) -> bool:
    """An error that no other address and no later attempt can mend (wrong token, wrong protocol version)."""
    return isinstance(exc, AuthenticationError) or (isinstance(exc, ProtocolError) and exc.code in FATAL_CODES)


def leader_of(exc: Exception) -> Address | None:
    """Where a standby's ``not-leader`` answer says to go (None: it named nobody, or nothing parseable)."""
    if not isinstance(exc, NotLeader) or not exc.leader:
        return None
    try:
        return parse_address(exc.leader)
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    if isinstance(exc, NotLeader):
        return f"not-leader: leader {exc.leader}" if exc.leader else "not-leader: no leader yet"
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror is None:  # trio's "all attempts to connect to H:P failed"
        reasons = {  # each "Error connecting to ('h', p): Connection refused" -> "connection refused"
            e.strerror.rsplit(": ", 1)[-1].lower()
            for e in getattr(exc.__cause__, "exceptions", ())
            if isinstance(e, OSError) and e.strerror
        }
        if reasons:
            return ", ".join(sorted(reasons))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def round_error(failures: list[tuple[Address, Exception]]) -> Exception:
    """One error for a round in which every address failed: the error itself when there was one attempt.

    A :class:`NotLeader` if any dispatcher answered that it is a standby
    ("no dispatcher at A, B leads (...)": someone is there, a failover may be
    under way), else, after several attempts, a :class:`ConnectionClosed`.  The reasons
    are given once when they agree, else per address.
    """
    if len(failures) == 1 and not isinstance(failures[0][1], NotLeader):
        return failures[0][1]
    addresses = format_addresses(dict.fromkeys(address for address, _ in failures))
    reasons = [(address, _describe(exc)) for address, exc in failures]
    if len({reason for _, reason in reasons}) == 1:
        detail = reasons[0][1]
    else:
        detail = "; ".join(f"{format_address(address)}: {reason}" for address, reason in reasons)
    if any(isinstance(exc, NotLeader) for _, exc in failures):
        return NotLeader(f"no dispatcher at {addresses} leads ({detail})")
    return ConnectionClosed(f"cannot reach any dispatcher at {addresses} ({detail})")


async def stay_connected(
    connect: Callable[[Address], Awaitable[tuple[Connection, m.Welcome]]],
    serve: Callable[[Connection, m.Welcome, Callable[[], None]], Awaitable[None]],
    *,
    retry: Retry,
    backoff: Backoff,
    done: Callable[[], bool],
    log: logging.Logger,
    rotation: Rotation,
    pause: Callable[[float], Awaitable[Any]] = trio.sleep,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect, serve the connection, and connect again after a pause, until ``done()``.

    ``connect(address)`` makes one attempt at the address ``rotation``
    chooses.  A failed attempt moves on at once to the next address of the
    round, or to the leader a standby named (one log line per redirect);
    after a connection ends, the next round starts with the next address
    (:meth:`Rotation.lost`).
    When the whole round has failed, ``retry(exc, attempts,
    connected_once)`` decides, given the round's error (:func:`round_error`):
    it raises to stop with an error, returns None to stop quietly, or
    returns why we retry, which is logged with the delay (an empty reason
    retries without a log line above DEBUG); ``attempts`` counts the failed
    rounds since the last connection.  An error no address can mend
    (:func:`is_fatal`) goes to ``retry`` at once.  ``pause`` waits out the
    delay (the worker's also ends when it is told to stop).

    ``serve(conn, welcome, ready)`` owns a connection until it ends, and calls
    ``ready()`` once it is set up: the first time, that is when
    ``task_status.started()`` fires.  Between connections the loop waits a
    delay from ``backoff`` too, so a dispatcher that accepts and at once drops
    its peers is not hammered.
    """
    attempts = 0
    connected_once = False
    while not done():
        address = rotation.current
        try:
            conn, welcome = await connect(address)
        except CONNECT_ERRORS as exc:
            leader = leader_of(exc)
            if isinstance(exc, NotLeader):
                if rotation.following(leader):
                    log.info("%s is a standby; following it to the leader at %s", format_address(address), exc.leader)
                else:
                    log.debug("%s is a standby (%s); trying the next address", format_address(address), _describe(exc))
            error: Exception = exc
            if is_fatal(exc):
                rotation.failed(exc)
                rotation.take_failures()
            elif not rotation.failed(exc, leader):
                continue  # the next address of this round, at once
            else:
                error = round_error(rotation.take_failures())
            attempts += 1
            why = retry(error, attempts, connected_once)
            if why is None:
                return
            delay = backoff.next_delay()
            if isinstance(error, NotLeader):
                # A standby answered: a failover is under way and ends when a lease expires, not
                # later.  Backing off like from a dead address (up to RECONNECT_MAX) would reach the
                # new leader seconds after it serves; polling keeps the failover within its bound.
                delay = min(delay, defaults.LEADER_POLL)
            if why:
                log.info("%s; retrying in %.2f s", why, delay)
            else:
                log.debug("connecting failed (%s); retrying in %.2f s", error, delay)
            await pause(delay)
            continue
        rotation.succeeded()
        attempts = 0
        backoff.reset()
        await serve(conn, welcome, task_status.started if not connected_once else _already_started)
        rotation.lost()
        connected_once = True
        if not done():
            await trio.sleep(backoff.next_delay())


def _already_started() -> None:
    """``ready`` after the first connection: ``task_status.started()`` fired then."""
