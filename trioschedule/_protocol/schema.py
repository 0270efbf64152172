"""The wire schema: every message of the protocol as a class, and the constants they carry.

Each message is a frozen, keyword-only attrs class with a stable ``TYPE``
tag.  On the wire a message is one UTF-8 JSON object whose ``type`` field is
that tag; the other fields are the attributes (fields equal to their default
are omitted).  The classes hold data only: :mod:`.converter` turns them into
JSON-ready values and back, :mod:`.codec` into bytes and back.

docs/PROTOCOL.md describes the same messages for implementers in other
languages, and tests/protocol/test_protocol_doc.py checks that it agrees.
"""

from __future__ import annotations

from typing import Any, ClassVar, Union

import attrs

__all__ = [
    "CANCELLED",
    "ERROR",
    "LOST",
    "MESSAGE_TYPES",
    "OK",
    "PROTOCOL_VERSION",
    "SCHEDULE_OPS",
    "STATUSES",
    "TAGS",
    "TIMEOUT",
    "UNKNOWN",
    "Accepted",
    "AnyMessage",
    "Auth",
    "Broadcast",
    "Cancel",
    "Challenge",
    "Error",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "Message",
    "Outcome",
    "Outcomes",
    "Reclaim",
    "Rejection",
    "Release",
    "RemoteError",
    "Results",
    "Run",
    "ScheduleReply",
    "ScheduleRequest",
    "StatusReply",
    "StatusRequest",
    "Stop",
    "Stopping",
    "Submission",
    "Submit",
    "TaskSpec",
    "TasksReply",
    "TasksRequest",
    "Watch",
    "Welcome",
]

PROTOCOL_VERSION = 1


# Task statuses, as they appear in Outcome.status.
OK = "ok"
ERROR = "error"
CANCELLED = "cancelled"
TIMEOUT = "timeout"
LOST = "lost"
UNKNOWN = "unknown"
STATUSES = (OK, ERROR, CANCELLED, TIMEOUT, LOST, UNKNOWN)


# ------------------------------------------------------------------ pieces
@attrs.frozen(kw_only=True)
class RemoteError:
    """An exception raised by a task, described (never pickled)."""

    type: str
    message: str
    traceback: str = ""
    #: Seconds the task asked to wait before its retry (it raised ``trioschedule.Retry(after=...)``).
    retry_after: float | None = None


@attrs.frozen(kw_only=True)
class TaskSpec:
    """One task run, dispatcher to worker.  ``timeout`` is the time left, in seconds."""

    id: str
    name: str
    args: list[Any] = attrs.field(factory=list)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    attempt: int = 1
    timeout: float | None = None


@attrs.frozen(kw_only=True)
class Submission:
    """One task submitted by a client.  ``id`` is chosen by the client, so resubmitting is idempotent."""

    id: str
    name: str
    args: list[Any] = attrs.field(factory=list)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    timeout: float | None = None
    retries: int | None = None
    delay: float | None = None
    priority: int = 0


@attrs.frozen(kw_only=True)
class Outcome:
    """How one task attempt (worker to dispatcher) or one task (dispatcher to client) ended."""

    id: str
    status: str
    attempt: int = 0
    value: Any = None
    error: RemoteError | None = None
    reason: str | None = None


@attrs.frozen(kw_only=True)
class Rejection:
    """A submission the dispatcher refused, with a code and a human explanation."""

    id: str
    code: str
    message: str


# ---------------------------------------------------------------- handshake
@attrs.frozen(kw_only=True)
class Hello:
    """First frame from every peer: protocol version, role and, for workers, what it offers."""

    TYPE: ClassVar[str] = "hello"
    version: int
    role: str
    name: str = ""
    host: str = ""
    pid: int = 0
    nonce: str | None = None
    tasks: tuple[str, ...] = ()
    concurrency: int = 1
    prefetch: int = 0
    session: str | None = None
    running: dict[str, int] = attrs.field(factory=dict)
    retries: dict[str, int] = attrs.field(factory=dict)
    no_retry: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    retry_delay: dict[str, float] = attrs.field(factory=dict)
    retry_timeout: tuple[str, ...] = ()
    restarts: int = 0  # times a supervisor replaced this worker's process (shown by status)
    echo: bool = False


