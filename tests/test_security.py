"""Authentication, TLS and limits over real TCP sockets on 127.0.0.1 (in-process dispatcher, workers, clients).

What is checked here is what docs/SECURITY.md promises: a peer proves it
knows its role's secret without sending it, a recorded handshake cannot be
replayed, a refused peer gets an error frame and nothing else, TLS (and
mutual TLS) on the same port, and every limit answers with a clear error
while everyone else is served on.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trustme

from trioschedule import (
    AuthenticationError,
    ConnectionClosed,
    Dispatcher,
    LocalProtocolError,
    QueueFull,
    Rejected,
    TriosError,
    client_ssl_context,
    open_client,
    server_ssl_context,
)
from trioschedule._net.security import Secrets, warn_if_exposed
from trioschedule._protocol import auth as _protocol
from trioschedule._protocol import messages as m
from trioschedule._protocol.connection import dispatcher_proof, new_nonce, peer_proof, proofs_match
from trioschedule._protocol.framing import FrameDecoder, encode_frame

from .conftest import MathWorker

HOST = "127.0.0.1"
TOKEN = "correct horse battery staple"
SECRETS = {"worker": "worker-secret-1", "client": "client-secret-2", "admin": "admin-secret-3"}
SMALL_FRAME = 64 * 1024


# =================================================================== helpers
def make_pki(directory: str) -> types.SimpleNamespace:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a second, unrelated CA."""
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("worker.example")
    stranger = other_ca.issue_cert("stranger.example")
    paths = {
        "ca": ca.cert_pem,
        "other_ca": other_ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
        "stranger_cert": stranger.cert_chain_pems[0],
        "stranger_key": stranger.private_key_pem,
    }
    out = {}
    for name, blob in paths.items():
        out[name] = os.path.join(directory, f"{name}.pem")
        blob.write_to_path(out[name])
    return types.SimpleNamespace(**out)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def server_tls(pki: types.SimpleNamespace, *, mutual: bool = False) -> Any:
    return server_ssl_context(pki.server_cert, pki.server_key, client_ca=pki.ca if mutual else None)


def client_tls(pki: types.SimpleNamespace, *, cert: bool = True) -> Any:
    if cert:
        return client_ssl_context(pki.ca, certfile=pki.client_cert, keyfile=pki.client_key)
    return client_ssl_context(pki.ca)


class RecordingDispatcher(Dispatcher):
    """Remembers every peer that completed a handshake."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("host", HOST)
        kwargs.setdefault("heartbeat_interval", 1.0)
        kwargs.setdefault("heartbeat_timeout", 5.0)
        super().__init__(*args, **kwargs)
        self.connected: list[tuple[str, str]] = []

    async def on_connect(self, peer: Any) -> None:
        self.connected.append((peer.role, peer.name))


@asynccontextmanager
async def serving(dispatcher: Dispatcher) -> AsyncIterator[tuple[trio.Nursery, int]]:
    """Run ``dispatcher`` on 127.0.0.1, port 0; yields the nursery (for workers) and the bound port.

    A stray ``Cancelled`` coming out of the body would be swallowed by this
    nursery and the test would silently stop half way; that is an error here.
    """
    finished = False
    async with trio.open_nursery() as nursery:
        port = await nursery.start(dispatcher.serve)
        yield nursery, port
        finished = True
        nursery.cancel_scope.cancel()
    if not finished:
        raise AssertionError("the test body was cut short by a Cancelled that was not its own")


async def start_worker(nursery: trio.Nursery, port: int, **kwargs: Any) -> MathWorker:
    worker = MathWorker(HOST, port, **kwargs)
    with trio.fail_after(10):
        await nursery.start(worker.run)
    return worker


async def logged(caplog: pytest.LogCaptureFixture, pattern: str, timeout: float = 5) -> str:
    """Wait until a captured log line matches ``pattern``; return it."""
    regex = re.compile(pattern)
    with trio.fail_after(timeout):
        while True:
            for record in caplog.records:
                text = record.getMessage()
                if regex.search(text):
                    return text
            await trio.sleep(0.01)


def local_address(stream: trio.abc.Stream) -> str:
    inner: Any = stream
    while hasattr(inner, "transport_stream"):
        inner = inner.transport_stream
    host, port = inner.socket.getsockname()[:2]
    return f"{host}:{port}"


class RawPeer:
    """A peer that speaks the protocol by hand, frame by frame, keeping every byte it sent."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.sent: list[bytes] = []
        self.challenge: m.Challenge | None = None

    @classmethod
    async def connect(cls, port: int, ssl_context: Any = None) -> RawPeer:
        stream: trio.abc.Stream = await trio.open_tcp_stream(HOST, port)
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_hostname=HOST)
        return cls(stream)

    @property
    def address(self) -> str:
        return local_address(self.stream)

    async def send(self, message: Any) -> bytes:
        return await self.send_raw(encode_frame(m.encode(message)))

    async def send_raw(self, data: bytes) -> bytes:
        self.sent.append(data)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return data

    async def receive(self) -> Any:
        """The next message, or None once the dispatcher has closed the connection."""
        with trio.fail_after(10):
            while True:
                frame = self.decoder.next_frame()
                if frame is not None:
                    return m.decode(frame)
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                if not data:
                    return None
                self.decoder.receive_data(data)

    async def receive_until_closed(self) -> list[Any]:
        out = []
        while (message := await self.receive()) is not None:
            out.append(message)
        return out

    async def handshake(self, role: str, token: str | None) -> m.Welcome:
        """A legitimate handshake, done by hand; checks the dispatcher's proof too."""
        nonce = new_nonce() if token else None
        await self.send(m.Hello(version=m.PROTOCOL_VERSION, role=role, name=f"raw-{role}", nonce=nonce))
        reply = await self.receive()
        if token is None:
            assert isinstance(reply, m.Welcome), reply
            return reply
        assert isinstance(reply, m.Challenge), reply
        self.challenge = reply
        await self.send(m.Auth(proof=peer_proof(token, role, nonce, reply.nonce)))
        welcome = await self.receive()
        assert isinstance(welcome, m.Welcome), welcome
        assert welcome.proof == dispatcher_proof(token, role, nonce, reply.nonce)
        return welcome

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def still_serving(port: int, **client_options: Any) -> None:
    """A well-behaved client can still connect and get a task done."""
    with trio.fail_after(10):
        async with open_client(HOST, port, **client_options) as client:
            assert await client.call("add", 20, 22) == 42


