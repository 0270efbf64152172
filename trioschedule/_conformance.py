"""The conformance kit: check a worker program, in any language, the way a dispatcher needs it.

``python -m trioschedule conformance -- COMMAND [ARG ...]`` starts a
dispatcher on a free loopback port behind a small relay that reads every
frame both ways, runs ``COMMAND`` with ``TRIOSCHEDULE_CONNECT=HOST:PORT`` in
its environment, and checks the worker it starts, one line per check.

The worker must offer these tasks (``examples/worker.py`` and
``examples/php/worker.php`` do):

* ``add(a, b)`` returns ``a + b``;
* ``fail(message)`` raises an error whose message contains ``message``;
* ``slow_square(x, seconds)`` returns ``x * x`` after ``seconds``, while the
  worker stays responsive (heartbeats, cancel, deadlines);

and answer a broadcast ``{"ping": X}`` with a message ``{"pong": X, ...}``.
docs/PROTOCOL.md §13 lists the checks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import trio

from ._dispatcher.dispatcher import Dispatcher
from ._errors import TaskCancelled, TaskFailed, TaskTimeout
from ._peer import Peer
from ._protocol.framing import FrameDecoder

__all__ = ["CHECKS", "REQUIRED_TASKS", "run_conformance"]

REQUIRED_TASKS = ("add", "fail", "slow_square")
CHECKS = ("handshake", "result", "error", "attempts", "heartbeat-idle", "heartbeat-busy", "cancel", "deadline",
          "broadcast", "reconnect", "resume", "graceful-stop")  # fmt: skip
# The kit's dispatcher notices silence after TIMEOUT: short, yet above the reference
# peers' own 2 s heartbeat (they keep their settings rather than adopt the welcome's).
HEARTBEAT, TIMEOUT, GRACE = 1.0, 5.0, 4.0
WAIT = 10.0  # how long a check waits for what it expects


class CheckFailed(Exception):
    """A check saw something else than it expected; the message says what."""


class Skipped(Exception):
    """A check that does not apply (the worker does not claim the feature, or ``--skip``)."""


class Relay:
    """One worker connection, relayed to the dispatcher; every frame both ways is kept as JSON."""

    def __init__(self, worker: trio.SocketStream, dispatcher: trio.SocketStream) -> None:
        self.streams = (worker, dispatcher)
        self.up: list[dict[str, Any]] = []  # worker -> dispatcher
        self.down: list[dict[str, Any]] = []
        self.closed = trio.Event()

    async def pump(self, source: trio.SocketStream, sink: trio.SocketStream, into: list[dict[str, Any]]) -> None:
        decoder: FrameDecoder | None = FrameDecoder()
        try:
            while data := await source.receive_some(65536):
                if decoder is not None:  # read before passing on: what the dispatcher acts on is already here
                    try:
                        decoder.receive_data(data)
                        for payload in decoder.frames():
                            message = json.loads(payload)
                            into.append(message if isinstance(message, dict) else {"type": None})
                    except Exception:  # noqa: BLE001 - garbage is the dispatcher's to refuse; we stop reading it
                        decoder = None
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.cut()

    def cut(self) -> None:
        for stream in self.streams:
            stream.socket.close()  # wakes the other pump too
        self.closed.set()

    def sent(self, kind: str) -> list[dict[str, Any]]:
        return [message for message in self.up if message.get("type") == kind]

    def outcomes(self, task_id: str) -> list[dict[str, Any]]:
        return [o for r in self.sent("results") for o in r.get("results", []) if isinstance(o, dict) and o.get("id") == task_id]

    def started(self, task_id: str) -> bool:
        return any(task_id in r.get("started", []) for r in self.sent("results")) or bool(self.outcomes(task_id))


class KitDispatcher(Dispatcher):
    """Keeps what workers say with ``message``, for the broadcast check."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.said: list[Any] = []

    async def on_message(self, peer: Peer, message: Any) -> None:
        self.said.append(message)


