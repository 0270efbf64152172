"""What the scheduler knows of a worker's session and of a client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._peer import Peer
    from .._protocol.messages import Outcome
    from .tasks import Task

__all__ = ["ClientRecord", "WorkerSession"]


class WorkerSession:
    """A worker's session: survives a dropped connection for ``session_grace`` seconds.

    ``conn`` is the shell's connection while one is attached, else None; the
    scheduler only ever asks whether it is None.  What the scheduler wants
    sent waits in ``buffer`` (task specs in wire form, for the next Run
    frame) and ``control`` (other messages), and the session is put in
    ``Scheduler.dirty_sessions`` for the shell to send them.
    """

    __slots__ = (
        "acked",
        "assigned",
        "buffer",
        "buffer_cancel",
        "conn",
        "control",
        "detached_at",
        "draining",
        "expiry",
        "id",
        "last_seq",
        "names",
        "no_retry",
        "peer",
        "retries",
        "retry_delay",
        "retry_timeout",
        "window",
    )  # fmt: skip

    def __init__(self, session_id: str, peer: Peer, names: frozenset[str] = frozenset(), window: int = 1) -> None:
        self.id = session_id
        self.peer = peer
        self.conn: Any = None
        self.names = names
        self.window = window  # tasks it may hold at once: concurrency + prefetch
        self.assigned: dict[str, Task] = {}  # in assignment order
        self.buffer: list[dict[str, Any]] = []
        self.control: list[Any] = []
        self.buffer_cancel: list[str] = []  # held by the worker, wanted by nobody: cancel once connected
        self.last_seq = 0  # the newest Results frame processed
        self.acked = 0  # the newest Results frame acknowledged (with a journal: once its commit is done)
        self.detached_at: float | None = None
        self.draining = False
        self.retries: dict[str, int] = {}
        self.no_retry: dict[str, tuple[str, ...]] = {}
        self.retry_delay: dict[str, float] = {}  # per task name: a fixed wait before a retry, instead of the backoff
        self.retry_timeout: frozenset[str] = frozenset()  # task names whose time-limited attempts are retried
        self.expiry = 0  # bumped on every attach and detach: a stale expiry timer does nothing


class ClientRecord:
    """A connected client or admin: where its tasks' outcomes go.

    ``conn`` is the shell's connection; outcomes wait in ``pending`` and the
    record is put in ``Scheduler.dirty_clients`` for the shell to send them.
    """

    __slots__ = ("conn", "owned", "peer", "pending")

    def __init__(self, peer: Peer, conn: Any) -> None:
        self.peer = peer
        self.conn = conn
        self.pending: list[Outcome] = []
        self.owned = 0  # its unfinished tasks (limited by max_client_queued)
