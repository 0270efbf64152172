"""The HTTP server and the endpoint's routing, over real sockets: bad input never reaches the dispatcher."""

from __future__ import annotations

import base64

import h11
import pytest
import trio

from trioschedule import Dispatcher, Worker, open_client, task
from trioschedule._http.server import HttpLimits, Request, Response, serve_http


class AddWorker(Worker):
    @task
    async def add(self, a, b):
        return a + b


async def _read_all(stream: trio.SocketStream, limit: float = 5.0) -> bytes:
    """Everything until the server closes (fails the test if it does not, within ``limit`` seconds)."""
    data = b""
    with trio.fail_after(limit):
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return data
            data += chunk


async def _exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        try:
            await stream.send_eof()  # nothing more: a kept-alive connection then ends after its answer
        except trio.BrokenResourceError:
            pass  # (already refused and closed)
        return await _read_all(stream)


async def _get(port: int, path: str, headers: list[tuple[str, str]] = ()) -> tuple[int, dict[str, str], bytes]:
    """One request with h11 on a fresh connection: (status, headers, body)."""
    client = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(client.send(h11.Request(method="GET", target=path, headers=[
            ("host", "localhost"), ("connection", "close"), *headers])))  # fmt: skip
        await stream.send_all(client.send(h11.EndOfMessage()))
        status, got, body = 0, {}, b""
        with trio.fail_after(5):
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    got = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, got, body


async def _serve_app(nursery: trio.Nursery, app, limits: HttpLimits) -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(serve_http, app, listeners, limits)
    return int(listeners[0].socket.getsockname()[1])


