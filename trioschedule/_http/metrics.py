"""``GET /metrics``: the dispatcher's counters as Prometheus metric families, built at scrape time.

:class:`DispatcherCollector` is a prometheus-client custom collector in a
private :class:`~prometheus_client.CollectorRegistry` (never the global
one: two dispatchers in one process must not mix, and the process's own
metrics are the embedding program's business).  Its ``collect`` reads what
the dispatcher keeps anyway, so nothing touches prometheus-client on the
hot path.  Each metric family is one method named ``family_*``; a new one is
one more such method (see docs/ARCHITECTURE.md, "A new metric").
"""

from __future__ import annotations

import datetime
import socket
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from .._core.metrics import Histogram
from .._protocol import messages as m

if TYPE_CHECKING:
    from .._dispatcher.dispatcher import Dispatcher

__all__ = ["DispatcherCollector", "render_metrics", "tcp_rtt"]

#: The final statuses counted per task name: (status, metric name, help).
ENDED = (
    (m.OK, "trioschedule_tasks_succeeded", "Tasks that ended with a value."),
    (m.ERROR, "trioschedule_tasks_failed", "Tasks that ended with an error (after any retries)."),
    (m.CANCELLED, "trioschedule_tasks_cancelled", "Tasks that ended cancelled."),
    (m.TIMEOUT, "trioschedule_tasks_timed_out", "Tasks that ended because their deadline passed."),
    (m.LOST, "trioschedule_tasks_lost",
     "Tasks given up because their workers were lost too often, or a dispatcher without a journal stopped."),
)  # fmt: skip


