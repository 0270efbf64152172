"""``worker --processes N``: run N copies of the worker command and keep them running (a nanny).

The supervisor is plain blocking code, not a Trio program: it runs no tasks
itself, only child processes, and looks at them a few times a second.

- SIGINT/SIGTERM are passed on to every child, so each drains as a single
  worker would, and the supervisor exits once they have (bounded).
- A child that exits with :data:`EXIT_RETIRED` retired on purpose
  (``--max-tasks-per-child``, ``--max-memory-per-child``): it drained first,
  and a replacement starts at once.
- A child that exits 0 was asked to stop (``trioschedule stop --workers``,
  or a signal sent to it alone): it is not replaced; the supervisor exits 0
  when no child is left.
- A child that dies otherwise is restarted; one that dies within
  ``CRASH_WINDOW`` seconds of starting is restarted after a pause that
  doubles each time, and after ``CRASH_LIMIT`` such crashes in a row the
  supervisor gives up: it stops the others and exits 1 (a crash loop helps
  nobody, and a service manager then shows the failure).
- SIGHUP reloads: each child in turn is replaced by a fresh process (new
  code) that must connect first, then the old one drains and exits, so at
  least N children serve throughout (N+1 for a moment).

Each child's hello carries how many times its slot was restarted, so
``trioschedule status`` lists every child with its restarts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from .. import _defaults as defaults
from .._net.addresses import format_address
from .._net.security import token_from_env

__all__ = ["EXIT_RETIRED", "child_argv", "supervise"]

log = logging.getLogger("trioschedule.supervisor")

#: A worker process's exit code when it retired on purpose and wants a replacement (EX_TEMPFAIL).
EXIT_RETIRED = 75
#: The environment variable that names the file descriptor a supervised child writes to once connected.
READY_FD_ENV = "TRIOSCHEDULE_READY_FD"

_POLL = 0.1  # seconds between looks at the children
_FORWARDED = ("prefetch", "tls_ca", "tls_cert", "tls_key", "max_tasks_per_child", "max_memory_per_child")


def child_argv(args: argparse.Namespace) -> list[str]:
    """The command line of one supervised worker: the same worker command, one process, no name, no token.

    The token travels in the environment (``ps`` shows command lines) and
    each child gets its name and its restart count from ``supervise``.
    """
    argv = [sys.executable, "-m", "trioschedule", "--log-level", args.log_level, "--log-format", args.log_format,
            "worker", args.target, "--supervised"]
    argv += ["--connect", ",".join(format_address(address) for address in args.connect)]
    argv += ["--concurrency", str(args.concurrency)]
    argv += ["--heartbeat-interval", str(args.heartbeat_interval), "--heartbeat-timeout", str(args.heartbeat_timeout)]
    argv += ["--drain-grace", str(args.drain_grace), "--blocked-warning", str(args.blocked_warning)]
    for flag in _FORWARDED:
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    return argv


class _Slot:
    """One of the N places a child serves in: its process, and how it has fared."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[Any] | None = None
        self.ready_fd: int | None = None  # read end of the child's "connected" pipe
        self.started = 0.0
        self.restarts = 0
        self.crashes = 0  # crashes at start in a row
        self.restart_at: float | None = None  # a crashed child's replacement waits until then
        self.reloading = False  # reload() has it: tend() keeps out
        self.done = False  # its child exited 0 (asked to stop): not replaced


