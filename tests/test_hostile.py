"""Hostile input at the real port: every offender gets an error frame and is closed; everyone else carries on."""

from __future__ import annotations

import json

import pytest
import trio

from trioschedule import open_client
from trioschedule._protocol.framing import FrameDecoder, encode_frame

from .processes import processes, wait_for

HELLO_CLIENT = encode_frame(b'{"version":1,"role":"client","type":"hello"}')

ATTACKS = {
    "length below 4": (b"\x00\x00\x00\x02", "bad-length"),
    "length zero": (b"\x00\x00\x00\x00", "bad-length"),
    "length above the maximum": (b"\x01\x00\x00\x00" + b"x" * 100, "frame-too-large"),
    "length 0xFFFFFFFF": (b"\xff\xff\xff\xff", "frame-too-large"),
    "not UTF-8": (encode_frame(b"\xff\xfe{}"), "bad-utf8"),
    "not JSON": (encode_frame(b"{not json"), "bad-json"),
    "JSON but not an object": (encode_frame(b"[1,2,3]"), "bad-message"),
    "no type": (encode_frame(b'{"version":1}'), "bad-message"),
    "unknown type": (encode_frame(b'{"type":"exec","cmd":"rm -rf /"}'), "unknown-message"),
    "out of order: submit before hello": (
        encode_frame(b'{"tasks":[{"id":"x","name":"add","args":[1,2]}],"type":"submit"}'),
        "unexpected-message",
    ),
    "wrong field types": (encode_frame(b'{"version":"1","role":"client","type":"hello"}'), "bad-message"),
    "unknown role": (encode_frame(b'{"version":1,"role":"root","type":"hello"}'), "bad-role"),
    "wrong protocol version": (encode_frame(b'{"version":99,"role":"client","type":"hello"}'), "version-mismatch"),
    "worker message from a client": (
        HELLO_CLIENT + encode_frame(b'{"seq":1,"results":[{"id":"x","status":"ok","value":1}],"type":"results"}'),
        "unexpected-message",
    ),
    "deep nesting": (encode_frame(b'{"type":"hello","version":' + b"[" * 50000 + b"]" * 50000 + b"}"), "bad-json"),
}


async def _attack(port: int, payload: bytes, *, hang_up: bool = False) -> list[dict]:
    """Send ``payload``, then read until the dispatcher closes; return the frames it sent."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    decoder = FrameDecoder()
    with trio.fail_after(10):
        try:
            await stream.send_all(payload)
            if hang_up:
                await stream.send_eof()
        except trio.BrokenResourceError:
            pass
        try:
            while data := await stream.receive_some(65536):
                decoder.receive_data(data)
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return [json.loads(frame) for frame in decoder.frames()]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_hostile_input_is_refused_while_others_are_served(tmp_path):
    with processes(tmp_path) as procs:
        dispatcher, port = await procs.start_dispatcher("--store", "memory:", "--handshake-timeout", "2",
                                                        "--max-frame-size", "1048576")  # fmt: skip
        procs.start_worker(port, "--concurrency", "2")
        async with open_client("127.0.0.1", port) as client:
            assert await client.call("add", 1, 1) == 2
            baseline_rss = _rss_kib(dispatcher.pid)
            served = []
            stop_serving = trio.Event()

            async def legitimate_traffic():
                i = 0
                while not stop_serving.is_set():
                    assert await client.call("add", i, 1) == i + 1
                    served.append(i)
                    i += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(legitimate_traffic)
                # each kind of garbage, checked one by one
                for name, (payload, code) in ATTACKS.items():
                    frames = await _attack(port, payload)
                    assert frames and frames[-1]["type"] == "error", name
                    assert frames[-1]["code"] == code, (name, frames)
                # a truncated frame, then the peer hangs up
                assert await _attack(port, b"\x00\x00\x00\x40{\"type\"", hang_up=True) == []
                # hundreds of peers that connect and say nothing, at once
                idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(300)]
                # and a flood of every attack at the same time
                async with trio.open_nursery() as flood:
                    for _ in range(5):
                        for payload, _ in ATTACKS.values():
                            flood.start_soon(_attack, port, payload)
                with trio.fail_after(10):
                    for stream in idle:  # each is told why and closed after the handshake timeout
                        decoder = FrameDecoder()
                        while data := await stream.receive_some(4096):
                            decoder.receive_data(data)
                        [frame] = [json.loads(f) for f in decoder.frames()]
                        assert frame["code"] == "handshake-timeout"
                        await stream.aclose()
                count = len(served)
                await wait_for(lambda: len(served) > count + 20)
                stop_serving.set()
            assert await client.call("add", 41, 1) == 42
            grown = _rss_kib(dispatcher.pid) - baseline_rss
            assert grown < 64 * 1024, f"dispatcher RSS grew by {grown} KiB"
        assert dispatcher.poll() is None, "the dispatcher is still up"
        log = procs.log("dispatcher")
        assert "protocol error (bad-length)" in log
        assert "no handshake within 2 s" in log
        assert log.count("closed: protocol error") >= len(ATTACKS)


@pytest.mark.parametrize("max_connections", [5])
async def test_connection_limit_gives_a_clear_error(tmp_path, max_connections):
    with processes(tmp_path) as procs:
        _, port = await procs.start_dispatcher("--store", "memory:", "--max-connections", str(max_connections))
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(max_connections)]
        await trio.sleep(0.3)
        frames = await _attack(port, HELLO_CLIENT)
        assert frames[-1]["code"] == "too-many-connections"
        for stream in held:
            await stream.aclose()
        await trio.sleep(0.3)
        async with open_client("127.0.0.1", port) as client:
            assert client.connected
