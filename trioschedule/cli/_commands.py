"""What each command does with its parsed arguments: build the object, run it, print the outcome.

Each builder turns arguments into exactly the constructor call a Python user
would write, so the command line adds nothing the API lacks.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .._client import Client, open_client
from .._conformance import run_conformance
from .._dispatcher.dispatcher import Dispatcher
from .._errors import StoreFenced, TaskError, TriosError, UnknownSchedule, UnknownTaskId
from .._handles import unwrap
from .._net.addresses import format_address
from .._net.security import client_ssl_context, server_ssl_context, token_from_env
from .._protocol import messages as m
from .._util import single_error
from .._worker import Worker
from ._format import format_schedules, format_status, format_tasks
from ._loading import load_object
from ._parser import parse_arg
from ._supervisor import EXIT_RETIRED, notify_ready, supervise

__all__ = ["COMMANDS", "UsageError", "address_text", "build_dispatcher", "build_worker"]

log = logging.getLogger("trioschedule")
T = TypeVar("T")

#: How long ``submit --wait`` waits before checking that some connected worker offers the task.
UNOFFERED_GRACE = 1.0
#: How long ``result`` without ``--wait`` waits for the dispatcher's answer.
RESULT_ANSWER_WAIT = 2.0


class UsageError(Exception):
    """Bad arguments or configuration: exit code 2 with the message."""


# ---------------------------------------------------------- dispatcher
def build_dispatcher(cls: type[Dispatcher], args: argparse.Namespace) -> Dispatcher:
    """``cls(...)`` configured by the ``dispatcher`` command's options."""
    if args.tls_key and not args.tls_cert:
        raise UsageError("--tls-key needs --tls-cert")
    ssl_context = server_ssl_context(args.tls_cert, args.tls_key, client_ca=args.tls_client_ca) if args.tls_cert else None
    host, port = args.listen
    return cls(
        host, port, token=token_from_env(args.token), ssl_context=ssl_context, store=args.store,
        heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
        handshake_timeout=args.handshake_timeout, session_grace=args.session_grace, drain_grace=args.drain_grace,
        max_connections=args.max_connections, max_queued=args.max_queued,
        max_client_queued=args.max_client_queued, max_frame_size=args.max_frame_size, max_losses=args.max_losses,
        result_ttl=args.result_ttl, max_results=args.max_results, history=args.history, http=getattr(args, "http", None),
        lease_ttl=args.lease_ttl, advertise=args.advertise,
    )  # fmt: skip


def run_dispatcher(args: argparse.Namespace) -> int:
    cls = _load_subclass(args.target, Dispatcher) if args.target else Dispatcher
    first = True
    while True:
        dispatcher = build_dispatcher(cls, args)

        async def run(dispatcher: Dispatcher = dispatcher, first: bool = first) -> None:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(dispatcher.serve)
                if first:
                    _freeze_startup_objects()
                    print(f"trioschedule dispatcher listening on {args.listen[0]}:{bound} (pid {os.getpid()})",
                          flush=True)  # fmt: skip
                if dispatcher.http_port is not None:
                    host = (dispatcher.http.rpartition(":")[0] if dispatcher.http else "") or "0.0.0.0"
                    scheme = "https" if dispatcher.ssl_context is not None else "http"
                    print(f"trioschedule dispatcher status page on {scheme}://{host}:{dispatcher.http_port}/",
                          flush=True)  # fmt: skip

        try:
            trio.run(_run_with_signals, run, dispatcher.stop)
        except BaseException as exc:
            # A dispatcher on a shared store that lost its lease has dropped everything it knew: a
            # fresh one in its place stands by again, as a service should (docs/HA.md).
            if not _stepped_down(exc):
                raise
            log.warning("standing by again as a new dispatcher after stepping down")
            first = False
            continue
        return 0


def _stepped_down(exc: BaseException) -> bool:
    """True if ``exc`` is a dispatcher's step-down, alone or as the one failure of a nursery."""
    if isinstance(exc, BaseExceptionGroup):
        exc = single_error(exc) or exc
    return isinstance(exc, StoreFenced)


