"""Benchmark trioschedule against the same-run baseline (../shared/bench/ceiling_trio.py).

    python benchmarks/run.py [--n 20000 --lat-n 2000 --runs 3 --quick --json PATH --only w1,w2,w3,w4]
                             [--no-baseline --no-window64 --no-sqlite --no-postgresql --wait-quiet SECONDS
                              --profile DIR]

Workloads (docs/PERFORMANCE.md says more):
  W1  throughput: N tasks add(i, 1) on two worker processes; tasks/s = N / (first submit .. last result),
      median of --runs, after an untimed warm-up.
  W2  latency: --lat-n sequential round trips after 20 untimed ones; p50/p99 in microseconds.
      W1 and W2 are each measured with the producer inside the dispatcher process (Dispatcher.map/call,
      like the baseline) and through open_client() in a process of its own (Client.map/call, four hops);
      also in the dispatcher with 64 tasks in flight per worker (--no-window64 skips it) and in the
      dispatcher with the SQLite journal, store="sqlite:<fresh temp dir>/journal.sqlite3" (--no-sqlite),
      and with the PostgreSQL journal, store="postgresql://postgres@127.0.0.1:PORT/<fresh database>" on a
      server this script starts in a temporary directory as the tests do (tests/postgres.py; --no-postgresql).
  Failover (with the PostgreSQL column; --no-failover skips it): two command-line dispatchers on one database,
      the leader SIGKILLed; seconds until the standby holds the lease and until a client is served again
      (benchmarks/failover.py, the default --lease-ttl of 6 s, --failover-runs runs, median reported).
  W3  broadcast: one message to --w3-workers connected workers until every one has acknowledged it
      (Worker.on_message -> Worker.send -> Dispatcher.on_message), --w3-rounds times.
  W4  scale: dispatcher RSS growth per connection (--w4-workers idle workers) and per queued task
      (--w4-tasks tasks for a name no worker offers), read from /proc/<pid>/status.

Prints a table and writes JSON (default benchmarks/results/latest.json).  Every process it starts is
stopped by PID (SIGTERM, then SIGKILL) before it exits.  Speeds are never asserted here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROCS = HERE / "_procs.py"
HOST = "127.0.0.1"
BASELINE = REPO.parent / "shared" / "bench" / "ceiling_trio.py"  # beside the in-dispatcher figures
BASELINE_CLIENT = REPO.parent / "shared" / "bench" / "ceiling_trio_client.py"  # beside the client-path figures
DEFAULT_JSON = HERE / "results" / "latest.json"
WORKLOADS = ("w1", "w2", "w3", "w4")
PARAMS = ("n", "lat_n", "runs", "w3_workers", "w3_rounds", "w3_procs", "w4_workers", "w4_tasks", "w4_procs", "prefetch",
          "quick")  # fmt: skip

FULL = {"n": 20000, "lat_n": 2000, "runs": 3, "w3_workers": 200, "w3_rounds": 20, "w4_workers": 1000,
        "w4_tasks": 100000}  # fmt: skip
QUICK = {"n": 200, "lat_n": 20, "runs": 1, "w3_workers": 10, "w3_rounds": 3, "w4_workers": 20, "w4_tasks": 1000}


BUSY_CPUS = 0.25  # other processes using this much CPU during a step make its figures unreliable


class BenchError(RuntimeError):
    pass


# =============================================================== processes
class Child:
    """A process we started: its stdout lines arrive on a queue, its stderr goes to a file."""

    def __init__(self, name: str, argv: list[str], logdir: str, *, stdin: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.errpath = os.path.join(logdir, f"{name}.stderr")
        self._err = open(self.errpath, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            argv, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=self._err,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True, bufsize=1,
        )  # fmt: skip
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            with open(self.errpath, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def expect(self, word: str, timeout: float, watch: list[Child] = ()) -> str:
        """Wait for a stdout line ``WORD rest``; return ``rest``.  Fails if we or a watched process die."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {word} line within {timeout:g} s\n{self.stderr_tail()}")
            try:
                line = self.lines.get(timeout=min(0.5, left))
            except queue.Empty:
                for other in watch:
                    if other.proc.poll() is not None:
                        raise BenchError(
                            f"{other.name} exited with {other.proc.returncode} while {self.name} waited for {word}\n"
                            f"{other.stderr_tail()}"
                        ) from None
                continue
            if line is None:
                self.proc.wait()
                raise BenchError(f"{self.name} exited with {self.proc.returncode} before {word}\n{self.stderr_tail()}")
            if line == word or line.startswith(word + " "):
                return line[len(word) :].strip()
            print(f"  [{self.name}] {line}", file=sys.stderr)

    def send_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()


def stop(children: list[Child], grace: float = 5.0) -> None:
    """Stop processes we started, by PID: SIGTERM, wait, then SIGKILL."""
    for c in children:
        if c.proc.poll() is None:
            try:
                c.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for c in children:
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
        c._err.close()


def procs_argv(role: str, *args: object) -> list[str]:
    return [sys.executable, str(PROCS), role, *map(str, args)]


