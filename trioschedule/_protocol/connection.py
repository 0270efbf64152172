"""One side of one connection, as a state machine over bytes and messages.

Bytes from the peer go in through :meth:`~ProtocolConnection.receive_data`;
messages come out of :meth:`~ProtocolConnection.next_message`;
:meth:`~ProtocolConnection.send` turns a message into the bytes to write.
Both directions are checked against one transition table (:data:`RECEIVE`
and :data:`SEND`), so "a worker may not submit", "nothing before the hello is
answered" and "no task before the handshake" are data, not scattered ``if``
statements.  The handshake's proofs are computed in :mod:`.auth` (re-exported
here, where callers import them).

It performs no I/O and never imports trio: the tests drive it byte at a time.
"""

from __future__ import annotations

from typing import Any

from .._errors import LocalProtocolError, RemoteProtocolError
from . import messages as m
from .auth import dispatcher_proof, new_nonce, peer_proof, proofs_match
from .framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame

__all__ = [
    "ADMIN",
    "CLIENT",
    "DISPATCHER",
    "PEER_ROLES",
    "WORKER",
    "ProtocolConnection",
    "dispatcher_proof",
    "new_nonce",
    "peer_proof",
    "proofs_match",
]

DISPATCHER = "dispatcher"
WORKER = "worker"
CLIENT = "client"
ADMIN = "admin"
PEER_ROLES = (WORKER, CLIENT, ADMIN)

# States.  The dispatcher side walks AWAIT_HELLO -> HELLO_RECEIVED ->
# [AWAIT_AUTH -> AUTH_RECEIVED ->] READY; a peer walks START -> AWAIT_WELCOME
# -> [CHALLENGED -> AUTH_SENT ->] READY.  READY is specialised by the
# peer's role ("ready:worker"...), since that decides what may be said.
# An Error frame, either way, leads from any state to CLOSED.
START = "start"
AWAIT_HELLO = "await-hello"
HELLO_RECEIVED = "hello-received"
AWAIT_AUTH = "await-auth"
AUTH_RECEIVED = "auth-received"
AWAIT_WELCOME = "await-welcome"
CHALLENGED = "challenged"
AUTH_SENT = "auth-sent"
READY = "ready"
CLOSED = "closed"

#: Frames before the handshake completes are limited to this (a hello naming
#: thousands of held tasks fits), so unauthenticated peers cannot make the
#: dispatcher buffer ``max_frame_size`` each.
HANDSHAKE_FRAME_SIZE = 1024 * 1024

_WORKER_TO_DISPATCHER = (m.Results, m.Release, m.Heartbeat, m.Message, m.Goodbye)
_DISPATCHER_TO_WORKER = (m.Run, m.Reclaim, m.Cancel, m.Heartbeat, m.Message, m.Goodbye)
_CLIENT_TO_DISPATCHER = (m.Submit, m.Cancel, m.Watch, m.Broadcast, m.Heartbeat, m.Message, m.Goodbye)
_ADMIN_TO_DISPATCHER = (*_CLIENT_TO_DISPATCHER, m.StatusRequest, m.TasksRequest, m.Stop, m.ScheduleRequest)
_DISPATCHER_TO_CLIENT = (m.Accepted, m.Outcomes, m.Heartbeat, m.Message, m.Goodbye, m.StatusReply, m.TasksReply,
                         m.Stopping, m.ScheduleReply)  # fmt: skip


def _stay(state: str, types: tuple[type, ...]) -> dict[type, str]:
    return {t: state for t in types}


def _per_peer_role(tables: dict[str, dict[type, str]]) -> dict[tuple[str, str], dict[type, str]]:
    """The same handshake tables for every peer role."""
    return {(role, state): table for role in PEER_ROLES for state, table in tables.items()}


def _error_closes(tables: dict[tuple[str, str], dict[type, str]]) -> dict[tuple[str, str], dict[type, str]]:
    """Add to every state, CLOSED included, that an Error frame may come (or go) and leaves the connection CLOSED."""
    closed: dict[tuple[str, str], dict[type, str]] = {(role, CLOSED): {} for role in (DISPATCHER, *PEER_ROLES)}
    return {key: {**table, m.Error: CLOSED} for key, table in {**tables, **closed}.items()}