# -------------------------------------------------------------- worker
def build_worker(cls: type[Worker], args: argparse.Namespace) -> Worker:
    """``cls(...)`` configured by the ``worker`` command's options (one process's worth).

    One address is passed as ``host, port`` alone, as before, so a subclass
    whose ``__init__`` predates ``addresses=`` keeps working.
    """
    (host, port), *more = args.connect
    options: dict[str, Any] = {"prefetch": args.prefetch} if args.prefetch is not None else {}
    if more:
        options["addresses"] = args.connect
    return cls(
        host, port, token=token_from_env(args.token), ssl_context=_client_ssl(args), concurrency=args.concurrency,
        name=args.name, heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
        drain_grace=args.drain_grace, blocked_warning=args.blocked_warning or None,
        max_tasks=args.max_tasks_per_child, max_memory=args.max_memory_per_child, restarts=args.restarts or 0, **options,
    )  # fmt: skip


def run_worker(args: argparse.Namespace) -> int:
    """One worker process; or, with --processes N (or a per-child limit), a supervisor of N children.

    A child that retired (a per-child limit) exits EXIT_RETIRED, which tells
    its supervisor to replace it.
    """
    cls = _load_subclass(args.target, Worker)
    if args.concurrency < 1 or (args.processes is not None and args.processes < 1):
        raise UsageError("--concurrency and --processes must be at least 1")
    if (args.max_tasks_per_child or 1) < 1 or (args.max_memory_per_child or 1) <= 0:
        raise UsageError("--max-tasks-per-child must be at least 1 and --max-memory-per-child positive")
    limited = args.max_tasks_per_child is not None or args.max_memory_per_child is not None
    if not args.supervised and (args.processes is not None or limited):
        args.processes = args.processes or 1
        return supervise(args)
    worker = build_worker(cls, args)
    _freeze_startup_objects()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            notify_ready()  # a reloading supervisor waits for this before it drains the old child

    trio.run(_run_with_signals, run, worker.stop)
    return EXIT_RETIRED if worker.retired else 0


