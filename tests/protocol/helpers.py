"""Two ProtocolConnections wired back to back, and one sample of every message (as h11/tests/helpers.py).

No sockets: bytes returned by one side's ``send`` are fed to the other
side's ``receive_data``, whole or one byte at a time.
"""

from __future__ import annotations

from typing import Any

from trioschedule._protocol import messages as m
from trioschedule._protocol.auth import dispatcher_proof, new_nonce, peer_proof, proofs_match
from trioschedule._protocol.connection import DISPATCHER, WORKER, ProtocolConnection
from trioschedule._protocol.framing import encode_frame

SECRET = "s3cret"

# One instance of every message type.
SAMPLES: dict[type, Any] = {
    m.Hello: m.Hello(version=1, role=WORKER),
    m.Challenge: m.Challenge(nonce="0" * 32),
    m.Auth: m.Auth(proof="0" * 64),
    m.Welcome: m.Welcome(version=1, session="s", heartbeat=2.0, timeout=10.0),
    m.Error: m.Error(code="bad-json", message="no"),
    m.Heartbeat: m.Heartbeat(),  # from a peer, ack must be 0 (only the dispatcher acknowledges)
    m.Message: m.Message(data={"hi": 1}),
    m.Goodbye: m.Goodbye(reason="bye"),
    m.Cancel: m.Cancel(id="t1"),
    m.Run: m.Run(tasks=(m.TaskSpec(id="t1", name="add", args=[1, 2]),)),
    m.Results: m.Results(seq=1, started=("t1",)),
    m.Release: m.Release(ids=("t1",)),
    m.Reclaim: m.Reclaim(ids=("t1",)),
    m.Submit: m.Submit(tasks=(m.Submission(id="t1", name="add"),)),
    m.Accepted: m.Accepted(ids=("t1",)),
    m.Watch: m.Watch(ids=("t1",)),
    m.Outcomes: m.Outcomes(results=(m.Outcome(id="t1", status="ok", attempt=1, value=3),)),
    m.Broadcast: m.Broadcast(data="all"),
    m.StatusRequest: m.StatusRequest(),
    m.StatusReply: m.StatusReply(status={"workers": []}),
    m.TasksRequest: m.TasksRequest(failed=True),
    m.TasksReply: m.TasksReply(tasks=({"id": "t1", "status": "error"},), history=1000),
    m.Stop: m.Stop(),
    m.Stopping: m.Stopping(grace=30.0),
    m.ScheduleRequest: m.ScheduleRequest(op="pause", name="nightly"),
    m.ScheduleReply: m.ScheduleReply(code="unknown-schedule", error="no schedule named 'x'"),
}


def raw(message: Any) -> bytes:
    """A frame for ``message`` that bypasses the sender's checks (a misbehaving peer)."""
    return encode_frame(m.encode(message))


def deliver(data: bytes, receiver: ProtocolConnection, *, byte_at_a_time: bool = False) -> list[Any]:
    if byte_at_a_time:
        out = []
        for i in range(len(data)):
            receiver.receive_data(data[i : i + 1])
            out.extend(receiver.messages())
        return out
    receiver.receive_data(data)
    return receiver.messages()


class Pair:
    """A dispatcher side and a peer side, wired back to back."""

    def __init__(self, role: str, *, byte_at_a_time: bool = False) -> None:
        self.role = role
        self.dispatcher = ProtocolConnection(DISPATCHER)
        self.peer = ProtocolConnection(role)
        self.byte_at_a_time = byte_at_a_time

    def peer_sends(self, message: Any) -> list[Any]:
        return deliver(self.peer.send(message), self.dispatcher, byte_at_a_time=self.byte_at_a_time)

    def dispatcher_sends(self, message: Any) -> list[Any]:
        return deliver(self.dispatcher.send(message), self.peer, byte_at_a_time=self.byte_at_a_time)

    def handshake(self, **hello: Any) -> m.Welcome:
        welcome = m.Welcome(version=1, session="session-1", heartbeat=2.0, timeout=10.0, name="d")
        assert self.peer_sends(m.Hello(version=1, role=self.role, **hello)) == [
            m.Hello(version=1, role=self.role, **hello)
        ]
        assert self.dispatcher_sends(welcome) == [welcome]
        assert self.dispatcher.ready and self.peer.ready
        return welcome

    def authenticated_handshake(self, secret: str = SECRET, peer_secret: str = SECRET) -> tuple[bool, bool]:
        """Run the challenge handshake; returns (dispatcher accepted the peer, peer accepted the dispatcher)."""
        peer_nonce = new_nonce()
        [hello] = self.peer_sends(m.Hello(version=1, role=self.role, nonce=peer_nonce))
        assert self.dispatcher.state == "hello-received"
        dispatcher_nonce = new_nonce()
        [challenge] = self.dispatcher_sends(m.Challenge(nonce=dispatcher_nonce))
        assert (self.dispatcher.state, self.peer.state) == ("await-auth", "challenged")
        proof = peer_proof(peer_secret, self.role, peer_nonce, challenge.nonce)
        [auth] = self.peer_sends(m.Auth(proof=proof))
        assert self.dispatcher.state == "auth-received" and not self.peer.ready
        peer_ok = proofs_match(peer_proof(secret, hello.role, hello.nonce, dispatcher_nonce), auth.proof)
        welcome = m.Welcome(
            version=1, session="s", heartbeat=2.0, timeout=10.0,
            proof=dispatcher_proof(secret, hello.role, hello.nonce, dispatcher_nonce),
        )  # fmt: skip
        [received] = self.dispatcher_sends(welcome)
        expected = dispatcher_proof(peer_secret, self.role, peer_nonce, challenge.nonce)
        dispatcher_ok = proofs_match(expected, received.proof)
        return peer_ok, dispatcher_ok
