"""What a worker in another language can get wrong, and how the dispatcher answers (issue 13).

Each test speaks raw frames to an in-process dispatcher on 127.0.0.1, port 0,
the way a hand-written worker would, and checks the answer: an error frame
naming the field, a fresh session, or a rejection; never silence.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from trioschedule import open_client
from trioschedule._protocol.framing import FrameDecoder, encode_frame

from .conftest import MathWorker, quick_dispatcher


class RawPeer:
    """A peer that writes JSON frames by hand and reads what comes back."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.frames: list[dict[str, Any]] = []
        self.session = ""

    async def send(self, payload: bytes | dict[str, Any]) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload).encode()
        await self.stream.send_all(encode_frame(payload))

    async def receive(self, kind: str | None = None) -> dict[str, Any]:
        """The next frame (of ``kind``, skipping heartbeats and others); raises EOFError at the end."""
        with trio.fail_after(10):
            while True:
                while not self.frames:
                    try:
                        data = await self.stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        data = b""
                    if not data:
                        raise EOFError("the dispatcher closed the connection")
                    self.decoder.receive_data(data)
                    self.frames.extend(json.loads(frame) for frame in self.decoder.frames())
                frame = self.frames.pop(0)
                if kind is None or frame["type"] in (kind, "error"):
                    return frame

    async def closed(self) -> bool:
        try:
            await self.receive("never")
        except EOFError:
            return True
        return False


@asynccontextmanager
async def dispatcher(**kwargs: Any) -> AsyncIterator[tuple[Any, int]]:
    async with trio.open_nursery() as nursery:
        d = quick_dispatcher(host="127.0.0.1", port=0, **kwargs)
        port = await nursery.start(d.serve)
        yield d, port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_peer(port: int) -> AsyncIterator[RawPeer]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        yield RawPeer(stream)
    finally:
        await stream.aclose()


async def worker_hello(peer: RawPeer, **fields: Any) -> dict[str, Any]:
    await peer.send({"version": 1, "role": "worker", "tasks": ["add"], **fields, "type": "hello"})
    return await peer.receive()


# ------------------------------------------------------------- point 3: sessions
async def test_an_unknown_session_is_answered_as_a_new_one():
    async with dispatcher() as (_, port), raw_peer(port) as peer:
        welcome = await worker_hello(peer, session="made-up-by-the-worker", running={"t1": 1})
        assert welcome["type"] == "welcome"
        assert welcome.get("resumed", False) is False
        assert welcome["session"] != "made-up-by-the-worker"
        await peer.send({"type": "heartbeat"})
        # nothing is cancelled one by one: the worker drops what it held on its own
        with trio.move_on_after(0.5):
            frame = await peer.receive("cancel")
            raise AssertionError(f"unexpected {frame}")


async def test_a_known_detached_session_still_resumes():
    async with dispatcher() as (_, port), open_client("127.0.0.1", port) as client:
        async with raw_peer(port) as peer:
            spec = await _worker_with_a_task(port, peer, client)
            first = {"session": peer.session}
        async with raw_peer(port) as peer:
            again = await worker_hello(peer, session=first["session"], running={spec["id"]: 1})
            assert again["session"] == first["session"]
            assert again["resumed"] is True


async def test_a_session_attached_elsewhere_is_not_taken_over():
    async with dispatcher() as (_, port), raw_peer(port) as one, raw_peer(port) as two:
        first = await worker_hello(one)
        second = await worker_hello(two, session=first["session"])
        assert second.get("resumed", False) is False and second["session"] != first["session"]


# ------------------------------------------------ points 4 and 5: results from workers
async def _worker_with_a_task(port: int, peer: RawPeer, client: Any) -> dict[str, Any]:
    welcome = await worker_hello(peer)
    peer.session = welcome["session"]
    handle = await client.submit("add", args=[1, 2])
    run = await peer.receive("run")
    [spec] = run["tasks"]
    assert spec["id"] == handle.id
    return spec


BAD_OUTCOMES = {
    "attempt left out": ({"status": "ok", "value": 3}, "attempt 0"),
    "attempt 0": ({"status": "ok", "attempt": 0, "value": 3}, "attempt 0"),
    "an attempt never sent": ({"status": "ok", "attempt": 5, "value": 3}, "attempt 5"),
    "status bogus": ({"status": "bogus", "attempt": 1}, "'bogus'"),
    "status lost": ({"status": "lost", "attempt": 1}, "'lost'"),
    "status unknown": ({"status": "unknown", "attempt": 1}, "'unknown'"),
    "error without an error object": ({"status": "error", "attempt": 1}, "without an error object"),
    "ok with an error object": (
        {"status": "ok", "attempt": 1, "error": {"type": "E", "message": "m"}}, "with an error object"),
    "cancelled with a value": ({"status": "cancelled", "attempt": 1, "value": 3}, "only an ok outcome"),
}  # fmt: skip


async def test_a_bad_outcome_from_a_worker_is_refused_and_the_task_runs_elsewhere():
    async with dispatcher() as (_, port), open_client("127.0.0.1", port) as client:
        for count, (name, (fields, says)) in enumerate(BAD_OUTCOMES.items(), 1):
            async with raw_peer(port) as peer:
                spec = await _worker_with_a_task(port, peer, client)
                await peer.send({"seq": 1, "results": [{"id": spec["id"], **fields}], "type": "results"})
                error = await peer.receive("error")
                assert error["type"] == "error" and error["code"] == "bad-message", (name, error)
                assert says in error["message"], (name, error["message"])
                assert await peer.closed(), name
            # no bad report finished its task: each is back in the queue, waiting for a worker
            status = await client_status(port)
            assert status["tasks"]["done"] == 0 and status["tasks"]["failed"] == 0, name
            assert status["tasks"]["running"] + status["tasks"]["queued"] == count, name


