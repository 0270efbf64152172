"""``/metrics`` and ``/api/status`` of a real command-line dispatcher with real worker processes (issue 15)."""

from __future__ import annotations

import json

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from trioschedule import TaskError, open_client

from ..processes import processes, wait_for
from .helpers import api_status, get, start_dispatcher_with_http

TOKEN = "metrics-t0ken"
ADDS, FAILS, SLOW = 40, 7, 3


def _samples(text: str, parse=text_string_to_metric_families) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in parse(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_count_what_the_client_saw(tmp_path):
    with processes(tmp_path, TRIOSCHEDULE_TOKEN=TOKEN) as procs:
        port, http = await start_dispatcher_with_http(procs)
        base = f"http://127.0.0.1:{http}"
        procs.start_worker(port, "--concurrency", "4", name="worker-1")
        procs.start_worker(port, "--concurrency", "4", name="worker-2")

        async def two_workers():
            document = await api_status(http, TOKEN)
            return len([w for w in document["workers"] if w["connected"]]) == 2

        await wait_for(two_workers, timeout=30, interval=0.2)

        async def both_timed():  # each worker has answered a heartbeat ping (every 0.5 s here)
            document = await api_status(http, TOKEN)
            return all(w["heartbeat_rtt"] is not None for w in document["workers"] if w["connected"])

        await wait_for(both_timed, timeout=30, interval=0.2)
        assert (await get(f"{base}/metrics"))[0] == 401  # the dispatcher's token guards it

        ok = failed = 0
        async with open_client("127.0.0.1", port, token=TOKEN) as client:
            results = await client.map("add", [(i, 1) for i in range(ADDS)])
            ok += len(results)
            outcomes = await client.map("fail", [(f"no {i}",) for i in range(FAILS)], return_exceptions=True)
            failed += sum(isinstance(o, TaskError) for o in outcomes)
            ok += len(await client.map("slow_add", [(i, 1, 0.3) for i in range(SLOW)]))
        assert (ok, failed) == (ADDS + SLOW, FAILS)

        status, headers, body = await get(f"{base}/metrics", TOKEN)
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = _samples(body.decode())

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        for name, submitted, succeeded, fails in (("add", ADDS, ADDS, 0), ("fail", FAILS, 0, FAILS),
                                                  ("slow_add", SLOW, SLOW, 0)):  # fmt: skip
            assert value("trioschedule_tasks_submitted_total", task=name) == submitted
            assert value("trioschedule_tasks_started_total", task=name) == submitted
            assert value("trioschedule_tasks_succeeded_total", task=name) == succeeded
            assert value("trioschedule_tasks_failed_total", task=name) == fails
            for counter in ("retried", "lost", "cancelled", "timed_out"):
                assert value(f"trioschedule_tasks_{counter}_total", task=name) == 0
            for histogram in ("trioschedule_task_run_time_seconds", "trioschedule_task_queue_wait_seconds"):
                assert value(f"{histogram}_count", task=name) == submitted
                assert value(f"{histogram}_bucket", task=name, le="+Inf") == submitted
            assert value("trioschedule_tasks_queued", task=name) == 0
            assert value("trioschedule_tasks_waiting_for_worker", task=name) == 0
        # The slow ones ran 0.3 s each: their start was reported before their outcome, and measured.
        assert value("trioschedule_task_run_time_seconds_sum", task="slow_add") >= SLOW * 0.25
        assert value("trioschedule_task_run_time_seconds_bucket", task="slow_add", le="0.25") == 0
        assert value("trioschedule_workers_connected") == 2
        assert value("trioschedule_tasks_running") == 0
        info = [k for k in samples if k[0] == "trioschedule_dispatcher_info"]
        assert info and ("store", "memory:") in info[0][1]
        assert value("trioschedule_dispatcher_start_time_seconds") > 1.7e9
        workers = {dict(k[1])["worker"] for k in samples if k[0] == "trioschedule_worker_last_frame_age_seconds"}
        assert len(workers) == 2
        assert value("trioschedule_journal_commit_seconds_count") == 0  # memory: no journal
        assert value("trioschedule_heartbeat_round_trip_seconds_count") >= 2
        timed = {dict(k[1])["worker"] for k in samples if k[0] == "trioschedule_worker_heartbeat_round_trip_seconds"}
        assert timed == workers

        # OpenMetrics when asked for, parsed by prometheus-client's own OpenMetrics parser (which wants # EOF).
        status, headers, body = await get(f"{base}/metrics", TOKEN, accept="application/openmetrics-text; version=1.0.0")
        assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        om = _samples(body.decode(), openmetrics_families)
        assert om[("trioschedule_tasks_failed_total", (("task", "fail"),))] == FAILS
        assert om[("trioschedule_task_queue_wait_seconds_count", (("task", "add"),))] == ADDS

        document = await api_status(http, TOKEN)
        assert document["tasks"]["done"] == ADDS + SLOW and document["tasks"]["failed"] == FAILS
        workers = [w for w in document["workers"] if w["connected"]]
        assert len({w["pid"] for w in workers}) == 2 and all(w["concurrency"] == 4 for w in workers)
        assert sum(w["done"] for w in workers) == ADDS + SLOW and sum(w["failed"] for w in workers) == FAILS
        assert len(document["failures"]) == FAILS
        failure = document["failures"][0]
        assert failure["name"] == "fail" and failure["error"]["type"] == "RuntimeError"
        assert "raise RuntimeError(message)" in failure["error"]["traceback"]  # the remote traceback
        assert document["recent_failures"][0]["id"] == failure["id"]  # status --json's own list is there too
        series = document["throughput"]["series"]
        assert sum(point["done"] for point in series) == ADDS + SLOW + FAILS
        assert all(w["last_seen_ago"] is not None and w["last_seen_ago"] < 10 for w in document["workers"])

        # The same document as `status --json` (the admin request), plus the endpoint's own keys.
        done = await procs.run("status", f"127.0.0.1:{port}", "--json")
        assert done.returncode == 0, done.stderr
        cli = json.loads(done.stdout)
        assert set(cli) <= set(document) and cli["tasks"] == document["tasks"]