def _hello(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("a bug in a page")
    return Response.text(200, f"hello {request.path}\n")


async def test_keep_alive_head_and_methods() -> None:
    async with trio.open_nursery() as nursery:
        port = await _serve_app(nursery, _hello, HttpLimits())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            # Two requests on one connection, then HEAD (no body), then a POST (405) that closes nothing.
            await stream.send_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                                  b"GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # fmt: skip
            data = await _read_all(stream)
        assert data.count(b"HTTP/1.1 200 ") == 4
        assert b"hello /a\n" in data and b"hello /b\n" in data and b"hello /e\n" in data
        assert b"hello /c" not in data  # HEAD: headers only
        assert b"HTTP/1.1 405 " in data and b"allow: GET, HEAD" in data
        nursery.cancel_scope.cancel()


async def test_bad_input_is_answered_or_closed_and_the_server_goes_on() -> None:
    limits = HttpLimits(max_head_bytes=4096, max_headers=10, request_timeout=0.5, max_body_bytes=100)
    async with trio.open_nursery() as nursery:
        port = await _serve_app(nursery, _hello, limits)
        assert (await _exchange(port, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n")
                ).startswith(b"HTTP/1.1 431 ")  # fmt: skip
        many = b"".join(b"X-%d: y\r\n" % i for i in range(11))
        assert (await _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")).startswith(b"HTTP/1.1 431 ")
        answer = await _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"z" * 1000)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert (await _exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)))
                ).startswith(b"HTTP/1.1 400 ")  # a TLS hello to a plain port  # fmt: skip
        assert (await _exchange(port, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                ).startswith(b"HTTP/1.1 500 ")  # fmt: skip
        assert (await _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                ).startswith(b"HTTP/1.1 200 ")  # fmt: skip
        nursery.cancel_scope.cancel()


async def test_a_silent_or_trickling_peer_is_closed_in_bounded_time() -> None:
    limits = HttpLimits(request_timeout=0.5)
    async with trio.open_nursery() as nursery:
        port = await _serve_app(nursery, _hello, limits)
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        async with silent:
            assert await _read_all(silent, limit=5) == b""  # closed without a word: it never began a request
        trickle = await trio.open_tcp_stream("127.0.0.1", port)
        async with trickle:
            answer = b""
            with trio.fail_after(5):
                for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":  # a slowloris: one byte every 0.1 s, never done
                    try:
                        await trickle.send_all(bytes([byte]))
                    except trio.BrokenResourceError:
                        break
                    await trio.sleep(0.1)
                answer = await _read_all(trickle)
            assert answer.startswith(b"HTTP/1.1 408 ")
        nursery.cancel_scope.cancel()


async def test_connections_beyond_the_limit_get_503() -> None:
    async with trio.open_nursery() as nursery:
        port = await _serve_app(nursery, _hello, HttpLimits(max_connections=2, request_timeout=30))
        first = await trio.open_tcp_stream("127.0.0.1", port)
        second = await trio.open_tcp_stream("127.0.0.1", port)
        async with first, second:
            for stream in (first, second):  # both are served (and then kept alive, idle)
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                with trio.fail_after(5):
                    assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
            assert (await _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
        await trio.sleep(0.2)  # the two closed: room again
        assert (await _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                ).startswith(b"HTTP/1.1 200 ")  # fmt: skip
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("token", ["s3cret", {"worker": "w", "client": "c", "admin": "s3cret"}])
async def test_the_endpoint_is_behind_the_admin_token(token) -> None:
    async with trio.open_nursery() as nursery:
        d = Dispatcher(port=0, token=token, http="127.0.0.1:0")
        port = await nursery.start(d.serve)
        http = d.http_port
        assert http is not None and http != port
        status, headers, body = await _get(http, "/metrics")
        assert status == 401 and headers["www-authenticate"].startswith("Basic ") and b"no token" in body
        status, headers, body = await _get(http, "/api/status", [("authorization", "Bearer wrong")])
        assert status == 401 and b"a wrong token" in body
        status, headers, _ = await _get(http, "/api/status", [("x-requested-with", "XMLHttpRequest")])
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="trioschedule"'  # no browser dialog
        if isinstance(token, dict):  # another role's secret is not the admin's
            assert (await _get(http, "/metrics", [("authorization", "Bearer c")]))[0] == 401
        assert (await _get(http, "/metrics", [("authorization", "Bearer s3cret")]))[0] == 200
        basic = base64.b64encode(b"anyone:s3cret").decode()
        assert (await _get(http, "/api/status", [("authorization", f"Basic {basic}")]))[0] == 200
        wrong_basic = base64.b64encode(b"s3cret:nope").decode()
        assert (await _get(http, "/api/status", [("authorization", f"Basic {wrong_basic}")]))[0] == 401
        # The page itself holds no data: it is served without a token, and asks for one.
        status, headers, body = await _get(http, "/")
        assert status == 200 and b"admin token" in body and "default-src 'none'" in headers["content-security-policy"]
        assert (await _get(http, "/nothing-here"))[0] == 404
        nursery.cancel_scope.cancel()


async def test_a_role_mapping_without_admin_closes_the_endpoint() -> None:
    async with trio.open_nursery() as nursery:
        d = Dispatcher(port=0, token={"worker": "w", "client": "c"}, http="127.0.0.1:0")
        await nursery.start(d.serve)
        status, _, body = await _get(d.http_port, "/metrics", [("authorization", "Bearer c")])
        assert status == 403 and b"admin" in body
        nursery.cancel_scope.cancel()


async def test_the_dispatcher_stays_up_through_all_of_it() -> None:
    """Hostile HTTP traffic beside real work: every task still runs, and the endpoint still answers."""
    async with trio.open_nursery() as nursery:
        d = Dispatcher(port=0, http="127.0.0.1:0")
        port = await nursery.start(d.serve)
        nursery.start_soon(AddWorker(port=port).run)
        http = d.http_port
        junk = [
            (b"\x00" * 5000, b"400"), (b"GET / HTTP/9.9\r\n\r\n", b"505"),
            (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"431"),
            (b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", b"400"),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\n\r\nzz\r\n", b"400"),
        ]  # fmt: skip
        async with open_client("127.0.0.1", port) as client:
            for data, expected in junk:
                answer = await _exchange(http, data)
                assert answer.startswith(b"HTTP/1.1 " + expected), (data[:40], answer[:80])
            assert await client.map("add", [(i, 1) for i in range(50)]) == [i + 1 for i in range(50)]
        status, _, body = await _get(http, "/metrics")
        assert status == 200 and b'trioschedule_tasks_succeeded_total{task="add"} 50.0' in body
        nursery.cancel_scope.cancel()


def test_a_bad_http_address_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        Dispatcher(http="localhost")