class DispatcherCollector(Collector):
    """Reads one dispatcher's counters when Prometheus scrapes it."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        for name in sorted(dir(type(self))):
            if name.startswith("family_"):
                yield from getattr(self, name)()

    # ------------------------------------------------------------ tasks
    def family_tasks_counters(self) -> Iterator[Metric]:
        stats = sorted(self.d._core.metrics.by_name.items())
        for attr, metric, text in (
            ("submitted", "trioschedule_tasks_submitted", "Tasks accepted (from clients, submit(), map())."),
            ("started", "trioschedule_tasks_started", "Task attempts a worker started (retries count again)."),
            ("retried", "trioschedule_tasks_retried", "Failed attempts that were retried."),
        ):
            family = CounterMetricFamily(metric, text, labels=["task"])
            for name, s in stats:
                family.add_metric([name], getattr(s, attr))
            yield family
        for status, metric, text in ENDED:
            family = CounterMetricFamily(metric, text, labels=["task"])
            for name, s in stats:
                family.add_metric([name], s.ended.get(status, 0))
            yield family

    def family_tasks_gauges(self) -> Iterator[Metric]:
        depths = self.d._core.queue_depths()
        names = sorted(set(depths) | set(self.d._core.metrics.by_name))  # every name seen: 0 rather than absent
        zero = {"queued": 0, "delayed": 0, "running": 0, "waiting_for_worker": 0}
        for key, metric, text in (
            ("queued", "trioschedule_tasks_queued", "Tasks waiting in the queue for a worker with room."),
            ("delayed", "trioschedule_tasks_delayed", "Tasks waiting for their delay or retry backoff."),
            ("waiting_for_worker", "trioschedule_tasks_waiting_for_worker",
             "Queued tasks whose name no connected worker offers."),
        ):  # fmt: skip
            family = GaugeMetricFamily(metric, text, labels=["task"])
            for name in names:
                family.add_metric([name], depths.get(name, zero)[key])
            yield family
        yield GaugeMetricFamily("trioschedule_tasks_running", "Task attempts assigned to workers now.",
                                value=self.d._core.running)  # fmt: skip

    def family_tasks_histograms(self) -> Iterator[Metric]:
        stats = sorted(self.d._core.metrics.by_name.items())
        run = HistogramMetricFamily(
            "trioschedule_task_run_time_seconds",
            "Attempt run time as the dispatcher sees it: from the worker's report of the start to its outcome "
            "(0 for an attempt whose start and outcome arrived together).",
            labels=["task"],
        )
        wait = HistogramMetricFamily(
            "trioschedule_task_queue_wait_seconds",
            "From a task's submission to its first start on a worker.",
            labels=["task"],
        )
        for name, s in stats:
            _add_histogram(run, [name], s.run_time)
            _add_histogram(wait, [name], s.queue_wait)
        yield run
        yield wait

    # ------------------------------------------------------------ peers
    def family_peers(self) -> Iterator[Metric]:
        d = self.d
        workers = [s for s in d._core.sessions.values() if s.conn is not None]
        yield GaugeMetricFamily("trioschedule_workers_connected", "Workers connected now.", value=len(workers))
        yield GaugeMetricFamily("trioschedule_clients_connected", "Clients and admin connections now.",
                                value=len(d._connections.clients))  # fmt: skip
        now = trio.current_time()
        seen = GaugeMetricFamily("trioschedule_worker_last_frame_age_seconds",
                                 "Seconds since the last frame (a heartbeat at least) from each connected worker.",
                                 labels=["worker"])  # fmt: skip
        rtt = GaugeMetricFamily("trioschedule_worker_rtt_seconds",
                                "The kernel's smoothed TCP round-trip time to each connected worker (Linux).",
                                labels=["worker"])  # fmt: skip
        echo = GaugeMetricFamily("trioschedule_worker_heartbeat_round_trip_seconds",
                                 "The last heartbeat round trip to each connected worker (workers that echo).",
                                 labels=["worker"])  # fmt: skip
        round_trips = d._connections.round_trips
        for session in workers:
            conn = session.conn
            seen.add_metric([session.peer.name], max(0.0, now - conn.last_received))
            value = tcp_rtt(conn.stream)
            if value is not None:
                rtt.add_metric([session.peer.name], value)
            last = round_trips.get(session.id)
            if last is not None:
                echo.add_metric([session.peer.name], last)
        yield seen
        yield rtt
        yield echo
        overall = HistogramMetricFamily("trioschedule_heartbeat_round_trip_seconds",
                                        "Heartbeat round trips to all workers: from queuing a ping to reading "
                                        "its echo (the network, both event loops, and any frame queued before "
                                        "it).")  # fmt: skip
        _add_histogram(overall, [], d._connections.heartbeat_rtt)
        yield overall

    # ------------------------------------------------------------ dispatcher
    def family_dispatcher(self) -> Iterator[Metric]:
        d = self.d
        yield InfoMetricFamily("trioschedule_dispatcher", "The dispatcher's version, name and store.",
                               value={"version": __version__, "name": d.name, "store": d.store.url})  # fmt: skip
        if d._started_at:  # (a standby has not started serving)
            yield GaugeMetricFamily("trioschedule_dispatcher_start_time_seconds",
                                    "When the dispatcher started serving, in seconds since the Unix epoch.",
                                    value=d._started_at)  # fmt: skip
        yield GaugeMetricFamily("trioschedule_dispatcher_draining", "1 while the dispatcher drains to stop.",
                                value=1 if d.draining else 0)  # fmt: skip
        yield CounterMetricFamily("trioschedule_hook_errors", "Hook calls that raised (logged with a traceback).",
                                  value=d._hooks.errors)  # fmt: skip
        journal = HistogramMetricFamily("trioschedule_journal_commit_seconds",
                                        "Waits for the journal's durability: each flush and each connection's "
                                        "write barrier (none without a durable store).")  # fmt: skip
        _add_histogram(journal, [], d._journal.commit_time)
        yield journal

    def family_leadership(self) -> Iterator[Metric]:
        """Whether this dispatcher serves; on a shared store its lease's term and the standbys it sees (docs/HA.md)."""
        d = self.d
        yield GaugeMetricFamily("trioschedule_leading",
                                "1 while this dispatcher serves (with a shared store: while it holds the lease).",
                                value=1 if d.leading else 0)  # fmt: skip
        election = d._election
        if election is not None:
            ha = election.describe()
            yield GaugeMetricFamily("trioschedule_lease_term", "The term of the lease as this dispatcher last saw it.",
                                    value=ha["term"])  # fmt: skip
            yield GaugeMetricFamily("trioschedule_standbys", "Standbys alive, as the members table shows them.",
                                    value=len(ha["standbys"]))  # fmt: skip

    # ------------------------------------------------------------- schedules
    def family_schedules(self) -> Iterator[Metric]:
        """Per schedule: runs submitted, fire times misfired and skipped, paused, the next fire time."""
        entries = self.d.schedules()
        runs = CounterMetricFamily("trioschedule_schedule_runs", "Runs a schedule submitted.", labels=["schedule"])
        misfires = CounterMetricFamily("trioschedule_schedule_misfires",
                                       "Fire times a schedule missed beyond its misfire_grace, or coalesced away.",
                                       labels=["schedule"])  # fmt: skip
        skipped = CounterMetricFamily("trioschedule_schedule_skipped",
                                      "Fire times skipped because the previous run was still going (overlap).",
                                      labels=["schedule"])  # fmt: skip
        paused = GaugeMetricFamily("trioschedule_schedule_paused", "1 while a schedule is paused.", labels=["schedule"])
        next_run = GaugeMetricFamily("trioschedule_schedule_next_run_timestamp_seconds",
                                     "A schedule's next fire time, Unix time (absent while paused or finished).",
                                     labels=["schedule"])  # fmt: skip
        for entry in entries:
            label = [entry["name"]]
            runs.add_metric(label, entry["runs"])
            misfires.add_metric(label, entry["misfired"])
            skipped.add_metric(label, entry["skipped"])
            paused.add_metric(label, 1 if entry["paused"] else 0)
            if entry["next_run"] and not entry["paused"]:
                when = datetime.datetime.fromisoformat(entry["next_run"].replace("Z", "+00:00"))
                next_run.add_metric(label, when.timestamp())
        yield from (runs, misfires, skipped, paused, next_run)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    buckets = [(_bound(bound), float(count)) for bound, count in histogram.cumulative()]
    family.add_metric(labels, buckets, histogram.sum)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def render_metrics(collector: DispatcherCollector, accept: str) -> tuple[bytes, str]:
    """The exposition for an ``Accept`` header: OpenMetrics when asked for, else the Prometheus text format."""
    encoder, content_type = choose_encoder(accept)
    return encoder(collector.registry), content_type


_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCPI_RTT = struct.Struct("=I")  # tcp_info.tcpi_rtt (microseconds), at offset 68 on Linux


def tcp_rtt(stream: Any) -> float | None:
    """The kernel's smoothed round-trip time of a TCP stream in seconds (Linux), else None."""
    if _TCP_INFO is None:
        return None
    inner = stream
    while hasattr(inner, "transport_stream"):
        inner = inner.transport_stream
    sock = getattr(inner, "socket", None)
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
    except (OSError, AttributeError):
        return None
    if len(info) < 72:
        return None
    return float(_TCPI_RTT.unpack_from(info, 68)[0]) / 1e6

