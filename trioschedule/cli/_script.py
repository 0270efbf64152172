"""Workerman's verbs for a script: ``python x.py start|stop|restart|reload|status``.

A script that defines a Dispatcher or Worker subclass calls
:func:`run_script`; ``start`` runs the ``dispatcher`` or ``worker`` command
in this process and records its pid in a pid file (``NAME.pid`` in the
working directory, or ``--pid-file PATH``), which ``stop``, ``restart``,
``reload`` and ``status`` read.  Nothing forks into the background: ``start
-d`` says how to run under systemd instead (docs/OPERATIONS.md).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from .. import _defaults as defaults

__all__ = ["run_script"]

#: Seconds ``stop`` waits for the process to exit: a drain's grace and a margin.
STOP_WAIT = defaults.DRAIN_GRACE + 15


def run_script(cls: type, argv: Sequence[str] | None = None) -> int:
    """Workerman's ``php start.php start|stop|restart|reload|status`` for a script that defines ``cls``.

    ``python my_dispatcher.py start [options]`` is ``trioschedule dispatcher
    my_dispatcher.py:MyDispatcher [options]`` (a Worker subclass: ``worker``,
    always under a supervisor, so that ``reload`` works); ``stop`` sends
    SIGTERM to the pid in the pid file and waits for the drain (a dispatcher
    given ``HOST:PORT``, or without a live pid file, is asked over the
    network); ``restart`` is ``stop`` then ``start``; ``reload`` sends a
    worker's supervisor SIGHUP (its children are replaced one at a time);
    ``status`` prints the dispatcher's status (for a worker: its own
    processes in the dispatcher's table).  Usage and errors name the
    script, not ``trioschedule``::

        if __name__ == "__main__":
            sys.exit(run_script(MyDispatcher))
    """
    from .._dispatcher.dispatcher import Dispatcher

    argv = list(sys.argv[1:] if argv is None else argv)
    script = f"python {sys.argv[0]}"
    role = "dispatcher" if issubclass(cls, Dispatcher) else "worker"
    commands = ("start", "stop", "restart", "reload", "status")
    command, rest = (argv[0] if argv else ""), argv[1:]
    if command not in commands:
        print(f"usage: {script} {'|'.join(commands)} [options]  ({script} start --help lists the options)",
              file=sys.stderr)  # fmt: skip
        return 2
    if any(arg in ("-d", "--daemon") for arg in rest):
        path = os.path.abspath(sys.argv[0])
        print(f"{script}: error: -d: trioschedule does not fork into the background; run it under systemd "
              f"(unit files in docs/OPERATIONS.md, \"Running under systemd\"), or for a quick try: "
              f"systemd-run --user --unit={role} {sys.executable} {path} start", file=sys.stderr)  # fmt: skip
        return 2
    pid_file, rest = _pid_file_option(rest, default=f"{os.path.splitext(os.path.basename(sys.argv[0]))[0]}.pid")
    verb = _Verbs(cls, role, script, os.path.abspath(pid_file))
    if command == "restart":
        code = verb.stop([], quiet_if_not_running=True)
        return code if code else verb.start(rest)
    return int(getattr(verb, command)(rest))


class _Verbs:
    def __init__(self, cls: type, role: str, script: str, pid_file: str) -> None:
        self.cls, self.role, self.script, self.pid_file = cls, role, script, pid_file

    def start(self, rest: list[str]) -> int:
        from . import main

        pid = self.running_pid()
        if pid is not None:
            print(f"{self.script}: error: already running (pid {pid}, pid file {self.pid_file}); "
                  f"`{self.script} stop` first, or `{self.script} restart`", file=sys.stderr)  # fmt: skip
            return 1
        target = f"{os.path.abspath(inspect.getfile(self.cls))}:{self.cls.__qualname__}"
        if self.role == "worker" and not any(a == "--processes" or a.startswith("--processes=") for a in rest):
            rest = [*rest, "--processes", "1"]  # a supervisor, so that reload works
        with open(self.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
        try:
            return main([self.role, target, *rest], script=f"{self.script} start")
        finally:
            if self.recorded_pid() == os.getpid():
                os.unlink(self.pid_file)

    def stop(self, rest: list[str], *, quiet_if_not_running: bool = False) -> int:
        from . import main

        pid = self.running_pid()
        if pid is None or (self.role == "dispatcher" and rest and not rest[0].startswith("-")):
            if self.role == "dispatcher" and not quiet_if_not_running:
                return main(["stop", *rest], script=f"{self.script} stop")  # over the network
            if quiet_if_not_running:
                return 0
            print(f"{self.script}: not running (no live process in {self.pid_file})", file=sys.stderr)
            return 1
        print(f"stopping pid {pid} (SIGTERM: running tasks get their grace to finish) ...", flush=True)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline:
            if not _alive(pid):
                print(f"pid {pid} stopped", flush=True)
                return 0
            time.sleep(0.1)
        print(f"{self.script}: error: pid {pid} still running after {STOP_WAIT:g} s; `kill -KILL {pid}` stops it "
              "at once", file=sys.stderr)  # fmt: skip
        return 1

    def reload(self, rest: list[str]) -> int:
        if self.role == "dispatcher":
            print(f"{self.script}: error: a dispatcher has nothing to reload: `{self.script} restart` restarts it "
                  "(workers reconnect and resume their sessions; the journal keeps every task)", file=sys.stderr)  # fmt: skip
            return 2
        pid = self.running_pid()
        if pid is None:
            print(f"{self.script}: not running (no live process in {self.pid_file})", file=sys.stderr)
            return 1
        os.kill(pid, signal.SIGHUP)
        print(f"reload requested: the supervisor (pid {pid}) replaces its worker processes one at a time, "
              "each new one connected before the old one drains", flush=True)  # fmt: skip
        return 0

    def status(self, rest: list[str]) -> int:
        from . import main

        if self.role == "dispatcher":
            return main(["status", *rest], script=f"{self.script} status")
        pid = self.running_pid()
        if pid is None:
            print(f"{self.script}: not running (no live process in {self.pid_file})", file=sys.stderr)
            return 1
        parser = argparse.ArgumentParser(prog=f"{self.script} status",
                                         description="This worker's processes in its dispatcher's status.")  # fmt: skip
        parser.add_argument("address", nargs="?", metavar="HOST:PORT",
                            default=os.environ.get("TRIOSCHEDULE_CONNECT") or defaults.ADDRESS)  # fmt: skip
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--token")
        args = parser.parse_args(rest)
        children = _children(pid)
        print(f"supervisor pid {pid}; worker processes: {', '.join(map(str, children)) or 'none'}", flush=True)
        return _worker_status(args.address, set(children), as_json=args.json, token=args.token)

    def recorded_pid(self) -> int | None:
        try:
            with open(self.pid_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """The pid in the pid file if that process is alive (and, where /proc tells, runs this script)."""
        pid = self.recorded_pid()
        if pid is None or not _alive(pid):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().decode(errors="replace")
        except OSError:
            return pid  # no /proc: trust the pid file
        return pid if os.path.basename(self.script.split(" ", 1)[1]) in command else None


def _worker_status(address: str, children: set[int], *, as_json: bool, token: str | None) -> int:
    """The dispatcher's status with its worker table cut down to this supervisor's children."""
    import trio

    from .._client import open_client
    from .._net.security import token_from_env
    from ._format import format_status
    from ._parser import parse_address

    host, port = parse_address(address)

    async def fetch() -> dict[str, Any]:
        async with open_client(host, port, token=token_from_env(token), role="admin", reconnect_attempts=0) as client:
            return await client.status()

    try:
        document = trio.run(fetch)
    except Exception as exc:  # noqa: BLE001 - say why, as the status command would
        print(f"cannot read the status of the dispatcher at {address}: {exc}", file=sys.stderr)
        return 3
    document["workers"] = [w for w in document["workers"] if w["pid"] in children]
    print(json.dumps(document, indent=2, sort_keys=True) if as_json else format_status(document))
    return 0


def _pid_file_option(rest: list[str], *, default: str) -> tuple[str, list[str]]:
    """Take ``--pid-file PATH`` (or ``--pid-file=PATH``) out of ``rest``."""
    out: list[str] = []
    path = default
    items = iter(rest)
    for arg in items:
        if arg == "--pid-file":
            path = next(items, default)
        elif arg.startswith("--pid-file="):
            path = arg.split("=", 1)[1]
        else:
            out.append(arg)
    return path, out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet waited for) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            found.append(int(entry))
                except (OSError, ValueError, IndexError):
                    continue
    except OSError:
        pass
    return sorted(found)
