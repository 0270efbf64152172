"""A small, read-only HTTP/1.1 server on h11 and trio, for the dispatcher's operations endpoint.

It serves ``GET`` and ``HEAD`` with keep-alive, and nothing a peer sends can
take its host down: a request's head is capped in bytes (h11 refuses more
before buffering it) and in header count, a body is capped, each request
must arrive whole within ``request_timeout`` (a silent or trickling peer is
closed), a response must leave within ``send_timeout``, connections beyond
``max_connections`` get a 503 and are closed, and every failure ends one
connection with one log line.  The application is a plain function from
:class:`Request` to :class:`Response`: it runs in the event loop, so it must
not block (the dispatcher's pages read counters already in memory).

Why h11 and not hypercorn: see docs/OPERATIONS.md ("HTTP endpoint").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
import h11
import trio

__all__ = ["HttpLimits", "Request", "Response", "serve_http"]

log = logging.getLogger("trioschedule.http")

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\ncontent-length: 44\r\n\r\ntoo many connections to this endpoint; retry\n"
)  # fmt: skip
_READ_SIZE = 16384


@attrs.frozen(kw_only=True)
class HttpLimits:
    """What one peer may cost the server (the defaults suit an operator's browser and a Prometheus scraper)."""

    max_connections: int = 64  # open at once; more get a 503 and are closed
    max_head_bytes: int = 16 * 1024  # request line and headers, together
    max_headers: int = 64
    max_body_bytes: int = 16 * 1024  # a GET has no use for one; a small one is read and ignored
    request_timeout: float = 10.0  # from waiting for a request (keep-alive idle included) to having it whole
    send_timeout: float = 10.0  # for a response to leave


@attrs.frozen(kw_only=True)
class Request:
    """One request as the application sees it: method, path, query string, and headers with lower-case names."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    peer: str

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


@attrs.frozen(kw_only=True)
class Response:
    """One response: status, body, content type and any other headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status=status, body=text.encode(), headers=headers)


App = Callable[[Request], Response]


