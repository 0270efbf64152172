"""The endpoint's place in the dispatcher: https with the dispatcher's certificate, the exposure warning."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys

import h11
import trio
import trustme

from trioschedule import Dispatcher

from ..processes import env, processes


async def _https_get(port: int, path: str, context: ssl.SSLContext, token: str) -> tuple[int, bytes]:
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname="localhost",
                            https_compatible=True)  # fmt: skip
    client = h11.Connection(h11.CLIENT)
    async with stream:
        await stream.send_all(client.send(h11.Request(method="GET", target=path, headers=[
            ("host", "localhost"), ("authorization", f"Bearer {token}"), ("connection", "close")])))  # fmt: skip
        await stream.send_all(client.send(h11.EndOfMessage()))
        status, body = 0, b""
        with trio.fail_after(10):
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                else:
                    return status, body


async def test_https_with_the_dispatchers_certificate():
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with trio.open_nursery() as nursery:
        d = Dispatcher(port=0, token="tls-t0ken", ssl_context=server_context, http="127.0.0.1:0")
        await nursery.start(d.serve)
        status, body = await _https_get(d.http_port, "/api/status", client_context, "tls-t0ken")
        assert status == 200 and json.loads(body)["name"] == d.name
        # Plain HTTP to the https port is refused without harm, and https still works after it.
        plain = await trio.open_tcp_stream("127.0.0.1", d.http_port)
        async with plain:
            await plain.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(10):
                while await plain.receive_some(65536):
                    pass
        assert (await _https_get(d.http_port, "/metrics", client_context, "tls-t0ken"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_serving_beyond_loopback_without_a_token_warns(caplog):
    caplog.set_level(logging.WARNING, logger="trioschedule.http")
    async with trio.open_nursery() as nursery:
        d = Dispatcher(port=0, http="0.0.0.0:0")
        await nursery.start(d.serve)
        nursery.cancel_scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if r.name == "trioschedule.http"]
    assert any("without a token or TLS" in w and "status and metrics" in w for w in warnings), warnings


async def test_loopback_does_not_warn(caplog):
    caplog.set_level(logging.WARNING, logger="trioschedule.http")
    async with trio.open_nursery() as nursery:
        await nursery.start(Dispatcher(port=0, http="127.0.0.1:0").serve)
        nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if r.name == "trioschedule.http"]


async def test_without_http_nothing_is_served_and_prometheus_client_is_not_loaded():
    code = ("import sys, trio\nfrom trioschedule import Dispatcher\n"
            "async def main():\n"
            "    async with trio.open_nursery() as n:\n"
            "        d = Dispatcher(port=0)\n"
            "        await n.start(d.serve)\n"
            "        assert d.http_port is None\n"
            "        n.cancel_scope.cancel()\n"
            "trio.run(main)\n"
            "assert 'prometheus_client' not in sys.modules and 'trioschedule._http' not in sys.modules\n")  # fmt: skip
    with trio.fail_after(60):
        done = await trio.run_process([sys.executable, "-c", code], env=env(), capture_stdout=True,
                                      capture_stderr=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()


async def test_a_busy_or_bad_http_address_fails_the_command_with_one_line(tmp_path):
    with socket.socket() as taken, processes(tmp_path) as procs:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        done = await procs.run("dispatcher", "--store", "memory:", "--listen", "127.0.0.1:0", "--http", busy)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        expected = f"cannot serve http on {busy}: the address is already in use; choose another address with --http"
        assert expected in done.stderr, done.stderr
        done = await procs.run("dispatcher", "--store", "memory:", "--http", "nonsense")
        assert done.returncode == 2 and "http address 'nonsense' is not HOST:PORT" in done.stderr, done.stderr