async def client_status(port: int) -> dict[str, Any]:
    async with raw_peer(port) as admin:
        await admin.send({"version": 1, "role": "admin", "type": "hello"})
        await admin.receive("welcome")
        await admin.send({"type": "status"})
        return (await admin.receive("status-reply"))["status"]  # type: ignore[no-any-return]


async def test_a_correct_outcome_is_taken():
    async with dispatcher() as (_, port), open_client("127.0.0.1", port) as client, raw_peer(port) as peer:
        spec = await _worker_with_a_task(port, peer, client)
        await peer.send({"seq": 1, "results": [{"id": spec["id"], "status": "ok", "attempt": spec.get("attempt", 1),
                                                "value": 3}], "type": "results"})  # fmt: skip
        ack = await peer.receive("heartbeat")
        assert ack["ack"] == 1


# ------------------------------------------------------------- point 10
async def test_results_seq_0_is_refused():
    async with dispatcher() as (_, port), raw_peer(port) as peer:
        await worker_hello(peer)
        await peer.send({"seq": 0, "started": ["x"], "type": "results"})
        error = await peer.receive("error")
        assert error["code"] == "bad-message" and "seq is 0" in error["message"]


async def test_a_heartbeat_with_an_ack_from_a_client_is_refused():
    async with dispatcher() as (_, port), raw_peer(port) as peer:
        await peer.send({"version": 1, "role": "client", "type": "hello"})
        await peer.receive("welcome")
        await peer.send({"ack": 3, "type": "heartbeat"})
        error = await peer.receive("error")
        assert error["code"] == "bad-message" and "heartbeat.ack" in error["message"]


async def test_an_empty_task_id_is_rejected_and_a_repeated_id_refused():
    async with dispatcher() as (_, port), raw_peer(port) as peer:
        await peer.send({"version": 1, "role": "client", "type": "hello"})
        await peer.receive("welcome")
        await peer.send({"tasks": [{"id": "", "name": "add"}, {"id": "a", "name": "add"}], "type": "submit"})
        accepted = await peer.receive("accepted")
        assert accepted["ids"] == ["a"]
        assert accepted["rejected"] == [{"id": "", "code": "bad-request", "message": "a task id must not be empty"}]
        await peer.send({"tasks": [{"id": "b", "name": "add"}, {"id": "b", "name": "mul"}], "type": "submit"})
        error = await peer.receive("error")
        assert error["code"] == "bad-message" and "'b' appears twice" in error["message"]


async def test_a_repeated_key_in_the_hello_is_refused():
    async with dispatcher() as (_, port), raw_peer(port) as peer:
        await peer.send(b'{"version":1,"role":"client","role":"admin","type":"hello"}')
        error = await peer.receive()
        assert error["type"] == "error" and error["code"] == "bad-json"
        assert "'role' appears twice" in error["message"]


# ------------------------------------------------------------- point 8
async def test_a_hello_without_a_nonce_is_challenged_first():
    async with dispatcher(token="s3cret") as (_, port), raw_peer(port) as peer:
        await peer.send({"version": 1, "role": "worker", "tasks": ["add"], "type": "hello"})
        challenge = await peer.receive()
        assert challenge["type"] == "challenge"
        await peer.send({"proof": "0" * 64, "type": "auth"})
        error = await peer.receive()
        assert error["code"] == "auth-failed"


# ------------------------------------------------------------- point 11
async def test_a_worker_may_ignore_reclaim_and_keeps_its_tasks():
    async with dispatcher() as (_, port), open_client("127.0.0.1", port) as client, raw_peer(port) as peer:
        await worker_hello(peer, concurrency=1, prefetch=1)
        first = await client.submit("add", args=[1, 2])
        second = await client.submit("add", args=[3, 4])
        specs = []
        while len(specs) < 2:
            specs += (await peer.receive("run"))["tasks"]
        assert [s["id"] for s in specs] == [first.id, second.id]
        await peer.send({"seq": 1, "started": [first.id], "type": "results"})
        async with trio.open_nursery() as nursery:
            idle = MathWorker(host="127.0.0.1", port=port)
            nursery.start_soon(idle.run)  # an idle worker that offers add: the dispatcher asks for the second back
            reclaim = await peer.receive("reclaim")
            assert reclaim["ids"] == [second.id]
            # ignored: no release; the tasks stay here and run here
            await peer.send({"seq": 2, "started": [second.id], "results": [
                {"id": first.id, "status": "ok", "attempt": 1, "value": 3}], "type": "results"})  # fmt: skip
            await peer.send({"seq": 3, "results": [{"id": second.id, "status": "ok", "attempt": 1, "value": 7}],
                             "type": "results"})  # fmt: skip
            with trio.fail_after(10):
                assert (await first.result(), await second.result()) == (3, 7)
            assert idle.ran == []
            with trio.move_on_after(0.5):  # and it does not ask again
                frame = await peer.receive("reclaim")
                raise AssertionError(f"asked again: {frame}")
            nursery.cancel_scope.cancel()
