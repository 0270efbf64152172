"""benchmarks/run.py works end to end: tiny sizes, real processes, sane output.

This never asserts on speed: only that every workload ran, produced positive
numbers and the JSON has the keys docs/PERFORMANCE.md relies on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_quick_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", str(out)],
        cwd=str(REPO), capture_output=True, text=True, timeout=55,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "W1 throughput" in proc.stdout and "W4" in proc.stdout, proc.stdout

    result = json.loads(out.read_text())
    assert {"command", "date", "machine", "params", "baseline", "w1", "w2", "w3", "w4"} <= result.keys()
    machine = result["machine"]
    assert _positive(machine["nproc"])
    assert {"cpu_model", "python", "trio", "trioschedule"} <= machine.keys()
    assert result["params"]["quick"] is True

    # The baseline lives outside the repository (../shared/bench): it may be missing, but then says why.
    baseline = result["baseline"]
    if baseline["available"]:
        assert _positive(baseline["w1_median"]) and _positive(baseline["w2_p50_us"])
    else:
        assert baseline["reason"]

    for variant in ("dispatcher", "client", "dispatcher_window64", "dispatcher_sqlite"):
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

    w3 = result["w3"]
    assert w3["workers"] == result["params"]["w3_workers"]
    assert w3["rounds"] == result["params"]["w3_rounds"]
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
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "w1", "--no-baseline", "--no-window64", "--no-sqlite",
         "--json", str(out)],
        cwd=str(REPO), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["w1"]) == {"dispatcher", "client"} and "sqlite_journal" not in result
    assert _positive(result["w1"]["dispatcher"]["median"])


def test_only_selects_workloads(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "w3", "--json", str(out)],
        cwd=str(REPO), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert "w3" in result and "w1" not in result and "w4" not in result
    assert result["baseline"]["available"] is False  # only W1/W2 need the baseline


def test_unknown_workload_is_refused():
    proc = subprocess.run([sys.executable, str(RUN), "--only", "w9"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "w9" in proc.stderr
