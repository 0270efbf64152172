"""``--log-format text|json`` and ``--log-level``: how the command line's log lines look.

JSON lines are for log collectors: one object per line with ``time`` (ISO
8601 UTC, milliseconds), ``level``, ``logger``, ``pid`` (the process that
wrote the line), ``event`` (the message), then the structured fields of
``trioschedule._logging.FIELDS`` that the line carries (``task_id``,
``task_name``, ``peer``, ``worker_pid``), and ``exception`` (the traceback
text) when there is one.  docs/OPERATIONS.md lists the events.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

from .._logging import FIELDS

__all__ = ["JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "event": record.getMessage(),
        }
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                document[field] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Log to stderr at ``level`` (a name from LOG_LEVELS) as ``fmt`` (text or json).

    Like ``logging.basicConfig``, it leaves alone a root logger that someone
    else configured already (a program that calls ``main()``, pytest), apart
    from the level; a second call replaces what the first installed.
    """
    global _installed
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    if _installed is not None and _installed in root.handlers:
        root.removeHandler(_installed)
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    _installed = handler


_installed: logging.Handler | None = None
