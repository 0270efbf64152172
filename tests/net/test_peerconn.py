"""stay_connected: the one reconnect loop of workers and clients, and the Backoff it waits by."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from trioschedule._errors import AuthenticationError, ConnectionClosed, NotLeader
from trioschedule._net.addresses import Rotation
from trioschedule._net.peerconn import Backoff, stay_connected

log = logging.getLogger("trioschedule.test")


def one() -> Rotation:
    """A single address: each failed attempt is a whole round."""
    return Rotation([("127.0.0.1", 7311)])


class FixedBackoff(Backoff):
    """Delays 1, 2, 3... seconds (reset to 1 after a connection), so that timings can be checked."""

    def next_delay(self) -> float:
        self.failures += 1
        return float(self.failures)


class Peer:
    """Scripted attempts: an exception fails the attempt, anything else is a connection served for 10 s."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.attempts: list[float] = []  # trio time of each attempt
        self.served: list[Any] = []
        self.retries: list[tuple[str, int, bool]] = []

    async def connect(self, address: Any = None) -> tuple[Any, Any]:
        self.attempts.append(trio.current_time())
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step, "welcome"

    async def serve(self, conn: Any, welcome: Any, ready: Any) -> None:
        self.served.append(conn)
        ready()
        await trio.sleep(10)

    def retry(self, exc: Exception, attempts: int, connected_once: bool) -> str | None:
        self.retries.append((type(exc).__name__, attempts, connected_once))
        if isinstance(exc, AuthenticationError):
            raise exc
        return f"cannot reach it: {exc}"

    def done(self) -> bool:
        return not self.script


async def test_failed_attempts_are_logged_and_retried_after_the_backoff_delay(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trioschedule.test")
    peer = Peer(OSError("refused"), ConnectionClosed("reset"), "conn")
    start = trio.current_time()
    await stay_connected(peer.connect, peer.serve, retry=peer.retry, backoff=FixedBackoff(), done=peer.done, log=log, rotation=one())
    assert [t - start for t in peer.attempts] == [0, 1, 3]
    assert peer.served == ["conn"]
    assert peer.retries == [("OSError", 1, False), ("ConnectionClosed", 2, False)]
    assert [r.getMessage() for r in caplog.records] == [
        "cannot reach it: refused; retrying in 1.00 s",
        "cannot reach it: reset; retrying in 2.00 s",
    ]


async def test_started_fires_on_the_first_connection_only_and_the_count_restarts(autojump_clock):
    peer = Peer("first", OSError("refused"), "second", "third")
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(lambda task_status: stay_connected(
            peer.connect, peer.serve, retry=peer.retry, backoff=FixedBackoff(), done=peer.done, log=log, rotation=one(),
            task_status=task_status))  # fmt: skip
        assert peer.served == ["first"] and trio.current_time() == start
    assert peer.served == ["first", "second", "third"]
    # Served 10 s, paused 1 s (the backoff after a connection), failed, paused 2 s; after "second"
    # connected, the backoff started over: 10 s served, then 1 s.
    assert [t - start for t in peer.attempts] == [0, 11, 13, 24]
    assert peer.retries == [("OSError", 1, True)]


async def test_the_retry_policy_stops_the_loop_with_its_error_or_quietly(autojump_clock):
    peer = Peer(OSError("refused"), AuthenticationError("wrong token"), "never")
    with pytest.raises(AuthenticationError, match="wrong token"):
        await stay_connected(peer.connect, peer.serve, retry=peer.retry, backoff=FixedBackoff(), done=peer.done, log=log, rotation=one())
    assert peer.retries == [("OSError", 1, False), ("AuthenticationError", 2, False)]

    quiet = Peer(OSError("refused"), "never")
    await stay_connected(quiet.connect, quiet.serve, retry=lambda *_: None, backoff=FixedBackoff(), done=quiet.done, log=log, rotation=one())
    assert quiet.served == [] and quiet.script == ["never"]


async def test_pause_is_the_callers_wait(autojump_clock):
    paused: list[float] = []

    async def pause(delay: float) -> None:
        paused.append(delay)

    peer = Peer(OSError("a"), OSError("b"), "conn")
    await stay_connected(
        peer.connect, peer.serve, retry=peer.retry, backoff=FixedBackoff(), done=peer.done, log=log, rotation=one(), pause=pause
    )
    assert paused == [1.0, 2.0]
    assert peer.attempts[0] == peer.attempts[2]  # nothing waited but the pause


async def test_while_a_standby_says_none_leads_rounds_are_never_far_apart(autojump_clock):
    """A failover is under way: the pause between rounds is capped at LEADER_POLL, however long the
    standby says so, so the new leader is reached within a second of taking over; a dead address
    still backs off as far as the backoff goes."""
    paused: list[float] = []

    async def pause(delay: float) -> None:
        paused.append(delay)

    standby = NotLeader("standby", leader=None)
    peer = Peer(*[standby] * 8, "conn")
    await stay_connected(
        peer.connect, peer.serve, retry=peer.retry, backoff=FixedBackoff(), done=peer.done, log=log, rotation=one(), pause=pause
    )
    assert paused == [1.0] * 8 and peer.served == ["conn"]

    paused.clear()
    dead = Peer(*[OSError("refused")] * 3, "conn")
    await stay_connected(
        dead.connect, dead.serve, retry=dead.retry, backoff=FixedBackoff(), done=dead.done, log=log, rotation=one(), pause=pause
    )
    assert paused == [1.0, 2.0, 3.0]


def test_backoff_is_exponential_with_full_jitter_and_resets():
    backoff = Backoff(0.1, 1.0)
    for ceiling in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0):
        assert 0 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert backoff.failures == 0 and backoff.next_delay() <= 0.1