async def serve_http(
    app: App,
    listeners: list[trio.abc.Listener[Any]],
    limits: HttpLimits | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listeners`` until cancelled (``task_status.started()`` once accepting)."""
    server = _Server(app, limits or HttpLimits())
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        task_status.started()


class _Server:
    def __init__(self, app: App, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits
        self.open = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        """One connection, whatever happens: errors end it with one log line, never more."""
        peer = _describe(stream)
        try:
            if self.open >= self.limits.max_connections:
                log.info("http %s: refused, %d connections open already", peer, self.open)
                with trio.move_on_after(1.0):
                    await stream.send_all(_BUSY)
                return
            self.open += 1
            try:
                await _Connection(self, stream, peer).serve()
            finally:
                self.open -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("http %s: connection broke: %s", peer, exc or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - one connection's failure must never reach the dispatcher
            log.warning("http %s: connection ended by %s: %s", peer, type(exc).__name__, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await _linger(stream)
                await stream.aclose()


class _Connection:
    def __init__(self, server: _Server, stream: trio.abc.Stream, peer: str) -> None:
        self.server = server
        self.limits = server.limits
        self.stream = stream
        self.peer = peer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)

    async def serve(self) -> None:
        conn = self.h11
        while True:
            request = None
            with trio.move_on_after(self.limits.request_timeout) as waiting:
                try:
                    request = await self._receive_request()
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint
                    log.info("http %s: bad request (%d): %s", self.peer, status, exc)
                    await self._send_error(status, f"bad request: {exc}\n")
                    return
            if waiting.cancelled_caught:
                if conn.their_state not in (h11.IDLE, h11.DONE) or conn.trailing_data[0]:
                    log.info("http %s: request not received whole within %g s: closing", self.peer,
                             self.limits.request_timeout)  # fmt: skip
                    await self._send_error(408, "request timeout\n")
                return
            if request is None:  # the peer closed between requests
                return
            response = self._answer(request)
            await self._send(request, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _receive_request(self) -> Request | None:
        """The next request, its body read and dropped; None if the peer closed cleanly between requests."""
        conn = self.h11
        head: h11.Request | None = None
        body = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(_READ_SIZE)
                if not data and head is None and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                    return None
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                # h11 caps a head only while it is incomplete: one that arrived whole in a read is checked here.
                if len(event.headers) > self.limits.max_headers:
                    raise h11.RemoteProtocolError(f"more than {self.limits.max_headers} header fields",
                                                  error_status_hint=431)  # fmt: skip
                size = len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers)
                if size > self.limits.max_head_bytes:
                    raise h11.RemoteProtocolError(f"a request head of more than {self.limits.max_head_bytes} bytes",
                                                  error_status_hint=431)  # fmt: skip
                if event.http_version not in (b"1.0", b"1.1"):
                    raise h11.RemoteProtocolError(f"HTTP/{event.http_version.decode('ascii', 'replace')} is not "
                                                  "spoken here: HTTP/1.1 is", error_status_hint=505)  # fmt: skip
                if sum(name == b"host" for name, _ in event.headers) > 1:  # RFC 9112 3.2: a 400, not a guess
                    raise h11.RemoteProtocolError("more than one Host header", error_status_hint=400)
                head = event
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > self.limits.max_body_bytes:
                    raise h11.RemoteProtocolError(f"a body of more than {self.limits.max_body_bytes} bytes",
                                                  error_status_hint=413)  # fmt: skip
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                target = head.target.decode("ascii", "replace")
                path, _, query = target.partition("?")
                headers: dict[str, str] = {}
                for name, value in head.headers:
                    key = name.decode("ascii", "replace")  # h11 lower-cases names
                    text = value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                return Request(method=head.method.decode("ascii", "replace"), path=path, query=query,
                               headers=headers, peer=self.peer)  # fmt: skip
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # pragma: no cover - h11 has no other events for a server
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")

    def _answer(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, f"method {request.method} is not allowed: this endpoint is read-only\n",
                                 (("allow", "GET, HEAD"),))  # fmt: skip
        try:
            return self.server.app(request)
        except Exception as exc:
            log.error("http %s: %s %s failed: %s: %s", self.peer, request.method, request.path, type(exc).__name__, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))  # fmt: skip
            return Response.text(500, "internal error: see the dispatcher's log\n")

    async def _send(self, request: Request, response: Response) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            *response.headers,
        ]
        conn = self.h11
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        if request.method != "HEAD" and response.body:
            data += conn.send(h11.Data(data=response.body))
        data += conn.send(h11.EndOfMessage())
        await self._send_all(data)

    async def _send_error(self, status: int, text: str) -> None:
        conn = self.h11
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = text.encode()
        try:
            data = conn.send(h11.Response(status_code=status, headers=[
                ("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body))),
                ("connection", "close"),
            ]))  # fmt: skip
            data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # (a state h11 will not answer from): just close
            return
        await self._send_all(data)

    async def _send_all(self, data: bytes | None) -> None:
        if not data:
            return
        with trio.move_on_after(self.limits.send_timeout) as sending:
            await self.stream.send_all(data)
        if sending.cancelled_caught:
            raise trio.BrokenResourceError(f"the response was not taken within {self.limits.send_timeout:g} s")


async def _linger(stream: trio.abc.Stream) -> None:
    """Close our side first and read what the peer still sends for a moment (bounded), then close.

    Closing with unread bytes makes the kernel send a reset, and the peer may
    then lose the answer (a 400, a 503) it has not read yet.
    """
    send_eof = getattr(stream, "send_eof", None)
    if send_eof is None:  # (TLS: no half-close)
        return
    try:
        await send_eof()
        with trio.move_on_after(0.5):
            for _ in range(16):
                if not await stream.receive_some(_READ_SIZE):
                    break
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _describe(stream: Any) -> str:
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("?", 0)
    except OSError:
        return "?"
    return f"{host}:{port}"