class Supervisor:
    """The state of ``worker --processes N``; :meth:`run` is the whole loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.argv = child_argv(args)
        self.env = dict(os.environ)
        token = token_from_env(args.token)
        if token:  # through the environment, never the command line that `ps` shows
            self.env["TRIOSCHEDULE_TOKEN"] = token
        self.slots = [_Slot(i) for i in range(args.processes)]
        self.spare: subprocess.Popen[Any] | None = None  # during a reload: the new child, then the old one
        self.signalled: set[int] = set()  # pids already told to stop (a second signal would stop them at once)
        self.stopping = False
        self.reloads = 0  # SIGHUPs not yet acted on
        self.grace = args.drain_grace + 5

    # ------------------------------------------------------------ children
    def start(self, slot: _Slot, restarts: int) -> tuple[subprocess.Popen[Any], int]:
        """Start a child for ``slot``: its process and the read end of its "connected" pipe."""
        name = f"{self.args.name}-{slot.index}" if self.args.name else None
        argv = self.argv + (["--name", name] if name else []) + (["--restarts", str(restarts)] if restarts else [])
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        try:
            proc = subprocess.Popen(argv, env={**self.env, READY_FD_ENV: str(write_end)}, pass_fds=(write_end,),
                                    preexec_fn=_child_setup)  # noqa: PLW1509 - the supervisor runs no threads  # fmt: skip
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        return proc, read_end

    def replace(self, slot: _Slot) -> None:
        """Give ``slot`` a fresh child now."""
        _close(slot.ready_fd)
        slot.proc, slot.ready_fd = self.start(slot, slot.restarts)
        slot.started, slot.restart_at = time.monotonic(), None

    def tend(self) -> None:
        """Look at every child once: replace the retired, restart the crashed, give up on a crash loop."""
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if slot.done or slot.reloading or self.stopping:
                continue
            if proc is None:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self.replace(slot)
                continue
            code = proc.poll()
            if code is None:
                if slot.crashes and now - slot.started > defaults.CRASH_WINDOW:
                    slot.crashes = 0  # it stayed up: the next death starts a fresh count
                continue
            lived = now - slot.started
            slot.proc = None
            if code == 0:
                log.info("worker process %d stopped (exit 0: it was asked to); not replacing it", proc.pid)
                slot.done = True
                continue
            slot.restarts += 1
            if code == EXIT_RETIRED:
                log.info("worker process %d retired after draining; starting its replacement (restart %d)",
                         proc.pid, slot.restarts)  # fmt: skip
                slot.crashes = 0
                self.replace(slot)
                continue
            if lived > defaults.CRASH_WINDOW:
                slot.crashes = 0
                log.warning("worker process %d exited with %s; restarting it (restart %d)", proc.pid, _how(code),
                            slot.restarts)  # fmt: skip
                self.replace(slot)
                continue
            slot.crashes += 1
            if slot.crashes >= defaults.CRASH_LIMIT:
                raise CrashLoop(
                    f"worker processes keep crashing at start: the last exited with {_how(code)} {lived:.1f} s after "
                    f"starting, {slot.crashes} times in a row; giving up (its own error is logged above)"
                )
            delay = min(defaults.CRASH_BACKOFF_MAX, defaults.CRASH_BACKOFF_INITIAL * 2 ** (slot.crashes - 1))
            log.warning("worker process %d exited with %s %.1f s after starting (crash %d of %d in a row); "
                        "restarting it in %.1f s", proc.pid, _how(code), lived, slot.crashes, defaults.CRASH_LIMIT,
                        delay)  # fmt: skip
            slot.restart_at = now + delay

    def wait(self, predicate: Any, timeout: float) -> bool:
        """Tend the children until ``predicate()`` holds (True), ``timeout`` passes or a stop begins (False)."""
        deadline = time.monotonic() + timeout
        while not self.stopping:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            self.tend()
            time.sleep(_POLL)
        return False

    def children(self) -> list[subprocess.Popen[Any]]:
        """Every child process alive or not yet waited for: the slots' and the spare."""
        return [s.proc for s in self.slots if s.proc is not None] + ([self.spare] if self.spare is not None else [])

    def signal_children(self, signum: int) -> None:
        for child in self.children():
            if child.poll() is None and child.pid not in self.signalled:
                self.signalled.add(child.pid)
                child.send_signal(signum)

    # -------------------------------------------------------------- reload
    def reload(self) -> None:
        """Replace every child, one at a time: the new one connects first, then the old one drains."""
        log.info("reload: replacing %d worker process(es) one at a time", len(self.slots))
        for slot in self.slots:
            if self.stopping:
                return
            if slot.done or slot.proc is None or slot.proc.poll() is not None:
                continue  # a crashed or retired child gets the new code when it restarts anyway
            slot.reloading = True
            try:
                if not self._reload_one(slot):
                    return
            finally:
                slot.reloading = False
        log.info("reload done: worker processes %s", ", ".join(str(s.proc.pid) for s in self.slots if s.proc))

    def _reload_one(self, slot: _Slot) -> bool:
        old, old_fd = slot.proc, slot.ready_fd
        assert old is not None
        new, new_fd = self.start(slot, slot.restarts + 1)
        self.spare = new
        ready = self.wait(lambda: _readable(new_fd) or new.poll() is not None, defaults.RELOAD_READY_TIMEOUT)
        if self.stopping:  # the new child was told to stop with the others; run() waits for it
            _close(new_fd)
            return False
        if not ready or new.poll() is not None:
            why = "did not connect in time" if new.poll() is None else f"exited with {_how(new.poll())}"
            log.error("reload stopped: the new worker process %d %s; process %d keeps serving", new.pid, why, old.pid)
            self.spare = None
            _end(new, grace=self.grace, signum=signal.SIGTERM)
            _close(new_fd)
            return False
        slot.proc, slot.ready_fd, slot.started, slot.crashes = new, new_fd, time.monotonic(), 0
        slot.restarts += 1
        self.spare = old
        _close(old_fd)
        log.info("reload: process %d connected; draining process %d", new.pid, old.pid)
        self.signalled.add(old.pid)
        old.send_signal(signal.SIGTERM)
        if self.wait(lambda: old.poll() is not None, self.grace) or not self.stopping:
            _end(old, grace=0)
            self.spare = None
        return not self.stopping

    # ----------------------------------------------------------------- run
    def run(self) -> int:
        def on_stop(signum: int, frame: Any) -> None:
            self.stopping = True
            self.signal_children(signum)

        def on_hup(signum: int, frame: Any) -> None:
            self.reloads += 1

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        for slot in self.slots:
            self.replace(slot)
        log.info("supervising %d worker processes: %s (pid %d; SIGHUP reloads them one at a time)", len(self.slots),
                 ", ".join(str(s.proc.pid) for s in self.slots if s.proc), os.getpid())  # fmt: skip
        try:
            while not self.stopping:
                if self.reloads:
                    self.reloads = 0
                    self.reload()
                    continue
                self.tend()
                if all(slot.done for slot in self.slots):
                    log.info("every worker process stopped; the supervisor exits")
                    return 0
                time.sleep(_POLL)
            _wait_for_all(self.children(), grace=self.grace)
            return 0
        except CrashLoop as exc:
            log.error("%s", exc)  # one line, in the log's format (a JSON log stays all JSON)
            self.stopping = True
            self.signal_children(signal.SIGTERM)
            _wait_for_all(self.children(), grace=self.grace)
            return 1
        finally:
            for child in self.children():
                _end(child, grace=0)
            for slot in self.slots:
                _close(slot.ready_fd)