# ======================================================================= TLS
async def test_mutual_tls_worker_and_client_run_tasks(pki):
    dispatcher = RecordingDispatcher(ssl_context=server_tls(pki, mutual=True))
    async with serving(dispatcher) as (nursery, port):
        worker = await start_worker(nursery, port, ssl_context=client_tls(pki))
        with trio.fail_after(10):
            async with open_client(HOST, port, ssl_context=client_tls(pki)) as client:
                assert await client.call("add", 1, 2) == 3
                assert await client.map("mul", [(i, 2) for i in range(20)]) == [2 * i for i in range(20)]
                assert await client.call("add", 3, 4) == 7
            async with open_client(HOST, port, ssl_context=client_tls(pki), role="admin") as admin:
                status = await admin.status()
        # Over TLS the worker's reader keeps reading: a cancelled SSLStream read is not always
        # safe, so its runners never ask for the read turn (see _worker/readturn.py).
        turn = worker._turn
        assert turn is not None and not turn.shared and turn.runner is None and not turn.wanted
        assert [w["connected"] for w in status["workers"]] == [True]
        assert {role for role, _ in dispatcher.connected} == {"worker", "client", "admin"}


async def test_tls_without_client_certificate_works_when_not_mutual(pki):
    async with serving(RecordingDispatcher(ssl_context=server_tls(pki))) as (nursery, port):
        await start_worker(nursery, port, ssl_context=client_tls(pki, cert=False))
        await still_serving(port, ssl_context=client_tls(pki, cert=False))