# ------------------------------------------------------------- clients
async def submit(args: argparse.Namespace) -> int:
    kwargs = {}
    for item in args.kwarg:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--kwarg expects NAME=VALUE, got {item!r}")
        kwargs[key] = _json_arg(value, f"--kwarg {key}")
    values = [_json_arg(text, f"argument {i + 1}") for i, text in enumerate(args.args)]
    # Options not given are left to Client.submit's own defaults.
    options = {k: getattr(args, k) for k in ("timeout", "retries", "delay", "priority") if getattr(args, k) is not None}
    # Admin, to read the status: which tasks the connected workers offer.
    checks = args.wait or args.require_worker
    async with _open_client(args, reconnect_attempts=5, role="admin" if checks else "client") as client:
        if args.require_worker:
            offered = await _offered(client)
            if args.task not in offered:
                print(f"trioschedule: no connected worker offers task {args.task!r} ({_offer_list(offered)}); "
                      "nothing was submitted", file=sys.stderr)  # fmt: skip
                return 1
        handle = await client.submit(args.task, values, kwargs, **options)
        if not args.wait:
            print(handle.id, flush=True)
            return 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_warn_if_unoffered, client, args, handle.id)
            try:
                value = await handle.result()
            except TaskError as exc:
                print(f"task {handle.id} failed: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                where = address_text(args.address)
                print(f"interrupted: task {handle.id} stays submitted; `trioschedule result {where} {handle.id}` "
                      f"reads its result, `trioschedule cancel {where} {handle.id}` cancels it",
                      file=sys.stderr)  # fmt: skip
                raise
            finally:
                nursery.cancel_scope.cancel()
        print(json.dumps(value), flush=True)
        return 0


async def _offered(client: Client) -> set[str]:
    """The task names that the dispatcher's connected workers offer."""
    document = await client.status()
    return {name for worker in document["workers"] if worker["connected"] for name in worker["tasks"]}


def _offer_list(offered: set[str]) -> str:
    return f"workers offer: {', '.join(sorted(offered))}" if offered else "no worker is connected"


async def _warn_if_unoffered(client: Client, args: argparse.Namespace, task_id: str) -> None:
    """While ``submit --wait`` waits: say so if no connected worker offers the task, instead of waiting in silence."""
    await trio.sleep(UNOFFERED_GRACE)  # a worker that is just connecting gets a moment
    try:
        offered = await _offered(client)
    except TriosError:  # the result's wait will say what went wrong with the connection
        return
    if args.task not in offered:
        print(f"trioschedule: warning: no connected worker offers task {args.task!r} ({_offer_list(offered)}); "
              f"task {task_id} waits until one does (`trioschedule cancel {address_text(args.address)} {task_id}` cancels it, "
              "--require-worker fails at once instead)", file=sys.stderr, flush=True)  # fmt: skip


async def result(args: argparse.Namespace) -> int:
    """Print a task's value as JSON (exit 0), or how it failed (exit 1); without --wait, exit 4 if it has not ended."""
    async with _open_client(args, reconnect_attempts=5) as client:
        handle = client.task(args.id)
        if args.wait:
            outcome = await handle.outcome()
        else:
            # The dispatcher answers at once for a task that has ended (or that
            # it does not know); silence means it is still queued or running.
            with trio.move_on_after(RESULT_ANSWER_WAIT):
                outcome = await handle.outcome()
            if not handle.done():
                print(f"task {args.id} has not finished yet (queued or running); --wait waits for it", file=sys.stderr)
                return 4
    return _print_outcome(args.id, outcome)


async def cancel(args: argparse.Namespace) -> int:
    """Cancel a task and print how it ended: exit 0 if it was cancelled, 1 if it had ended already or is unknown."""
    async with _open_client(args, reconnect_attempts=5) as client:
        handle = client.task(args.id)
        await handle.cancel(args.reason)
        outcome = await handle.outcome()  # a running task's worker acknowledges (or the dispatcher gives up on it)
    if outcome.status == m.CANCELLED:
        print(f"task {args.id} cancelled" + (f": {outcome.reason}" if outcome.reason else ""), flush=True)
        return 0
    if outcome.status == m.UNKNOWN:
        return _print_outcome(args.id, outcome)
    print(f"task {args.id} had already ended ({outcome.status}): nothing to cancel", file=sys.stderr)
    return 1


async def broadcast(args: argparse.Namespace) -> int:
    message = parse_arg(args.message)
    async with _open_client(args, reconnect_attempts=5) as client:
        await client.broadcast(message)
        where = format_address(client.address)
    print(f"broadcast sent to the workers of {where}", flush=True)
    return 0


def _json_arg(text: str, label: str) -> Any:
    """``parse_arg(text)``, refusing what JSON cannot carry (NaN, Infinity) with the argument's position."""
    value = parse_arg(text)
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise UsageError(f"{label} ({text!r}) is not a JSON value: NaN and Infinity cannot be sent; quote it "
                         "as a JSON string ('\"NaN\"') to send the text") from None  # fmt: skip
    return value


def _print_outcome(task_id: str, outcome: m.Outcome) -> int:
    try:
        value = unwrap(outcome)
    except UnknownTaskId as exc:
        print(f"trioschedule: {exc.args[0]}", file=sys.stderr)
        return 1
    except TaskError as exc:
        print(f"task {task_id} failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(value), flush=True)
    return 0


async def status(args: argparse.Namespace) -> int:
    async with _open_client(args, role="admin", reconnect_attempts=0) as client:
        document = await client.status()
    print(json.dumps(document, indent=2, sort_keys=True) if args.json else format_status(document))
    return 0


async def tasks(args: argparse.Namespace) -> int:
    async with _open_client(args, role="admin", reconnect_attempts=0) as client:
        entries = await client.tasks(failed=args.failed, unfinished=args.queued, limit=args.limit)
    print(json.dumps(entries, indent=2, sort_keys=True) if args.json else format_tasks(entries, unfinished=args.queued))
    return 0


async def stop(args: argparse.Namespace) -> int:
    async with _open_client(args, role="admin", reconnect_attempts=0) as client:
        grace = await client.stop_dispatcher(args.grace, workers=args.workers)
        also = ", its workers too" if args.workers else ""
        print(f"dispatcher at {format_address(client.address)} is stopping (grace {grace:g} s{also})", flush=True)
    return 0


async def schedule(args: argparse.Namespace) -> int:
    async with _open_client(args, role="admin", reconnect_attempts=0) as client:
        try:
            return await _schedule_op(client, args)
        except UnknownSchedule as exc:
            print(f"trioschedule: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            raise UsageError(str(exc)) from None


async def _schedule_op(client: Client, args: argparse.Namespace) -> int:
    op = args.op
    if op == "add":
        kwargs = {}
        for item in args.kwarg:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--kwarg expects NAME=VALUE, got {item!r}")
            kwargs[key] = _json_arg(value, f"--kwarg {key}")
        values = [_json_arg(text, f"argument {i + 1}") for i, text in enumerate(args.args)]
        # Options not given are left to Client.add_schedule's own defaults.
        given = {k: getattr(args, k) for k in ("jitter", "priority") if getattr(args, k) is not None}
        entry = await client.add_schedule(
            args.name, args.task, values, kwargs, every=args.every, start=args.start, cron=args.cron, tz=args.tz,
            at=args.at, misfire_grace=args.misfire_grace, coalesce=args.coalesce, overlap=args.overlap,
            timeout=args.timeout, retries=args.retries, **given,
        )  # fmt: skip
        print(f"schedule {entry['name']}: {entry['task']} {entry['spec']}, next run {entry['next_run'] or 'none'}",
              flush=True)  # fmt: skip
    elif op == "list":
        entries = await client.schedules()
        print(json.dumps(entries, indent=2, sort_keys=True) if args.json else format_schedules(entries), flush=True)
    elif op == "remove":
        if not await client.remove_schedule(args.name):
            print(f"trioschedule: no schedule named {args.name!r}", file=sys.stderr)
            return 1
        print(f"schedule {args.name} removed", flush=True)
    elif op == "pause":
        await client.pause_schedule(args.name)
        print(f"schedule {args.name} paused", flush=True)
    elif op == "resume":
        entry = await client.resume_schedule(args.name)
        print(f"schedule {args.name} resumed, next run {entry['next_run'] or 'none'}", flush=True)
    else:
        print(await client.trigger_schedule(args.name), flush=True)
    return 0


#: Command name -> what runs it (given the parsed arguments; returns the exit code).
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "dispatcher": run_dispatcher,
    "worker": run_worker,
    "submit": lambda args: trio.run(submit, args),
    "result": lambda args: trio.run(result, args),
    "cancel": lambda args: trio.run(cancel, args),
    "broadcast": lambda args: trio.run(broadcast, args),
    "status": lambda args: trio.run(status, args),
    "tasks": lambda args: trio.run(tasks, args),
    "stop": lambda args: trio.run(stop, args),
    "schedule": lambda args: trio.run(schedule, args),
    "conformance": lambda args: trio.run(
        functools.partial(run_conformance, args.worker_command, skip=tuple(args.skip), fail_fast=args.fail_fast)
    ),
}


# ------------------------------------------------------------- helpers
def _load_subclass(target: str, base: type[T]) -> type[T]:
    cls = load_object(target)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UsageError(f"{target} is not a {base.__name__} subclass")
    return cls


def _client_ssl(args: argparse.Namespace) -> Any:
    if not (args.tls_ca or args.tls_cert):
        return None
    return client_ssl_context(args.tls_ca, certfile=args.tls_cert, keyfile=args.tls_key)


def _open_client(args: argparse.Namespace, **options: Any) -> AbstractAsyncContextManager[Client]:
    """A client for ``args.address`` (one dispatcher, or every one sharing a store: it finds the leader)."""
    return open_client(
        addresses=args.address, leader_wait=args.leader_wait, token=token_from_env(args.token),
        ssl_context=_client_ssl(args), **options,
    )  # fmt: skip


def address_text(addresses: list[tuple[str, int]]) -> str:
    """An address list as the command line spells it: ``HOST:PORT,HOST:PORT``."""
    return ",".join(format_address(address) for address in addresses)


async def _run_with_signals(run: Callable[[], Awaitable[Any]], stop: Callable[[], Any]) -> None:
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


def _freeze_startup_objects() -> None:
    """Move everything alive now (modules, classes, the user's code) out of the garbage collector's way.

    The command owns its process, so it can do what an embedding application
    should decide for itself: a full collection then no longer walks the
    startup heap (docs/PERFORMANCE.md, "Garbage collection").
    """
    gc.collect()
    gc.freeze()
