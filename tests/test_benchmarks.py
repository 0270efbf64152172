"""benchmarks/run.py works end to end: tiny sizes, real processes, every task accounted for.

This never asserts on speed (a slow machine must not fail it).  It asserts
that every workload ran to the end within a bounded time, that every result
was checked and every task counted once by the dispatcher itself, that
broadcasts were acknowledged once per worker, that the harness's own
arithmetic is right, and that the JSON has the keys docs/PERFORMANCE.md
relies on.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"
PROCS = REPO / "benchmarks" / "_procs.py"
NOT_DONE = ("queued", "delayed", "running", "failed", "cancelled", "timeout", "lost")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), *args], cwd=str(REPO), capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def _every_task_accounted_for(result: dict, variant: str) -> None:
    """Each W1/W2 column: as many tasks submitted as asked, every result checked, every one done once."""
    params, counts = result["params"], result["tasks"][variant]
    n = params["n"] * params["runs"] if "w1" in result["only"] else 0
    lat_n = params["lat_n"] if "w2" in result["only"] else 0
    expected = n + lat_n + counts["warmup"]
    assert counts["submitted"] == counts["checked"] == counts["done"] == expected, (variant, counts)
    assert {key: counts[key] for key in NOT_DONE} == dict.fromkeys(NOT_DONE, 0), (variant, counts)


@pytest.fixture(scope="module")
def harness():
    """benchmarks/_procs.py as a module: its helpers are checked here, without processes."""
    spec = importlib.util.spec_from_file_location("trioschedule_bench_procs", PROCS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.postgresql  # its PostgreSQL column starts a server as the tests do
def test_quick_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run("--quick", "--json", str(out), timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "W1 throughput" in proc.stdout and "W4" in proc.stdout, proc.stdout

    result = json.loads(out.read_text())
    assert {"command", "date", "machine", "params", "baseline", "w1", "w2", "w3", "w4"} <= result.keys()
    machine = result["machine"]
    assert _positive(machine["nproc"])
    assert {"cpu_model", "python", "trio", "trioschedule"} <= machine.keys()
    assert result["params"]["quick"] is True

    # The baselines live outside the repository (../shared/bench): they may be missing, but then say why.
    for key in ("baseline", "baseline_client"):
        if result[key]["available"]:
            assert _positive(result[key]["w1_median"]) and _positive(result[key]["w2_p50_us"])
        else:
            assert result[key]["reason"]
    # The client column is compared with the client-path baseline, the others with the in-dispatcher one.
    if result["baseline_client"]["available"]:
        assert result["w1"]["client"]["ratio_vs_baseline"] == pytest.approx(
            result["w1"]["client"]["median"] / result["baseline_client"]["w1_median"])
    if result["baseline"]["available"]:
        assert result["w1"]["dispatcher"]["ratio_vs_baseline"] == pytest.approx(
            result["w1"]["dispatcher"]["median"] / result["baseline"]["w1_median"])

    for variant in ("dispatcher", "client", "dispatcher_window64", "dispatcher_sqlite", "dispatcher_postgresql",
                    "dispatcher_cli_workers"):  # fmt: skip
        baseline = result["baseline_client" if variant == "client" else "baseline"]
        w1 = result["w1"][variant]
        assert w1["n"] == result["params"]["n"] and len(w1["rates"]) == result["params"]["runs"]
        assert _positive(w1["median"])
        w2 = result["w2"][variant]
        assert w2["lat_n"] == result["params"]["lat_n"]
        assert _positive(w2["p50_us"]) and w2["p99_us"] >= w2["p50_us"]
        if baseline["available"]:
            assert _positive(w1["ratio_vs_baseline"]) and _positive(w2["p50_ratio_vs_baseline"])
        if variant != "client":  # measured inside the dispatcher process
            assert _positive(w1["dispatcher_cpu_us_per_task"]) and w1["gc"]["share_of_wall"] >= 0
        _every_task_accounted_for(result, variant)
    assert "results checked / done in the dispatcher's count" in proc.stdout

    # The SQLite column: a real journal was used, compared with the in-memory run, and then deleted.
    assert result["w1"]["dispatcher"]["store"] == "memory:"
    sqlite_w1, sqlite_w2 = result["w1"]["dispatcher_sqlite"], result["w2"]["dispatcher_sqlite"]
    assert sqlite_w1["store"].startswith("sqlite:") and sqlite_w1["store"].endswith("journal.sqlite3")
    assert _positive(sqlite_w1["ratio_vs_memory"]) and _positive(sqlite_w2["p50_ratio_vs_memory"])
    assert _positive(sqlite_w1["journal"]["commits"]) and _positive(sqlite_w1["journal"]["rows_written"])
    journal = result["sqlite_journal"]
    assert _positive(journal["bytes_at_end"]) and journal["filesystem"]
    assert not Path(journal["dir"]).exists()
    assert "SQLite" in proc.stdout

    # The PostgreSQL column: a fresh database on a server of its own, compared with the in-memory run.
    pg_w1, pg_w2 = result["w1"]["dispatcher_postgresql"], result["w2"]["dispatcher_postgresql"]
    assert pg_w1["store"].startswith("postgresql://postgres@127.0.0.1:")
    assert _positive(pg_w1["ratio_vs_memory"]) and _positive(pg_w2["p50_ratio_vs_memory"])
    assert _positive(pg_w1["journal"]["commits"]) and _positive(pg_w1["journal"]["rows_written"])
    assert result["postgresql_journal"]["server"] and "PostgreSQL" in proc.stdout
    # Failover on that server: two command-line dispatchers, the leader SIGKILLed, a client served again.
    failover = result["failover"]
    assert failover["lease_ttl_s"] == 2.0 and len(failover["runs"]) == 1
    assert 0 < failover["lease_s_median"] < 60 and 0 < failover["service_s_median"] < 60
    assert "Failover (two dispatchers on PostgreSQL" in proc.stdout

    w3 = result["w3"]
    assert w3["workers"] == result["params"]["w3_workers"]
    assert w3["rounds"] == result["params"]["w3_rounds"]
    assert w3["acks"] == w3["workers"] * w3["rounds"] and w3["stray_acks"] == 0, w3  # once per worker per round
    assert _positive(w3["median_ms"]) and _positive(w3["broadcasts_per_s"])

    w4 = result["w4"]
    assert w4["workers"] == result["params"]["w4_workers"]
    assert w4["tasks"] == result["params"]["w4_tasks"]
    assert w4["rss_idle_kib"] > 0 and w4["rss_queued_kib"] > 0
    # RSS is measured, not modelled: growth is usually positive, but allocator reuse may make a
    # tiny run show none, so only the arithmetic is checked here.
    assert isinstance(w4["per_connection_kib"], float) and isinstance(w4["per_task_bytes"], float)


def test_no_sqlite_skips_the_journal_column(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run("--quick", "--only", "w1", "--no-baseline", "--no-window64", "--no-sqlite", "--no-postgresql",
                "--no-cli-workers", "--json", str(out), timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["w1"]) == {"dispatcher", "client"} and "sqlite_journal" not in result
    assert "postgresql_journal" not in result
    assert _positive(result["w1"]["dispatcher"]["median"])
    assert set(result["tasks"]) == {"dispatcher", "client"}
    for variant in ("dispatcher", "client"):  # W1 alone: no W2 round trips beyond the warm-up
        _every_task_accounted_for(result, variant)


def test_only_selects_workloads(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run("--quick", "--only", "w3", "--json", str(out), timeout=30)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert "w3" in result and "w1" not in result and "w4" not in result
    assert result["baseline"]["available"] is False  # only W1/W2 need the baseline


def test_unknown_workload_is_refused():
    proc = _run("--only", "w9", timeout=30)
    assert proc.returncode == 2
    assert "w9" in proc.stderr


def test_the_harness_refuses_a_wrong_or_missing_result(harness):
    harness.check([1, 2, 3], 0, 3)  # add(i, 1) for i in 0..2
    harness.check([11, 12], 10, 2)
    for results in ([1, 2, 4], [1, 2], [1, 2, 3, 4], [2, 3, 4], []):
        with pytest.raises(AssertionError, match="wrong results"):
            harness.check(results, 0, 3)


def test_the_harness_arithmetic(harness):
    values = [float(v) for v in range(1, 101)]
    assert (harness.percentile(values, 50), harness.percentile(values, 99), harness.percentile(values, 100)) == (
        50.0, 99.0, 100.0)  # nearest rank, as ../shared/bench/common.py computes it
    assert harness.percentile([7.0], 99) == 7.0
    summary = harness.latency_summary([3000, 1000, 2000, 4000])  # nanoseconds
    assert summary == {"lat_n": 4, "p50_us": 2.0, "p99_us": 4.0, "mean_us": 2.5, "max_us": 4.0}
    assert harness.latency_summary([]) == {} and harness.throughput_summary(10, []) == {}
    summary = harness.throughput_summary(1000, [0.5, 2.0, 1.0])
    assert summary["rates"] == [2000.0, 500.0, 1000.0] and summary["median"] == 1000.0 and summary["runs"] == 3


@pytest.mark.postgresql  # starts a server as the tests do
def test_pg_commit_shapes_runs_both_ways_to_the_same_tasks():
    """benchmarks/pg_commit_shapes.py: both ways measured, the change log checkpointed during the run (a
    generation per commit), and it leaves exactly what the direct statements leave (its last chunk queued, the
    one before running, every earlier one forgotten); the script exits 1 if the two differ in any column."""
    script = REPO / "benchmarks" / "pg_commit_shapes.py"
    proc = subprocess.run([sys.executable, str(script), "--tasks", "10", "--commits", "7", "--generation-seconds", "0"],
                          cwd=str(REPO), capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for way in ("tasks", "log"):
        (line,) = [line for line in lines if line.strip().startswith(f"{way}:")]
        figures = {key: float(value) for key, value in
                   (item.rsplit(" ", 1) for item in line.split(":", 1)[1].strip().split(", "))}  # fmt: skip
        assert set(figures) == {"commit_ms_p50", "slice_commit_ms_p50", "checkpoints", "final_checkpoint_ms",
                                "server_cpu_us_per_task", "client_cpu_us_per_task", "wall_us_per_task"}  # fmt: skip
        assert figures["commit_ms_p50"] > 0 and figures["wall_us_per_task"] > 0
        # Checkpoint work only in the change log, during the run (a slice with each commit) and at its end.
        assert (figures["checkpoints"] > 0) is (way == "log")
        assert (figures["slice_commit_ms_p50"] > 0) is (way == "log")
        assert (figures["final_checkpoint_ms"] > 0) is (way == "log")
    assert "left in the tasks table: [('queued', 10), ('running', 10)]" in lines
    assert "both ways left the same 20 tasks, every column alike" in lines