def start_workers(children: list[Child], logdir: str, port: int, total: int, procs: int, kind: str,
                  prefetch: int | None) -> list[Child]:  # fmt: skip
    """``total`` Worker instances spread over ``procs`` processes."""
    started = []
    for i in range(procs):
        count = total // procs + (1 if i < total % procs else 0)
        if not count:
            continue
        argv = procs_argv("worker", "--port", port, "--kind", kind, "--count", count)
        if prefetch is not None:
            argv += ["--prefetch", str(prefetch)]
        child = Child(f"worker-{kind}-{i}", argv, logdir)
        children.append(child)
        started.append(child)
    return started


def start_cli_workers(children: list[Child], logdir: str, port: int, count: int) -> list[Child]:
    """``count`` worker processes started as a user would: the command line, every option at its default."""
    started = []
    for i in range(count):
        argv = [sys.executable, "-m", "trioschedule", "worker", f"{PROCS}:AddWorker", "--connect", f"{HOST}:{port}"]
        child = Child(f"worker-cli-{i}", argv, logdir)
        children.append(child)
        started.append(child)
    return started


# =============================================================== PostgreSQL
def scenario_failover(opts: argparse.Namespace, logdir: str, url: str) -> dict:
    """benchmarks/failover.py on the PostgreSQL column's server (docs/HA.md), in a process of its own."""
    runs = opts.failover_runs if opts.failover_runs is not None else (1 if opts.quick else 3)
    lease_ttl = opts.failover_lease_ttl or (2.0 if opts.quick else 6.0)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(HERE / "failover.py"), "--url", url, "--lease-ttl", str(lease_ttl),
                           "--runs", str(runs)], env=env, cwd=logdir, capture_output=True, text=True,
                          timeout=120 + 60 * runs, check=False)  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]
    raise RuntimeError(f"benchmarks/failover.py failed (exit {done.returncode}): {done.stdout[-2000:]}{done.stderr[-3000:]}")


def postgres_module():  # imported only when the column runs
    """tests/postgres.py, which starts a PostgreSQL server in a temporary directory as the tests do."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests import postgres

    return postgres


# =============================================================== scenarios
def scenario_w12(opts: argparse.Namespace, logdir: str, *, via_client: bool, prefetch: int | None = None,
                 label: str = "", sqlite: bool = False, cli_workers: bool = False,
                 postgresql: str | None = None) -> dict:  # fmt: skip
    """W1 and W2 with the producer in the dispatcher or in a client process.

    ``sqlite``: the dispatcher journals to a fresh SQLite file in a temporary directory of its own
    (under ``--sqlite-dir``), deleted once the processes have stopped.  ``cli_workers``: the two
    workers are what a user starts, ``python -m trioschedule worker benchmarks/_procs.py:AddWorker
    --connect ...`` with every default, instead of this harness's worker processes.  ``postgresql``:
    the URL of a fresh database the dispatcher journals to.
    """
    n = opts.n if "w1" in opts.only else 0
    lat_n = opts.lat_n if "w2" in opts.only else 0
    children: list[Child] = []
    timeout = opts.timeout
    tag = label or ("client" if via_client else "dispatcher")
    journal_dir = tempfile.mkdtemp(prefix="trioschedule-bench-journal-", dir=opts.sqlite_dir) if sqlite else None
    try:
        mode = "serve" if via_client else "w12"
        argv = procs_argv("dispatcher", "--mode", mode, "--workers", 2, "--n", n, "--lat-n", lat_n, "--runs", opts.runs)
        if journal_dir is not None:
            argv += ["--store", f"sqlite:{journal_dir}/journal.sqlite3"]
        if postgresql is not None:
            argv += ["--store", postgresql]
        profiling = bool(opts.profile) and not via_client and (label or "dispatcher") == opts.profile_run
        if profiling:
            argv.append("--pause-before-w1")
        disp = Child(f"dispatcher-{tag}", argv, logdir, stdin=profiling)
        children.append(disp)
        port = int(disp.expect("PORT", 30))
        if cli_workers:
            workers = start_cli_workers(children, logdir, port, 2)
        else:
            workers = start_workers(children, logdir, port, 2, 2, "add", prefetch)
        disp.expect("READY", 30, watch=workers)
        if via_client:
            argv = procs_argv("client", "--port", port, "--n", n, "--lat-n", lat_n, "--runs", opts.runs)
            client = Child("client", argv, logdir)
            children.append(client)
            result = json.loads(client.expect("RESULT", timeout, watch=[disp, *workers]))
        else:
            if profiling:
                result = profile_w1(opts, disp, workers[0], timeout)
            else:
                result = json.loads(disp.expect("RESULT", timeout, watch=workers))
        result["dispatcher_pid"] = disp.pid
        result["worker_pids"] = [w.pid for w in workers]
        if postgresql is not None:
            result["journal"] = {"url": postgresql}
        if journal_dir is not None:
            result["journal"] = {"dir": journal_dir, "filesystem": filesystem_of(journal_dir),
                                 "bytes_at_end": dir_bytes(journal_dir)}  # fmt: skip
        return result
    finally:
        stop(children)
        if journal_dir is not None:
            shutil.rmtree(journal_dir, ignore_errors=True)


def dir_bytes(path: str) -> int:
    """Total size of the files in ``path`` (the journal, its -wal, -shm and .lock)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def filesystem_of(path: str) -> str:
    """``type (device)`` of the mount that holds ``path``, from /proc/mounts: fsync costs depend on it."""
    best, found = -1, "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) > best:
                    best, found = len(mnt), f"{fstype} ({dev})"
    except OSError:
        pass
    return found


