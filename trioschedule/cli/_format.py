"""The human tables that ``trioschedule status`` and ``trioschedule tasks`` print, in the spirit of Workerman's."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["format_status", "format_tasks"]

_TASK_COUNTS = ("queued", "delayed", "running", "done", "failed", "cancelled", "timeout", "lost")
_WORKER_COLUMNS = ("name", "host", "pid", "concurrency", "running", "done", "failed", "address", "state", "tasks")


def format_status(status: dict[str, Any]) -> str:
    """Render a status document (``Dispatcher.status()``, ``Client.status()``) as the ``status`` table.

    The document is the same one ``trioschedule status --json`` prints; this
    is only its human face, so scripts should read the JSON instead.
    """
    t = status["tasks"]
    lines = [
        f"trioschedule {status['name']}  pid {status['pid']}  {status['address']}  "
        f"uptime {_duration(status['uptime'])}  store {status['store']}" + ("  DRAINING" if status["draining"] else ""),
        "tasks: " + "  ".join(f"{key} {t[key]}" for key in _TASK_COUNTS),
    ]
    if status["waiting_for_worker"]:
        waiting = ", ".join(f"{name} ({count})" for name, count in sorted(status["waiting_for_worker"].items()))
        lines.append(f"waiting for a worker that offers them: {waiting}")
        for name, ids in sorted(status.get("waiting_ids", {}).items()):
            more = status["waiting_for_worker"].get(name, 0) - len(ids)
            lines.append(f"  {name}: {' '.join(ids)}" + (f" and {more} more" if more > 0 else ""))
    if status.get("ha"):
        lines.extend(_ha_lines(status["ha"]))
    workers = status["workers"]
    lines.append(f"workers: {len(workers)}   clients: {len(status['clients'])}")
    if workers:
        rows = [_worker_row(w) for w in workers]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_WORKER_COLUMNS)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(_WORKER_COLUMNS, widths)))
        lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)
    failures = status.get("recent_failures") or []
    if failures:
        lines.append("recent failures, newest first (`trioschedule tasks --failed` lists more):")
        lines.extend(f"  {_failure_line(e)}" for e in failures[:FAILURES_SHOWN])
    return "\n".join(lines)


def _ha_lines(ha: dict[str, Any]) -> list[str]:
    """The ``ha`` block of a dispatcher on a shared store (docs/HA.md): who leads, in which term, who stands by."""
    head = f"ha: {ha.get('role', 'leader')} {ha.get('address') or '?'}  holder {_short(ha.get('holder'))}"
    lines = [f"{head}  term {ha.get('term', '?')}"]
    standbys = ha.get("standbys") or []
    if not standbys:
        lines.append("standbys: none alive (nothing takes over if this dispatcher dies)")
    else:
        lines.append(f"standbys: {len(standbys)}")
        lines.extend(
            f"  {s.get('address') or '?'}  holder {_short(s.get('holder'))}  seen {float(s.get('seen_ago', 0)):.1f} s ago"
            for s in standbys
        )
    return lines


def _short(holder: Any) -> str:
    """A holder id, cut to what a person compares (the JSON keeps it whole)."""
    return str(holder or "?")[:12]


#: Failures the status table shows (the JSON carries all the document has).
FAILURES_SHOWN = 5


def format_tasks(entries: list[dict[str, Any]], *, unfinished: bool = False) -> str:
    """Render ``Client.tasks()`` entries as the ``tasks`` table: one line each, newest first."""
    if not entries:
        return "no unfinished tasks" if unfinished else "no ended tasks kept (or the dispatcher's history is off)"
    if unfinished:
        return "\n".join(
            f"{e['id']}  {e['name']}  {e['state']}" + (f" on {e['worker']}" if e.get("worker") else "")
            + ("  waiting for a worker that offers it" if e.get("waiting_for_worker") else "")
            + f"  attempt {e['attempt']}  submitted {_clock(e['submitted_at'])}"
            for e in entries
        )  # fmt: skip
    return "\n".join(
        f"{_clock(e['finished_at'])}  {_failure_line(e)}  ({e['args']})"
        + (f" on {e['worker']}" if e.get("worker") else "") + f"  attempt {e['attempt']}"
        for e in entries
    )  # fmt: skip


def _failure_line(e: dict[str, Any]) -> str:
    """``ID NAME STATUS: ErrorType: message`` on one line."""
    error = e.get("error")
    why = f"{error['type']}: {error['message']}" if error else (e.get("reason") or "")
    why = " ".join(str(why).split())  # one line, whatever the message holds
    if len(why) > 120:
        why = why[:117] + "..."
    return f"{e['id']}  {e['name']}  {e['status']}" + (f": {why}" if why else "")


def _clock(timestamp: float) -> str:
    """Local wall-clock time of day, ``HH:MM:SS``."""
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def _worker_row(w: dict[str, Any]) -> tuple[str, ...]:
    state = "draining" if w["draining"] else ("connected" if w["connected"] else "detached")
    return (w["name"], w["host"], str(w["pid"]), str(w["concurrency"]), str(w["running"]), str(w["done"]),
            str(w["failed"]), w["address"], state, ",".join(w.get("tasks", ())))  # fmt: skip


def _duration(seconds: float) -> str:
    """``[Nd ]H:MM:SS``, whole seconds."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:d}:{minutes:02d}:{secs:02d}"