class _Warnings(logging.Handler):
    """The dispatcher's warnings (a refused frame says why there), quoted in a failure."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Kit:
    """What one run has seen (every relayed connection, the dispatcher's warnings) and reported."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.relays: list[Relay] = []
        self.warnings = _Warnings()
        self.failed = self.passed = self.skipped = 0

    @property
    def relay(self) -> Relay:
        return self.relays[-1]

    async def serve_relay(self, stream: trio.SocketStream, port: int) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", port)
        relay = Relay(stream, upstream)
        self.relays.append(relay)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.pump, stream, upstream, relay.up)
            nursery.start_soon(relay.pump, upstream, stream, relay.down)

    def report(self, name: str, ok: bool | None, detail: str) -> None:
        word = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        self.out.write(f"{word} {name}: {detail}\n")
        self.out.flush()
        if ok:
            self.passed += 1
        elif ok is None:
            self.skipped += 1
        else:
            self.failed += 1

    def why(self, since: int) -> str:
        said = self.warnings.lines[since:]
        return f" (the dispatcher said: {said[-1]})" if said else ""

    async def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        with trio.move_on_after(timeout):
            while not (value := predicate()):
                await trio.sleep(0.02)
            return value
        raise CheckFailed(f"expected {what} within {timeout:g} s")

    async def connected(self, after: int = 0) -> Relay:
        """The relay of the worker's next connection that got a welcome."""
        def welcomed() -> Relay | None:
            for relay in self.relays[after:]:
                if relay.down and relay.down[0].get("type") == "welcome" and not relay.closed.is_set():
                    return relay
            return None

        return await self.wait_for(welcomed, "the worker to connect and be welcomed (it must read TRIOSCHEDULE_CONNECT)",
                                   timeout=20)  # fmt: skip


async def _outcome(kit: Kit, handle: Any, timeout: float = WAIT) -> Any:
    """The task's outcome; fails at once if the dispatcher refuses a frame from the worker meanwhile."""
    since = len(kit.warnings.lines)

    def refused() -> bool:
        return any("protocol error" in line for line in kit.warnings.lines[since:])

    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                while not refused():
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            outcome = await handle.outcome()
            nursery.cancel_scope.cancel()
            return outcome
        raise CheckFailed("expected the task's outcome; the dispatcher refused a frame from the worker and closed")
    raise CheckFailed(f"expected the task's outcome within {timeout:g} s; none came")


async def run_conformance(command: list[str], *, out: TextIO = sys.stdout, skip: tuple[str, ...] = (),
                          fail_fast: bool = False) -> int:  # fmt: skip
    """Run every check against the worker that ``command`` starts; return 0 if none failed, else 1."""
    unknown = set(skip) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(sorted(unknown))}; the checks are {', '.join(CHECKS)}")
    kit = Kit(out)
    logger = logging.getLogger("trioschedule.dispatcher")
    logger.addHandler(kit.warnings)
    propagate, logger.propagate = logger.propagate, False  # its lines would drown the report; failures quote them
    log_file = tempfile.TemporaryFile("w+")  # noqa: SIM115 - read for the report after the worker has exited, then closed
    try:
        async with trio.open_nursery() as nursery:
            d = KitDispatcher("127.0.0.1", 0, store="memory:", heartbeat_interval=HEARTBEAT, heartbeat_timeout=TIMEOUT,
                              session_grace=GRACE, cancel_timeout=60.0, retry_backoff=0.05, retry_backoff_max=0.1,
                              drain_grace=5.0)  # fmt: skip
            port = await nursery.start(d.serve)
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            relay_port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, lambda s: kit.serve_relay(s, port), listeners)
            env = {**os.environ, "TRIOSCHEDULE_CONNECT": f"127.0.0.1:{relay_port}"}
            process = await trio.lowlevel.open_process(command, env=env, stdout=log_file, stderr=log_file)
            try:
                await _run_checks(kit, d, process, skip, fail_fast)
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(kit.warnings)
        logger.propagate = propagate
    out.write(f"{kit.passed} passed, {kit.failed} failed, {kit.skipped} skipped\n")
    if kit.failed:
        log_file.seek(0)
        tail = log_file.read()[-2000:]
        if tail:
            out.write("the worker's output ends with:\n" + tail + ("\n" if not tail.endswith("\n") else ""))
    log_file.close()
    return 1 if kit.failed else 0


async def _run_checks(kit: Kit, d: KitDispatcher, process: Any, skip: tuple[str, ...], fail_fast: bool) -> None:
    state: dict[str, Any] = {}
    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("handshake", lambda: _handshake(kit, d, process, state)),
        ("result", lambda: _result(kit, d)),
        ("error", lambda: _error(kit, d)),
        ("attempts", lambda: _attempts(kit, d)),
        ("heartbeat-idle", lambda: _idle(kit)),
        ("heartbeat-busy", lambda: _busy(kit, d)),
        ("cancel", lambda: _cancel(kit, d)),
        ("deadline", lambda: _deadline(kit, d)),
        ("broadcast", lambda: _broadcast(kit, d)),
        ("reconnect", lambda: _reconnect(kit, d, state)),
        ("resume", lambda: _resume(kit, state)),
        ("graceful-stop", lambda: _stop(kit, process)),
    ]
    for name, check in checks:
        if name in skip:
            kit.report(name, None, "skipped (--skip)")
            continue
        since = len(kit.warnings.lines)
        try:
            detail = await check()
        except Skipped as exc:
            kit.report(name, None, str(exc))
        except CheckFailed as exc:
            kit.report(name, False, f"{exc}{kit.why(since)}")
            if fail_fast or name == "handshake":
                return
        else:
            kit.report(name, True, detail)


