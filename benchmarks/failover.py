"""Failover time: two command-line dispatchers on one PostgreSQL database, the leader SIGKILLed (docs/HA.md).

    python benchmarks/failover.py [--lease-ttl 6] [--runs 3] [--url postgresql://...]

Starts a PostgreSQL server in a temporary directory as the tests do (tests/postgres.py) unless --url
is given, then for each run: dispatchers A and B (``trioschedule dispatcher --store URL --lease-ttl S``,
A leading), one worker given both addresses, and a client (this process) given both addresses making
round trips.  It SIGKILLs the leader and measures, from the kill:

* ``lease_s``: until the standby holds the lease (read from the database);
* ``service_s``: until the client's first round trip after the kill completes, through the new leader
  (the worker has reconnected to it; the client reattached).

Prints one ``RESULT {json}`` line (the medians and every run).  Every process it starts is stopped by
PID before it exits.  ``benchmarks/run.py`` runs it as part of its PostgreSQL column.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from trioschedule import open_client
from trioschedule._store.registry import open_store

WORKER = f"{HERE / '_procs.py'}:AddWorker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(os.path.join(self.logdir, f"{name}.log"), "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "trioschedule", "--log-level", "INFO", *args],
                                    env=self.env, cwd=self.logdir, stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def lease_address(url: str) -> str | None:
    leadership = open_store(url).leadership()
    assert leadership is not None
    try:
        lease = await leadership.current()
    finally:
        await leadership.aclose()
    return lease.address if lease is not None and lease.expires_in > 0 else None


async def wait_until(predicate, timeout: float, interval: float = 0.02) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(interval)


async def one_run(url: str, lease_ttl: float, logdir: str) -> dict[str, float]:
    procs = Processes(logdir)
    a_addr, b_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    common = ["--store", url, "--lease-ttl", str(lease_ttl), "--session-grace", "15"]
    try:
        a = procs.start("a", "dispatcher", "--listen", a_addr, *common)

        async def a_leads() -> bool:
            return await lease_address(url) == a_addr

        await wait_until(a_leads, 30)
        procs.start("b", "dispatcher", "--listen", b_addr, *common)
        procs.start("worker", "worker", WORKER, "--connect", f"{a_addr},{b_addr}")
        async with open_client(addresses=[a_addr, b_addr]) as client:
            for i in range(20):  # the worker is connected and the path is warm
                assert await client.call("add", i, 1) == i + 1
            await trio.sleep(lease_ttl / 3)  # somewhere in the leader's renewal cycle, as a crash would be
            killed = time.monotonic()
            a.send_signal(signal.SIGKILL)
            a.wait(10)
            lease_s = service_s = None

            async def watch_lease() -> None:
                nonlocal lease_s

                async def b_leads() -> bool:
                    return await lease_address(url) == b_addr

                await wait_until(b_leads, 60)
                lease_s = time.monotonic() - killed

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_lease)
                with trio.fail_after(60):
                    assert await client.call("add", 1, 2) == 3  # waits across the failover
                service_s = time.monotonic() - killed
        assert lease_s is not None
        return {"lease_s": round(lease_s, 3), "service_s": round(service_s, 3)}
    finally:
        procs.stop_all()


def measure(url: str, *, lease_ttl: float, runs: int, logdir: str) -> dict:
    """Failover times of ``runs`` runs on the database ``url`` (each run uses it afresh: the lease is reused)."""
    results = [trio.run(one_run, url, lease_ttl, logdir) for _ in range(runs)]
    return {
        "lease_ttl_s": lease_ttl,
        "runs": results,
        "lease_s_median": statistics.median(r["lease_s"] for r in results),
        "service_s_median": statistics.median(r["service_s"] for r in results),
        "service_s_max": max(r["service_s"] for r in results),
        "bound_s": round(lease_ttl * 7 / 6, 3),  # docs/HA.md: ttl plus a standby's poll, plus recovery
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lease-ttl", type=float, default=6.0, help="the dispatchers' --lease-ttl (default 6, the default)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--url", help="a PostgreSQL database to use (default: start a server in a temporary directory)")
    opts = p.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="trioschedule-failover-") as logdir:
        if opts.url:
            result = measure(opts.url, lease_ttl=opts.lease_ttl, runs=opts.runs, logdir=logdir)
        else:
            from tests.postgres import running_server

            with running_server() as server:
                result = measure(server.database(), lease_ttl=opts.lease_ttl, runs=opts.runs, logdir=logdir)
    print(f"failover after SIGKILL of the leader, lease {opts.lease_ttl:g} s, {opts.runs} run(s): standby holds "
          f"the lease after {result['lease_s_median']:.2f} s, the client is served again after "
          f"{result['service_s_median']:.2f} s (median; max {result['service_s_max']:.2f} s)")  # fmt: skip
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