def profile_w1(opts: argparse.Namespace, disp: Child, worker: Child, timeout: float) -> dict:
    """Sample the dispatcher and one worker with py-spy during the timed W1 runs only."""
    out = Path(opts.profile)
    out.mkdir(parents=True, exist_ok=True)
    disp.expect("PAUSED", 60)
    spies, logs = [], []
    # <who>.txt: every sample in which the process was not idle (Python code and the system calls it
    # makes, including time descheduled inside them); <who>-gil.txt: only samples holding the GIL, that
    # is Python code running on a CPU.
    for who, child in (("dispatcher", disp), ("worker", worker)):
        for suffix, extra in (("", []), ("-gil", ["--gil"])):
            argv = ["py-spy", "record", "--nonblocking", "--format", "raw", "--rate", "200", *extra,
                    "--pid", str(child.pid), "--output", str(out / f"{who}{suffix}.txt")]  # fmt: skip
            logs.append(open(out / f"py-spy-{who}{suffix}.log", "wb"))
            spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=logs[-1]))
    try:
        time.sleep(1.5)  # let py-spy attach
        disp.send_line("go")
        disp.expect("W1-DONE", timeout)
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for spy in spies:
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        for log in logs:
            log.close()
    result = json.loads(disp.expect("RESULT", timeout))
    result["profiled"] = True
    return result


def _stderr_head(child: Child, lines: int) -> str:
    """The first ``lines`` lines a process wrote on stderr (what happened before a W3 round hung)."""
    try:
        with open(child.errpath, "rb") as f:
            text = f.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[:lines])


def scenario_w3(opts: argparse.Namespace, logdir: str) -> dict:
    children: list[Child] = []
    try:
        argv = procs_argv("dispatcher", "--mode", "w3", "--workers", opts.w3_workers, "--rounds", opts.w3_rounds,
                          "--round-timeout", opts.w3_round_timeout)  # fmt: skip
        disp = Child("dispatcher-w3", argv, logdir)
        children.append(disp)
        port = int(disp.expect("PORT", 30))
        workers = start_workers(children, logdir, port, opts.w3_workers, opts.w3_procs, "ack", None)
        try:
            disp.expect("READY", opts.timeout, watch=workers)
            result = json.loads(disp.expect("RESULT", opts.timeout, watch=workers))
        except BenchError as exc:
            # A round that timed out: the dispatcher's report names the workers that did not acknowledge.
            report = disp.stderr_tail(40)
            if "ERROR W3 round" in report:
                tails = "\n".join(f"--- {w.name} stderr (first lines):\n{_stderr_head(w, 15)}" for w in workers)
                first = str(exc).splitlines()[0]
                report = report[report.index("ERROR W3 round") :]
                raise BenchError(f"{first}\n{report}\n{tails}") from None
            raise
        result["worker_processes"] = len(workers)
        return result
    finally:
        stop(children)


def scenario_w4(opts: argparse.Namespace, logdir: str) -> dict:
    children: list[Child] = []
    try:
        procs = min(opts.w4_procs, opts.w4_workers)
        argv = procs_argv("dispatcher", "--mode", "w4", "--workers", opts.w4_workers, "--tasks", opts.w4_tasks,
                          "--worker-procs", procs)  # fmt: skip
        disp = Child("dispatcher-w4", argv, logdir)
        children.append(disp)
        port = int(disp.expect("PORT", 30))
        workers = start_workers(children, logdir, port, opts.w4_workers, procs, "idle", None)
        return json.loads(disp.expect("RESULT", opts.timeout, watch=workers))
    finally:
        stop(children)


def run_baseline(opts: argparse.Namespace, script: Path = BASELINE) -> dict:
    cmd = [sys.executable, str(script), "--n", str(opts.n), "--lat-n", str(opts.lat_n), "--runs", str(opts.runs)]
    if not script.is_file():
        return {"available": False, "reason": f"{script} not found"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=opts.timeout, cwd=str(script.parent))
    except subprocess.TimeoutExpired:
        return {"available": False, "reason": f"timed out after {opts.timeout:g} s", "command": shlex.join(cmd)}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["available"] = True
            result["command"] = shlex.join(cmd)
            return result
    return {"available": False, "reason": f"exit {proc.returncode}, no RESULT line: {proc.stderr[-500:]}",
            "command": shlex.join(cmd)}  # fmt: skip