class CrashLoop(Exception):
    """The children keep dying right after they start: restarting them again would not help."""


def supervise(args: argparse.Namespace) -> int:
    """Run ``args.processes`` workers until SIGINT/SIGTERM (or a crash loop); SIGHUP reloads them."""
    return Supervisor(args).run()


def notify_ready() -> None:
    """In a supervised child, once connected: tell the supervisor (one byte on the pipe it passed down)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"r")
        os.close(int(fd))
    except (OSError, ValueError):
        pass


def _readable(fd: int) -> bool:
    """Has the child written its "connected" byte?"""
    try:
        return bool(os.read(fd, 1))
    except BlockingIOError:
        return False


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _wait_for_all(children: list[subprocess.Popen[Any]], *, grace: float) -> None:
    """Give the children ``grace`` seconds in all to exit on their own; kill those that do not."""
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _end(child: subprocess.Popen[Any], *, grace: float, signum: int | None = None) -> None:
    """Wait up to ``grace`` seconds for ``child`` to exit (after sending it ``signum``), then kill it."""
    if signum is not None and child.poll() is None:
        child.send_signal(signum)
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _child_setup() -> None:
    """In a supervised child, before exec: its own process group, and SIGTERM if the supervisor dies.

    Its own process group: Ctrl-C in a terminal reaches the supervisor alone,
    which passes it on once (a child that got it twice would stop at once
    instead of draining).  The death signal works even if the supervisor is
    killed with SIGKILL (Linux).
    """
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
