"""The sans-IO protocol state machine: two ProtocolConnections wired back to back.

No sockets: bytes returned by one side's ``send`` are fed to the other side's
``receive_data`` (whole, or one byte at a time), the way h11's tests do it
(tests/protocol/helpers.py wires them).
The expected permissions below are written out independently of the tables
in trioschedule._protocol.connection, from docs/PROTOCOL.md.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioschedule._errors import LocalProtocolError, RemoteProtocolError
from trioschedule._protocol import messages as m
from trioschedule._protocol.auth import new_nonce
from trioschedule._protocol.connection import ADMIN, CLIENT, DISPATCHER, RECEIVE, SEND, WORKER, ProtocolConnection
from trioschedule._protocol.framing import encode_frame

from .helpers import SAMPLES, Pair, deliver, raw

# After the handshake: what each side may say (an Error frame is always allowed).
WORKER_TO_DISPATCHER = {m.Results, m.Release, m.Heartbeat, m.Message, m.Goodbye}
CLIENT_TO_DISPATCHER = {m.Submit, m.Cancel, m.Watch, m.Broadcast, m.Heartbeat, m.Message, m.Goodbye}
ADMIN_TO_DISPATCHER = CLIENT_TO_DISPATCHER | {m.StatusRequest, m.TasksRequest, m.Stop, m.ScheduleRequest}
DISPATCHER_TO_WORKER = {m.Run, m.Reclaim, m.Cancel, m.Heartbeat, m.Message, m.Goodbye}
DISPATCHER_TO_CLIENT = {m.Accepted, m.Outcomes, m.Heartbeat, m.Message, m.Goodbye, m.StatusReply, m.TasksReply,
                        m.Stopping, m.ScheduleReply}  # fmt: skip
PEER_TO_DISPATCHER = {WORKER: WORKER_TO_DISPATCHER, CLIENT: CLIENT_TO_DISPATCHER, ADMIN: ADMIN_TO_DISPATCHER}
DISPATCHER_TO_PEER = {WORKER: DISPATCHER_TO_WORKER, CLIENT: DISPATCHER_TO_CLIENT, ADMIN: DISPATCHER_TO_CLIENT}
ROLES = [WORKER, CLIENT, ADMIN]
NOT_ERROR = [t for t in m.MESSAGE_TYPES if t is not m.Error]


def assert_unexpected(excinfo: pytest.ExceptionInfo[Any], state: str, message_type: type) -> None:
    assert excinfo.value.code == "unexpected-message"
    text = str(excinfo.value)
    assert repr(state) in text, text
    assert repr(message_type.TYPE) in text, text


# --------------------------------------------------------------- handshake
@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("role", ROLES)
def test_handshake_without_auth(role: str, byte_at_a_time: bool) -> None:
    pair = Pair(role, byte_at_a_time=byte_at_a_time)
    assert (pair.dispatcher.state, pair.peer.state) == ("await-hello", "start")
    assert pair.dispatcher.peer_role is None and pair.peer.peer_role == DISPATCHER
    assert not pair.dispatcher.ready and not pair.peer.ready
    pair.peer_sends(m.Hello(version=1, role=role, name="w1", pid=42))
    assert (pair.dispatcher.state, pair.peer.state) == ("hello-received", "await-welcome")
    assert pair.dispatcher.peer_role == role
    assert not pair.dispatcher.ready and not pair.peer.ready
    pair.dispatcher_sends(m.Welcome(version=1, session="s", heartbeat=2.0, timeout=10.0))
    assert (pair.dispatcher.state, pair.peer.state) == (f"ready:{role}", "ready")
    assert pair.dispatcher.ready and pair.peer.ready


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("role", ROLES)
def test_handshake_with_auth(role: str, byte_at_a_time: bool) -> None:
    pair = Pair(role, byte_at_a_time=byte_at_a_time)
    assert pair.authenticated_handshake() == (True, True)
    assert (pair.dispatcher.state, pair.peer.state) == (f"ready:{role}", "ready")


def test_handshake_with_a_wrong_secret_is_detected_both_ways() -> None:
    assert Pair(WORKER).authenticated_handshake(secret="a", peer_secret="b") == (False, False)


@pytest.mark.parametrize("role", ["boss", "dispatcher", "", "Worker"])
def test_hello_with_an_unknown_role(role: str) -> None:
    dispatcher = ProtocolConnection(DISPATCHER)
    dispatcher.receive_data(raw(m.Hello(version=1, role=role)))
    with pytest.raises(RemoteProtocolError) as info:
        dispatcher.next_message()
    assert info.value.code == "bad-role"
    assert "worker, client, admin" in str(info.value)
    assert dispatcher.peer_role is None and not dispatcher.ready


def test_unknown_local_role() -> None:
    with pytest.raises(ValueError):
        ProtocolConnection("boss")


def test_several_messages_in_one_chunk_keep_their_order() -> None:
    pair = Pair(CLIENT)
    pair.handshake()
    data = b"".join(pair.peer.send(m.Cancel(id=str(i))) for i in range(5))
    assert deliver(data, pair.dispatcher) == [m.Cancel(id=str(i)) for i in range(5)]


@pytest.mark.parametrize("role", ROLES)
def test_byte_at_a_time_equals_all_at_once(role: str) -> None:
    conversation = [
        m.Message(data={"x": "é" * 3}),
        m.Heartbeat(ack=7),
        m.Goodbye(reason="done"),
    ]
    peer_conversation = [m.Heartbeat() if type(message) is m.Heartbeat else message for message in conversation]  # only the dispatcher acks
    results = []
    for byte_at_a_time in (False, True):
        pair = Pair(role, byte_at_a_time=byte_at_a_time)
        pair.handshake(name="n", tasks=("add", "mul"))
        results.append([pair.peer_sends(message) for message in peer_conversation])
        results.append([pair.dispatcher_sends(message) for message in conversation])
    assert results[0] == results[2] == [[message] for message in peer_conversation]
    assert results[1] == results[3] == [[message] for message in conversation]


def test_worker_conversation() -> None:
    pair = Pair(WORKER, byte_at_a_time=True)
    pair.handshake(tasks=("add",), concurrency=2, prefetch=2)
    run = m.Run(tasks=(m.TaskSpec(id="t1", name="add", args=[1, 2], timeout=5.0),))
    assert pair.dispatcher_sends(run) == [run]
    outcome = m.Outcome(id="t1", status="ok", attempt=1, value=3)
    results = m.Results(seq=1, started=("t1",), results=(outcome,))
    assert pair.peer_sends(results) == [results]
    assert pair.dispatcher_sends(m.Heartbeat(ack=1)) == [m.Heartbeat(ack=1)]
    assert pair.dispatcher_sends(m.Cancel(id="t2", reason="no")) == [m.Cancel(id="t2", reason="no")]
    assert pair.peer_sends(m.Release(ids=("t3",))) == [m.Release(ids=("t3",))]
    assert pair.peer_sends(m.Goodbye()) == [m.Goodbye()]
    assert (pair.dispatcher.state, pair.peer.state) == ("ready:worker", "ready")


# ------------------------------------------------- out-of-order messages
def test_submit_before_the_hello() -> None:
    dispatcher = ProtocolConnection(DISPATCHER)
    dispatcher.receive_data(raw(SAMPLES[m.Submit]))
    with pytest.raises(RemoteProtocolError) as info:
        dispatcher.next_message()
    assert_unexpected(info, "await-hello", m.Submit)


@pytest.mark.parametrize("kind", NOT_ERROR, ids=lambda t: t.TYPE)
def test_only_hello_opens_a_connection(kind: type) -> None:
    dispatcher = ProtocolConnection(DISPATCHER)
    dispatcher.receive_data(raw(SAMPLES[kind]))
    if kind is m.Hello:
        assert dispatcher.messages() == [SAMPLES[kind]]
        return
    with pytest.raises(RemoteProtocolError) as info:
        dispatcher.next_message()
    assert_unexpected(info, "await-hello", kind)


@pytest.mark.parametrize("kind", NOT_ERROR, ids=lambda t: t.TYPE)
@pytest.mark.parametrize("role", ROLES)
def test_nothing_after_the_hello_until_it_is_answered(role: str, kind: type) -> None:
    """A Submit (or anything else, even a second Hello) before the welcome is refused."""
    pair = Pair(role)
    pair.peer_sends(m.Hello(version=1, role=role))
    pair.dispatcher.receive_data(raw(SAMPLES[kind]))
    with pytest.raises(RemoteProtocolError) as info:
        pair.dispatcher.next_message()
    assert_unexpected(info, "hello-received", kind)


def test_hello_and_submit_in_one_chunk() -> None:
    dispatcher = ProtocolConnection(DISPATCHER)
    dispatcher.receive_data(raw(m.Hello(version=1, role=CLIENT)) + raw(SAMPLES[m.Submit]))
    assert dispatcher.next_message() == m.Hello(version=1, role=CLIENT)
    with pytest.raises(RemoteProtocolError) as info:
        dispatcher.next_message()
    assert_unexpected(info, "hello-received", m.Submit)


@pytest.mark.parametrize("kind", [t for t in NOT_ERROR if t is not m.Auth], ids=lambda t: t.TYPE)
def test_only_auth_answers_a_challenge(kind: type) -> None:
    pair = Pair(WORKER)
    pair.peer_sends(m.Hello(version=1, role=WORKER, nonce=new_nonce()))
    pair.dispatcher_sends(m.Challenge(nonce=new_nonce()))
    pair.dispatcher.receive_data(raw(SAMPLES[kind]))
    with pytest.raises(RemoteProtocolError) as info:
        pair.dispatcher.next_message()
    assert_unexpected(info, "await-auth", kind)


@pytest.mark.parametrize("kind", NOT_ERROR, ids=lambda t: t.TYPE)
def test_nothing_after_auth_until_the_welcome(kind: type) -> None:
    pair = Pair(CLIENT)
    pair.peer_sends(m.Hello(version=1, role=CLIENT, nonce=new_nonce()))
    pair.dispatcher_sends(m.Challenge(nonce=new_nonce()))
    pair.peer_sends(m.Auth(proof="x"))
    pair.dispatcher.receive_data(raw(SAMPLES[kind]))
    with pytest.raises(RemoteProtocolError) as info:
        pair.dispatcher.next_message()
    assert_unexpected(info, "auth-received", kind)


@pytest.mark.parametrize("kind", NOT_ERROR, ids=lambda t: t.TYPE)
@pytest.mark.parametrize("role", ROLES)
def test_what_the_dispatcher_accepts_after_the_handshake(role: str, kind: type) -> None:
    pair = Pair(role)
    pair.handshake()
    pair.dispatcher.receive_data(raw(SAMPLES[kind]))
    if kind in PEER_TO_DISPATCHER[role]:
        assert pair.dispatcher.messages() == [SAMPLES[kind]]
        assert pair.dispatcher.state == f"ready:{role}"
    else:
        with pytest.raises(RemoteProtocolError) as info:
            pair.dispatcher.next_message()
        assert_unexpected(info, f"ready:{role}", kind)
        assert role in str(info.value)  # names who sent it


@pytest.mark.parametrize("kind", NOT_ERROR, ids=lambda t: t.TYPE)
@pytest.mark.parametrize("role", ROLES)
def test_what_a_peer_accepts_after_the_handshake(role: str, kind: type) -> None:
    pair = Pair(role)
    pair.handshake()
    pair.peer.receive_data(raw(SAMPLES[kind]))
    if kind in DISPATCHER_TO_PEER[role]:
        assert pair.peer.messages() == [SAMPLES[kind]]
        assert pair.peer.state == "ready"
    else:
        with pytest.raises(RemoteProtocolError) as info:
            pair.peer.next_message()
        assert_unexpected(info, "ready", kind)


def test_named_refusals() -> None:
    """The cases people ask about, spelled out."""
    worker = Pair(WORKER)
    worker.handshake()
    worker.dispatcher.receive_data(raw(SAMPLES[m.Submit]))
    with pytest.raises(RemoteProtocolError) as info:
        worker.dispatcher.next_message()
    assert_unexpected(info, "ready:worker", m.Submit)

    for kind in (m.Results, m.StatusRequest, m.Stop, m.Hello, m.Auth):
        client = Pair(CLIENT)
        client.handshake()
        client.dispatcher.receive_data(raw(SAMPLES[kind]))
        with pytest.raises(RemoteProtocolError) as info:
            client.dispatcher.next_message()
        assert_unexpected(info, "ready:client", kind)

    admin = Pair(ADMIN)
    admin.handshake()
    assert admin.peer_sends(m.StatusRequest()) == [m.StatusRequest()]
    assert admin.peer_sends(m.Stop(grace=1.0)) == [m.Stop(grace=1.0)]
    assert admin.dispatcher_sends(m.StatusReply(status={"a": 1})) == [m.StatusReply(status={"a": 1})]
    assert admin.dispatcher_sends(m.Stopping(grace=1.0)) == [m.Stopping(grace=1.0)]


@pytest.mark.parametrize("kind", NOT_ERROR, ids=lambda t: t.TYPE)
def test_peer_refuses_anything_before_it_said_hello(kind: type) -> None:
    peer = ProtocolConnection(WORKER)
    peer.receive_data(raw(SAMPLES[kind]))
    with pytest.raises(RemoteProtocolError) as info:
        peer.next_message()
    assert_unexpected(info, "start", kind)


@pytest.mark.parametrize("kind", [t for t in NOT_ERROR if t not in (m.Welcome, m.Challenge)], ids=lambda t: t.TYPE)
def test_peer_refuses_anything_but_welcome_or_challenge_after_hello(kind: type) -> None:
    pair = Pair(WORKER)
    pair.peer_sends(m.Hello(version=1, role=WORKER))
    pair.peer.receive_data(raw(SAMPLES[kind]))
    with pytest.raises(RemoteProtocolError) as info:
        pair.peer.next_message()
    assert_unexpected(info, "await-welcome", kind)


def test_peer_refuses_a_second_welcome() -> None:
    pair = Pair(CLIENT)
    welcome = pair.handshake()
    pair.peer.receive_data(raw(welcome))
    with pytest.raises(RemoteProtocolError) as info:
        pair.peer.next_message()
    assert_unexpected(info, "ready", m.Welcome)


def test_peer_refuses_a_second_challenge() -> None:
    """CORE BUG: after sending Auth the peer is back in 'await-welcome', which also accepts a Challenge.

    A dispatcher (or someone pretending to be one) could then make the peer
    answer challenge after challenge on one connection.
    """
    pair = Pair(WORKER)
    pair.peer_sends(m.Hello(version=1, role=WORKER, nonce=new_nonce()))
    pair.dispatcher_sends(m.Challenge(nonce=new_nonce()))
    pair.peer_sends(m.Auth(proof="x"))
    pair.peer.receive_data(raw(m.Challenge(nonce=new_nonce())))
    with pytest.raises(RemoteProtocolError) as info:
        pair.peer.next_message()
    assert info.value.code == "unexpected-message"


# ------------------------------------------------------------- sending
@pytest.mark.parametrize("kind", NOT_ERROR, ids=lambda t: t.TYPE)
@pytest.mark.parametrize("role", ROLES)
def test_what_a_peer_may_send_after_the_handshake(role: str, kind: type) -> None:
    pair = Pair(role)
    pair.handshake()
    if kind in PEER_TO_DISPATCHER[role]:
        assert pair.peer_sends(SAMPLES[kind]) == [SAMPLES[kind]]
    else:
        with pytest.raises(LocalProtocolError) as info:
            pair.peer.send(SAMPLES[kind])
        assert_unexpected(info, "ready", kind)
        assert pair.peer.state == "ready"  # a refused send changes nothing


@pytest.mark.parametrize("kind", NOT_ERROR, ids=lambda t: t.TYPE)
@pytest.mark.parametrize("role", ROLES)
def test_what_the_dispatcher_may_send_after_the_handshake(role: str, kind: type) -> None:
    pair = Pair(role)
    pair.handshake()
    if kind in DISPATCHER_TO_PEER[role]:
        assert pair.dispatcher_sends(SAMPLES[kind]) == [SAMPLES[kind]]
    else:
        with pytest.raises(LocalProtocolError) as info:
            pair.dispatcher.send(SAMPLES[kind])
        assert_unexpected(info, f"ready:{role}", kind)


@pytest.mark.parametrize("kind", [t for t in NOT_ERROR if t is not m.Hello], ids=lambda t: t.TYPE)
def test_a_peer_must_start_with_hello(kind: type) -> None:
    with pytest.raises(LocalProtocolError) as info:
        ProtocolConnection(CLIENT).send(SAMPLES[kind])
    assert_unexpected(info, "start", kind)


@pytest.mark.parametrize("kind", NOT_ERROR, ids=lambda t: t.TYPE)
def test_a_peer_says_nothing_while_waiting_for_the_welcome(kind: type) -> None:
    peer = ProtocolConnection(WORKER)
    peer.send(m.Hello(version=1, role=WORKER))
    with pytest.raises(LocalProtocolError) as info:
        peer.send(SAMPLES[kind])
    assert_unexpected(info, "await-welcome", kind)


def test_dispatcher_sends_nothing_before_the_hello() -> None:
    for kind in NOT_ERROR:
        with pytest.raises(LocalProtocolError):
            ProtocolConnection(DISPATCHER).send(SAMPLES[kind])


def test_dispatcher_answers_a_hello_with_challenge_or_welcome_only() -> None:
    for kind in NOT_ERROR:
        pair = Pair(WORKER)
        pair.peer_sends(m.Hello(version=1, role=WORKER))
        if kind in (m.Challenge, m.Welcome):
            pair.dispatcher.send(SAMPLES[kind])
        else:
            with pytest.raises(LocalProtocolError):
                pair.dispatcher.send(SAMPLES[kind])


def test_dispatcher_cannot_welcome_before_the_auth_arrives() -> None:
    pair = Pair(WORKER)
    pair.peer_sends(m.Hello(version=1, role=WORKER, nonce=new_nonce()))
    pair.dispatcher_sends(m.Challenge(nonce=new_nonce()))
    with pytest.raises(LocalProtocolError):
        pair.dispatcher.send(SAMPLES[m.Welcome])
    with pytest.raises(LocalProtocolError):
        pair.dispatcher.send(SAMPLES[m.Challenge])


def test_peer_cannot_send_auth_unasked() -> None:
    pair = Pair(WORKER)
    pair.handshake()
    with pytest.raises(LocalProtocolError):
        pair.peer.send(m.Auth(proof="x"))


def test_local_refusal_says_who_and_where() -> None:
    pair = Pair(WORKER)
    pair.handshake()
    with pytest.raises(LocalProtocolError) as info:
        pair.peer.send(SAMPLES[m.Submit])
    assert "worker" in str(info.value) and "'submit'" in str(info.value) and "'ready'" in str(info.value)


# -------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "setup",
    ["dispatcher-fresh", "dispatcher-hello", "dispatcher-ready", "peer-fresh", "peer-waiting", "peer-ready"],
)
def test_an_error_frame_closes_in_any_state(setup: str) -> None:
    pair = Pair(CLIENT)
    side, _, when = setup.partition("-")
    if when in ("hello", "waiting"):
        pair.peer_sends(m.Hello(version=1, role=CLIENT))
    elif when == "ready":
        pair.handshake()
    receiver = pair.dispatcher if side == "dispatcher" else pair.peer
    error = m.Error(code="bad-json", message="what")
    assert deliver(raw(error), receiver) == [error]
    assert receiver.state == "closed" and not receiver.ready
    # Nothing else is accepted or may be sent afterwards.
    receiver.receive_data(raw(m.Heartbeat()))
    with pytest.raises(RemoteProtocolError) as info:
        receiver.next_message()
    assert_unexpected(info, "closed", m.Heartbeat)
    with pytest.raises(LocalProtocolError):
        receiver.send(m.Heartbeat())


def test_sending_an_error_closes() -> None:
    pair = Pair(WORKER)
    pair.handshake()
    error = m.Error(code="auth-failed", message="no")
    assert pair.peer_sends(error) == [error]
    assert pair.peer.state == pair.dispatcher.state == "closed"
    with pytest.raises(LocalProtocolError):
        pair.peer.send(m.Heartbeat())


@pytest.mark.parametrize("state", ["await-hello", "hello-received", "ready"])
def test_error_frame_is_always_allowed(state: str) -> None:
    pair = Pair(CLIENT)
    if state != "await-hello":
        pair.peer_sends(m.Hello(version=1, role=CLIENT))
    if state == "ready":
        pair.dispatcher_sends(SAMPLES[m.Welcome])
    frame = pair.dispatcher.error_frame("unexpected-message", "x" * 5000)
    assert pair.dispatcher.state == "closed"
    [error] = deliver(frame, pair.peer)
    assert error == m.Error(code="unexpected-message", message="x" * 1000)  # long texts are cut
    assert pair.peer.state == "closed"


def test_error_frame_for_a_refusal_that_quotes_the_peer() -> None:
    """CORE BUG: error_frame() raises when the error text carries a lone surrogate.

    Refusal texts quote what the peer sent (here an extra field named
    "\\ud800"), so the peer is never told why it is being disconnected.
    """
    dispatcher = ProtocolConnection(DISPATCHER)
    dispatcher.receive_data(encode_frame(b'{"type":"hello","version":1,"role":"worker","\\ud800":1}'))
    with pytest.raises(RemoteProtocolError) as info:
        dispatcher.next_message()
    frame = dispatcher.error_frame(info.value.code, str(info.value))
    [error] = deliver(frame, ProtocolConnection(WORKER))
    assert error.code == info.value.code
    # And directly: any text at all can be sent.
    frame = ProtocolConnection(DISPATCHER).error_frame("bad-message", "field \ud800")
    [error] = deliver(frame, ProtocolConnection(CLIENT))
    assert error.code == "bad-message" and error.message.startswith("field ")


def test_bad_frames_through_the_connection() -> None:
    dispatcher = ProtocolConnection(DISPATCHER)
    with pytest.raises(RemoteProtocolError) as info:
        dispatcher.receive_data(b"\x00\x00\x00\x02")
    assert info.value.code == "bad-length"

    dispatcher = ProtocolConnection(DISPATCHER, max_frame_size=64)
    with pytest.raises(RemoteProtocolError) as info:
        dispatcher.receive_data(b"\x00\x00\x00\x41")
    assert info.value.code == "frame-too-large"

    dispatcher = ProtocolConnection(DISPATCHER)
    dispatcher.receive_data(encode_frame(b"{not json"))
    with pytest.raises(RemoteProtocolError) as info:
        dispatcher.next_message()
    assert info.value.code == "bad-json"


def test_sending_more_than_max_frame_size_is_a_local_error() -> None:
    small = ProtocolConnection(CLIENT, max_frame_size=64)
    with pytest.raises(LocalProtocolError) as info:
        small.send(m.Hello(version=1, role=CLIENT, name="x" * 100))
    assert info.value.code == "frame-too-large"


# -------------------------------------------------------------- the tables
def test_every_state_a_table_leads_to_has_a_table() -> None:
    assert set(RECEIVE) == set(SEND)
    for (role, _), table in [*RECEIVE.items(), *SEND.items()]:
        for state in table.values():
            # The dispatcher's "ready" becomes "ready:<peer role>", which the tables list.
            assert (role, state) in RECEIVE or (role, state) == (DISPATCHER, "ready"), (role, state)


def test_an_error_frame_is_in_every_table() -> None:
    for key, table in [*RECEIVE.items(), *SEND.items()]:
        assert table[m.Error] == "closed", key


def test_an_error_frame_after_closing_changes_nothing() -> None:
    pair = Pair(CLIENT)
    pair.handshake()
    pair.dispatcher.error_frame("bad-message", "bye")
    error = m.Error(code="bad-json", message="and you")
    assert deliver(raw(error), pair.dispatcher) == [error]
    assert pair.dispatcher.send(error) == raw(error)
    assert pair.dispatcher.state == "closed"


# ------------------------------------------------------------------ fuzz
def connection_in(side: str, ready: bool) -> ProtocolConnection:
    """A fresh connection, or one past the handshake, on the given side ('dispatcher:<peer role>' or a peer role)."""
    ours, _, peer_role = side.partition(":")
    pair = Pair(peer_role or ours)
    if ready:
        pair.handshake()
    return pair.dispatcher if ours == DISPATCHER else pair.peer


sides = st.sampled_from([f"{DISPATCHER}:{role}" for role in ROLES] + ROLES)
FRAMES = [raw(sample) for sample in SAMPLES.values()]


@st.composite
def spoiled_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(FRAMES)))
    frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame)


# Random bytes, whole frames of every type (so that later states are reached
# too) and frames with one byte changed.
chunks = st.binary(max_size=64) | st.sampled_from(FRAMES) | spoiled_frames()


@settings(max_examples=300, deadline=None)
@given(sides, st.booleans(), st.lists(chunks, max_size=8), st.booleans())
def test_random_bytes_give_messages_or_a_remote_protocol_error(
    side: str, ready: bool, data: list[bytes], byte_at_a_time: bool
) -> None:
    """Whatever a peer sends, the only exception is RemoteProtocolError, in any state."""
    connection = connection_in(side, ready)
    try:
        for chunk in data:
            deliver(chunk, connection, byte_at_a_time=byte_at_a_time)
    except RemoteProtocolError as exc:
        assert exc.code in (
            "bad-length", "frame-too-large", "bad-utf8", "bad-json", "bad-message", "unknown-message",
            "unexpected-message", "bad-role",
        )  # fmt: skip
