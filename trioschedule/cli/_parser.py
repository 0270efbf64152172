"""The argument parser of ``python -m trioschedule``: every command, option and default.

Every default that mirrors a constructor's comes from trioschedule._defaults,
so ``--heartbeat-interval`` and ``Worker(heartbeat_interval=...)`` cannot
drift apart.  Options left out here (``None``) are not passed on at all: the
constructor or method then applies its own default.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, NoReturn

from .. import _defaults as defaults

__all__ = [
    "DEFAULT_ADDRESS", "DEFAULT_STORE", "LOG_FORMATS", "LOG_LEVELS", "address_arg", "build_parser", "default_address",
    "parse_address", "parse_addresses", "parse_arg",
]  # fmt: skip

#: Where ``dispatcher`` listens and ``worker`` connects unless told otherwise.
DEFAULT_ADDRESS = defaults.ADDRESS
#: The command-line dispatcher's journal, in its working directory (the Python API keeps tasks in memory).
DEFAULT_STORE = defaults.CLI_STORE


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port).  A bare ``PORT`` means 127.0.0.1, an empty host 0.0.0.0."""
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


def _advertise(text: str) -> str:
    """``--advertise HOST:PORT``, checked like an address and kept as written."""
    host, port = parse_address(text)
    if host == "0.0.0.0" or port == 0:
        raise argparse.ArgumentTypeError(f"--advertise needs the host and port peers connect to, not {text!r}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """``HOST:PORT[,HOST:PORT...]`` -> [(host, port), ...]: every dispatcher sharing one store (docs/HA.md).

    Each item is read by :func:`parse_address` (``[::1]:7311`` for IPv6); a
    repeated address counts once.
    """
    addresses: list[tuple[str, int]] = []
    for item in text.split(","):
        if not item.strip():
            raise argparse.ArgumentTypeError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
        address = parse_address(item.strip())
        if address not in addresses:
            addresses.append(address)
    return addresses


#: The metavar of an address list, in usage lines.
ADDRESSES = "HOST:PORT[,HOST:PORT...]"


def address_arg(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """The positional dispatcher address list of a command that talks to a dispatcher, and ``--leader-wait``.

    Every such command takes the same list (``args.address``, a list of
    ``(host, port)``) and waits the same way for a failover to finish.
    ``optional`` commands default to $TRIOSCHEDULE_ADDRESS, else 127.0.0.1:7311.
    """
    if optional:
        p.add_argument("address", type=parse_addresses, metavar=ADDRESSES, nargs="?", default=default_address(),
                       help=f"the dispatcher, or every dispatcher sharing one store, comma-separated "
                            f"(default $TRIOSCHEDULE_ADDRESS, else {DEFAULT_ADDRESS})")  # fmt: skip
    else:
        p.add_argument("address", type=parse_addresses, metavar=ADDRESSES,
                       help="the dispatcher, or every dispatcher sharing one store, comma-separated")  # fmt: skip
    p.add_argument("--leader-wait", type=float, default=defaults.LEADER_WAIT, metavar="S",
                   help="how long to keep trying while the dispatchers reached say none of them leads "
                        "(a failover under way; default %(default)g)")  # fmt: skip


def parse_arg(text: str) -> Any:
    """A command-line task argument: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


#: ``--log-level`` accepts these (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: ``--log-format`` accepts these.
LOG_FORMATS = ("text", "json")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit 2), like every other usage error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"trioschedule: error: {message} (see {self.prog} --help)\n")


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid level {text!r} (choose from {', '.join(LOG_LEVELS)})")
    return level


def _common_args(p: argparse.ArgumentParser, *, top: bool) -> None:
    """``--log-level`` and ``--log-format``: before the command or after it, as people type them.

    On the commands the defaults are suppressed, so a value given before the
    command is not overwritten by the command's default.
    """
    level = os.environ.get("TRIOSCHEDULE_LOG_LEVEL", "INFO") if top else argparse.SUPPRESS
    fmt = os.environ.get("TRIOSCHEDULE_LOG_FORMAT", "text") if top else argparse.SUPPRESS
    p.add_argument("--log-level", type=_log_level, default=level, metavar="LEVEL",
                   help=f"logging level: {', '.join(LOG_LEVELS)} (default INFO, or $TRIOSCHEDULE_LOG_LEVEL)")  # fmt: skip
    p.add_argument("--log-format", choices=LOG_FORMATS, default=fmt,
                   help="log lines as text or one JSON object per line (default text, or $TRIOSCHEDULE_LOG_FORMAT)")  # fmt: skip


