"""Defaults declared once: the constructors and the command line both read them.

Seconds for durations, bytes for sizes.  Changing one here changes the Python
API and the ``python -m trioschedule`` options together.
"""

from __future__ import annotations

from ._protocol.framing import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "ADDRESS",
    "BLOCKED_WARNING",
    "CANCEL_ON_EXIT",
    "CLI_STORE",
    "CONCURRENCY",
    "CONNECT_TIMEOUT",
    "CRASH_BACKOFF_INITIAL",
    "CRASH_BACKOFF_MAX",
    "CRASH_LIMIT",
    "CRASH_WINDOW",
    "DRAIN_GRACE",
    "HANDSHAKE_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "HISTORY",
    "HOST",
    "LEADER_POLL",
    "LEADER_WAIT",
    "LEASE_TTL",
    "MAX_CLIENT_QUEUED",
    "MAX_CONNECTIONS",
    "MAX_FRAME_SIZE",
    "MAX_LOSSES",
    "MAX_QUEUED",
    "MAX_REDIRECTS",
    "MAX_RESULTS",
    "MEMORY_CHECK_INTERVAL",
    "PORT",
    "PREFETCH_MIN",
    "PREFETCH_PER_RUNNER",
    "RECONNECT_ATTEMPTS",
    "RECONNECT_INITIAL",
    "RECONNECT_MAX",
    "RELOAD_READY_TIMEOUT",
    "RESULT_TTL",
    "RETRY_BACKOFF",
    "RETRY_BACKOFF_MAX",
    "SEND_TIMEOUT",
    "SESSION_GRACE",
    "TASKS_LISTED",
]  # fmt: skip

#: Where the command line listens and connects unless told otherwise.
ADDRESS = "127.0.0.1:7311"
#: The command-line dispatcher's journal, in its working directory (the Python API keeps tasks in memory).
CLI_STORE = "sqlite:trioschedule.sqlite3"

# Liveness, for every peer.
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
MAX_FRAME_SIZE = DEFAULT_MAX_FRAME_SIZE

# Reconnecting (workers and clients): exponential backoff between these bounds.
RECONNECT_INITIAL = 0.1
RECONNECT_MAX = 5.0
#: Redirects from standbys (``not-leader``) a peer follows in one round through its addresses.
MAX_REDIRECTS = 4
#: The longest pause between rounds while a standby says none leads (a failover is under way):
#: the new leader is reached within this of taking over (docs/HA.md, "Timing").
LEADER_POLL = 1.0
#: Seconds a client keeps trying while the dispatchers it reaches say none of them leads (a failover
#: in progress: docs/HA.md bounds it at 10 s) before it gives up like on an unreachable dispatcher.
LEADER_WAIT = 15.0

# The dispatcher.
SESSION_GRACE = 5.0
DRAIN_GRACE = 30.0
MAX_CONNECTIONS = 10_000
MAX_QUEUED = 1_000_000
MAX_CLIENT_QUEUED = 1_000_000
MAX_LOSSES = 3
RETRY_BACKOFF = 0.5
RETRY_BACKOFF_MAX = 60.0
RESULT_TTL = 3600.0
MAX_RESULTS = 10_000
HISTORY = 1_000  # ended tasks kept for `trioschedule tasks` (0: none)
TASKS_LISTED = 50  # entries `trioschedule tasks` and Client.tasks() ask for
#: Several dispatchers on one shared store (docs/HA.md): the leader's lease, renewed every third of it;
#: a dead leader is replaced within about 7/6 of it plus recovery (the issue's bound: 10 s).
LEASE_TTL = 6.0

# Workers and clients.
#: Where workers and clients connect unless told otherwise, in the Python API (the command line reads ADDRESS).
HOST = "127.0.0.1"
PORT = 7311
CONCURRENCY = 1
CANCEL_ON_EXIT = False
#: Seconds the worker's event loop may be blocked (an async def task calling blocking code) before a warning.
BLOCKED_WARNING = 1.0
#: Failed attempts in a row before a worker or client gives up reconnecting (None: never).
RECONNECT_ATTEMPTS: int | None = None
#: Tasks a worker takes ahead of its runners: at least PREFETCH_MIN, or PREFETCH_PER_RUNNER per runner.
#: Small tasks need a deep pipeline to be fast, and the dispatcher takes unstarted tasks back for any
#: worker that goes idle, so they never wait behind a long one.
PREFETCH_MIN = 128
PREFETCH_PER_RUNNER = 4

# The worker supervisor (``worker --processes N``, cli/_supervisor.py).
#: Seconds between a recycling worker's looks at its own memory (max_memory): cheap, and bounded.
MEMORY_CHECK_INTERVAL = 1.0
#: A child that exits with an error this many seconds or less after it started counts as a crash at start...
CRASH_WINDOW = 5.0
#: ...and is restarted after a pause that doubles from CRASH_BACKOFF_INITIAL up to CRASH_BACKOFF_MAX...
CRASH_BACKOFF_INITIAL = 0.5
CRASH_BACKOFF_MAX = 30.0
#: ...until it has crashed at start this many times in a row: then the supervisor gives up (exit 1).
CRASH_LIMIT = 5
#: Seconds a reload waits for a replacement child to connect before giving up (the old child keeps serving).
RELOAD_READY_TIMEOUT = 60.0