# ============================================================ machine load
class CpuMeter:
    """How much CPU processes other than ours used while a step ran (this machine may be shared).

    Busy time from /proc/stat minus the CPU time of this process and every child it has waited for
    (all the benchmark's processes, py-spy included), divided by wall time: in CPUs (2.0 = two busy cores).
    """

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.t0, self.busy0, self.steal0, self.ours0 = time.monotonic(), *self._busy(), self._ours()

    def _busy(self) -> tuple[float, float]:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return 0.0, 0.0
        user, nice, system, _idle, _iowait, irq, softirq = v[:7]
        steal = v[7] if len(v) > 7 else 0
        return (user + nice + system + irq + softirq) / self.tick, steal / self.tick

    @staticmethod
    def _ours() -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            r = resource.getrusage(who)
            total += r.ru_utime + r.ru_stime
        return total

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        busy, steal = self._busy()
        ours = self._ours() - self.ours0
        other = max(0.0, busy - self.busy0 - ours)
        return {"wall_s": round(wall, 2), "our_cpus": round(ours / wall, 2), "other_cpus": round(other / wall, 2),
                "steal_cpus": round((steal - self.steal0) / wall, 2)}  # fmt: skip


# ================================================================= reports
def wait_quiet(limit: float) -> bool:
    """Wait (up to ``limit`` seconds) until other processes have used < BUSY_CPUS for 3 s in a row."""
    deadline = time.monotonic() + limit
    calm = 0
    while time.monotonic() < deadline:
        meter = CpuMeter()
        time.sleep(1.0)
        calm = calm + 1 if meter.stop()["other_cpus"] < BUSY_CPUS else 0
        if calm >= 3:
            return True
    print(f"- the machine stayed busy for {limit:g} s; measuring anyway", file=sys.stderr)
    return False


def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import trio

    import trioschedule

    try:
        def git(*a: str) -> str:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "trioschedule"))
    except OSError:
        commit, dirty = "", False
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "trio": trio.__version__,
        "trioschedule": trioschedule.__version__,
        "git_commit": commit + ("+dirty" if dirty else ""),
        "loadavg_at_start": list(os.getloadavg()),
    }


def ratio(ours: float | None, base: float | None) -> float | None:
    if not ours or not base:
        return None
    return ours / base


def assemble(opts: argparse.Namespace, raw: dict, machine: dict, started: float, command: str) -> dict:
    base = raw.get("baseline") or {"available": False, "reason": "not run"}
    base_client = raw.get("baseline_client") or {"available": False, "reason": "not run"}

    def baseline_of(key: str) -> tuple[float | None, float | None]:
        """(W1, W2 p50) of the baseline a column is compared with: the client path's for the client column."""
        b = base_client if key == "client" else base
        return (b.get("w1_median"), b.get("w2_p50_us")) if b.get("available") else (None, None)

    out: dict = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine,
        "params": {k: getattr(opts, k) for k in PARAMS},
        "only": sorted(opts.only),
        "profiled": bool(opts.profile),
        "profile_run": opts.profile_run if opts.profile else None,
        "loadavg_at_end": list(os.getloadavg()),
        "baseline": base,
        "baseline_client": base_client,
    }
    variants = [("dispatcher", raw.get("w12_dispatcher")), ("client", raw.get("w12_client")),
                ("dispatcher_window64", raw.get("w12_window64")),
                ("dispatcher_sqlite", raw.get("w12_sqlite")),
                ("dispatcher_postgresql", raw.get("w12_postgresql")),
                ("dispatcher_cli_workers", raw.get("w12_cli_workers"))]  # fmt: skip
    memory = raw.get("w12_dispatcher") or {}  # the SQLite column is also compared with this one
    if "w1" in opts.only:
        out["w1"] = {}
        for key, res in variants:
            if res and res.get("w1"):
                w1 = dict(res["w1"])
                w1["api"] = res.get("api")
                w1["store"] = res.get("store")
                w1["ratio_vs_baseline"] = ratio(w1["median"], baseline_of(key)[0])
                if key in ("dispatcher_sqlite", "dispatcher_postgresql"):
                    w1["ratio_vs_memory"] = ratio(w1["median"], (memory.get("w1") or {}).get("median"))
                out["w1"][key] = w1
    if "w2" in opts.only:
        out["w2"] = {}
        for key, res in variants:
            if res and res.get("w2"):
                w2 = dict(res["w2"])
                w2["api"] = res.get("api")
                w2["store"] = res.get("store")
                w2["p50_ratio_vs_baseline"] = ratio(w2["p50_us"], baseline_of(key)[1])
                if key in ("dispatcher_sqlite", "dispatcher_postgresql"):
                    w2["p50_ratio_vs_memory"] = ratio(w2["p50_us"], (memory.get("w2") or {}).get("p50_us"))
                out["w2"][key] = w2
    # Per W1/W2 column: tasks submitted, results checked by the producer, outcomes counted by the dispatcher.
    tasks = {key: res["tasks"] for key, res in variants if res and res.get("tasks")}
    if tasks:
        out["tasks"] = tasks
    if raw.get("w12_sqlite"):
        out["sqlite_journal"] = raw["w12_sqlite"].get("journal")
    if raw.get("w12_postgresql"):
        out["postgresql_journal"] = raw["w12_postgresql"].get("journal")
    if "w3" in opts.only:
        out["w3"] = raw.get("w3")
    if "w4" in opts.only:
        out["w4"] = raw.get("w4")
    if raw.get("w12_window64"):
        out["window64_prefetch"] = opts.window64_prefetch
    return out