class Dispatchers:
    """Scripted attempts per address: an exception fails it, anything else is a connection served for 10 s."""

    def __init__(self, scripts: dict[tuple[str, int], list[Any]], rounds: int | None = None) -> None:
        self.scripts = scripts
        self.rounds = rounds  # give up after this many failed rounds (None: never)
        self.attempts: list[tuple[float, tuple[str, int]]] = []
        self.served: list[Any] = []
        self.errors: list[Exception] = []

    async def connect(self, address: tuple[str, int]) -> tuple[Any, Any]:
        self.attempts.append((trio.current_time(), address))
        step = self.scripts[address].pop(0) if len(self.scripts[address]) > 1 else self.scripts[address][0]
        if isinstance(step, BaseException):
            raise step
        return step, "welcome"

    async def serve(self, conn: Any, welcome: Any, ready: Any) -> None:
        self.served.append(conn)
        ready()

    def retry(self, exc: Exception, attempts: int, connected_once: bool) -> str | None:
        self.errors.append(exc)
        if isinstance(exc, AuthenticationError) or (self.rounds is not None and attempts >= self.rounds):
            raise exc
        return f"round {attempts} failed: {exc}"

    def done(self) -> bool:
        return bool(self.served)


A, B, C = ("10.0.0.1", 7311), ("10.0.0.2", 7311), ("10.0.0.3", 7311)


async def test_a_round_tries_every_address_at_once_follows_redirects_and_backs_off_between_rounds(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trioschedule.test")
    peers = Dispatchers({
        A: [OSError("refused")],
        B: [NotLeader("standby", leader="10.0.0.3:7311"), "conn"],
        C: [OSError("refused")],
    })  # fmt: skip
    start = trio.current_time()
    await stay_connected(peers.connect, peers.serve, retry=peers.retry, backoff=FixedBackoff(), done=peers.done,
                         log=log, rotation=Rotation([A, B]))  # fmt: skip
    assert [(t - start, address) for t, address in peers.attempts] == [(0, A), (0, B), (0, C), (1, A), (1, B)]
    assert peers.served == ["conn"]
    [error] = peers.errors
    assert isinstance(error, NotLeader)
    assert str(error) == ("no dispatcher at 10.0.0.1:7311, 10.0.0.2:7311, 10.0.0.3:7311 leads (10.0.0.1:7311: refused; "
                          "10.0.0.2:7311: not-leader: leader 10.0.0.3:7311; 10.0.0.3:7311: refused)")  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        "10.0.0.2:7311 is a standby; following it to the leader at 10.0.0.3:7311",
        f"round 1 failed: {error}; retrying in 1.00 s",
    ]


async def test_two_standbys_naming_each_other_are_a_bounded_round_each_time(autojump_clock):
    peers = Dispatchers({A: [NotLeader("standby", leader="10.0.0.2:7311")], B: [NotLeader("standby", leader="10.0.0.1:7311")]},
                        rounds=4)  # fmt: skip
    start = trio.current_time()
    with pytest.raises(NotLeader, match="no dispatcher at 10.0.0.1:7311, 10.0.0.2:7311 leads"):
        await stay_connected(peers.connect, peers.serve, retry=peers.retry, backoff=FixedBackoff(), done=peers.done,
                             log=log, rotation=Rotation([A, B]))  # fmt: skip
    # Two attempts a round and a pause between rounds (the backoff's 1, 2, 3 s, capped at LEADER_POLL
    # while a standby answers): no loop, no hammering.
    assert [(t - start, address) for t, address in peers.attempts] == [
        (0, A), (0, B), (1, A), (1, B), (2, A), (2, B), (3, A), (3, B),
    ]


