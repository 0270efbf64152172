"""Starting and stopping real trioschedule processes in tests (always by PID, always bounded)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import trio

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APP = os.path.join(HERE, "e2e_app.py")


def env(**extra: str) -> dict[str, str]:
    result = dict(os.environ)
    result["PYTHONPATH"] = ROOT + os.pathsep + result.get("PYTHONPATH", "")
    result.update(extra)
    return result


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trioschedule", "--log-level", "INFO", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Every process a test starts; all are stopped by PID when the test ends."""

    def __init__(self, tmp_path: str, extra_env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env(**extra_env)
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, name: str) -> subprocess.Popen[str]:
        log = open(os.path.join(self.tmp_path, f"{name}.log"), "a")
        proc = subprocess.Popen(
            cli(*args), env=self.env, cwd=self.tmp_path, stdout=subprocess.PIPE, stderr=log, text=True
        )
        self.procs.append(proc)
        return proc

    async def start_dispatcher(self, *args: str, port: int = 0, name: str = "dispatcher") -> tuple[subprocess.Popen[str], int]:
        proc = self.start("dispatcher", f"{APP}:AppDispatcher", "--listen", f"127.0.0.1:{port}",
                          "--heartbeat-interval", "0.5", "--heartbeat-timeout", "3", "--session-grace", "1",
                          *args, name=name)  # fmt: skip
        with trio.fail_after(20):
            line = await trio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        assert match, f"unexpected dispatcher output: {line!r} (log: {self.log(name)})"
        return proc, int(match.group(1))

    def start_worker(self, port: int, *args: str, name: str = "worker") -> subprocess.Popen[str]:
        return self.start("worker", f"{APP}:AppWorker", "--connect", f"127.0.0.1:{port}",
                          "--heartbeat-interval", "0.5", "--heartbeat-timeout", "3", *args, name=name)  # fmt: skip

    async def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        with trio.fail_after(timeout):
            done = await trio.run_process(cli(*args), env=self.env, cwd=self.tmp_path, capture_stdout=True,
                                          capture_stderr=True, check=False)  # fmt: skip
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.tmp_path, f"{name}.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop_all(self) -> None:
        for proc in self.procs:  # SIGTERM first: a supervisor passes it on to its children
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            if proc.stdout:
                proc.stdout.close()


@contextmanager
def processes(tmp_path: str, **extra_env: str) -> Iterator[Processes]:
    procs = Processes(str(tmp_path), extra_env)
    try:
        yield procs
    finally:
        procs.stop_all()


async def wait_for(predicate, timeout: float = 20, interval: float = 0.05):
    """Poll ``predicate`` (sync or async) until it is truthy; fail after ``timeout`` real seconds."""
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await trio.sleep(interval)