def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def table(r: dict) -> str:
    m = r["machine"]
    p = r["params"]
    max_other = max((v["other_cpus"] for v in (r.get("other_load") or {}).values()), default=0.0)
    lines = [
        f"trioschedule benchmarks, {r['date']}",
        f"machine: {m['cpu_model'] or '?'}, {m['nproc']} CPU(s); Python {m['python']}, trio {m['trio']}, "
        f"trioschedule {m['trioschedule']} ({m['git_commit'] or 'no git'})",
        f"command: {r['command']}",
        f"other processes' CPU use during the steps: at most {max_other:.2f} CPUs"
        + (f" (after waiting {r['waited_for_quiet']['seconds']:.0f} s for a quiet machine)"
           if r.get("waited_for_quiet") else ""),  # fmt: skip
        "",
    ]
    bases = []  # (title, W1, p50, p99) of each baseline that ran
    for key, title in (("baseline", "baseline"), ("baseline_client", "client base.")):
        b = r.get(key) or {}
        if b.get("available"):
            bases.append((title, b["w1_median"], b["w2_p50_us"], b["w2_p99_us"]))
        else:
            lines.append(f"{title} unavailable: {b.get('reason')}")
    cols = [("dispatcher", "in dispatcher"), ("client", "via client"), ("dispatcher_window64", "in disp., window 64"),
            ("dispatcher_sqlite", "in disp., SQLite"), ("dispatcher_postgresql", "in disp., PostgreSQL"),
            ("dispatcher_cli_workers", "in disp., CLI workers")]  # fmt: skip
    w1, w2 = r.get("w1") or {}, r.get("w2") or {}
    present = [(k, t) for k, t in cols if k in w1 or k in w2]
    if present:
        head = f"{'':34}" + "".join(f"{t:>13}" for t, *_ in bases) + "".join(f"{t:>22}" for _, t in present)
        lines += [head, "-" * len(head)]
        if w1:
            row = f"{'W1 throughput, tasks/s (median)':34}" + "".join(f"{fmt(b[1]):>13}" for b in bases)
            for k, _ in present:
                e = w1.get(k)
                row += f"{(fmt(e['median']) + ' (' + fmt(e['ratio_vs_baseline'], '.2f') + 'x)') if e else '-':>22}"
            lines.append(row)
            row = f"{'  dispatcher CPU per task, us':34}" + " " * 13 * len(bases)
            for k, _ in present:
                e = w1.get(k) or {}
                cpu, share = e.get("dispatcher_cpu_us_per_task"), e.get("dispatcher_cpu_share")
                row += f"{(fmt(cpu, '.1f') + ' (' + fmt(share, '.2f') + ' CPU)') if cpu else '-':>22}"
            lines.append(row)
            row = f"{'  dispatcher GC, % of W1 time':34}" + " " * 13 * len(bases)
            for k, _ in present:
                gc = (w1.get(k) or {}).get("gc")
                row += f"{fmt(100 * gc['share_of_wall'], '.1f') if gc else '-':>22}"
            lines.append(row)
        if w2:
            row = f"{'W2 latency p50, us':34}" + "".join(f"{fmt(b[2]):>13}" for b in bases)
            for k, _ in present:
                e = w2.get(k)
                row += f"{(fmt(e['p50_us']) + ' (' + fmt(e['p50_ratio_vs_baseline'], '.2f') + 'x)') if e else '-':>22}"
            lines.append(row)
            row = f"{'W2 latency p99, us':34}" + "".join(f"{fmt(b[3]):>13}" for b in bases)
            for k, _ in present:
                e = w2.get(k)
                row += f"{fmt(e['p99_us']) if e else '-':>22}"
            lines.append(row)
        lines.append(f"(W1 N={p['n']}, runs={p['runs']}; W2 {p['lat_n']} round trips; ratio = ours / baseline: "
                     "W1 higher is better, W2 lower is better; 'via client' is compared with the client-path "
                     "baseline ceiling_trio_client.py, every other column with ceiling_trio.py)")  # fmt: skip
        counts = r.get("tasks") or {}
        if counts:
            lines.append("(results checked / done in the dispatcher's count, warm-up included: "
                         + ", ".join(f"{t} {counts[k]['checked']:,}/{counts[k]['done']:,}" for k, t in present
                                     if k in counts) + ")")  # fmt: skip
        if "dispatcher_window64" in w1:
            lines.append(f"(window 64 = Worker(prefetch={r.get('window64_prefetch')}): 64 tasks in flight per worker, "
                         "as in the baseline; "
                         "the other columns use " + ("Worker defaults)" if p.get("prefetch") is None
                                                     else f"Worker(prefetch={p['prefetch']}))"))  # fmt: skip
        if "dispatcher_sqlite" in w1 or "dispatcher_sqlite" in w2:
            j = r.get("sqlite_journal") or {}
            vs = []
            if (w1.get("dispatcher_sqlite") or {}).get("ratio_vs_memory"):
                vs.append(f"W1 {w1['dispatcher_sqlite']['ratio_vs_memory']:.2f}x")
            if (w2.get("dispatcher_sqlite") or {}).get("p50_ratio_vs_memory"):
                vs.append(f"W2 p50 {w2['dispatcher_sqlite']['p50_ratio_vs_memory']:.2f}x")
            journal = (w1.get("dispatcher_sqlite") or {}).get("journal")
            lines.append(
                "(SQLite = Dispatcher(store='sqlite:<temp>/journal.sqlite3') on " + j.get("filesystem", "?")
                + ", same workers as 'in dispatcher'; vs the in-memory 'in dispatcher' of this run: "
                + (", ".join(vs) or "-")
                + (f"; W1 journal: {journal['commits']:,} commits, {journal['per_commit_rows']:,.0f} rows per commit"
                   if journal else "") + ")"
            )  # fmt: skip
        if "dispatcher_postgresql" in w1 or "dispatcher_postgresql" in w2:
            j = r.get("postgresql_journal") or {}
            vs = []
            if (w1.get("dispatcher_postgresql") or {}).get("ratio_vs_memory"):
                vs.append(f"W1 {w1['dispatcher_postgresql']['ratio_vs_memory']:.2f}x")
            if (w2.get("dispatcher_postgresql") or {}).get("p50_ratio_vs_memory"):
                vs.append(f"W2 p50 {w2['dispatcher_postgresql']['p50_ratio_vs_memory']:.2f}x")
            journal = (w1.get("dispatcher_postgresql") or {}).get("journal")
            lines.append(
                f"(PostgreSQL = Dispatcher(store='postgresql://...') on PostgreSQL {j.get('server', '?')} on this "
                "machine, started by this script, synchronous_commit on; vs the in-memory 'in dispatcher' of this "
                "run: " + (", ".join(vs) or "-")
                + (f"; W1 journal: {journal['commits']:,} commits, {journal['per_commit_rows']:,.0f} rows per commit"
                   if journal else "") + ")"
            )  # fmt: skip
    if r.get("postgresql_unavailable"):
        lines.append(f"PostgreSQL column unavailable: {r['postgresql_unavailable']}")
    if r.get("failover"):
        f = r["failover"]
        lines.append(
            f"Failover (two dispatchers on PostgreSQL, lease {f['lease_ttl_s']:g} s, leader SIGKILLed, "
            f"{len(f['runs'])} runs): the standby holds the lease after {f['lease_s_median']:.2f} s, a client is "
            f"served again after {f['service_s_median']:.2f} s (median; max {f['service_s_max']:.2f} s; "
            f"docs/HA.md bound {f['bound_s']:g} s plus recovery)"
        )
    if r.get("w3"):
        w3 = r["w3"]
        lines.append(
            f"W3 broadcast to {w3['workers']} workers ({w3['worker_processes']} processes), until all acked: "
            f"median {w3['median_ms']:.1f} ms/round, max {w3['max_ms']:.1f} ms, "
            f"{w3['broadcasts_per_s']:.1f} broadcasts/s "
            f"({w3['acks_per_s']:,.0f} acks/s, {w3['rounds']} rounds)"
        )
    if r.get("w4"):
        w4 = r["w4"]
        lines.append(
            f"W4 {w4['workers']} idle workers ({w4['worker_processes']} processes), {w4['tasks']:,} queued tasks: "
            f"{w4['per_connection_kib']:.1f} KiB RSS per connection, {w4['per_task_bytes']:,.0f} bytes per queued task"
        )
        lines.append(
            f"   dispatcher RSS {w4['rss_idle_kib'] / 1024:.1f} MiB idle -> "
            f"{w4['rss_connected_kib'] / 1024:.1f} MiB connected "
            f"-> {w4['rss_queued_kib'] / 1024:.1f} MiB queued; connect {w4['connect_seconds']:.1f} s, "
            f"queueing {w4['submit_seconds']:.2f} s ({w4['tasks'] / w4['submit_seconds']:,.0f} submit_nowait/s)"
        )
    busy = {k: v["other_cpus"] for k, v in (r.get("other_load") or {}).items() if v["other_cpus"] >= BUSY_CPUS}
    if busy:
        steps = ", ".join(f"{k} ({v:.2f} CPUs)" for k, v in busy.items())
        lines.append(f"WARNING: other processes were using CPU during {steps}: "
                     "those figures (and their ratios) are not reliable")  # fmt: skip
    if r.get("profiled"):
        lines.append(f"NOTE: the {r.get('profile_run', 'dispatcher')} W1/W2 column ran under py-spy (--profile): "
                     "do not compare its figures")  # fmt: skip
    lines.append(f"total {r['seconds']:.0f} s")
    return "\n".join(lines)


