"""The peer side of a connection: connect, say hello, authenticate, back off and retry."""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._errors import AuthenticationError, ConnectionClosed, RemoteProtocolError
from .._protocol import messages as m
from .._protocol.connection import ProtocolConnection, dispatcher_proof, new_nonce, peer_proof, proofs_match
from .._protocol.framing import DEFAULT_MAX_FRAME_SIZE
from .connection import Connection, describe_error

__all__ = ["Backoff", "FATAL_CODES", "open_connection"]

log = logging.getLogger("trioschedule")

# Error codes after which retrying the same connection cannot help.
FATAL_CODES = frozenset({"auth-failed", "version-mismatch", "bad-role"})


class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(maximum, initial * 2**n))``."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
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
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    send_timeout: float = 30.0,
    connect_timeout: float = 10.0,
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
            nonce = new_nonce() if token else None
            await conn.send_now(m.Hello(version=m.PROTOCOL_VERSION, role=role, nonce=nonce, **hello))
            try:
                reply = await conn.receive_one(m.Challenge, m.Welcome)
                challenge = None
                if isinstance(reply, m.Challenge):
                    if not token or nonce is None:
                        raise AuthenticationError(
                            "the dispatcher requires a token: pass token= or set TRIOSCHEDULE_TOKEN"
                        )
                    challenge = reply.nonce
                    await conn.send_now(m.Auth(proof=peer_proof(token, role, nonce, challenge)))
                    reply = await conn.receive_one(m.Welcome)
            except ConnectionClosed as exc:
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
            if reply.max_frame_size:
                conn.protocol.max_send_size = min(max_frame_size, reply.max_frame_size)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()
            raise
    return conn, reply
