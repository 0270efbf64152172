"""The dispatcher's operations endpoint: ``/metrics``, ``/api/status`` and the status page ``/``.

Everything here reads what the dispatcher already keeps (the core's counts,
:mod:`trioschedule._core.metrics`, the history, the sessions) when a request
comes; nothing runs per task.  The one thing kept for the endpoint alone is
:class:`Throughput`, one sample of the finished count every 10 s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.resources
import logging
import re
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from .._json import json_encoder
from .metrics import DispatcherCollector, render_metrics, tcp_rtt
from .server import Request, Response

if TYPE_CHECKING:
    from .._dispatcher.dispatcher import Dispatcher

__all__ = ["THROUGHPUT_BUCKET", "THROUGHPUT_BUCKETS", "OperationsApp", "Throughput"]

log = logging.getLogger("trioschedule.http")
_dumps = json_encoder()

#: Seconds per throughput bucket, and how many buckets are kept (10 minutes).
THROUGHPUT_BUCKET = 10.0
THROUGHPUT_BUCKETS = 60
#: Failures with their tracebacks in ``/api/status``.
FAILURES_SHOWN = 20
#: Characters of one remote traceback kept in ``/api/status`` (the end is what matters).
TRACEBACK_SHOWN = 8000


class Throughput:
    """Tasks finished per bucket of :data:`THROUGHPUT_BUCKET` seconds, the last :data:`THROUGHPUT_BUCKETS` of them.

    :meth:`sample` reads the core's total of ended tasks; only the difference
    is kept, so the cost is one small tuple per bucket whatever the load.
    """

    def __init__(self, total: Any, *, bucket: float = THROUGHPUT_BUCKET, size: int = THROUGHPUT_BUCKETS) -> None:
        self._total = total
        self.bucket = bucket
        self.buckets: deque[tuple[float, int]] = deque(maxlen=size)  # (bucket end, wall clock; tasks ended)
        self._last = total()

    def sample(self, wall: float) -> None:
        now = self._total()
        self.buckets.append((wall, now - self._last))
        self._last = now

    def describe(self, wall: float) -> dict[str, Any]:
        """The series for the page: full buckets, then the one being filled (its end is ``wall``)."""
        series = [{"end": end, "done": done} for end, done in self.buckets]
        series.append({"end": wall, "done": self._total() - self._last, "partial": True})
        return {"bucket_seconds": self.bucket, "series": series}

    async def run(self) -> None:
        while True:
            await trio.sleep(self.bucket)
            self.sample(time.time())


class OperationsApp:
    """Routes requests to the dispatcher's pages, behind its admin token when it has one."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        core = dispatcher._core
        self.throughput = Throughput(lambda: sum(core.counts.values()))
        self.collector = DispatcherCollector(dispatcher)
        page = importlib.resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        self.page = page.encode("utf-8")
        self.csp = _content_security_policy(page)
        # The admin role's secret, as for ``trioschedule status``; a role mapping without one closes the endpoint.
        secrets = dispatcher.secrets
        self._secret: bytes | None = secrets.admin.encode() if secrets.admin else None
        self._closed = secrets.enabled and self._secret is None

    # ------------------------------------------------------------ routing
    def __call__(self, request: Request) -> Response:
        path = request.path
        if path in ("/", "/index.html"):
            return Response(status=200, body=self.page, content_type="text/html; charset=utf-8", headers=(
                ("content-security-policy", self.csp), ("referrer-policy", "no-referrer"),
                ("x-frame-options", "DENY"),
            ))  # fmt: skip
        if path not in ("/metrics", "/api/status"):
            return Response.text(404, f"no page {path[:200]!r} here: try /, /metrics or /api/status\n")
        refused = self._refusal(request)
        if refused is not None:
            return refused
        if path == "/metrics":
            body, content_type = render_metrics(self.collector, request.header("accept"))
            return Response(status=200, body=body, content_type=content_type)
        return Response(status=200, body=_dumps(self.status()).encode(), content_type="application/json")

    def _refusal(self, request: Request) -> Response | None:
        """None if ``request`` may read; else the 401/403 to answer (compared in constant time)."""
        if self._closed:
            return Response.text(403, "this dispatcher's tokens give no role 'admin': nobody may read this endpoint\n")
        if self._secret is None:
            return None
        given = _credentials(request.header("authorization"))
        if given is not None and hmac.compare_digest(given, self._secret):
            return None
        # A page's own fetches (X-Requested-With) get no Basic challenge: the browser would pop up its dialog.
        challenge = 'Bearer realm="trioschedule"'
        if request.header("x-requested-with").lower() != "xmlhttprequest":
            challenge = 'Basic realm="trioschedule", charset="UTF-8", ' + challenge
        why = "a wrong token" if given is not None else "no token"
        log.info("http %s: %s %s refused: %s", request.peer, request.method, request.path, why)
        return Response.text(401, f"{why}: send the dispatcher's admin token as 'Authorization: Bearer TOKEN' "
                                  "(or HTTP Basic, any user, the token as password)\n",
                             (("www-authenticate", challenge),))  # fmt: skip

    # ------------------------------------------------------------ /api/status
    def status(self) -> dict[str, Any]:
        """``status --json``'s document, plus failures with tracebacks, throughput and per-worker liveness."""
        d = self.d
        document = d.status()
        wall = time.time()
        now = trio.current_time()
        sessions = {s.id: s for s in d._core.sessions.values()}
        for worker in document["workers"]:
            session = sessions.get(worker.get("session"))
            conn = session.conn if session is not None else None
            worker["last_seen_ago"] = None if conn is None else max(0.0, now - conn.last_received)
            worker["rtt"] = None if conn is None else tcp_rtt(conn.stream)
            worker["heartbeat_rtt"] = d._connections.round_trips.get(worker.get("session", ""))
        document["failures"] = [_failure(e) for e in d._core.history.latest(FAILURES_SHOWN, failed=True)]
        document["running"] = _running(d, now)
        document["queues"] = queue_depths(d)
        document["throughput"] = self.throughput.describe(wall)
        document["now"] = wall
        return document


