"""The status document: what ``status()``, ``trioschedule status`` and ``status --json`` show."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .._protocol import messages as m

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

__all__ = ["status_document"]


def status_document(dispatcher: Dispatcher) -> dict[str, Any]:
    """A JSON-ready snapshot of ``dispatcher``: counts, workers, clients.

    It reads what the scheduling core already counts, so asking costs the
    hot path nothing.
    """
    d = dispatcher
    core = d._core
    queued, delayed, waiting = core.queued_counts()
    counts = core.counts
    return {
        "name": d.name,
        "pid": os.getpid(),
        "address": f"{d.host}:{d.port}",
        "protocol": m.PROTOCOL_VERSION,
        "started_at": d._started_at,
        "uptime": time.time() - d._started_at if d._started_at else 0.0,
        "draining": core.draining,
        "store": d.store.url,
        "tasks": {
            "queued": queued,
            "delayed": delayed,
            "running": core.running,
            "done": counts[m.OK],
            "failed": counts[m.ERROR],
            "cancelled": counts[m.CANCELLED],
            "timeout": counts[m.TIMEOUT],
            "lost": counts[m.LOST],
        },
        "waiting_for_worker": waiting,
        "workers": [
            {**s.peer.describe(), "session": s.id, "connected": s.conn is not None, "draining": s.draining}
            for s in core.sessions.values()
        ],
        "clients": [c.peer.describe() for c in d._connections.clients.values()],
        "hook_errors": d._hooks.errors,
    }