async def test_a_fatal_error_at_any_address_stops_at_once(autojump_clock):
    peers = Dispatchers({A: [OSError("refused")], B: [AuthenticationError("wrong token")]})
    with pytest.raises(AuthenticationError):
        await stay_connected(peers.connect, peers.serve, retry=peers.retry, backoff=FixedBackoff(), done=peers.done,
                             log=log, rotation=Rotation([A, B]))  # fmt: skip
    assert [address for _, address in peers.attempts] == [A, B]
    assert [type(e) for e in peers.errors] == [AuthenticationError]


async def test_after_a_connection_ends_the_next_round_starts_with_the_next_address(autojump_clock):
    peers = Dispatchers({A: [OSError("refused"), NotLeader("standby", leader="10.0.0.2:7311")],
                         B: ["first", "second"], C: [OSError("refused")]})  # fmt: skip
    peers.done = lambda: len(peers.served) == 2  # type: ignore[method-assign]
    await stay_connected(peers.connect, peers.serve, retry=peers.retry, backoff=FixedBackoff(), done=peers.done,
                         log=log, rotation=Rotation([A, B, C]))  # fmt: skip
    # B led; once its connection ended, C and A were tried before it (A, now a standby, named B).
    assert [address for _, address in peers.attempts] == [A, B, C, A, B]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Streams handed over in memory, for a real Dispatcher's serve_listeners."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[trio.abc.Stream](100)

    async def accept(self) -> trio.abc.Stream:
        return await self.receive.receive()

    async def aclose(self) -> None:
        await self.receive.aclose()


async def test_over_memory_streams_a_standby_answer_becomes_a_redirect_to_a_real_dispatcher(autojump_clock, nursery):
    """open_connection + stay_connected, the real handshake: two standbys know no leader for three rounds, then name it."""
    from trioschedule import Dispatcher
    from trioschedule._net.peerconn import open_connection
    from trioschedule._protocol.framing import FrameDecoder, encode_frame

    listener = MemoryListener()
    await nursery.start(Dispatcher(name="leader").serve_listeners, [listener])
    leader = {"name": None}
    hellos: list[tuple[float, str]] = []

    async def standby(name: str, stream: trio.abc.Stream) -> None:
        decoder = FrameDecoder()
        while decoder.next_frame() is None:
            decoder.receive_data(await stream.receive_some())
        hellos.append((trio.current_time(), name))
        named = f'"{leader["name"]}"' if leader["name"] else "null"
        await stream.send_all(encode_frame(b'{"code":"not-leader","message":"standby","leader":%s,"type":"error"}' % named.encode()))
        await stream.aclose()

    def route(address: tuple[str, int]) -> Any:
        async def connector() -> trio.abc.Stream:
            ours, theirs = trio.testing.memory_stream_pair()
            if address == C:
                listener.send.send_nowait(theirs)
            else:
                nursery.start_soon(standby, address[0], theirs)
            return ours
        return connector

    async def connect(address: tuple[str, int]) -> Any:
        if len(hellos) >= 6:  # three rounds of two: the standbys learn who leads
            leader["name"] = "10.0.0.3:7311"
        return await open_connection(*address, role="client", token=None, ssl_context=None, connector=route(address))

    served: list[str] = []

    async def serve(conn: Any, welcome: Any, ready: Any) -> None:
        served.append(welcome.name)
        ready()
        await conn.aclose()

    errors: list[Exception] = []

    def retry(exc: Exception, attempts: int, connected_once: bool) -> str:
        errors.append(exc)
        return str(exc)

    start = trio.current_time()
    with trio.fail_after(60):
        await stay_connected(connect, serve, retry=retry, backoff=FixedBackoff(), done=lambda: bool(served), log=log,
                             rotation=Rotation([A, B]))  # fmt: skip
    assert served == ["leader"]
    assert [(t - start, name) for t, name in hellos] == [
        (0, "10.0.0.1"), (0, "10.0.0.2"), (1, "10.0.0.1"), (1, "10.0.0.2"), (2, "10.0.0.1"), (2, "10.0.0.2"),
        (3, "10.0.0.1"),  # names the leader now: followed at once, not after the next pause
    ]
    assert [str(e) for e in errors] == ["no dispatcher at 10.0.0.1:7311, 10.0.0.2:7311 leads (not-leader: no leader yet)"] * 3
