"""What the dispatcher's side refuses beyond the schema: sans-IO, byte at a time (issue 13).

A worker's outcome must carry the attempt it ran (never 0), a status a worker
may report, an error object exactly with ``error`` and a value only with
``ok``; results frames are numbered from 1; only the dispatcher acknowledges;
a submit names each id once; the handshake refuses a repeated key.
"""

from __future__ import annotations

import pytest

from trioschedule._errors import RemoteProtocolError
from trioschedule._protocol import messages as m
from trioschedule._protocol.connection import CLIENT, DISPATCHER, WORKER, ProtocolConnection
from trioschedule._protocol.framing import encode_frame

from .helpers import Pair, deliver

REFUSED_RESULTS = {
    b'{"seq":0,"started":["t1"],"type":"results"}': "results.seq is 0",
    b'{"seq":1,"results":[{"id":"t1","status":"ok","value":3}],"type":"results"}': "attempt 0",
    b'{"seq":1,"results":[{"id":"t1","status":"bogus","attempt":1}],"type":"results"}': "'bogus'",
    b'{"seq":1,"results":[{"id":"t1","status":"lost","attempt":1}],"type":"results"}': "'lost'",
    b'{"seq":1,"results":[{"id":"t1","status":"unknown","attempt":1}],"type":"results"}': "'unknown'",
    b'{"seq":1,"results":[{"id":"t1","status":"error","attempt":1}],"type":"results"}': "without an error",
    b'{"seq":1,"results":[{"id":"t1","status":"ok","attempt":1,"error":{"type":"E","message":""}}],"type":"results"}':
        "with an error",
    b'{"seq":1,"results":[{"id":"t1","status":"timeout","attempt":1,"value":1}],"type":"results"}': "carries a value",
}  # fmt: skip


@pytest.mark.parametrize("payload", list(REFUSED_RESULTS))
def test_bad_results_from_a_worker_are_refused(payload: bytes) -> None:
    pair = Pair(WORKER, byte_at_a_time=True)
    pair.handshake(tasks=("add",))
    with pytest.raises(RemoteProtocolError) as excinfo:
        deliver(encode_frame(payload), pair.dispatcher, byte_at_a_time=True)
    assert excinfo.value.code == "bad-message"
    assert REFUSED_RESULTS[payload] in str(excinfo.value)


@pytest.mark.parametrize("status", ["ok", "error", "cancelled", "timeout"])
def test_every_worker_status_is_taken(status: str) -> None:
    pair = Pair(WORKER)
    pair.handshake(tasks=("add",))
    error = m.RemoteError(type="E", message="m") if status == "error" else None
    results = m.Results(seq=1, results=(m.Outcome(id="t1", status=status, attempt=1, error=error),))
    assert pair.peer_sends(results) == [results]


def test_the_dispatcher_may_send_any_status_and_ack_to_its_peers() -> None:
    pair = Pair(CLIENT)
    pair.handshake()
    outcomes = m.Outcomes(results=(m.Outcome(id="t1", status="unknown"), m.Outcome(id="t2", status="lost")))
    assert pair.dispatcher_sends(outcomes) == [outcomes]
    assert pair.dispatcher_sends(m.Heartbeat(ack=4)) == [m.Heartbeat(ack=4)]


@pytest.mark.parametrize("role", [WORKER, CLIENT])
def test_only_the_dispatcher_acknowledges(role: str) -> None:
    pair = Pair(role)
    pair.handshake()
    with pytest.raises(RemoteProtocolError, match="heartbeat.ack is 2"):
        deliver(encode_frame(b'{"ack":2,"type":"heartbeat"}'), pair.dispatcher)


def test_a_submit_names_each_id_once() -> None:
    pair = Pair(CLIENT)
    pair.handshake()
    payload = b'{"tasks":[{"id":"b","name":"add"},{"id":"b","name":"mul"}],"type":"submit"}'
    with pytest.raises(RemoteProtocolError, match="'b' appears twice"):
        deliver(encode_frame(payload), pair.dispatcher)


def test_a_repeated_key_is_refused_in_the_handshake_only() -> None:
    dispatcher = ProtocolConnection(DISPATCHER)
    with pytest.raises(RemoteProtocolError) as excinfo:
        deliver(encode_frame(b'{"version":1,"role":"client","role":"admin","type":"hello"}'), dispatcher)
    assert excinfo.value.code == "bad-json" and "'role' appears twice" in str(excinfo.value)
    # after the handshake the last one wins (documented: checking would slow every frame)
    pair = Pair(CLIENT)
    pair.handshake()
    assert deliver(encode_frame(b'{"data":1,"data":2,"type":"message"}'), pair.dispatcher) == [m.Message(data=2)]