def queue_depths(dispatcher: Dispatcher) -> list[dict[str, Any]]:
    """Per task name: queued, delayed, running, and queued for a name no connected worker offers."""
    depths = dispatcher._core.queue_depths()
    return [{"task": name, **counts} for name, counts in sorted(depths.items())]


def _running(dispatcher: Dispatcher, now: float, limit: int = 50) -> list[dict[str, Any]]:
    """The longest-running attempts first (from each worker's assigned tasks; bounded by their windows)."""
    found: list[dict[str, Any]] = []
    for session in dispatcher._core.sessions.values():
        for task in session.assigned.values():
            if task.started and task.started_at >= 0.0:
                found.append({"id": task.id, "task": task.name, "worker": session.peer.name,
                              "attempt": task.attempt, "age": max(0.0, now - task.started_at)})  # fmt: skip
    found.sort(key=lambda t: float(t["age"]), reverse=True)
    return found[:limit]


def _failure(entry: Any) -> dict[str, Any]:
    described = entry.describe()
    error = entry.error
    if error is not None:
        trace = error.traceback or ""
        described["error"]["traceback"] = trace[-TRACEBACK_SHOWN:]
    return described


def _credentials(header: str) -> bytes | None:
    """The token in ``Authorization: Bearer T`` or in HTTP Basic's password (any user), else None."""
    scheme, _, value = header.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value:
        return value.encode()
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True)
        except ValueError:
            return None
        return decoded.partition(b":")[2]
    return None


def _content_security_policy(page: str) -> str:
    """Only the page's own inline script and style (by hash) and requests to this origin: nothing external."""
    hashes = {}
    for tag in ("script", "style"):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
        hashes[tag] = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in blocks
        )
    return (
        f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
