"""The dispatcher the high-availability process tests run (tests/test_ha_processes.py).

It records every task it reports ended, by process, under $E2E_DIR, so the
test can tell which dispatcher finished what, and that no outcome was
reported twice across a failover.
"""

from __future__ import annotations

from tests.e2e_app import AppDispatcher, AppWorker, _record

__all__ = ["AppWorker", "HADispatcher"]


class HADispatcher(AppDispatcher):
    async def on_task_done(self, task_id, name, outcome):
        _record("done", id=task_id, status=outcome.status)