@pytest.mark.parametrize(
    "case",
    ["client trusts another CA", "client certificate from another CA", "no client certificate"],
)
async def test_tls_mismatch_is_refused_and_the_dispatcher_keeps_serving(pki, case, caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    if case == "client trusts another CA":
        bad = client_ssl_context(pki.other_ca, certfile=pki.client_cert, keyfile=pki.client_key)
    elif case == "client certificate from another CA":
        bad = client_ssl_context(pki.ca, certfile=pki.stranger_cert, keyfile=pki.stranger_key)
    else:
        bad = client_tls(pki, cert=False)
    dispatcher = RecordingDispatcher(ssl_context=server_tls(pki, mutual=True))
    async with serving(dispatcher) as (nursery, port):
        await start_worker(nursery, port, ssl_context=client_tls(pki))
        async with open_client(HOST, port, ssl_context=client_tls(pki)) as good:
            assert await good.call("add", 1, 1) == 2
            with trio.fail_after(10):
                # A library error (not a raw trio/ssl exception), saying it is about certificates.
                with pytest.raises(TriosError) as info:
                    async with open_client(HOST, port, ssl_context=bad):
                        pass  # pragma: no cover
            text = str(info.value)
            if case == "client trusts another CA":  # our own verification failed: say so
                assert "certificate" in text.lower(), repr(info.value)
            else:  # the dispatcher refused us: pass on what TLS said
                assert re.search(r"TLS|SSL|certificate", text, re.IGNORECASE), repr(info.value)
            assert await good.call("add", 2, 2) == 4
        await still_serving(port, ssl_context=client_tls(pki))
        assert [role for role, _ in dispatcher.connected].count("client") == 2


async def test_plaintext_peer_to_tls_dispatcher_fails_cleanly(pki, caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = RecordingDispatcher(ssl_context=server_tls(pki), handshake_timeout=2)
    async with serving(dispatcher) as (nursery, port):
        await start_worker(nursery, port, ssl_context=client_tls(pki, cert=False))
        with trio.fail_after(10):
            with pytest.raises(ConnectionClosed, match=f"{HOST}:{port}"):
                async with open_client(HOST, port):
                    pass  # pragma: no cover
            # A raw plaintext hello is never answered with protocol frames.
            raw = await RawPeer.connect(port)
            await raw.send(m.Hello(version=m.PROTOCOL_VERSION, role="client"))
            with trio.fail_after(5):
                assert await raw.receive_until_closed() == []
            address = raw.address
            await raw.aclose()
        await still_serving(port, ssl_context=client_tls(pki, cert=False))
        assert [role for role, _ in dispatcher.connected] == ["worker", "client"]
        # One line names the peer and says why (the TLS failure, not an empty reason).
        line = await logged(caplog, re.escape(address))
        assert not line.rstrip().endswith(":"), line


async def test_tls_peer_to_plaintext_dispatcher_fails_cleanly(pki):
    dispatcher = RecordingDispatcher()
    async with serving(dispatcher) as (nursery, port):
        await start_worker(nursery, port)
        with trio.fail_after(10), pytest.raises(TriosError):
            async with open_client(HOST, port, ssl_context=client_tls(pki, cert=False)):
                pass  # pragma: no cover
        await still_serving(port)


# ============================================================ shared secret
async def test_right_token_lets_every_role_in(caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = RecordingDispatcher(token=TOKEN)
    async with serving(dispatcher) as (nursery, port):
        await start_worker(nursery, port, token=TOKEN)
        with trio.fail_after(10):
            async with open_client(HOST, port, token=TOKEN) as client:
                assert await client.call("add", 1, 2) == 3
            async with open_client(HOST, port, token=TOKEN, role="admin") as admin:
                assert len((await admin.status())["workers"]) == 1
    assert [role for role, _ in dispatcher.connected] == ["worker", "client", "admin"]
    assert not [r for r in caplog.records if "authentication failed" in r.getMessage()]


async def test_wrong_token_is_refused_logged_and_gets_nothing(caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = RecordingDispatcher(token=TOKEN)
    async with serving(dispatcher) as (nursery, port):
        worker = await start_worker(nursery, port, token=TOKEN)
        with trio.fail_after(10):
            with pytest.raises(AuthenticationError, match="refused our credentials"):
                async with open_client(HOST, port, token="not the token"):
                    pass  # pragma: no cover
            line = await logged(caplog, r"\d+\.\d+\.\d+\.\d+:\d+: closed: authentication failed")
            assert "not the token" not in line

            # A raw peer with the wrong secret: the challenge, then one error frame, then the end.
            raw = await RawPeer.connect(port)
            nonce = new_nonce()
            await raw.send(m.Hello(version=m.PROTOCOL_VERSION, role="worker", nonce=nonce, tasks=("add",)))
            challenge = await raw.receive()
            assert isinstance(challenge, m.Challenge)
            async with open_client(HOST, port, token=TOKEN) as client:
                await client.broadcast({"secret": "for workers only"})
                assert await client.call("add", 3, 4) == 7
            await raw.send(m.Auth(proof=peer_proof("not the token", "worker", nonce, challenge.nonce)))
            frames = await raw.receive_until_closed()
            assert [type(f) for f in frames] == [m.Error]
            assert frames[0].code == "auth-failed"
            assert "authentication failed" in frames[0].message
            await logged(caplog, re.escape(raw.address) + ": closed: authentication failed")
            await raw.aclose()
        assert worker.messages == [{"secret": "for workers only"}]
        assert [role for role, _ in dispatcher.connected] == ["worker", "client"]
        await still_serving(port, token=TOKEN)


async def test_missing_token_is_refused(caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = RecordingDispatcher(token=TOKEN)
    async with serving(dispatcher) as (nursery, port):
        with trio.fail_after(10):
            with pytest.raises(AuthenticationError, match="requires a token"):
                async with open_client(HOST, port):
                    pass  # pragma: no cover
            # A raw peer that skips the Auth step and asks for work is refused.
            raw = await RawPeer.connect(port)
            await raw.send(m.Hello(version=m.PROTOCOL_VERSION, role="client"))
            assert isinstance(await raw.receive(), m.Challenge)
            await raw.send(m.Submit(tasks=(m.Submission(id="x", name="add", args=[1, 2]),)))
            frames = await raw.receive_until_closed()
            assert [f.code for f in frames] == ["unexpected-message"]
            await raw.aclose()
        assert dispatcher.connected == []
        assert dispatcher.status()["tasks"]["queued"] == 0
        await start_worker(nursery, port, token=TOKEN)
        await still_serving(port, token=TOKEN)


async def test_peer_with_token_refuses_a_dispatcher_without_one():
    dispatcher = RecordingDispatcher()
    async with serving(dispatcher) as (_nursery, port):
        with trio.fail_after(10):
            with pytest.raises(AuthenticationError, match="cannot prove who it is"):
                async with open_client(HOST, port, token=TOKEN):
                    pass  # pragma: no cover


async def _fake_dispatcher(nursery: trio.Nursery, script: Callable[[RawPeer], Any]) -> int:
    """A server on port 0 that runs ``script`` against whoever connects."""

    async def handler(stream: trio.SocketStream) -> None:
        await script(RawPeer(stream))
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return int(listeners[0].socket.getsockname()[1])


async def test_client_refuses_a_dispatcher_that_cannot_prove_the_secret():
    recorded: list[bytes] = []

    async def wrong_proof(peer: RawPeer) -> None:
        hello = await peer.receive()
        assert isinstance(hello, m.Hello) and hello.nonce
        await peer.send(m.Challenge(nonce=new_nonce()))
        await peer.receive()  # the Auth
        forged = hmac.new(b"not the token", b"anything", "sha256").hexdigest()
        await peer.send(m.Welcome(version=1, session="s", heartbeat=1, timeout=5, proof=forged))
        await peer.receive()

    async def replays_a_real_dispatcher(peer: RawPeer) -> None:
        await peer.receive()
        for frame in recorded:  # Challenge and Welcome recorded from a real session
            await peer.send_raw(frame)
            await peer.receive()

    async with trio.open_nursery() as nursery:
        # Record what a real dispatcher says during a legitimate handshake.
        async with serving(RecordingDispatcher(token=TOKEN)) as (_, real_port):
            raw = await RawPeer.connect(real_port)
            nonce = new_nonce()
            await raw.send(m.Hello(version=1, role="client", nonce=nonce))
            challenge = await raw.receive()
            recorded.append(encode_frame(m.encode(challenge)))
            await raw.send(m.Auth(proof=peer_proof(TOKEN, "client", nonce, challenge.nonce)))
            welcome = await raw.receive()
            assert isinstance(welcome, m.Welcome) and welcome.proof
            recorded.append(encode_frame(m.encode(welcome)))
            await raw.aclose()
        for script in (wrong_proof, replays_a_real_dispatcher):
            port = await _fake_dispatcher(nursery, script)
            with trio.fail_after(10), pytest.raises(AuthenticationError, match="proof is wrong"):
                async with open_client(HOST, port, token=TOKEN):
                    pass  # pragma: no cover
        nursery.cancel_scope.cancel()


async def test_recorded_handshake_cannot_be_replayed(caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = RecordingDispatcher(token=TOKEN)
    async with serving(dispatcher) as (nursery, port):
        await start_worker(nursery, port, token=TOKEN)
        # A legitimate client, speaking by hand; its Hello and Auth bytes are recorded.
        legit = await RawPeer.connect(port)
        welcome = await legit.handshake("client", TOKEN)
        hello_bytes, auth_bytes = legit.sent
        await legit.send(m.Submit(tasks=(m.Submission(id="legit-1", name="add", args=[1, 2]),)))
        replies: list[Any] = []
        while len(replies) < 2:
            reply = await legit.receive()
            if not isinstance(reply, m.Heartbeat):
                replies.append(reply)
        assert [type(r) for r in replies] == [m.Accepted, m.Outcomes]
        assert replies[1].results[0].value == 3
        await legit.aclose()
        assert welcome.proof

        # The eavesdropper replays them, in order, on a new connection.
        replay = await RawPeer.connect(port)
        await replay.send_raw(hello_bytes)
        challenge = await replay.receive()
        assert isinstance(challenge, m.Challenge)
        assert legit.challenge is not None and challenge.nonce != legit.challenge.nonce
        await replay.send_raw(auth_bytes)
        frames = await replay.receive_until_closed()
        assert [(type(f), f.code) for f in frames] == [(m.Error, "auth-failed")]
        await logged(caplog, re.escape(replay.address) + ": closed: authentication failed")
        await replay.aclose()

        # ... and all at once, without waiting for the challenge.
        blast = await RawPeer.connect(port)
        await blast.send_raw(hello_bytes + auth_bytes)
        frames = await blast.receive_until_closed()
        assert not any(isinstance(f, m.Welcome) for f in frames)
        assert isinstance(frames[-1], m.Error)
        await blast.aclose()

        assert len(dispatcher._core.tasks) == 1
        assert [role for role, _ in dispatcher.connected] == ["worker", "client"]
        await still_serving(port, token=TOKEN)


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream, record: bytearray) -> None:
    try:
        while data := await source.receive_some(65536):
            record += data
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await sink.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def test_the_secret_never_crosses_the_wire():
    wire = bytearray()
    dispatcher = RecordingDispatcher(token=TOKEN)
    async with serving(dispatcher) as (nursery, port):

        async def proxy(downstream: trio.SocketStream) -> None:
            upstream = await trio.open_tcp_stream(HOST, port)
            async with trio.open_nursery() as pumps:
                pumps.start_soon(_pump, downstream, upstream, wire)
                pumps.start_soon(_pump, upstream, downstream, wire)

        listeners = await nursery.start(trio.serve_tcp, proxy, 0)
        proxy_port = listeners[0].socket.getsockname()[1]
        await start_worker(nursery, proxy_port, token=TOKEN)
        with trio.fail_after(10):
            async with open_client(HOST, proxy_port, token=TOKEN) as client:
                assert await client.call("add", 5, 6) == 11
            async with open_client(HOST, proxy_port, token=TOKEN, role="admin") as admin:
                await admin.status()
    assert b'"type":"challenge"' in wire and b'"type":"auth"' in wire
    secret = TOKEN.encode()
    for encoded in (secret, secret.hex().encode(), json.dumps(TOKEN).encode(), b"staple"):
        assert encoded not in wire


async def test_proofs_are_compared_in_constant_time(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_protocol.hmac, "compare_digest", spy)
    async with serving(RecordingDispatcher(token=TOKEN)) as (_nursery, port):
        with trio.fail_after(10):
            async with open_client(HOST, port, token=TOKEN):
                pass
    # once by the dispatcher (the peer's proof), once by the client (the dispatcher's proof)
    assert len(calls) == 2


def test_proofs_bind_secret_role_direction_and_both_nonces():
    a, b = new_nonce(), new_nonce()
    assert a != b and len(a) == 32
    proof = peer_proof("s", "client", a, b)
    assert proof != dispatcher_proof("s", "client", a, b)  # a dispatcher's answer is no peer proof
    assert proof != peer_proof("s", "admin", a, b)  # a client's proof does not make an admin
    assert proof != peer_proof("s", "client", a, new_nonce())  # a new challenge needs a new proof
    assert proof != peer_proof("s", "client", new_nonce(), b)
    assert proof != peer_proof("t", "client", a, b)
    assert proofs_match(proof, peer_proof("s", "client", a, b))
    assert not proofs_match(proof, None)
    assert not proofs_match(proof, proof[:-1] + ("0" if proof[-1] != "0" else "1"))


WORKER_FAILURES = {
    # case: (dispatcher options, worker options, the exception Worker.run raises)
    "wrong token": ({"token": TOKEN}, {"token": "not the token"}, AuthenticationError),
    "missing token": ({"token": TOKEN}, {}, AuthenticationError),
    "dispatcher without a token": ({}, {"token": TOKEN}, AuthenticationError),
    "the client's secret": ({"token": SECRETS}, {"token": SECRETS["client"]}, AuthenticationError),
    "the admin's secret": ({"token": SECRETS}, {"token": SECRETS["admin"]}, AuthenticationError),
    "plaintext to TLS": ({"tls": True}, {"reconnect_attempts": 0}, ConnectionClosed),
    "trusts another CA": ({"tls": True}, {"reconnect_attempts": 0, "other_ca": True}, TriosError),
}


@pytest.mark.parametrize("case", list(WORKER_FAILURES))
async def test_a_worker_with_bad_credentials_stops_with_one_clear_error(pki, case):
    dispatcher_options, worker_options, expected = WORKER_FAILURES[case]
    dispatcher_options, worker_options = dict(dispatcher_options), dict(worker_options)
    if dispatcher_options.pop("tls", False):
        dispatcher_options["ssl_context"] = server_tls(pki)
    if worker_options.pop("other_ca", False):
        worker_options["ssl_context"] = client_ssl_context(pki.other_ca)
    dispatcher = RecordingDispatcher(**dispatcher_options)
    async with serving(dispatcher) as (_nursery, port):
        intruder = MathWorker(HOST, port, **worker_options)
        with trio.fail_after(10):
            queued = dispatcher.submit_nowait("add", [1, 2])
            # Not an exception group: one error that says what is wrong (retrying cannot help).
            with pytest.raises(expected):
                await intruder.run()
        assert intruder.ran == []
        assert not queued.done()
        if case != "dispatcher without a token":  # (that one is let in, then hangs up itself)
            assert dispatcher.connected == []


# ========================================================== per-role secrets
async def test_per_role_secrets():
    dispatcher = RecordingDispatcher(token=dict(SECRETS))
    async with serving(dispatcher) as (nursery, port):
        await start_worker(nursery, port, token=SECRETS["worker"])
        with trio.fail_after(10):
            async with open_client(HOST, port, token=SECRETS["client"]) as client:
                assert await client.call("add", 1, 2) == 3
            async with open_client(HOST, port, token=SECRETS["admin"], role="admin") as admin:
                assert len((await admin.status())["workers"]) == 1
            for role, wrong in [("client", "worker"), ("client", "admin"), ("admin", "client"), ("admin", "worker")]:
                with pytest.raises(AuthenticationError):
                    async with open_client(HOST, port, token=SECRETS[wrong], role=role):
                        pass  # pragma: no cover
        assert [role for role, _ in dispatcher.connected] == ["worker", "client", "admin"]


async def test_a_role_missing_from_the_mapping_may_not_connect(caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = RecordingDispatcher(token={"worker": SECRETS["worker"], "client": SECRETS["client"]})
    async with serving(dispatcher) as (nursery, port):
        await start_worker(nursery, port, token=SECRETS["worker"])
        with trio.fail_after(10):
            for token in (None, SECRETS["client"], SECRETS["worker"], "anything"):
                with pytest.raises(AuthenticationError):
                    async with open_client(HOST, port, token=token, role="admin"):
                        pass  # pragma: no cover
            raw = await RawPeer.connect(port)
            await raw.send(m.Hello(version=m.PROTOCOL_VERSION, role="admin"))
            frames = await raw.receive_until_closed()
            assert [(type(f), f.code) for f in frames] == [(m.Error, "auth-failed")]
            assert "admin" in frames[0].message
            await logged(caplog, re.escape(raw.address) + ": closed: authentication failed")
            await raw.aclose()
        await still_serving(port, token=SECRETS["client"])
        assert "admin" not in [role for role, _ in dispatcher.connected]
        assert not dispatcher.draining


def test_token_mapping_is_checked():
    with pytest.raises(ValueError, match="unknown roles"):
        Secrets.from_token({"worker": "w", "root": "r"})
    one = Secrets.from_token("s")
    assert (one.worker, one.client, one.admin) == ("s", "s", "s")
    assert not Secrets.from_token(None).enabled and not Secrets.from_token("").enabled
    only_workers = Secrets.from_token({"worker": "w"})
    assert only_workers.for_role("worker") == "w"
    with pytest.raises(AuthenticationError):
        only_workers.for_role("client")


# ==================================================================== roles
@pytest.mark.parametrize(
    ("role", "message"),
    [
        ("client", m.StatusRequest()),
        ("client", m.Stop(grace=0)),
        ("worker", m.StatusRequest()),
        ("worker", m.Stop(grace=0)),
        ("worker", m.Submit(tasks=(m.Submission(id="w", name="add", args=[1, 2]),))),
        ("worker", m.Broadcast(data="from a worker")),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
async def test_a_role_cannot_send_what_its_table_does_not_allow(role, message, caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = RecordingDispatcher(token=dict(SECRETS))
    async with serving(dispatcher) as (nursery, port):
        worker = await start_worker(nursery, port, token=SECRETS["worker"])
        raw = await RawPeer.connect(port)
        await raw.handshake(role, SECRETS[role])
        await raw.send(message)
        frames = await raw.receive_until_closed()
        # a worker may get a heartbeat first; the last frame is the refusal
        assert [type(f) for f in frames if not isinstance(f, m.Heartbeat)] == [m.Error]
        assert frames[-1].code == "unexpected-message"
        assert message.TYPE in frames[-1].message
        await logged(caplog, re.escape(raw.address) + r": closed: protocol error \(unexpected-message\)")
        await raw.aclose()
        assert not dispatcher.draining
        assert "w" not in dispatcher._core.tasks
        assert worker.messages == []
        await still_serving(port, token=SECRETS["client"])


async def test_the_client_library_refuses_admin_requests_for_a_client():
    async with serving(RecordingDispatcher(token=TOKEN)) as (nursery, port):
        await start_worker(nursery, port, token=TOKEN)
        with trio.fail_after(10):
            async with open_client(HOST, port, token=TOKEN) as client:
                with pytest.raises(LocalProtocolError):
                    await client.status()
                with pytest.raises(LocalProtocolError):
                    await client.stop_dispatcher()
                assert await client.call("add", 1, 1) == 2


async def test_admin_can_ask_status_and_stop():
    dispatcher = RecordingDispatcher(token=dict(SECRETS))
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(dispatcher.serve)
            await start_worker(nursery, port, token=SECRETS["worker"])
            async with open_client(HOST, port, token=SECRETS["admin"], role="admin") as admin:
                status = await admin.status()
                assert [w["connected"] for w in status["workers"]] == [True]
                assert await admin.call("add", 2, 2) == 4  # an admin is a client too
                assert await admin.stop_dispatcher(grace=0.5) == 0.5
            # serve() returns after the drain; the worker is told goodbye
            with trio.move_on_after(5):
                while not dispatcher.draining:
                    await trio.sleep(0.01)
            assert dispatcher.draining
            nursery.cancel_scope.cancel()


# ============================================================ exposure warning
async def test_non_loopback_without_token_or_tls_warns(pki, caplog):
    caplog.set_level(logging.WARNING, logger="trioschedule")
    async with serving(Dispatcher(host="0.0.0.0", port=0)):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("without" in w and "0.0.0.0" in w for w in warnings), warnings
    caplog.clear()
    async with serving(Dispatcher(host="0.0.0.0", port=0, token=TOKEN, ssl_context=server_tls(pki))):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "without" in r.getMessage()]
    caplog.clear()
    async with serving(Dispatcher(host=HOST, port=0)):
        pass
    assert not [r for r in caplog.records if "without" in r.getMessage()]


@pytest.mark.parametrize(
    ("host", "token", "tls", "warns"),
    [
        ("127.0.0.1", None, False, False),
        ("::1", None, False, False),
        ("localhost", None, False, False),
        ("0.0.0.0", None, False, True),
        ("", None, False, True),
        ("::", "t", False, True),
        ("192.0.2.7", None, True, True),
        ("example.com", "t", True, False),
        ("0.0.0.0", {"worker": "w"}, True, False),
    ],
)
def test_warn_if_exposed(host, token, tls, warns, caplog):
    log = logging.getLogger("test-security-exposure")
    with caplog.at_level(logging.WARNING, logger=log.name):
        warn_if_exposed(log, host, Secrets.from_token(token), object() if tls else None)
    assert bool(caplog.records) is warns
    if warns:
        assert "without" in caplog.records[0].getMessage()


# ==================================================================== limits
async def test_max_client_queued_gives_rejected_limit():
    dispatcher = RecordingDispatcher(max_client_queued=2)
    async with serving(dispatcher) as (nursery, port):
        with trio.fail_after(10):
            async with open_client(HOST, port) as greedy, open_client(HOST, port) as other:
                first = [await greedy.submit("add", [i, 1]) for i in range(2)]  # no worker yet: they wait
                with pytest.raises(Rejected) as info:
                    await greedy.submit("add", [9, 9])
                assert info.value.code == "limit"
                assert "limit 2" in str(info.value)
                assert await other.submit("add", [5, 5])  # the limit is per client
                await start_worker(nursery, port)
                assert [await h.result() for h in first] == [1, 2]
                assert await greedy.call("add", 3, 3) == 6  # room again once they are done


async def test_full_queue_without_waiting_gives_queue_full():
    async with serving(RecordingDispatcher(max_queued=1)) as (nursery, port):
        with trio.fail_after(10):
            async with open_client(HOST, port) as client:
                waiting = await client.submit("add", [1, 1])
                with pytest.raises(QueueFull) as info:
                    await client.submit("add", [2, 2], wait=False)
                assert info.value.code == "queue-full"
                await start_worker(nursery, port)
                assert await waiting.result() == 2


async def test_oversized_arguments_are_refused_before_sending(caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = RecordingDispatcher(max_frame_size=SMALL_FRAME)
    async with serving(dispatcher) as (nursery, port):
        await start_worker(nursery, port, max_frame_size=SMALL_FRAME)
        with trio.fail_after(10):
            async with open_client(HOST, port, max_frame_size=SMALL_FRAME) as client:
                with pytest.raises(LocalProtocolError) as info:
                    await client.submit("add", ["x" * (SMALL_FRAME + 1), "y"])
                assert info.value.code == "frame-too-large"
                assert f"maximum frame size of {SMALL_FRAME}" in str(info.value)
                assert await client.call("add", 1, 2) == 3  # the connection is fine
        assert dispatcher.status()["tasks"]["queued"] == 0
        assert not [r for r in caplog.records if "frame-too-large" in r.getMessage()]


async def test_a_refused_oversized_submission_is_not_resent_after_reconnecting():
    reached = False
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            first_scope = trio.CancelScope()

            async def first_dispatcher(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
                with first_scope:
                    await RecordingDispatcher(max_frame_size=SMALL_FRAME).serve(task_status=task_status)

            port = await nursery.start(first_dispatcher)
            async with open_client(HOST, port, max_frame_size=SMALL_FRAME, reconnect_initial=0.05) as client:
                with pytest.raises(LocalProtocolError):
                    await client.submit("add", ["x" * (SMALL_FRAME + 1), "y"])
                first_scope.cancel()  # the dispatcher goes away; the client reconnects to its successor
                await trio.sleep(0.2)
                await nursery.start(RecordingDispatcher(port=port, max_frame_size=SMALL_FRAME).serve)
                await start_worker(nursery, port, max_frame_size=SMALL_FRAME)
                assert await client.call("add", 1, 2) == 3
                reached = True
            nursery.cancel_scope.cancel()
    # (if the client's background task fails, the body must not just stop: see _util.background)
    assert reached


async def test_a_dispatcher_with_a_smaller_frame_limit_gives_the_client_a_clear_error():
    async with serving(RecordingDispatcher(max_frame_size=SMALL_FRAME)) as (nursery, port):
        await start_worker(nursery, port)
        with trio.fail_after(15):
            async with open_client(HOST, port, reconnect_initial=0.05) as client:  # default (larger) limit
                with trio.fail_after(5), pytest.raises(TriosError) as info:
                    await client.call("add", "x" * (SMALL_FRAME + 1), "y")
                assert "frame size" in str(info.value)
        await still_serving(port)


async def test_raw_peer_sending_too_large_a_frame_gets_frame_too_large(caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    dispatcher = RecordingDispatcher(token=TOKEN, max_frame_size=SMALL_FRAME)
    async with serving(dispatcher) as (nursery, port):
        await start_worker(nursery, port, token=TOKEN, max_frame_size=SMALL_FRAME)
        # before the handshake: the declared length alone is refused
        raw = await RawPeer.connect(port)
        await raw.send_raw((SMALL_FRAME + 1).to_bytes(4, "big") + b"{")
        frames = await raw.receive_until_closed()
        assert [(type(f), f.code) for f in frames] == [(m.Error, "frame-too-large")]
        await logged(caplog, re.escape(raw.address) + r": closed: protocol error \(frame-too-large\)")
        await raw.aclose()
        # after authenticating: the same
        raw = await RawPeer.connect(port)
        await raw.handshake("client", TOKEN)
        payload = m.encode(m.Submit(tasks=(m.Submission(id="big", name="add", args=["x" * SMALL_FRAME, "y"]),)))
        await raw.send_raw(encode_frame(payload, max_frame_size=len(payload) + 4))
        frames = [f for f in await raw.receive_until_closed() if not isinstance(f, m.Heartbeat)]
        assert [(type(f), f.code) for f in frames] == [(m.Error, "frame-too-large")]
        assert str(SMALL_FRAME) in frames[0].message
        await raw.aclose()
        assert "big" not in dispatcher._core.tasks
        await still_serving(port, token=TOKEN, max_frame_size=SMALL_FRAME)


@pytest.mark.parametrize("stage", ["silent", "stalls after the challenge"])
async def test_handshake_timeout_gives_a_clear_error(stage, caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    async with serving(RecordingDispatcher(token=TOKEN, handshake_timeout=0.5)) as (nursery, port):
        await start_worker(nursery, port, token=TOKEN)
        raw = await RawPeer.connect(port)
        if stage != "silent":
            await raw.send(m.Hello(version=m.PROTOCOL_VERSION, role="client", nonce=new_nonce()))
        with trio.fail_after(5):
            frames = await raw.receive_until_closed()
        assert isinstance(frames[-1], m.Error) and frames[-1].code == "handshake-timeout"
        assert not any(isinstance(f, m.Welcome) for f in frames)
        await logged(caplog, re.escape(raw.address) + r": closed: no handshake within 0.5 s")
        await raw.aclose()
        await still_serving(port, token=TOKEN)


async def test_max_connections_gives_a_clear_error(caplog):
    caplog.set_level(logging.INFO, logger="trioschedule")
    async with serving(RecordingDispatcher(max_connections=2)) as (nursery, port):
        await start_worker(nursery, port)  # one connection
        held = await RawPeer.connect(port)  # two
        await held.send(m.Hello(version=m.PROTOCOL_VERSION, role="client"))
        assert isinstance(await held.receive(), m.Welcome)
        with trio.fail_after(10):
            with pytest.raises(ConnectionClosed, match="at most 2 connections"):
                async with open_client(HOST, port):
                    pass  # pragma: no cover
            await logged(caplog, r"refused: 2 connections is the limit")
        await held.aclose()
        with trio.fail_after(10):
            while True:  # the held connection's slot is given back
                try:
                    await still_serving(port)
                    break
                except ConnectionClosed:
                    await trio.sleep(0.05)