# (our role, state) -> {message type that may arrive: the state it leads to}.
RECEIVE: dict[tuple[str, str], dict[type, str]] = _error_closes({
    (DISPATCHER, AWAIT_HELLO): {m.Hello: HELLO_RECEIVED},
    (DISPATCHER, HELLO_RECEIVED): {},
    (DISPATCHER, AWAIT_AUTH): {m.Auth: AUTH_RECEIVED},
    (DISPATCHER, AUTH_RECEIVED): {},
    (DISPATCHER, f"{READY}:{WORKER}"): _stay(f"{READY}:{WORKER}", _WORKER_TO_DISPATCHER),
    (DISPATCHER, f"{READY}:{CLIENT}"): _stay(f"{READY}:{CLIENT}", _CLIENT_TO_DISPATCHER),
    (DISPATCHER, f"{READY}:{ADMIN}"): _stay(f"{READY}:{ADMIN}", _ADMIN_TO_DISPATCHER),
    **_per_peer_role({
        START: {},
        AWAIT_WELCOME: {m.Challenge: CHALLENGED, m.Welcome: READY},
        CHALLENGED: {},
        AUTH_SENT: {m.Welcome: READY},
    }),
    (WORKER, READY): _stay(READY, _DISPATCHER_TO_WORKER),
    (CLIENT, READY): _stay(READY, _DISPATCHER_TO_CLIENT),
    (ADMIN, READY): _stay(READY, _DISPATCHER_TO_CLIENT),
})  # fmt: skip

# (our role, state) -> {message type we may send: the state it leads to}.
SEND: dict[tuple[str, str], dict[type, str]] = _error_closes({
    (DISPATCHER, AWAIT_HELLO): {},
    (DISPATCHER, HELLO_RECEIVED): {m.Challenge: AWAIT_AUTH, m.Welcome: READY},
    (DISPATCHER, AWAIT_AUTH): {},
    (DISPATCHER, AUTH_RECEIVED): {m.Welcome: READY},
    (DISPATCHER, f"{READY}:{WORKER}"): _stay(f"{READY}:{WORKER}", _DISPATCHER_TO_WORKER),
    (DISPATCHER, f"{READY}:{CLIENT}"): _stay(f"{READY}:{CLIENT}", _DISPATCHER_TO_CLIENT),
    (DISPATCHER, f"{READY}:{ADMIN}"): _stay(f"{READY}:{ADMIN}", _DISPATCHER_TO_CLIENT),
    **_per_peer_role({
        START: {m.Hello: AWAIT_WELCOME},
        AWAIT_WELCOME: {},
        CHALLENGED: {m.Auth: AUTH_SENT},
        AUTH_SENT: {},
    }),
    (WORKER, READY): _stay(READY, _WORKER_TO_DISPATCHER),
    (CLIENT, READY): _stay(READY, _CLIENT_TO_DISPATCHER),
    (ADMIN, READY): _stay(READY, _ADMIN_TO_DISPATCHER),
})  # fmt: skip


# ------------------------------------------------------------------ checks
# What the schema cannot say about a message a peer sends the dispatcher.
# Each raises RemoteProtocolError (bad-message), naming the field and the fix.
WORKER_STATUSES = (m.OK, m.ERROR, m.CANCELLED, m.TIMEOUT)


def _bad(text: str) -> RemoteProtocolError:
    return RemoteProtocolError(text, code="bad-message")


def _check_results(results: Any, role: str | None) -> None:
    if results.seq < 1:
        raise _bad(f"results.seq is {results.seq}: number results frames 1, 2, 3, ... (an ack covers seq >= 1)")
    for outcome in results.results:
        if outcome.attempt < 1:
            raise _bad(f"results: the outcome of task {outcome.id[:64]!r} has attempt {outcome.attempt}: "
                       "copy attempt from the task's spec in run (1 when the spec leaves it out)")  # fmt: skip
        status = outcome.status
        if status not in WORKER_STATUSES:
            raise _bad(f"results: the outcome of task {outcome.id[:64]!r} has status {status[:32]!r}; "
                       f"a worker reports one of {', '.join(WORKER_STATUSES)}")  # fmt: skip
        if (status == m.ERROR) != (outcome.error is not None):
            raise _bad(f"results: the outcome of task {outcome.id[:64]!r} has status {status!r} "
                       f"{'without' if status == m.ERROR else 'with'} an error object; "
                       "error is required with status error and not allowed otherwise")  # fmt: skip
        if status != m.OK and outcome.value is not None:
            raise _bad(f"results: the outcome of task {outcome.id[:64]!r} has status {status!r} and a value; "
                       "only an ok outcome carries a value")  # fmt: skip


def _check_submit(submit: Any, role: str | None) -> None:
    seen: set[str] = set()
    for sub in submit.tasks:
        if sub.id in seen:
            raise _bad(f"submit: the task id {sub.id[:64]!r} appears twice in one submit")
        seen.add(sub.id)


def _check_heartbeat(heartbeat: Any, role: str | None) -> None:
    if heartbeat.ack != 0:
        raise _bad(f"heartbeat.ack is {heartbeat.ack} from a {role}; only the dispatcher acknowledges (send 0 or leave it out)")


