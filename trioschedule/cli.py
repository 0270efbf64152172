"""``python -m trioschedule`` / ``trioschedule``: run a dispatcher or workers, submit, inspect, stop.

``main(argv)`` only parses arguments into objects and runs them; everything
it does is available from Python too.  Exit codes: 0 success, 1 the task
failed (``submit --wait``), 2 usage or configuration error, 3 cannot reach or
authenticate with the dispatcher.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import trio

from ._client import open_client
from ._dispatcher.dispatcher import Dispatcher
from ._errors import AuthenticationError, ConnectionClosed, ProtocolError, Rejected, TaskError, TriosError
from ._loading import load_object
from ._net.security import client_ssl_context, server_ssl_context, token_from_env
from ._util import single_error
from ._worker import Worker

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["main"]

DEFAULT_ADDRESS = "127.0.0.1:7311"
DEFAULT_STORE = "sqlite:trioschedule.sqlite3"
log = logging.getLogger("trioschedule")


class UsageError(Exception):
    """Bad arguments or configuration: exit code 2 with the message."""


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is out of range")
    return host, number


def parse_arg(text: str) -> Any:
    """A command-line task argument: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# ---------------------------------------------------------------- parser
def _security_args(parser: argparse.ArgumentParser, *, server: bool) -> None:
    parser.add_argument("--token", help="shared secret (default: $TRIOSCHEDULE_TOKEN)")
    if server:
        parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
        parser.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert (PEM)")
        parser.add_argument("--tls-client-ca", metavar="FILE", help="require client certificates signed by this CA (mutual TLS)")
    else:
        parser.add_argument("--tls-ca", metavar="FILE", help="connect with TLS, trusting this CA (PEM)")
        parser.add_argument("--tls-cert", metavar="FILE", help="client certificate for mutual TLS (PEM)")
        parser.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert (PEM)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioschedule", description="Distributed task scheduling on Trio: dispatcher, workers, clients."
    )
    parser.add_argument("--log-level", default=os.environ.get("TRIOSCHEDULE_LOG_LEVEL", "INFO"), help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("dispatcher", help="run a dispatcher")
    p.add_argument("target", nargs="?", metavar="MODULE:CLASS", help="a Dispatcher subclass (default: the plain Dispatcher)")
    p.add_argument("--listen", type=parse_address, default=parse_address(DEFAULT_ADDRESS), metavar="HOST:PORT",
                   help=f"address to listen on (default {DEFAULT_ADDRESS}; port 0 picks a free one)")  # fmt: skip
    p.add_argument("--store", default=DEFAULT_STORE,
                   help=f"journal: sqlite:PATH or memory: (default {DEFAULT_STORE} in the working directory)")  # fmt: skip
    p.add_argument("--heartbeat-interval", type=float, default=2.0, metavar="S")
    p.add_argument("--heartbeat-timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--handshake-timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--session-grace", type=float, default=5.0, metavar="S", help="how long a lost worker keeps its tasks")
    p.add_argument("--drain-grace", type=float, default=30.0, metavar="S", help="how long stop lets running tasks finish")
    p.add_argument("--max-connections", type=int, default=10_000)
    p.add_argument("--max-queued", type=int, default=1_000_000, help="unfinished tasks accepted at once")
    p.add_argument("--max-client-queued", type=int, default=1_000_000, help="unfinished tasks per client")
    p.add_argument("--max-frame-size", type=int, default=10 * 1024 * 1024, metavar="BYTES")
    _security_args(p, server=True)

    p = sub.add_parser("worker", help="run worker processes")
    p.add_argument("target", metavar="MODULE:CLASS", help="a Worker subclass (module or path/to/file.py)")
    p.add_argument("--connect", type=parse_address, default=parse_address(DEFAULT_ADDRESS), metavar="HOST:PORT")
    p.add_argument("--concurrency", type=int, default=1, help="tasks run at once per process")
    p.add_argument("--prefetch", type=int, default=None, help="tasks sent ahead of time per process")
    p.add_argument("--processes", type=int, default=1, help="worker processes to run (restarted if they die)")
    p.add_argument("--name", help="worker name shown in status")
    p.add_argument("--heartbeat-interval", type=float, default=2.0, metavar="S")
    p.add_argument("--heartbeat-timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--drain-grace", type=float, default=30.0, metavar="S")
    _security_args(p, server=False)

    p = sub.add_parser("submit", help="submit a task (and optionally wait for its result)")
    p.add_argument("address", type=parse_address, metavar="HOST:PORT")
    p.add_argument("task", metavar="TASK")
    p.add_argument("args", nargs="*", metavar="ARG", help="arguments: JSON when they parse, else strings")
    p.add_argument("--kwarg", action="append", default=[], metavar="NAME=VALUE", help="a keyword argument (JSON or string)")
    p.add_argument("--wait", action="store_true", help="wait and print the result as JSON")
    p.add_argument("--timeout", type=float, help="deadline in seconds from now, queueing included")
    p.add_argument("--retries", type=int)
    p.add_argument("--delay", type=float)
    p.add_argument("--priority", type=int, default=0)
    _security_args(p, server=False)

    p = sub.add_parser("status", help="show a dispatcher's status")
    p.add_argument("address", type=parse_address, metavar="HOST:PORT")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _security_args(p, server=False)

    p = sub.add_parser("stop", help="stop a dispatcher gracefully")
    p.add_argument("address", type=parse_address, metavar="HOST:PORT")
    p.add_argument("--grace", type=float, help="seconds to let running tasks finish (default: the dispatcher's)")
    _security_args(p, server=False)
    return parser


# ------------------------------------------------------------- commands
def _client_ssl(args: argparse.Namespace) -> Any:
    if not (args.tls_ca or args.tls_cert):
        return None
    return client_ssl_context(args.tls_ca, certfile=args.tls_cert, keyfile=args.tls_key)


async def _run_with_signals(run: Any, stop: Any) -> None:
    """Run ``run`` until it returns; the first SIGINT/SIGTERM calls ``stop()``, a second cancels."""
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                count = 0
                async for signum in signals:
                    count += 1
                    if count == 1:
                        log.info("%s: stopping gracefully (send it again to stop at once)", signal.Signals(signum).name)
                        stop()
                    else:
                        log.warning("%s again: stopping now", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        await run()
        nursery.cancel_scope.cancel()


def cmd_dispatcher(args: argparse.Namespace) -> int:
    cls = Dispatcher
    if args.target:
        cls = load_object(args.target)
        if not (isinstance(cls, type) and issubclass(cls, Dispatcher)):
            raise UsageError(f"{args.target} is not a Dispatcher subclass")
    if args.tls_key and not args.tls_cert:
        raise UsageError("--tls-key needs --tls-cert")
    ssl_context = server_ssl_context(args.tls_cert, args.tls_key, client_ca=args.tls_client_ca) if args.tls_cert else None
    host, port = args.listen
    dispatcher = cls(
        host, port, token=token_from_env(args.token), ssl_context=ssl_context, store=args.store,
        heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
        handshake_timeout=args.handshake_timeout, session_grace=args.session_grace, drain_grace=args.drain_grace,
        max_connections=args.max_connections, max_queued=args.max_queued,
        max_client_queued=args.max_client_queued, max_frame_size=args.max_frame_size,
    )  # fmt: skip

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(dispatcher.serve)
            _freeze_startup_objects()
            print(f"trioschedule dispatcher listening on {host}:{bound} (pid {os.getpid()})", flush=True)

    trio.run(_run_with_signals, run, dispatcher.stop)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    cls = load_object(args.target)
    if not (isinstance(cls, type) and issubclass(cls, Worker)):
        raise UsageError(f"{args.target} is not a Worker subclass")
    if args.concurrency < 1 or args.processes < 1:
        raise UsageError("--concurrency and --processes must be at least 1")
    if args.processes > 1:
        return _supervise(args)
    host, port = args.connect
    worker = cls(
        host, port, token=token_from_env(args.token), ssl_context=_client_ssl(args), concurrency=args.concurrency,
        prefetch=args.prefetch, name=args.name, heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout, drain_grace=args.drain_grace,
    )  # fmt: skip
    _freeze_startup_objects()
    trio.run(_run_with_signals, worker.run, worker.stop)
    return 0


def _freeze_startup_objects() -> None:
    """Move everything alive now (modules, classes, the user's code) out of the garbage collector's way.

    The command owns its process, so it can do what an embedding application
    should decide for itself: a full collection then no longer walks the
    startup heap (docs/PERFORMANCE.md, "Garbage collection").
    """
    gc.collect()
    gc.freeze()


def _die_with_parent() -> None:
    """In a supervised child: get SIGTERM if the supervisor dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _supervise(args: argparse.Namespace) -> int:
    """Run ``--processes`` copies of this worker command and restart any that dies (a nanny)."""
    argv = [sys.executable, "-m", "trioschedule", "--log-level", args.log_level, "worker", args.target]
    argv += ["--connect", f"{args.connect[0]}:{args.connect[1]}", "--concurrency", str(args.concurrency)]
    argv += ["--heartbeat-interval", str(args.heartbeat_interval), "--heartbeat-timeout", str(args.heartbeat_timeout)]
    argv += ["--drain-grace", str(args.drain_grace)]
    for flag in ("prefetch", "tls_ca", "tls_cert", "tls_key"):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
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
            time.sleep(0.2)
        deadline = time.monotonic() + args.drain_grace + 5
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return 0


async def _submit(args: argparse.Namespace) -> int:
    kwargs = {}
    for item in args.kwarg:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--kwarg expects NAME=VALUE, got {item!r}")
        kwargs[key] = parse_arg(value)
    host, port = args.address
    async with open_client(host, port, token=token_from_env(args.token), ssl_context=_client_ssl(args), reconnect_attempts=5) as client:
        handle = await client.submit(
            args.task, [parse_arg(a) for a in args.args], kwargs,
            timeout=args.timeout, retries=args.retries, delay=args.delay, priority=args.priority,
        )  # fmt: skip
        if not args.wait:
            print(handle.id, flush=True)
            return 0
        try:
            value = await handle.result()
        except TaskError as exc:
            print(f"task {handle.id} failed: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(value), flush=True)
        return 0


async def _status(args: argparse.Namespace) -> int:
    host, port = args.address
    async with open_client(host, port, token=token_from_env(args.token), ssl_context=_client_ssl(args), role="admin", reconnect_attempts=0) as client:
        status = await client.status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return 0


async def _stop(args: argparse.Namespace) -> int:
    host, port = args.address
    async with open_client(host, port, token=token_from_env(args.token), ssl_context=_client_ssl(args), role="admin", reconnect_attempts=0) as client:
        grace = await client.stop_dispatcher(args.grace)
        print(f"dispatcher at {host}:{port} is stopping (grace {grace:g} s)", flush=True)
    return 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:d}:{minutes:02d}:{secs:02d}"


def format_status(status: dict[str, Any]) -> str:
    """The human table of ``trioschedule status``, in the spirit of Workerman's."""
    t = status["tasks"]
    lines = [
        f"trioschedule {status['name']}  pid {status['pid']}  {status['address']}  "
        f"uptime {_duration(status['uptime'])}  store {status['store']}" + ("  DRAINING" if status["draining"] else ""),
        "tasks: " + "  ".join(f"{key} {t[key]}" for key in ("queued", "delayed", "running", "done", "failed", "cancelled", "timeout", "lost")),
    ]
    if status["waiting_for_worker"]:
        waiting = ", ".join(f"{name} ({count})" for name, count in sorted(status["waiting_for_worker"].items()))
        lines.append(f"waiting for a worker that offers them: {waiting}")
    workers = status["workers"]
    lines.append(f"workers: {len(workers)}   clients: {len(status['clients'])}")
    if workers:
        headers = ("name", "host", "pid", "concurrency", "running", "done", "failed", "address", "state")
        rows = [
            (w["name"], w["host"], str(w["pid"]), str(w["concurrency"]), str(w["running"]), str(w["done"]),
             str(w["failed"]), w["address"], "draining" if w["draining"] else ("connected" if w["connected"] else "detached"))
            for w in workers
        ]  # fmt: skip
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)
    return "\n".join(lines)


# What went wrong -> (message prefix, exit code); the first matching row wins.
_FAILURES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str, int], ...] = (
    (UsageError, "error: ", 2),
    ((ValueError, OSError), "error: ", 2),
    (AuthenticationError, "authentication failed: ", 3),
    ((ConnectionClosed, ProtocolError), "", 3),
    (Rejected, "rejected: ", 1),
    (TriosError, "error: ", 2),  # a refused journal, and the like
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m trioschedule``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Read the shared secret once, and keep it out of the environment that
    # tasks' child processes would inherit.
    env_token = os.environ.pop("TRIOSCHEDULE_TOKEN", None)
    args.token = args.token or env_token or None
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    commands: dict[str, Any] = {
        "dispatcher": cmd_dispatcher,
        "worker": cmd_worker,
        "submit": lambda a: trio.run(_submit, a),
        "status": lambda a: trio.run(_status, a),
        "stop": lambda a: trio.run(_stop, a),
    }
    try:
        try:
            return int(commands[args.command](args))
        except BaseExceptionGroup as group:  # one failure inside a nursery: report it, not the group
            raise (single_error(group) or group) from None
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        for kinds, prefix, code in _FAILURES:
            if isinstance(exc, kinds):
                if isinstance(exc, Rejected):
                    prefix = f"rejected ({exc.code}): "
                print(f"trioschedule: {prefix}{exc}", file=sys.stderr)
                return code
        raise