def default_address() -> str:
    """Where ``status`` and ``stop`` go without HOST:PORT: $TRIOSCHEDULE_ADDRESS, else 127.0.0.1:7311."""
    return os.environ.get("TRIOSCHEDULE_ADDRESS") or DEFAULT_ADDRESS


def build_parser(*, script: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``main`` parses with it, and the tests read its defaults.

    ``script`` (``python x.py start``) replaces ``trioschedule COMMAND`` in
    usage lines and errors, for a script that runs one command.
    """
    from .. import __version__  # the package is whole by the time anyone parses

    parser = _Parser(
        prog=script or "trioschedule", description="Distributed task scheduling on Trio: dispatcher, workers, clients."
    )
    parser.add_argument("--version", action="version", version=f"trioschedule {__version__}")
    _common_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", prog=script)
        _common_args(p, top=False)
        return p

    _dispatcher_command(command("dispatcher", "run a dispatcher"))
    _worker_command(command("worker", "run worker processes"))

    p = command("submit", "submit a task (and optionally wait for its result)")
    address_arg(p)
    p.add_argument("task", metavar="TASK")
    p.add_argument("args", nargs="*", metavar="ARG", help="arguments: JSON when they parse, else strings")
    p.add_argument("--kwarg", action="append", default=[], metavar="NAME=VALUE",
                   help="a keyword argument (JSON or string)")  # fmt: skip
    p.add_argument("--wait", action="store_true",
                   help="wait and print the result as JSON (warns if no connected worker offers TASK)")  # fmt: skip
    p.add_argument("--require-worker", action="store_true",
                   help="fail at once (exit 1, nothing submitted) if no connected worker offers TASK")  # fmt: skip
    p.add_argument("--timeout", type=float, help="deadline in seconds from now, queueing included")
    p.add_argument("--retries", type=int, help="retries after the task raises (default: the task's own)")
    p.add_argument("--delay", type=float, help="seconds before it may start")
    p.add_argument("--priority", type=int, help="higher runs first")
    _security_args(p, server=False)

    p = command("result", "print a task's result (by the id submit printed)")
    address_arg(p)
    p.add_argument("id", metavar="ID")
    p.add_argument("--wait", action="store_true", help="wait for the task to end (else exit 4 if it has not)")
    _security_args(p, server=False)

    p = command("cancel", "cancel a queued or running task")
    address_arg(p)
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", help="why (it ends up in the task's outcome)")
    _security_args(p, server=False)

    p = command("broadcast", "send a message to every connected worker's on_message")
    address_arg(p)
    p.add_argument("message", metavar="JSON", help="the message: JSON when it parses, else a string")
    _security_args(p, server=False)

    p = command("status", "show a dispatcher's status (task counts start from zero when the dispatcher starts)")
    address_arg(p, optional=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _security_args(p, server=False)

    p = command("tasks", "list a dispatcher's recent task outcomes (or with --queued, its unfinished tasks)")
    address_arg(p, optional=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="only outcomes other than ok")
    which.add_argument("--queued", action="store_true", help="the tasks not ended yet: queued, delayed, running")
    p.add_argument("--limit", type=int, default=defaults.TASKS_LISTED, metavar="N", help="at most N, newest first (default %(default)d)")
    p.add_argument("--json", action="store_true", help="print JSON (one array) instead of a table")
    _security_args(p, server=False)

    p = command("stop", "stop a dispatcher gracefully (and with --workers, its workers)")
    address_arg(p, optional=True)
    p.add_argument("--grace", type=float, help="seconds to let running tasks finish (default: the dispatcher's)")
    p.add_argument("--workers", action="store_true",
                   help="stop the connected workers too (they drain and exit 0) instead of letting them wait")  # fmt: skip
    _security_args(p, server=False)

    _schedule_command(command("schedule", "add, list, remove, pause, resume or trigger schedules in time"), script)

    p = sub.add_parser("conformance", help="check a worker program in any language against the protocol",
                       description="Start a dispatcher on a free loopback port, run COMMAND with "
                       "TRIOSCHEDULE_CONNECT=HOST:PORT in its environment, and check the worker it starts "
                       "(docs/PROTOCOL.md, section 13). Exits 1 if any check fails.")  # fmt: skip
    _common_args(p, top=False)
    p.add_argument("--skip", action="append", default=[], metavar="CHECK",
                   help="leave a check out (repeatable), e.g. deadline for a worker without deadlines")  # fmt: skip
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed check")
    p.add_argument("worker_command", nargs="+", metavar="COMMAND", help="the worker program and its arguments, after --")
    return parser


def _schedule_command(p: argparse.ArgumentParser, script: str | None) -> None:
    ops = p.add_subparsers(dest="op", required=True, metavar="OP")

    def op(name: str, help: str) -> argparse.ArgumentParser:
        q = ops.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", prog=script)
        _common_args(q, top=False)
        address_arg(q)
        return q

    q = op("add", "add a schedule, or update the one of that name (docs/SCHEDULES.md)")
    q.add_argument("name", metavar="NAME", help="the schedule's stable name")
    q.add_argument("task", metavar="TASK")
    q.add_argument("args", nargs="*", metavar="ARG", help="arguments: JSON when they parse, else strings")
    q.add_argument("--kwarg", action="append", default=[], metavar="NAME=VALUE",
                   help="a keyword argument (JSON or string)")  # fmt: skip
    trigger = q.add_mutually_exclusive_group(required=True)
    trigger.add_argument("--every", type=float, metavar="SECONDS", help="run every SECONDS")
    trigger.add_argument("--cron", metavar="EXPR", help="a cron expression: 5 fields, or 6 with seconds first")
    trigger.add_argument("--at", metavar="ISO-8601", help="run once at this time (naive: in --tz, else UTC)")
    q.add_argument("--tz", metavar="ZONE", help="IANA time zone of --cron (default UTC) and of a naive --at/--start")
    q.add_argument("--start", metavar="ISO-8601", help="anchor --every: fire times are START + k * SECONDS")
    q.add_argument("--misfire-grace", type=float, metavar="S",
                   help="seconds late a run may still start (default: no limit)")  # fmt: skip
    q.add_argument("--coalesce", choices=("latest", "earliest", "all"), default="latest",
                   help="what several missed fire times become (default %(default)s)")  # fmt: skip
    q.add_argument("--overlap", choices=("skip", "buffer-one", "allow"), default="skip",
                   help="a run due while the previous one runs (default %(default)s)")  # fmt: skip
    q.add_argument("--jitter", type=float, metavar="S",
                   help="delay each run by up to S seconds (deterministic per fire time)")  # fmt: skip
    q.add_argument("--timeout", type=float, help="each run's deadline in seconds, queueing included")
    q.add_argument("--retries", type=int, help="retries after a run raises (default: the task's own)")
    q.add_argument("--priority", type=int, help="higher runs first")
    _security_args(q, server=False)

    q = op("list", "list the schedules with their next and last runs")
    q.add_argument("--json", action="store_true", help="print JSON (one array) instead of a table")
    _security_args(q, server=False)
    for name, help in (("remove", "remove a schedule"), ("pause", "pause a schedule"),
                       ("resume", "resume a paused schedule from now on"),
                       ("trigger", "run a schedule's task now, once")):  # fmt: skip
        q = op(name, help)
        q.add_argument("name", metavar="NAME")
        _security_args(q, server=False)


def _dispatcher_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="MODULE:CLASS",
                   help="a Dispatcher subclass (default: the plain Dispatcher)")  # fmt: skip
    p.add_argument("--listen", type=parse_address, default=parse_address(DEFAULT_ADDRESS), metavar="HOST:PORT",
                   help=f"address to listen on (default {DEFAULT_ADDRESS}; port 0 picks a free one)")  # fmt: skip
    p.add_argument("--store", default=DEFAULT_STORE,
                   help=f"journal: sqlite:PATH, postgresql://USER@HOST:PORT/DB (several dispatchers may share "
                        f"one, docs/HA.md) or memory: (default {DEFAULT_STORE} in the working directory)")  # fmt: skip
    p.add_argument("--lease-ttl", type=float, default=defaults.LEASE_TTL, metavar="S",
                   help="with a shared store: how long the leader's lease lasts unrenewed; a dead leader is "
                        "replaced within about 7/6 of it (default %(default)g)")  # fmt: skip
    p.add_argument("--advertise", type=_advertise, metavar="HOST:PORT",
                   help="with a shared store: the address standbys send peers to while this dispatcher leads "
                        "(default: the --listen address; needed when listening on 0.0.0.0)")  # fmt: skip
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="serve /metrics (Prometheus), /api/status and a live status page here "
                        "(off by default; behind the admin token; docs/OPERATIONS.md)")  # fmt: skip
    _liveness_args(p)
    p.add_argument("--handshake-timeout", type=float, default=defaults.HANDSHAKE_TIMEOUT, metavar="S",
                   help="how long a new connection may take to say hello (default %(default)g)")  # fmt: skip
    p.add_argument("--session-grace", type=float, default=defaults.SESSION_GRACE, metavar="S",
                   help="how long a lost worker keeps its tasks (default %(default)g)")  # fmt: skip
    p.add_argument("--drain-grace", type=float, default=defaults.DRAIN_GRACE, metavar="S",
                   help="how long stop lets running tasks finish (default %(default)g)")  # fmt: skip
    p.add_argument("--max-connections", type=int, default=defaults.MAX_CONNECTIONS,
                   help="connections served at once (default %(default)d)")  # fmt: skip
    p.add_argument("--max-queued", type=int, default=defaults.MAX_QUEUED,
                   help="unfinished tasks accepted at once (default %(default)d)")  # fmt: skip
    p.add_argument("--max-client-queued", type=int, default=defaults.MAX_CLIENT_QUEUED,
                   help="unfinished tasks per client (default %(default)d)")  # fmt: skip
    p.add_argument("--max-frame-size", type=int, default=defaults.MAX_FRAME_SIZE, metavar="BYTES",
                   help="largest frame accepted (default %(default)d)")  # fmt: skip
    p.add_argument("--max-losses", type=int, default=defaults.MAX_LOSSES, metavar="N",
                   help="times a task may lose its worker before it ends as lost (default %(default)d: "
                        "it runs at most N+1 times)")  # fmt: skip
    p.add_argument("--result-ttl", type=float, default=defaults.RESULT_TTL, metavar="S",
                   help="how long finished outcomes are kept for result and reattaching (default %(default)g)")  # fmt: skip
    p.add_argument("--max-results", type=int, default=defaults.MAX_RESULTS, metavar="N",
                   help="how many finished outcomes are kept (default %(default)d)")  # fmt: skip
    p.add_argument("--history", type=int, default=defaults.HISTORY, metavar="N",
                   help="ended tasks kept for `tasks` and status (default %(default)d; 0 keeps none)")  # fmt: skip
    _security_args(p, server=True)


def _worker_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODULE:CLASS", help="a Worker subclass (module or path/to/file.py)")
    p.add_argument("--connect", type=parse_addresses, metavar=ADDRESSES,
                   default=os.environ.get("TRIOSCHEDULE_CONNECT") or DEFAULT_ADDRESS,  # a string: parsed by type=
                   help="the dispatcher's address, or every dispatcher sharing one store, comma-separated "
                        f"(default $TRIOSCHEDULE_CONNECT, else {DEFAULT_ADDRESS})")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=defaults.CONCURRENCY,
                   help="tasks run at once in each worker process (default %(default)d: raise it for tasks "
                        "that wait on I/O)")  # fmt: skip
    p.add_argument("--prefetch", type=int, help="tasks sent ahead of time per process (default: the Worker's)")
    p.add_argument("--processes", type=int, metavar="N",
                   help="run N worker processes under a supervisor that restarts them if they die and reloads "
                        "them one at a time on SIGHUP (without it: one process, no supervisor)")  # fmt: skip
    p.add_argument("--max-tasks-per-child", type=int, metavar="N",
                   help="a worker process drains and is replaced after taking N tasks (runs a supervisor)")  # fmt: skip
    p.add_argument("--max-memory-per-child", type=float, metavar="MiB",
                   help="a worker process drains and is replaced once its resident memory passes MiB, checked "
                        "every second (runs a supervisor)")  # fmt: skip
    # Set by the supervisor on its children's command lines; not for people.
    p.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--restarts", type=int, help=argparse.SUPPRESS)
    p.add_argument("--name", help="worker name shown in status")
    _liveness_args(p)
    p.add_argument("--drain-grace", type=float, default=defaults.DRAIN_GRACE, metavar="S",
                   help="how long stop lets running tasks finish (default %(default)g)")  # fmt: skip
    p.add_argument("--blocked-warning", type=float, default=defaults.BLOCKED_WARNING, metavar="S",
                   help="warn when a task blocks the event loop this long (default %(default)g; 0 turns it off)")  # fmt: skip
    _security_args(p, server=False)


def _liveness_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat-interval", type=float, default=defaults.HEARTBEAT_INTERVAL, metavar="S",
                   help="seconds between heartbeats (default %(default)g)")  # fmt: skip
    p.add_argument("--heartbeat-timeout", type=float, default=defaults.HEARTBEAT_TIMEOUT, metavar="S",
                   help="silence after which the peer counts as gone (default %(default)g)")  # fmt: skip


def _security_args(parser: argparse.ArgumentParser, *, server: bool) -> None:
    parser.add_argument("--token", help="shared secret (default: $TRIOSCHEDULE_TOKEN)")
    if server:
        parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
        parser.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert (PEM)")
        parser.add_argument("--tls-client-ca", metavar="FILE",
                            help="require client certificates signed by this CA (mutual TLS)")  # fmt: skip
    else:
        parser.add_argument("--tls-ca", metavar="FILE", help="connect with TLS, trusting this CA (PEM)")
        parser.add_argument("--tls-cert", metavar="FILE", help="client certificate for mutual TLS (PEM)")
        parser.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert (PEM)")