_CHECKS: dict[type, Any] = {m.Results: _check_results, m.Submit: _check_submit, m.Heartbeat: _check_heartbeat}


class ProtocolConnection:
    """One side of one connection, as a state machine over bytes and messages.

    ``our_role`` is :data:`DISPATCHER` on the dispatcher's side of every
    connection, or the peer's role (:data:`WORKER`, :data:`CLIENT`,
    :data:`ADMIN`) on the other side.
    """

    __slots__ = ("_decoder", "max_frame_size", "max_send_size", "our_role", "peer_role", "state")

    def __init__(self, our_role: str, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if our_role != DISPATCHER and our_role not in PEER_ROLES:
            raise ValueError(f"unknown role {our_role!r}")
        self.our_role = our_role
        self.peer_role: str | None = None if our_role == DISPATCHER else DISPATCHER
        self.state = AWAIT_HELLO if our_role == DISPATCHER else START
        self.max_frame_size = max_frame_size
        #: The largest frame we send: the peer's limit once it told us (Welcome), else ours.
        self.max_send_size = max_frame_size
        # Until the handshake is done, nobody gets to make us buffer much.
        self._decoder = FrameDecoder(min(max_frame_size, HANDSHAKE_FRAME_SIZE))

    # ------------------------------------------------------------ receiving
    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the peer; raises :class:`RemoteProtocolError` on a bad length."""
        self._decoder.receive_data(data)

    def next_message(self) -> Any | None:
        """The next message from the peer, or ``None`` until more bytes arrive.

        Raises :class:`RemoteProtocolError` if the bytes are not a valid
        message or the message is not allowed now; the caller should send
        :meth:`error_frame` for it and close.
        """
        payload = self._decoder.next_frame()
        if payload is None:
            return None
        message = m.decode(payload, repeated_keys=self.ready)
        self._received(message)
        return message

    def messages(self) -> list[Any]:
        """Every complete message available now (possibly none)."""
        out = []
        while (message := self.next_message()) is not None:
            out.append(message)
        return out

    def _received(self, message: Any) -> None:
        kind = type(message)
        table = RECEIVE.get((self.our_role, self.state))
        if table is None or kind not in table:
            raise RemoteProtocolError(
                f"{kind.TYPE!r} is not allowed from a {self.peer_role or 'peer'} in state {self.state!r}",
                code="unexpected-message",
            )
        if kind is m.Hello:
            if message.role not in PEER_ROLES:
                raise RemoteProtocolError(
                    f"hello names unknown role {message.role[:32]!r}; expected one of {', '.join(PEER_ROLES)}",
                    code="bad-role",
                )
            self.peer_role = message.role
        check = _CHECKS.get(kind) if self.our_role == DISPATCHER else None
        if check is not None:
            check(message, self.peer_role)
        state = table[kind]
        self.state = state if state != READY else self._resolve(state)

    # -------------------------------------------------------------- sending
    def send(self, message: Any) -> bytes:
        """Check that ``message`` may be sent now, and return its frame."""
        self._sent(type(message))
        return encode_frame(m.encode(message), self.max_send_size)

    def send_payload(self, kind: type, payload: bytes) -> bytes:
        """Like :meth:`send`, for a message of type ``kind`` already encoded (:func:`m.encode_run`)."""
        self._sent(kind)
        return encode_frame(payload, self.max_send_size)

    def check_send(self, message: Any) -> None:
        """Check (and record) that ``message`` may be sent now, for a frame encoded elsewhere."""
        self._sent(type(message))

    def _sent(self, kind: Any) -> None:
        table = SEND.get((self.our_role, self.state))
        if table is None or kind not in table:
            raise LocalProtocolError(
                f"cannot send {kind.TYPE!r} as {self.our_role} in state {self.state!r}",
                code="unexpected-message",
            )
        state = table[kind]
        self.state = state if state != READY else self._resolve(state)

    def error_frame(self, code: str, message: str, leader: str | None = None) -> bytes:
        """The frame that tells the peer why we are closing (always allowed)."""
        self.state = CLOSED
        text = message[:1000].encode("utf-8", "backslashreplace").decode()
        return encode_frame(m.encode(m.Error(code=code, message=text, leader=leader)), self.max_frame_size)

    def _resolve(self, state: str) -> str:
        if state == READY:
            self._decoder.max_frame_size = self.max_frame_size
            if self.our_role == DISPATCHER:
                return f"{READY}:{self.peer_role}"
        return state

    @property
    def ready(self) -> bool:
        """True once the handshake is complete in both directions."""
        return self.state.startswith(READY)
