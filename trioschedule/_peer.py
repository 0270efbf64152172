"""What the dispatcher's hooks are told about a connected worker, client or admin."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import attrs

__all__ = ["Peer"]


@attrs.define(eq=False, kw_only=True)
class Peer:
    """One connected peer as the dispatcher sees it.

    Passed to ``on_connect``, ``on_message`` and ``on_close``; give it to
    :meth:`Dispatcher.send` to talk to that peer alone.  ``running``,
    ``done`` and ``failed`` count task attempts for workers.
    """

    id: str
    role: str
    name: str
    address: str
    pid: int = 0
    host: str = ""
    connected_at: float = 0.0
    tasks: frozenset[str] = frozenset()
    concurrency: int = 0
    prefetch: int = 0
    done: int = 0
    failed: int = 0
    connected: bool = True
    restarts: int = 0  # a worker: times its supervisor replaced its process (hello.restarts)
    _running: Sized = attrs.field(default=(), repr=False, init=False)

    @property
    def running(self) -> int:
        """Task attempts currently assigned to this worker."""
        return len(self._running)

    def track_running(self, assigned: Sized) -> None:
        """Report ``len(assigned)`` as :attr:`running` from now on (the dispatcher's live assignments)."""
        self._running = assigned

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``status --json`` lists)."""
        return {
            "id": self.id,
            "role": self.role,
            "name": self.name,
            "address": self.address,
            "host": self.host,
            "pid": self.pid,
            "connected": self.connected,
            "connected_at": self.connected_at,
            "tasks": sorted(self.tasks),
            "concurrency": self.concurrency,
            "prefetch": self.prefetch,
            "running": self.running,
            "done": self.done,
            "failed": self.failed,
            "restarts": self.restarts,
        }