# ==================================================================== main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Full defaults: " + json.dumps(FULL))
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test: " + json.dumps(QUICK))
    p.add_argument("--n", type=int, help="W1 task count (20000)")
    p.add_argument("--lat-n", type=int, help="W2 round trips (2000)")
    p.add_argument("--runs", type=int, help="W1 repetitions, median reported (3)")
    p.add_argument("--w3-workers", type=int, help="W3 connected workers (200)")
    p.add_argument("--w3-rounds", type=int, help="W3 timed broadcasts (20)")
    p.add_argument("--w3-procs", type=int, default=2, help="processes the W3 workers are spread over (2)")
    p.add_argument("--w3-round-timeout", type=float, default=None,
                   help="seconds a W3 round may wait for every acknowledgement before failing with a report of "
                        "the workers that did not answer (20; quick 10)")  # fmt: skip
    p.add_argument("--w4-workers", type=int, help="W4 idle connected workers (1000)")
    p.add_argument("--w4-tasks", type=int, help="W4 queued tasks (100000)")
    p.add_argument("--w4-procs", type=int, default=4, help="processes the W4 workers are spread over (4)")
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated subset of w1,w2,w3,w4")
    p.add_argument("--no-baseline", action="store_true", help="skip the same-run baseline")
    p.add_argument("--no-window64", action="store_true",
                   help="skip the extra W1/W2 run with 64 tasks in flight per worker (the baseline's window)")
    p.add_argument("--window64-prefetch", type=int, default=63, help=argparse.SUPPRESS)
    p.add_argument("--no-cli-workers", action="store_true",
                   help="skip the extra W1/W2 run in the dispatcher with two workers started from the command line "
                        "with every default (python -m trioschedule worker ...)")  # fmt: skip
    p.add_argument("--no-sqlite", action="store_true",
                   help="skip the extra W1/W2 run in the dispatcher with the SQLite journal")
    p.add_argument("--no-failover", action="store_true",
                   help="skip the failover measurement that follows the PostgreSQL column")
    p.add_argument("--failover-runs", type=int, default=None, help="failover runs, median reported (3; quick 1)")
    p.add_argument("--failover-lease-ttl", type=float, default=None, metavar="S",
                   help="the dispatchers' --lease-ttl in the failover runs (default 6, the default; quick 2)")
    p.add_argument("--no-postgresql", action="store_true",
                   help="skip the extra W1/W2 run in the dispatcher with the PostgreSQL journal (a server started "
                        "in a temporary directory, as the tests do)")  # fmt: skip
    p.add_argument("--sqlite-dir", default=None, metavar="DIR",
                   help="where the SQLite run's temporary journal directory goes (default: the system temp dir; "
                        "its filesystem decides what an fsync costs)")  # fmt: skip
    p.add_argument("--prefetch", type=int, default=None,
                   help="Worker(prefetch=...) for the W1/W2 workers (default: the Worker default)")
    p.add_argument("--json", default=str(DEFAULT_JSON),
                   help=f"where to write the results ({DEFAULT_JSON.relative_to(REPO)})")  # fmt: skip
    p.add_argument("--timeout", type=float, default=None, help="seconds per scenario before giving up (300; quick 60)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS for other processes to leave the CPUs idle (shared machines)")
    p.add_argument("--profile", metavar="DIR",
                   help="sample the dispatcher and one worker with py-spy during the in-dispatcher W1 runs; "
                        "raw stacks and a summary go to DIR")  # fmt: skip
    p.add_argument("--profile-run", choices=["dispatcher", "sqlite", "postgresql", "window64"], default="dispatcher",
                   help="which in-dispatcher W1 run --profile samples: the plain one (default), the SQLite "
                        "journal's, or window 64's")  # fmt: skip
    opts = p.parse_args(argv)
    sizes = QUICK if opts.quick else FULL
    for key, value in sizes.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    if opts.timeout is None:
        opts.timeout = 60.0 if opts.quick else 300.0
    if opts.w3_round_timeout is None:
        opts.w3_round_timeout = 10.0 if opts.quick else 20.0
    opts.only = {w.strip().lower() for w in opts.only.split(",") if w.strip()}
    if opts.profile and not shutil.which("py-spy"):
        p.error("--profile needs py-spy on PATH (pip install py-spy)")
    if opts.profile and ((opts.profile_run == "sqlite" and opts.no_sqlite)
                         or (opts.profile_run == "postgresql" and opts.no_postgresql)
                         or (opts.profile_run == "window64" and opts.no_window64)):  # fmt: skip
        p.error(f"--profile-run {opts.profile_run} needs that run: drop --no-{opts.profile_run}")
    unknown = opts.only - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workload(s) in --only: {', '.join(sorted(unknown))}")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # so that every finally: stops its processes

    signal.signal(signal.SIGTERM, on_sigterm)
    command = shlex.join(["python", os.path.relpath(__file__, REPO) if Path.cwd() == REPO else __file__,
                          *(sys.argv[1:] if argv is None else argv)])  # fmt: skip
    machine = machine_info()
    raw: dict = {}
    load: dict = {}
    waited: dict = {}
    with tempfile.TemporaryDirectory(prefix="trioschedule-bench-") as logdir:

        def step(key: str, what: str, fn, *a, **kw) -> None:
            print(f"- {what} ...", file=sys.stderr, flush=True)
            meter = CpuMeter()
            raw[key] = fn(*a, **kw)
            load[key] = meter.stop()
            print(f"  done in {load[key]['wall_s']:.1f} s; other processes used {load[key]['other_cpus']:.2f} CPUs",
                  file=sys.stderr, flush=True)  # fmt: skip

        if opts.wait_quiet:
            t0 = time.monotonic()
            quiet = wait_quiet(opts.wait_quiet)
            waited = {"seconds": round(time.monotonic() - t0, 1), "quiet": quiet}
            started = time.monotonic()

        w12 = bool(opts.only & {"w1", "w2"})
        if w12 and not opts.no_baseline:
            step("baseline", f"baseline {BASELINE.name}", run_baseline, opts)
        if w12:
            step("w12_dispatcher", "W1/W2 producer in the dispatcher", scenario_w12, opts, logdir, via_client=False,
                 prefetch=opts.prefetch)  # fmt: skip
            if not opts.no_sqlite:  # right after the in-memory run it is compared with
                step("w12_sqlite", "W1/W2 in the dispatcher, SQLite journal", scenario_w12, opts, logdir,
                     via_client=False, prefetch=opts.prefetch, label="sqlite", sqlite=True)  # fmt: skip
            if not opts.no_postgresql:  # also right after it, on a fresh database of a server of its own
                pg = postgres_module()
                try:
                    with pg.running_server() as server:
                        step("w12_postgresql", "W1/W2 in the dispatcher, PostgreSQL journal", scenario_w12, opts,
                             logdir, via_client=False, prefetch=opts.prefetch, label="postgresql",
                             postgresql=server.database())  # fmt: skip
                        raw["postgresql_server"] = server.version()
                        if not opts.no_failover:
                            step("failover", "failover: two dispatchers on PostgreSQL, the leader SIGKILLed",
                                 scenario_failover, opts, logdir, server.database())  # fmt: skip
                except pg.PostgresUnavailable as exc:
                    print(f"  PostgreSQL column skipped: {exc}", file=sys.stderr, flush=True)
                    raw["postgresql_unavailable"] = str(exc).splitlines()[0]
            if not opts.no_baseline:  # right before the client column it is compared with
                step("baseline_client", f"baseline {BASELINE_CLIENT.name}", run_baseline, opts, BASELINE_CLIENT)
            step("w12_client", "W1/W2 through open_client", scenario_w12, opts, logdir, via_client=True,
                 prefetch=opts.prefetch)  # fmt: skip
            if not opts.no_cli_workers:
                step("w12_cli_workers", "W1/W2 in the dispatcher, two command-line workers", scenario_w12, opts,
                     logdir, via_client=False, label="cli-workers", cli_workers=True)  # fmt: skip
            if not opts.no_window64:
                step("w12_window64", f"W1/W2 in the dispatcher, prefetch={opts.window64_prefetch}", scenario_w12, opts,
                     logdir, via_client=False, prefetch=opts.window64_prefetch, label="window64")  # fmt: skip
        if "w3" in opts.only:
            step("w3", f"W3 broadcast to {opts.w3_workers} workers", scenario_w3, opts, logdir)
        if "w4" in opts.only:
            step("w4", f"W4 {opts.w4_workers} workers, {opts.w4_tasks} queued tasks", scenario_w4, opts, logdir)

    result = assemble(opts, raw, machine, started, command)
    if raw.get("postgresql_unavailable"):
        result["postgresql_unavailable"] = raw["postgresql_unavailable"]
    if raw.get("postgresql_server") and result.get("postgresql_journal") is not None:
        result["postgresql_journal"]["server"] = raw["postgresql_server"]
    if raw.get("failover"):
        result["failover"] = raw["failover"]
    result["other_load"] = load
    if waited:
        result["waited_for_quiet"] = waited
    print(table(result))
    path = Path(opts.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    if opts.profile:
        from profile_summary import summarize  # type: ignore[import-not-found]

        for who in ("dispatcher", "worker", "dispatcher-gil", "worker-gil"):
            raw_path = Path(opts.profile) / f"{who}.txt"
            if raw_path.is_file():
                text = summarize(raw_path, top=15)
                (Path(opts.profile) / f"{who}-summary.txt").write_text(text)
                what = "holding the GIL" if who.endswith("-gil") else "not idle"
                print(f"\n== py-spy, {who.split('-')[0]}, samples {what}, during W1 of the {opts.profile_run} run "
                      f"({raw_path})\n{text}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