@attrs.frozen(kw_only=True)
class Challenge:
    """The dispatcher's nonce, sent when a shared secret is configured."""

    TYPE: ClassVar[str] = "challenge"
    nonce: str


@attrs.frozen(kw_only=True)
class Auth:
    """The peer's proof that it knows the secret: HMAC over both nonces."""

    TYPE: ClassVar[str] = "auth"
    proof: str


@attrs.frozen(kw_only=True)
class Welcome:
    """The dispatcher accepts the peer; ``proof`` proves the dispatcher knows the secret too."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    session: str
    heartbeat: float
    timeout: float
    name: str = ""
    proof: str | None = None
    resumed: bool = False
    max_frame_size: int = 0  # the dispatcher's limit; peers send no larger frames (0: not said)


@attrs.frozen(kw_only=True)
class Error:
    """A fatal error: the sender closes the connection right after it."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    leader: str | None = None  # with code "not-leader": the HOST:PORT of the dispatcher that leads, if known


# ------------------------------------------------------------- both ways
@attrs.frozen(kw_only=True)
class Heartbeat:
    """Sent when a side has been quiet for a heartbeat interval.  ``ack``: see Results.

    ``echo``: a dispatcher's ping to a worker that said ``hello.echo``, which
    answers at once with a heartbeat carrying the same ``echo`` (the round trip).
    """

    TYPE: ClassVar[str] = "heartbeat"
    ack: int = 0
    echo: int = 0


@attrs.frozen(kw_only=True)
class Message:
    """A user-defined message: ``data`` is any JSON value."""

    TYPE: ClassVar[str] = "message"
    data: Any = None


@attrs.frozen(kw_only=True)
class Goodbye:
    """A clean close.  A client may ask for its unfinished tasks to be cancelled.

    From a dispatcher stopped with ``stop --workers``, ``stop`` tells its
    workers to stop too instead of waiting for it to come back.
    """

    TYPE: ClassVar[str] = "goodbye"
    reason: str = ""
    cancel_pending: bool = False
    stop: bool = False


@attrs.frozen(kw_only=True)
class Cancel:
    """Cancel a task: client to dispatcher, and dispatcher to the worker running it."""

    TYPE: ClassVar[str] = "cancel"
    id: str
    reason: str | None = None


# ------------------------------------------------------------------ worker
@attrs.frozen(kw_only=True)
class Run:
    """Tasks for a worker to run.  ``ack`` acknowledges Results frames up to that ``seq``."""

    TYPE: ClassVar[str] = "run"
    tasks: tuple[TaskSpec, ...] = ()
    ack: int = 0


@attrs.frozen(kw_only=True)
class Results:
    """Worker to dispatcher: tasks it started and attempts that ended.  ``seq`` numbers the frame."""

    TYPE: ClassVar[str] = "results"
    seq: int
    started: tuple[str, ...] = ()
    results: tuple[Outcome, ...] = ()


@attrs.frozen(kw_only=True)
class Release:
    """A worker hands back tasks it received but never started: because it is stopping, or asked to."""

    TYPE: ClassVar[str] = "release"
    ids: tuple[str, ...]
    stopping: bool = False


@attrs.frozen(kw_only=True)
class Reclaim:
    """Dispatcher to worker: hand back these tasks if you have not started them (another worker is idle)."""

    TYPE: ClassVar[str] = "reclaim"
    ids: tuple[str, ...]


# ------------------------------------------------------------------ client
@attrs.frozen(kw_only=True)
class Submit:
    """Client to dispatcher: new tasks.  ``wait=False`` asks for a refusal instead of waiting when full."""

    TYPE: ClassVar[str] = "submit"
    tasks: tuple[Submission, ...]
    wait: bool = True


@attrs.frozen(kw_only=True)
class Accepted:
    """The submissions that are now the dispatcher's responsibility, and those refused."""

    TYPE: ClassVar[str] = "accepted"
    ids: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()


@attrs.frozen(kw_only=True)
class Watch:
    """Ask to be told how these tasks end (reattaching after a reconnect or from another process)."""

    TYPE: ClassVar[str] = "watch"
    ids: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Outcomes:
    """Dispatcher to client: tasks that ended (or are unknown)."""

    TYPE: ClassVar[str] = "outcomes"
    results: tuple[Outcome, ...]


