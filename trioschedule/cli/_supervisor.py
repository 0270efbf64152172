"""``worker --processes N``: run N copies of the worker command and restart any that dies (a nanny).

The supervisor is plain blocking code, not a Trio program: it runs no tasks
itself, only child processes, and SIGINT/SIGTERM are passed on to them so
that each drains as a single worker would.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from .._net.addresses import format_address
from .._net.security import token_from_env

__all__ = ["child_argv", "supervise"]

log = logging.getLogger("trioschedule")

_POLL = 0.2  # seconds between checks for a child that exited
_FORWARDED = ("prefetch", "tls_ca", "tls_cert", "tls_key")  # worker options passed on only when given


def child_argv(args: argparse.Namespace) -> list[str]:
    """The command line of one supervised worker: the same worker command, one process, no name, no token.

    The token travels in the environment (``ps`` shows command lines) and
    each child gets its name from ``supervise``.
    """
    argv = [sys.executable, "-m", "trioschedule", "--log-level", args.log_level, "--log-format", args.log_format,
            "worker", args.target]
    argv += ["--connect", ",".join(format_address(address) for address in args.connect)]
    argv += ["--concurrency", str(args.concurrency)]
    argv += ["--heartbeat-interval", str(args.heartbeat_interval), "--heartbeat-timeout", str(args.heartbeat_timeout)]
    argv += ["--drain-grace", str(args.drain_grace), "--blocked-warning", str(args.blocked_warning)]
    for flag in _FORWARDED:
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    return argv


def supervise(args: argparse.Namespace) -> int:
    """Run ``args.processes`` workers until SIGINT/SIGTERM, then wait for them to drain (bounded)."""
    argv = child_argv(args)
    child_env = dict(os.environ)
    token = token_from_env(args.token)
    if token:  # through the environment, never the command line that `ps` shows
        child_env["TRIOSCHEDULE_TOKEN"] = token
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    children: list[subprocess.Popen[Any]] = []
    spawn = functools.partial(subprocess.Popen, env=child_env, preexec_fn=_die_with_parent)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for index in range(args.processes):
        name = f"{args.name}-{index}" if args.name else None
        children.append(spawn(argv + (["--name", name] if name else [])))
    log.info("supervising %d worker processes: %s", len(children), ", ".join(str(c.pid) for c in children))
    try:
        while not stopping:
            for index, child in enumerate(children):
                code = child.poll()
                if code is not None and not stopping:
                    log.warning("worker process %d exited with %s; restarting it", child.pid, code)
                    children[index] = spawn(argv)
            time.sleep(_POLL)
        _wait_for_all(children, grace=args.drain_grace + 5)
    finally:
        _kill_the_rest(children)
    return 0


def _wait_for_all(children: list[subprocess.Popen[Any]], *, grace: float) -> None:
    """Give the children ``grace`` seconds in all to exit on their own; kill those that do not."""
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _kill_the_rest(children: list[subprocess.Popen[Any]]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def _die_with_parent() -> None:
    """In a supervised child: get SIGTERM if the supervisor dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