# ------------------------------------------------------------------ checks
async def _handshake(kit: Kit, d: KitDispatcher, process: Any, state: dict[str, Any]) -> str:
    with trio.move_on_after(20):
        while not kit.relays:
            if process.returncode is not None:
                raise CheckFailed(f"the worker exited with code {process.returncode} before connecting")
            await trio.sleep(0.05)
    relay = await kit.connected()
    hello = relay.up[0]
    missing = [name for name in REQUIRED_TASKS if name not in hello.get("tasks", [])]
    if missing:
        raise CheckFailed(f"expected hello.tasks to offer {', '.join(REQUIRED_TASKS)}; {', '.join(missing)} missing")
    state["hello"] = hello
    return f"hello as {hello.get('name') or 'a worker'} offering {len(hello['tasks'])} task(s), welcomed"


async def _result(kit: Kit, d: KitDispatcher) -> str:
    handle = await d.submit("add", [2, 3])
    outcome = await _outcome(kit, handle)
    if outcome.status != "ok" or outcome.value != 5:
        raise CheckFailed(f"expected add(2, 3) to be ok 5, got {outcome.status} {outcome.value!r}")
    attempts = [o.get("attempt", 0) for relay in kit.relays for o in relay.outcomes(handle.id)]
    if attempts != [1]:
        raise CheckFailed(f"expected one outcome with attempt 1, got attempts {attempts}")
    return "add(2, 3) = 5, reported with attempt 1"


async def _error(kit: Kit, d: KitDispatcher) -> str:
    handle = await d.submit("fail", ["conformance check"])
    outcome = await _outcome(kit, handle)
    if outcome.status != "error" or outcome.error is None or "conformance check" not in outcome.error.message:
        raise CheckFailed(f"expected an error outcome whose message has 'conformance check', got {outcome.status} "
                          f"{outcome.error!r}")  # fmt: skip
    return f"fail(...) reported error {outcome.error.type}: {outcome.error.message}"


async def _attempts(kit: Kit, d: KitDispatcher) -> str:
    handle = await d.submit("fail", ["again"], retries=1)
    outcome = await _outcome(kit, handle)
    attempts = sorted(o.get("attempt", 0) for relay in kit.relays for o in relay.outcomes(handle.id))
    if outcome.status != "error" or attempts != [1, 2]:
        raise CheckFailed(f"expected a retried task's outcomes with attempts 1 then 2 (copied from each spec), "
                          f"got {attempts} and final status {outcome.status}")  # fmt: skip
    return "a retried task was reported as attempt 1, then attempt 2"


async def _idle(kit: Kit) -> str:
    relay = kit.relay
    with trio.move_on_after(TIMEOUT + 1):
        await relay.closed.wait()
        raise CheckFailed(f"expected the connection to stay open while idle; it closed: send a heartbeat whenever "
                          f"silent for welcome.heartbeat ({HEARTBEAT:g} s); the dispatcher closes after "
                          f"{TIMEOUT:g} s of silence")  # fmt: skip
    return f"connected for {TIMEOUT + 1:g} s of idleness (heartbeat {HEARTBEAT:g} s, timeout {TIMEOUT:g} s)"


async def _busy(kit: Kit, d: KitDispatcher) -> str:
    relay = kit.relay
    seconds = TIMEOUT + 1
    handle = await d.submit("slow_square", [6, seconds])
    outcome = await _outcome(kit, handle, WAIT + seconds)
    if relay.closed.is_set():
        raise CheckFailed(f"expected the connection to stay open while a task runs for {seconds:g} s; it closed: "
                          "keep sending heartbeats while tasks run")  # fmt: skip
    if outcome.status != "ok" or outcome.value != 36:
        raise CheckFailed(f"expected slow_square(6, {seconds:g}) to be ok 36, got {outcome.status} {outcome.value!r}")
    return f"slow_square(6, {seconds:g}) = 36, the connection alive throughout"


async def _started(kit: Kit, handle: Any) -> Relay:
    return await kit.wait_for(lambda: next((r for r in kit.relays if r.started(handle.id)), None),
                              f"the worker to report task {handle.id} started")  # fmt: skip


