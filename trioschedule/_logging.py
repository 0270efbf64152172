"""Structured fields on log lines: the one place that names them.

Every log call about a task or a peer passes ``extra=context(...)``: the text
format ignores the fields (its message already says it in words), and the
JSON format (``--log-format json``, ``cli/_logs.py``) writes each as its own
key, so a log collector can find every line about one task or one worker
without parsing sentences.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FIELDS", "context"]

#: The structured fields a log record may carry, in the order JSON lines show them.
FIELDS = ("task_id", "task_name", "peer", "worker_pid")


def context(
    *, task_id: str | None = None, task_name: str | None = None, peer: str | None = None, worker_pid: int | None = None
) -> dict[str, Any]:
    """The ``extra=`` mapping of a log call: only the fields that apply (None ones are left out)."""
    fields = {"task_id": task_id, "task_name": task_name, "peer": peer, "worker_pid": worker_pid}
    return {key: value for key, value in fields.items() if value is not None}
