"""The processes that benchmarks/run.py starts: a dispatcher, workers and a client.

Run as ``python benchmarks/_procs.py ROLE [options]``; run.py does that, never
a person.  Every process talks to run.py through single lines on stdout:

    PORT <n>          the dispatcher is listening on 127.0.0.1:<n>
    READY             the dispatcher sees all the workers it waits for
    PAUSED            (profiling only) waiting for a line on stdin before W1
    W1-DONE           (profiling only) the timed W1 runs are over
    RESULT <json>     the measurements; the process exits right after

Roles:
    dispatcher --mode w12    producer inside the dispatcher: Dispatcher.map (W1) and .call (W2)
                             (--store sqlite:PATH: the same with the SQLite journal)
    dispatcher --mode serve  a plain dispatcher for the client role (prints READY, serves until killed)
    dispatcher --mode w3     broadcast to every worker until all acknowledged, --rounds times; a round
                             not acknowledged within --round-timeout exits 3 with a report on stderr
    dispatcher --mode w4     RSS of this process: idle, with --workers connections, then + --tasks queued
    worker --kind add|ack|idle --count K   K Worker instances in this one process
    client                   open_client(): Client.map (W1) and Client.call (W2)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import trio
import trio.lowlevel

from trioschedule import Dispatcher, Worker, open_client, task

HOST = "127.0.0.1"
WARMUP = 200  # untimed W1 tasks before the timed runs (as the baseline does)
LAT_WARMUP = 20  # untimed W2 round trips before the measured ones (as the baseline does)
NOBODY = "w4_no_worker_offers_this"  # W4 queues tasks under this name: they stay queued


def say(line: str) -> None:
    print(line, flush=True)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib() -> int:
    """VmRSS of this process, from /proc/<pid>/status, in KiB (after a full collection)."""
    gc.collect()
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS line in /proc/<pid>/status")


def percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile, as ../shared/bench/common.py computes it."""
    import math

    k = max(1, math.ceil(q / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def check(results: list, start: int, n: int) -> None:
    if len(results) != n or any(r != start + i + 1 for i, r in enumerate(results)):
        raise AssertionError(f"wrong results (len {len(results)}, expected {n})")


def task_counts(args: argparse.Namespace, timed_runs: int, checked: int, status: dict) -> dict:
    """W1/W2: what the producer submitted and verified, beside what the dispatcher counted (its status)."""
    warmup = WARMUP + (LAT_WARMUP if args.lat_n else 0)
    submitted = warmup + timed_runs * args.n + args.lat_n
    return {"submitted": submitted, "checked": checked, "warmup": warmup, **status["tasks"]}


def latency_summary(lat_ns: list[int]) -> dict:
    if not lat_ns:
        return {}
    us = sorted(v / 1000.0 for v in lat_ns)
    return {
        "lat_n": len(us),
        "p50_us": percentile(us, 50),
        "p99_us": percentile(us, 99),
        "mean_us": statistics.fmean(us),
        "max_us": us[-1],
    }


def throughput_summary(n: int, seconds: list[float]) -> dict:
    if not seconds:
        return {}
    rates = [n / s for s in seconds]
    return {"n": n, "runs": len(seconds), "seconds": seconds, "rates": rates, "median": statistics.median(rates)}


# ================================================================= workers
class AddWorker(Worker):
    """W1/W2: the task every system runs."""

    @task
    async def add(self, a, b):
        return a + b


class AckWorker(AddWorker):
    """W3: acknowledge every broadcast back to the dispatcher."""

    async def on_message(self, message):
        await self.send({"ack": message["round"], "name": self.name})


KINDS = {"add": AddWorker, "ack": AckWorker, "idle": AddWorker}


async def run_workers(args: argparse.Namespace) -> None:
    cls = KINDS[args.kind]
    options = {}
    if args.prefetch is not None:
        options["prefetch"] = args.prefetch
    async with trio.open_nursery() as nursery:
        for i in range(args.count):
            name = f"bench-{args.kind}-{os.getpid()}-{i}"
            worker = cls(HOST, args.port, concurrency=args.concurrency, name=name, **options)
            nursery.start_soon(worker.run)
            if args.count > 50 and i % 50 == 49:
                await trio.lowlevel.checkpoint()  # let the first connections proceed while the rest start


# ============================================================== dispatcher
class BenchDispatcher(Dispatcher):
    """Collects W3 acknowledgements in on_message: per worker, so a round knows who is missing."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.round = -1
        self.waiting: set[str] = set()  # workers of this round that have not acknowledged it yet
        self.acks = 0
        self.stray: list[str] = []  # acknowledgements that matched no worker we wait for (diagnostics)
        self.stray_count = 0  # all rounds: an acknowledgement twice, or from a worker not broadcast to
        self.all_acked = trio.Event()

    def start_round(self, r: int, names: set[str]) -> None:
        self.round, self.waiting, self.acks, self.stray, self.all_acked = r, set(names), 0, [], trio.Event()

    async def on_message(self, peer, message):
        if isinstance(message, dict) and message.get("ack") == self.round:
            name = message.get("name", peer.name)
            if name in self.waiting:
                self.waiting.discard(name)
                self.acks += 1
                if not self.waiting:
                    self.all_acked.set()
            else:
                self.stray_count += 1
                if len(self.stray) < 20:
                    self.stray.append(name)


async def wait_workers(disp: Dispatcher, count: int) -> float:
    t0 = time.perf_counter()
    await disp.wait_workers(count)
    return time.perf_counter() - t0


class GcMeter:
    """Count the cyclic garbage collector's runs and the time they take (gc.callbacks)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = 0.0
        self.longest = 0.0
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            dt = time.perf_counter() - self._t0
            self.count[info["generation"]] += 1
            self.seconds += dt
            self.longest = max(self.longest, dt)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def summary(self, wall: float) -> dict:
        return {"collections": self.count, "seconds": self.seconds,
                "share_of_wall": self.seconds / wall if wall else 0.0, "longest_ms": self.longest * 1e3}  # fmt: skip


def journal_stats(disp: Dispatcher) -> dict | None:
    """The SQLite journal's counters (None for the in-memory store)."""
    stats = getattr(disp.store, "statistics", None)
    if stats is None:
        return None
    st = stats()
    return {"commits": st.commits, "rows_written": st.rows_written, "rows_deleted": st.rows_deleted}


async def mode_w12(disp: Dispatcher, args: argparse.Namespace) -> dict:
    await wait_workers(disp, args.workers)
    say("READY")
    check(await disp.map("add", [(i, 1) for i in range(WARMUP)]), 0, WARMUP)
    checked = WARMUP
    if args.pause_before_w1:
        say("PAUSED")
        await trio.to_thread.run_sync(sys.stdin.readline)
    before_w1 = journal_stats(disp)
    w1 = []
    gc_meter = GcMeter()
    cpu = 0.0
    for _ in range(args.runs if args.n else 0):
        c0, t0 = time.process_time(), time.perf_counter()
        res = await disp.map("add", [(i, 1) for i in range(args.n)])
        w1.append(time.perf_counter() - t0)
        cpu += time.process_time() - c0
        check(res, 0, args.n)
        checked += len(res)
    gc_meter.stop()
    after_w1 = journal_stats(disp)
    if args.pause_before_w1:
        say("W1-DONE")
    lat = []
    for i in range(LAT_WARMUP + args.lat_n if args.lat_n else 0):
        t0 = time.perf_counter_ns()
        r = await disp.call("add", i, 1)
        dt = time.perf_counter_ns() - t0
        assert r == i + 1, r
        checked += 1
        if i >= LAT_WARMUP:
            lat.append(dt)
    result = {"api": "Dispatcher.map / Dispatcher.call", "store": disp.store.url,
              "w1": throughput_summary(args.n, w1), "w2": latency_summary(lat),
              "tasks": task_counts(args, len(w1), checked, disp.status())}  # fmt: skip
    if w1:
        # Where the dispatcher process's time went during the timed W1 runs (all its threads).
        result["w1"]["dispatcher_cpu_us_per_task"] = cpu / (len(w1) * args.n) * 1e6
        result["w1"]["dispatcher_cpu_share"] = cpu / sum(w1)  # 1.0 = one core busy for the whole time
        result["w1"]["gc"] = gc_meter.summary(sum(w1))
    if before_w1 is not None and after_w1 is not None:
        # The journal's own counters over the timed W1 runs: how much group commit grouped.
        result["w1"]["journal"] = {k: after_w1[k] - before_w1[k] for k in ("commits", "rows_written", "rows_deleted")}
        result["w1"]["journal"]["per_commit_rows"] = result["w1"]["journal"]["rows_written"] / max(
            1, result["w1"]["journal"]["commits"])
    return result


async def mode_serve(disp: Dispatcher, args: argparse.Namespace) -> None:
    await wait_workers(disp, args.workers)
    say("READY")
    await trio.sleep_forever()


class RoundTimeout(Exception):
    """A W3 round was not acknowledged by every worker within --round-timeout."""


def _w3_connections(disp: Dispatcher) -> dict[str, tuple]:
    """Worker name -> (session id, connection, peer) for every session the dispatcher holds now."""
    return {s.peer.name: (s.id, s.conn, s.peer) for s in disp._core.sessions.values()}


def _w3_report(disp: BenchDispatcher, r: int, timeout: float, at_start: dict[str, tuple], round_t0: float) -> str:
    """What the dispatcher knows about the workers that did not acknowledge round ``r``."""
    now_trio = trio.current_time()
    now = _w3_connections(disp)
    missing = sorted(disp.waiting)
    header = (
        f"W3 round {r}: {len(missing)} of {len(at_start)} workers did not acknowledge within {timeout:g} s "
        f"({disp.acks} acknowledged; hook errors in the dispatcher: {disp._hooks.errors}; "
        f"stray acks: {disp.stray[:5]}; sessions now: {len(now)}, connected {len(disp.workers)})"
    )
    lines = [header]
    for name in missing[:20]:
        sid0, conn0, _ = at_start.get(name, (None, None, None))
        sid, conn, peer = now.get(name, (None, None, None))
        facts = [f"session {'gone' if sid is None else ('same' if sid == sid0 else 'NEW ' + sid[:8])}"]
        if conn is None:
            facts.append("not connected now")
        else:
            facts.append("same connection" if conn is conn0 else "RECONNECTED since the broadcast")
            facts.append(f"connected {time.time() - peer.connected_at:.1f} s ago")
        if conn0 is not None:
            facts.append(f"broadcast connection: closed={conn0.closed_reason!r}, outbox {conn0._outbox_bytes} B "
                         f"in {len(conn0._outbox)} frames, writing={conn0._writing}, "
                         f"last_received {now_trio - conn0.last_received:.1f} s ago, "
                         f"last_sent {now_trio - conn0.last_sent:.1f} s ago, protocol {conn0.protocol.state}")  # fmt: skip
        if conn is not None and conn is not conn0:
            facts.append(f"current connection: outbox {conn._outbox_bytes} B, "
                         f"last_received {now_trio - conn.last_received:.1f} s ago")  # fmt: skip
        lines.append(f"  {name}: " + "; ".join(facts))
    if len(missing) > 20:
        lines.append(f"  ... and {len(missing) - 20} more")
    lines.append(f"  (round started {now_trio - round_t0:.1f} s ago; see the worker processes' stderr for their side)")
    return "\n".join(lines)


async def mode_w3(disp: BenchDispatcher, args: argparse.Namespace) -> dict:
    connect_s = await wait_workers(disp, args.workers)
    say("READY")
    target = len(disp.workers)
    times = []
    acks = 0  # over the timed rounds
    for r in range(args.rounds + 1):  # round 0 is the untimed warm-up
        at_start = {name: v for name, v in _w3_connections(disp).items() if v[1] is not None}
        disp.start_round(r, set(at_start))
        round_t0 = trio.current_time()
        t0 = time.perf_counter()
        sent = await disp.broadcast({"round": r})
        if sent != target or len(at_start) != target:
            raise AssertionError(f"broadcast reached {sent} workers ({len(at_start)} by name), expected {target}")
        with trio.move_on_after(args.round_timeout):
            await disp.all_acked.wait()
        if not disp.all_acked.is_set():
            raise RoundTimeout(_w3_report(disp, r, args.round_timeout, at_start, round_t0))
        if r:
            times.append(time.perf_counter() - t0)
            acks += disp.acks
    ms = sorted(t * 1000.0 for t in times)
    return {
        "workers": target,
        "rounds": len(times),
        "acks": acks,
        "stray_acks": disp.stray_count,
        "connect_seconds": connect_s,
        "round_ms": ms,
        "median_ms": statistics.median(ms),
        "max_ms": ms[-1],
        "broadcasts_per_s": len(times) / sum(times),
        "acks_per_s": len(times) * target / sum(times),
    }


async def mode_w4(disp: Dispatcher, args: argparse.Namespace, rss_idle: int) -> dict:
    connect_s = await wait_workers(disp, args.workers)
    connected = len(disp.workers)
    await trio.sleep(0.5)  # let every handshake's leftovers settle
    rss_connected = rss_kib()
    t0 = time.perf_counter()
    for i in range(args.tasks):
        disp.submit_nowait(NOBODY, (i,))
    submit_s = time.perf_counter() - t0
    await trio.sleep(0.2)
    rss_queued = rss_kib()
    queued = disp.status()["waiting_for_worker"].get(NOBODY, 0)
    if queued != args.tasks:
        raise AssertionError(f"{queued} tasks are queued, expected {args.tasks}")
    return {
        "workers": connected,
        "tasks": queued,
        "worker_processes": args.worker_procs,
        "connect_seconds": connect_s,
        "submit_seconds": submit_s,
        "rss_idle_kib": rss_idle,
        "rss_connected_kib": rss_connected,
        "rss_queued_kib": rss_queued,
        "per_connection_kib": (rss_connected - rss_idle) / max(1, connected),
        "per_task_bytes": (rss_queued - rss_connected) * 1024 / max(1, queued),
    }


async def run_dispatcher(args: argparse.Namespace) -> int:
    disp = BenchDispatcher(HOST, 0, store=args.store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(disp.serve)
        rss_idle = rss_kib() if args.mode == "w4" else 0
        say(f"PORT {port}")
        if args.mode == "serve":
            await mode_serve(disp, args)
        elif args.mode == "w12":
            result = await mode_w12(disp, args)
        elif args.mode == "w3":
            try:
                result = await mode_w3(disp, args)
            except RoundTimeout as exc:
                print(f"ERROR {exc}", file=sys.stderr, flush=True)
                nursery.cancel_scope.cancel()
                return 3
        else:
            result = await mode_w4(disp, args, rss_idle)
        result["pid"] = os.getpid()
        say("RESULT " + json.dumps(result))
        nursery.cancel_scope.cancel()
    return 0


# ================================================================== client
async def run_client(args: argparse.Namespace) -> None:
    async with open_client(HOST, args.port) as client:
        check(await client.map("add", [(i, 1) for i in range(WARMUP)]), 0, WARMUP)
        checked = WARMUP
        w1 = []
        for _ in range(args.runs if args.n else 0):
            t0 = time.perf_counter()
            res = await client.map("add", [(i, 1) for i in range(args.n)])
            w1.append(time.perf_counter() - t0)
            check(res, 0, args.n)
            checked += len(res)
        lat = []
        for i in range(LAT_WARMUP + args.lat_n if args.lat_n else 0):
            t0 = time.perf_counter_ns()
            r = await client.call("add", i, 1)
            dt = time.perf_counter_ns() - t0
            assert r == i + 1, r
            checked += 1
            if i >= LAT_WARMUP:
                lat.append(dt)
    async with open_client(HOST, args.port, role="admin") as admin:  # what the dispatcher counted, untimed
        status = await admin.status()
    say("RESULT " + json.dumps({"api": "open_client: Client.map / Client.call", "pid": os.getpid(),
                                "w1": throughput_summary(args.n, w1), "w2": latency_summary(lat),
                                "tasks": task_counts(args, len(w1), checked, status)}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dispatcher")
    d.add_argument("--mode", choices=["w12", "serve", "w3", "w4"], required=True)
    d.add_argument("--workers", type=int, default=2, help="connected workers to wait for")
    d.add_argument("--n", type=int, default=20000)
    d.add_argument("--lat-n", type=int, default=2000)
    d.add_argument("--runs", type=int, default=3)
    d.add_argument("--rounds", type=int, default=20)
    d.add_argument("--round-timeout", type=float, default=20.0,
                   help="W3: seconds a round may wait for every acknowledgement before failing with a report")  # fmt: skip
    d.add_argument("--tasks", type=int, default=100000)
    d.add_argument("--worker-procs", type=int, default=0, help="reported only")
    d.add_argument("--pause-before-w1", action="store_true")
    d.add_argument("--store", default=None, help="Dispatcher(store=...): memory: (default) or sqlite:PATH")
    w = sub.add_parser("worker")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--kind", choices=sorted(KINDS), default="add")
    w.add_argument("--count", type=int, default=1)
    w.add_argument("--concurrency", type=int, default=1)
    w.add_argument("--prefetch", type=int, default=None)
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--n", type=int, default=20000)
    c.add_argument("--lat-n", type=int, default=2000)
    c.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    if os.environ.get("TRIOSCHEDULE_BENCH_LOG"):  # e.g. INFO: connects, drops and retries on stderr
        import logging

        logging.basicConfig(level=os.environ["TRIOSCHEDULE_BENCH_LOG"].upper(),
                            format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")  # fmt: skip
    raise_fd_limit()
    fn = {"dispatcher": run_dispatcher, "worker": run_workers, "client": run_client}[args.role]
    try:
        rc = trio.run(fn, args)
    except KeyboardInterrupt:
        rc = None
    if rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