async def _cancel(kit: Kit, d: KitDispatcher) -> str:
    handle = await d.submit("slow_square", [7, 60])
    relay = await _started(kit, handle)
    await handle.cancel("conformance cancel")
    try:
        await kit.wait_for(lambda: relay.outcomes(handle.id), "", timeout=5)
    except CheckFailed:
        pass
    reported = [o.get("status") for o in relay.outcomes(handle.id)]
    if reported != ["cancelled"]:
        raise CheckFailed(f"expected the worker to report 'cancelled' within 5 s of the cancel, got {reported or 'nothing'}")
    try:
        await handle.result()
    except TaskCancelled as exc:
        return f"a running task was cancelled and reported: {exc}"
    except Exception as exc:  # noqa: BLE001 - any other outcome is the failure
        raise CheckFailed(f"expected the task to end cancelled, got {exc!r}") from None
    raise CheckFailed("expected the task to end cancelled, it returned a value")


async def _deadline(kit: Kit, d: KitDispatcher) -> str:
    handle = await d.submit("slow_square", [8, 60], timeout=1.0)
    relay = await _started(kit, handle)
    await kit.wait_for(lambda: relay.outcomes(handle.id) or relay.closed.is_set(),
                       "the worker to report the task's outcome after its 1 s deadline", timeout=5)  # fmt: skip
    reported = [o.get("status") for o in relay.outcomes(handle.id)]
    if reported != ["timeout"]:
        raise CheckFailed(f"expected the worker to stop the task and report 'timeout' when spec.timeout ran out, "
                          f"got {reported or 'nothing'} (--skip deadline if it does not claim deadlines)")  # fmt: skip
    try:
        await handle.result()
    except TaskTimeout:
        return "a task past its 1 s deadline was stopped and reported as timeout"
    except TaskFailed as exc:
        raise CheckFailed(f"expected timeout, got {exc}") from None
    raise CheckFailed("expected timeout, the task returned a value")


async def _broadcast(kit: Kit, d: KitDispatcher) -> str:
    token = uuid.uuid4().hex
    d.broadcast_nowait({"ping": token})
    await kit.wait_for(lambda: any(isinstance(s, dict) and s.get("pong") == token for s in d.said),
                       f'a message {{"pong": "{token}", ...}} in answer to the broadcast {{"ping": "{token}"}}')  # fmt: skip
    return "a broadcast ping was answered with a pong message"


async def _reconnect(kit: Kit, d: KitDispatcher, state: dict[str, Any]) -> str:
    handle = await d.submit("slow_square", [9, 1.0])
    await _started(kit, handle)
    before = len(kit.relays)
    kit.relay.cut()
    relay = await kit.connected(after=before)
    hello, welcome = relay.up[0], relay.down[0]
    state["resume"] = (hello.get("session"), welcome.get("resumed", False), welcome.get("session"), handle.id)
    outcome = await _outcome(kit, handle, WAIT + GRACE)
    if outcome.status != "ok" or outcome.value != 81:
        raise CheckFailed(f"expected the task running when the connection dropped to end ok 81, got {outcome.status}")
    return "reconnected after the connection dropped mid-task; the task still ended ok"


async def _resume(kit: Kit, state: dict[str, Any]) -> str:
    if "resume" not in state:
        raise Skipped("not checked: the reconnect check did not get that far")
    session, resumed, welcome_session, task_id = state["resume"]
    if session is None:
        raise Skipped("the worker does not claim sessions (no hello.session after reconnecting): the minimal profile")
    if not resumed or session != welcome_session:
        raise CheckFailed(f"expected the dispatcher to resume session {session}; it answered resumed={resumed}")
    attempts = {o.get("attempt", 0) for relay in kit.relays for o in relay.outcomes(task_id)}
    if attempts != {1}:
        raise CheckFailed(f"expected the task held across the drop to carry on as attempt 1, got attempts {sorted(attempts)}")
    return f"session {session[:8]}... resumed after the drop; the task it held carried on, not run again"


async def _stop(kit: Kit, process: Any) -> str:
    relay = kit.relay
    process.send_signal(signal.SIGTERM)
    await kit.wait_for(lambda: relay.sent("goodbye"), "a goodbye from the worker after SIGTERM")
    with trio.move_on_after(WAIT):
        code = await process.wait()
        return f"SIGTERM: goodbye sent, the process exited with code {code}"
    raise CheckFailed(f"expected the worker process to exit within {WAIT:g} s of its goodbye")