@attrs.frozen(kw_only=True)
class Broadcast:
    """Client to dispatcher: deliver ``data`` to every connected worker's ``on_message``."""

    TYPE: ClassVar[str] = "broadcast"
    data: Any = None


# ------------------------------------------------------------------- admin
@attrs.frozen(kw_only=True)
class StatusRequest:
    """Ask the dispatcher for its status (admin role)."""

    TYPE: ClassVar[str] = "status"


@attrs.frozen(kw_only=True)
class StatusReply:
    """The dispatcher's status as a JSON object (see docs/PROTOCOL.md for the fields)."""

    TYPE: ClassVar[str] = "status-reply"
    status: dict[str, Any]


@attrs.frozen(kw_only=True)
class TasksRequest:
    """Ask for tasks (admin role): the most recent outcomes, or with ``unfinished`` the queued, delayed and running.

    ``failed`` keeps the outcomes other than ``ok``; ``limit`` caps the
    entries (the dispatcher also caps it, see docs/PROTOCOL.md).
    """

    TYPE: ClassVar[str] = "tasks"
    failed: bool = False
    unfinished: bool = False
    limit: int = 50


@attrs.frozen(kw_only=True)
class TasksReply:
    """The tasks asked for, newest first, each a JSON object (see docs/PROTOCOL.md for the fields)."""

    TYPE: ClassVar[str] = "tasks-reply"
    tasks: tuple[dict[str, Any], ...] = ()
    history: int = 0  # how many outcomes the dispatcher keeps (0: its history is off)


@attrs.frozen(kw_only=True)
class Stop:
    """Ask the dispatcher to drain and exit (admin role)."""

    TYPE: ClassVar[str] = "stop"
    grace: float | None = None
    workers: bool = False  # stop the connected workers too (each gets a goodbye with stop=true)


@attrs.frozen(kw_only=True)
class Stopping:
    """The dispatcher has begun draining."""

    TYPE: ClassVar[str] = "stopping"
    grace: float


@attrs.frozen(kw_only=True)
class ScheduleRequest:
    """Add, list, remove, pause, resume or trigger schedules (admin role; docs/SCHEDULES.md).

    ``op`` is one of :data:`SCHEDULE_OPS`; ``name`` names the schedule (all
    but ``list``); ``schedule`` is the definition for ``add`` (its fields
    are ``add_schedule``'s keywords, times as ISO 8601 strings).
    """

    TYPE: ClassVar[str] = "schedule"
    op: str
    name: str | None = None
    schedule: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class ScheduleReply:
    """The answer to a :class:`ScheduleRequest`: the schedules it concerns, or why it was refused.

    ``schedules`` are status entries (docs/SCHEDULES.md); ``task_id`` is the
    run a ``trigger`` submitted; ``error`` with its ``code``
    (``bad-schedule``, ``unknown-schedule``, ``bad-request``) says what was
    wrong, and the connection stays open.
    """

    TYPE: ClassVar[str] = "schedule-reply"
    schedules: tuple[dict[str, Any], ...] = ()
    task_id: str | None = None
    code: str | None = None
    error: str | None = None


#: The operations of a :class:`ScheduleRequest`.
SCHEDULE_OPS = ("add", "list", "remove", "pause", "resume", "trigger")


MESSAGE_TYPES: tuple[Any, ...] = (
    Hello, Challenge, Auth, Welcome, Error, Heartbeat, Message, Goodbye, Cancel,
    Run, Results, Release, Reclaim, Submit, Accepted, Watch, Outcomes, Broadcast,
    StatusRequest, StatusReply, TasksRequest, TasksReply, Stop, Stopping, ScheduleRequest, ScheduleReply,
)  # fmt: skip
AnyMessage = Union[  # noqa: UP007 - a runtime union object for cattrs
    Hello, Challenge, Auth, Welcome, Error, Heartbeat, Message, Goodbye, Cancel,
    Run, Results, Release, Reclaim, Submit, Accepted, Watch, Outcomes, Broadcast,
    StatusRequest, StatusReply, TasksRequest, TasksReply, Stop, Stopping, ScheduleRequest, ScheduleReply,
]  # fmt: skip
TAGS: dict[str, type] = {cls.TYPE: cls for cls in MESSAGE_TYPES}
