"""Every message of the wire protocol, and the one converter that encodes them.

Each message is a frozen, keyword-only attrs class with a stable ``TYPE``
tag.  On the wire a message is one UTF-8 JSON object whose ``type`` field is
that tag; the other fields are the attributes (fields equal to their default
are omitted).  :func:`encode` and :func:`decode` are the only way in or out:
decoding is strict (unknown fields, wrong types and non-JSON constants are
refused) and every failure is a :class:`RemoteProtocolError` with a code.

This module never imports trio; docs/PROTOCOL.md describes the same messages
for implementers in other languages, and the tests check that it agrees.
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Union

import attrs
import cattrs
from cattrs.strategies import configure_tagged_union

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "Accepted",
    "Auth",
    "Broadcast",
    "Cancel",
    "Challenge",
    "Error",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "Message",
    "Outcome",
    "Outcomes",
    "Rejection",
    "Reclaim",
    "Release",
    "RemoteError",
    "Results",
    "Run",
    "StatusReply",
    "StatusRequest",
    "Stop",
    "Stopping",
    "Submission",
    "Submit",
    "TaskSpec",
    "Watch",
    "Welcome",
    "decode",
    "encode",
    "encode_run",
    "spec_payload",
]

PROTOCOL_VERSION = 1


# Task statuses, as they appear in Outcome.status.
OK = "ok"
ERROR = "error"
CANCELLED = "cancelled"
TIMEOUT = "timeout"
LOST = "lost"
UNKNOWN = "unknown"
STATUSES = (OK, ERROR, CANCELLED, TIMEOUT, LOST, UNKNOWN)


# ------------------------------------------------------------------ pieces
@attrs.frozen(kw_only=True)
class RemoteError:
    """An exception raised by a task, described (never pickled)."""

    type: str
    message: str
    traceback: str = ""


@attrs.frozen(kw_only=True)
class TaskSpec:
    """One task run, dispatcher to worker.  ``timeout`` is the time left, in seconds."""

    id: str
    name: str
    args: list[Any] = attrs.field(factory=list)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    attempt: int = 1
    timeout: float | None = None


@attrs.frozen(kw_only=True)
class Submission:
    """One task submitted by a client.  ``id`` is chosen by the client, so resubmitting is idempotent."""

    id: str
    name: str
    args: list[Any] = attrs.field(factory=list)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    timeout: float | None = None
    retries: int | None = None
    delay: float | None = None
    priority: int = 0


@attrs.frozen(kw_only=True)
class Outcome:
    """How one task attempt (worker to dispatcher) or one task (dispatcher to client) ended."""

    id: str
    status: str
    attempt: int = 0
    value: Any = None
    error: RemoteError | None = None
    reason: str | None = None


@attrs.frozen(kw_only=True)
class Rejection:
    """A submission the dispatcher refused, with a code and a human explanation."""

    id: str
    code: str
    message: str


# ---------------------------------------------------------------- handshake
@attrs.frozen(kw_only=True)
class Hello:
    """First frame from every peer: protocol version, role and, for workers, what it offers."""

    TYPE: ClassVar[str] = "hello"
    version: int
    role: str
    name: str = ""
    host: str = ""
    pid: int = 0
    nonce: str | None = None
    tasks: tuple[str, ...] = ()
    concurrency: int = 1
    prefetch: int = 0
    session: str | None = None
    running: dict[str, int] = attrs.field(factory=dict)
    retries: dict[str, int] = attrs.field(factory=dict)
    no_retry: dict[str, tuple[str, ...]] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Challenge:
    """The dispatcher's nonce, sent when a shared secret is configured."""

    TYPE: ClassVar[str] = "challenge"
    nonce: str


@attrs.frozen(kw_only=True)
class Auth:
    """The peer's proof that it knows the secret: HMAC over both nonces."""

    TYPE: ClassVar[str] = "auth"
    proof: str


@attrs.frozen(kw_only=True)
class Welcome:
    """The dispatcher accepts the peer; ``proof`` proves the dispatcher knows the secret too."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    session: str
    heartbeat: float
    timeout: float
    name: str = ""
    proof: str | None = None
    resumed: bool = False
    max_frame_size: int = 0  # the dispatcher's limit; peers send no larger frames (0: not said)


@attrs.frozen(kw_only=True)
class Error:
    """A fatal error: the sender closes the connection right after it."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


# ------------------------------------------------------------- both ways
@attrs.frozen(kw_only=True)
class Heartbeat:
    """Sent when a side has been quiet for a heartbeat interval.  ``ack``: see Results."""

    TYPE: ClassVar[str] = "heartbeat"
    ack: int = 0


@attrs.frozen(kw_only=True)
class Message:
    """A user-defined message: ``data`` is any JSON value."""

    TYPE: ClassVar[str] = "message"
    data: Any = None


@attrs.frozen(kw_only=True)
class Goodbye:
    """A clean close.  A client may ask for its unfinished tasks to be cancelled."""

    TYPE: ClassVar[str] = "goodbye"
    reason: str = ""
    cancel_pending: bool = False


@attrs.frozen(kw_only=True)
class Cancel:
    """Cancel a task: client to dispatcher, and dispatcher to the worker running it."""

    TYPE: ClassVar[str] = "cancel"
    id: str
    reason: str | None = None


# ------------------------------------------------------------------ worker
@attrs.frozen(kw_only=True)
class Run:
    """Tasks for a worker to run.  ``ack`` acknowledges Results frames up to that ``seq``."""

    TYPE: ClassVar[str] = "run"
    tasks: tuple[TaskSpec, ...] = ()
    ack: int = 0


@attrs.frozen(kw_only=True)
class Results:
    """Worker to dispatcher: tasks it started and attempts that ended.  ``seq`` numbers the frame."""

    TYPE: ClassVar[str] = "results"
    seq: int
    started: tuple[str, ...] = ()
    results: tuple[Outcome, ...] = ()


@attrs.frozen(kw_only=True)
class Release:
    """A worker hands back tasks it received but never started: because it is stopping, or asked to."""

    TYPE: ClassVar[str] = "release"
    ids: tuple[str, ...]
    stopping: bool = False


@attrs.frozen(kw_only=True)
class Reclaim:
    """Dispatcher to worker: hand back these tasks if you have not started them (another worker is idle)."""

    TYPE: ClassVar[str] = "reclaim"
    ids: tuple[str, ...]


# ------------------------------------------------------------------ client
@attrs.frozen(kw_only=True)
class Submit:
    """Client to dispatcher: new tasks.  ``wait=False`` asks for a refusal instead of waiting when full."""

    TYPE: ClassVar[str] = "submit"
    tasks: tuple[Submission, ...]
    wait: bool = True


@attrs.frozen(kw_only=True)
class Accepted:
    """The submissions that are now the dispatcher's responsibility, and those refused."""

    TYPE: ClassVar[str] = "accepted"
    ids: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()


@attrs.frozen(kw_only=True)
class Watch:
    """Ask to be told how these tasks end (reattaching after a reconnect or from another process)."""

    TYPE: ClassVar[str] = "watch"
    ids: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Outcomes:
    """Dispatcher to client: tasks that ended (or are unknown)."""

    TYPE: ClassVar[str] = "outcomes"
    results: tuple[Outcome, ...]


@attrs.frozen(kw_only=True)
class Broadcast:
    """Client to dispatcher: deliver ``data`` to every connected worker's ``on_message``."""

    TYPE: ClassVar[str] = "broadcast"
    data: Any = None


# ------------------------------------------------------------------- admin
@attrs.frozen(kw_only=True)
class StatusRequest:
    """Ask the dispatcher for its status (admin role)."""

    TYPE: ClassVar[str] = "status"


@attrs.frozen(kw_only=True)
class StatusReply:
    """The dispatcher's status as a JSON object (see docs/PROTOCOL.md for the fields)."""

    TYPE: ClassVar[str] = "status-reply"
    status: dict[str, Any]


@attrs.frozen(kw_only=True)
class Stop:
    """Ask the dispatcher to drain and exit (admin role)."""

    TYPE: ClassVar[str] = "stop"
    grace: float | None = None


@attrs.frozen(kw_only=True)
class Stopping:
    """The dispatcher has begun draining."""

    TYPE: ClassVar[str] = "stopping"
    grace: float


MESSAGE_TYPES: tuple[Any, ...] = (
    Hello, Challenge, Auth, Welcome, Error, Heartbeat, Message, Goodbye, Cancel,
    Run, Results, Release, Reclaim, Submit, Accepted, Watch, Outcomes, Broadcast,
    StatusRequest, StatusReply, Stop, Stopping,
)  # fmt: skip
AnyMessage = Union[  # noqa: UP007 - a runtime union object for cattrs
    Hello, Challenge, Auth, Welcome, Error, Heartbeat, Message, Goodbye, Cancel,
    Run, Results, Release, Reclaim, Submit, Accepted, Watch, Outcomes, Broadcast,
    StatusRequest, StatusReply, Stop, Stopping,
]  # fmt: skip
TAGS: dict[str, type] = {cls.TYPE: cls for cls in MESSAGE_TYPES}


# --------------------------------------------------------------- converter
def _strict(kind: type | tuple[type, ...], name: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            return value
        raise TypeError(f"expected {name}, got {type(value).__name__}")

    return hook


def _strict_float(value: Any, _: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")


def _tag(cls: Any) -> str:
    return cls.TYPE  # type: ignore[no-any-return]


def _make_converter(*, fast: bool = True) -> cattrs.Converter:
    """The converter; ``fast=False`` leaves out the hand-written per-task hooks (the tests compare the two)."""
    converter = cattrs.Converter(forbid_extra_keys=True, omit_if_default=True)
    # JSON types pass through unchanged but are checked: cattrs would
    # otherwise turn 5 into "5" or {} into "{}".
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(bool, _strict(bool, "true or false"))
    converter.register_structure_hook(float, _strict_float)
    # Task arguments and results stay plain JSON values: no copy, only a check.
    converter.register_structure_hook_func(lambda t: t == list[Any], _strict(list, "an array"))
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], _strict(dict, "an object"))

    def tuple_hook(tp: Any) -> Any:
        item = typing.get_args(tp)[0]
        structure_item = converter.get_structure_hook(item)

        def hook(value: Any, _: Any) -> Any:
            if not isinstance(value, list):  # cattrs would iterate a string or an object
                raise TypeError(f"expected an array, got {type(value).__name__}")
            return tuple([structure_item(v, item) for v in value])

        return hook

    converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is tuple, tuple_hook)
    if fast:
        _register_per_task_hooks(converter)
    configure_tagged_union(AnyMessage, converter, tag_name="type", tag_generator=_tag)
    return converter


# ----------------------------------------------------------- per-task hot path
# TaskSpec, Outcome and Submission are encoded and decoded once per task, tens
# of thousands of times a second.  These hand-written hooks do exactly what
# the generated ones do (same strictness, same field order, defaults omitted)
# at a fraction of the cost; tests/test_messages.py checks them against the
# generic converter on every message.


def _check_keys(value: Any, allowed: frozenset[str], required: tuple[str, ...], what: str) -> None:
    if type(value) is not dict:
        raise TypeError(f"{what}: expected an object, got {type(value).__name__}")
    if not allowed.issuperset(value):
        raise TypeError(f"{what}: extra fields found ({', '.join(sorted(set(value) - allowed))})")
    for key in required:
        if key not in value:
            raise TypeError(f"{what}: required field missing: {key}")


def _str(value: Any, field: str) -> str:
    if type(value) is not str:
        raise TypeError(f"{field}: expected a string, got {type(value).__name__}")
    return value


def _int(value: Any, field: str) -> int:
    if type(value) is not int:
        raise TypeError(f"{field}: expected an integer, got {type(value).__name__}")
    return value


def _optional_number(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if type(value) is float or type(value) is int:
        return float(value)
    raise TypeError(f"{field}: expected a number or null, got {type(value).__name__}")


def _optional_int(value: Any, field: str) -> int | None:
    return None if value is None else _int(value, field)


def _array(value: Any, field: str) -> list[Any]:
    if type(value) is not list:
        raise TypeError(f"{field}: expected an array, got {type(value).__name__}")
    return value


def _strings(value: Any, field: str) -> tuple[str, ...]:
    for item in _array(value, field):
        if type(item) is not str:
            raise TypeError(f"{field}: expected an array of strings, found {type(item).__name__}")
    return tuple(value)


def _new_frozen(cls: type) -> Any:
    """A positional constructor for a frozen slotted attrs class that skips the keyword-only ``__init__``.

    attrs' frozen ``__init__`` sets each field through ``object.__setattr__``;
    writing the slots through their descriptors does the same at about two
    thirds of the cost.  Only for the per-task records, built tens of
    thousands of times a second; callers pass every field, already checked.
    """
    names = [field.name for field in attrs.fields(cls)]
    setters = [cls.__dict__[name].__set__ for name in names]
    new = object.__new__
    arguments = ", ".join(names)
    body = "".join(f"    set_{i}(obj, {name})\n" for i, name in enumerate(names))
    namespace: dict[str, Any] = {"new": new, "cls": cls, **{f"set_{i}": f for i, f in enumerate(setters)}}
    exec(f"def make({arguments}):\n    obj = new(cls)\n{body}    return obj\n", namespace)  # noqa: S102
    return namespace["make"]


def spec_payload(
    task_id: str, name: str, args: Any, kwargs: dict[str, Any], attempt: int, timeout: float | None
) -> dict[str, Any]:
    """``TaskSpec(...)`` in its wire form, without building the TaskSpec (the dispatcher's hot path)."""
    d: dict[str, Any] = {"id": task_id, "name": name}
    if args:
        d["args"] = args
    if kwargs:
        d["kwargs"] = kwargs
    if attempt != 1:
        d["attempt"] = attempt
    if timeout is not None:
        d["timeout"] = timeout
    return d


#: ``TaskSpec(...)``/``Outcome(...)`` with every field, positionally, for hot paths (no checks).
new_spec: Callable[[str, str, list[Any], dict[str, Any], int, float | None], TaskSpec] = _new_frozen(TaskSpec)
new_outcome: Callable[[str, str, int, Any, RemoteError | None, str | None], Outcome] = _new_frozen(Outcome)
new_submission: Callable[
    [str, str, list[Any], dict[str, Any], float | None, int | None, float | None, int], Submission
] = _new_frozen(Submission)
new_run: Callable[[tuple[TaskSpec, ...], int], Run] = _new_frozen(Run)
new_results: Callable[[int, tuple[str, ...], tuple[Outcome, ...]], Results] = _new_frozen(Results)


def _register_per_task_hooks(converter: cattrs.Converter) -> None:
    spec_keys = frozenset(("id", "name", "args", "kwargs", "attempt", "timeout"))
    outcome_keys = frozenset(("id", "status", "attempt", "value", "error", "reason"))
    submission_keys = frozenset(("id", "name", "args", "kwargs", "timeout", "retries", "delay", "priority"))
    structure_error = converter.get_structure_hook(RemoteError)
    unstructure_error = converter.get_unstructure_hook(RemoteError)
    empty: tuple[()] = ()

    def arguments(d: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        args = d.get("args", empty)
        kwargs = d.get("kwargs", empty)
        if args is empty:
            args = []
        elif type(args) is not list:
            raise TypeError(f"args: expected an array, got {type(args).__name__}")
        if kwargs is empty:
            kwargs = {}
        elif type(kwargs) is not dict:
            raise TypeError(f"kwargs: expected an object, got {type(kwargs).__name__}")
        return args, kwargs

    def structure_spec(d: Any, _: Any = None) -> TaskSpec:
        # The common shape checked in one expression; anything else takes the
        # careful path, which says exactly what is wrong.
        if type(d) is dict and spec_keys.issuperset(d):
            task_id, name = d.get("id"), d.get("name")
            args: Any = d.get("args", empty)
            kwargs = d.get("kwargs", empty)
            attempt, timeout = d.get("attempt", 1), d.get("timeout")
            if (
                type(task_id) is str and type(name) is str and (type(args) is list or args is empty)
                and kwargs is empty and type(attempt) is int and timeout is None
            ):  # fmt: skip
                return new_spec(task_id, name, args if type(args) is list else [], {}, attempt, None)
        _check_keys(d, spec_keys, ("id", "name"), "task")
        args, kwargs = arguments(d)
        return new_spec(
            _str(d["id"], "id"), _str(d["name"], "name"), args, kwargs,
            _int(d.get("attempt", 1), "attempt"), _optional_number(d.get("timeout"), "timeout"),
        )  # fmt: skip

    def unstructure_spec(t: TaskSpec) -> dict[str, Any]:
        return spec_payload(t.id, t.name, t.args, t.kwargs, t.attempt, t.timeout)

    def structure_outcome(d: Any, _: Any = None) -> Outcome:
        if type(d) is dict and outcome_keys.issuperset(d):  # the common shape, as for specs
            task_id, status, attempt = d.get("id"), d.get("status"), d.get("attempt", 0)
            if type(task_id) is str and type(status) is str and type(attempt) is int and "error" not in d and "reason" not in d:
                return new_outcome(task_id, status, attempt, d.get("value"), None, None)
        _check_keys(d, outcome_keys, ("id", "status"), "outcome")
        error = d.get("error")
        reason = d.get("reason")
        return new_outcome(
            _str(d["id"], "id"), _str(d["status"], "status"), _int(d.get("attempt", 0), "attempt"), d.get("value"),
            None if error is None else structure_error(error, RemoteError),
            None if reason is None else _str(reason, "reason"),
        )  # fmt: skip

    def unstructure_outcome(o: Outcome) -> dict[str, Any]:
        d: dict[str, Any] = {"id": o.id, "status": o.status}
        if o.attempt != 0:
            d["attempt"] = o.attempt
        if o.value is not None:
            d["value"] = o.value
        if o.error is not None:
            d["error"] = unstructure_error(o.error)
        if o.reason is not None:
            d["reason"] = o.reason
        return d

    def structure_submission(d: Any, _: Any = None) -> Submission:
        if type(d) is dict and submission_keys.issuperset(d):  # the common shape, as for specs
            task_id, name = d.get("id"), d.get("name")
            args: Any = d.get("args", empty)
            priority = d.get("priority", 0)
            if (
                type(task_id) is str and type(name) is str and (type(args) is list or args is empty)
                and type(priority) is int and "kwargs" not in d and "timeout" not in d and "retries" not in d
                and "delay" not in d
            ):  # fmt: skip
                return new_submission(task_id, name, args if type(args) is list else [], {}, None, None, None, priority)
        _check_keys(d, submission_keys, ("id", "name"), "submission")
        args, kwargs = arguments(d)
        return new_submission(
            _str(d["id"], "id"), _str(d["name"], "name"), args, kwargs,
            _optional_number(d.get("timeout"), "timeout"), _optional_int(d.get("retries"), "retries"),
            _optional_number(d.get("delay"), "delay"), _int(d.get("priority", 0), "priority"),
        )  # fmt: skip

    def unstructure_submission(s: Submission) -> dict[str, Any]:
        d: dict[str, Any] = {"id": s.id, "name": s.name}
        if s.args:
            d["args"] = s.args
        if s.kwargs:
            d["kwargs"] = s.kwargs
        if s.timeout is not None:
            d["timeout"] = s.timeout
        if s.retries is not None:
            d["retries"] = s.retries
        if s.delay is not None:
            d["delay"] = s.delay
        if s.priority != 0:
            d["priority"] = s.priority
        return d

    # The frames that carry them: one per batch, but a batch is every task
    # that a worker or client has in flight.
    run_keys = frozenset(("tasks", "ack"))
    results_keys = frozenset(("seq", "started", "results"))
    outcomes_keys = frozenset(("results",))
    submit_keys = frozenset(("tasks", "wait"))

    def structure_run(d: Any, _: Any = None) -> Run:
        if type(d) is dict and run_keys.issuperset(d):  # the common shape, as for specs
            tasks, ack = d.get("tasks", empty), d.get("ack", 0)
            if type(tasks) is list and type(ack) is int:
                return new_run(tuple([structure_spec(t) for t in tasks]), ack)
        _check_keys(d, run_keys, (), "run")
        tasks = d.get("tasks", empty)
        return Run(
            tasks=tasks if tasks is empty else tuple([structure_spec(t) for t in _array(tasks, "tasks")]),
            ack=_int(d.get("ack", 0), "ack"),
        )  # fmt: skip

    def unstructure_run(r: Run) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if r.tasks:
            d["tasks"] = [unstructure_spec(t) for t in r.tasks]
        if r.ack != 0:
            d["ack"] = r.ack
        return d

    def structure_results(d: Any, _: Any = None) -> Results:
        if type(d) is dict and results_keys.issuperset(d):  # the common shape, as for specs
            seq, started, results = d.get("seq"), d.get("started", empty), d.get("results", empty)
            if type(seq) is int and started is empty and type(results) is list:
                return new_results(seq, started, tuple([structure_outcome(o) for o in results]))
        _check_keys(d, results_keys, ("seq",), "results")
        started = d.get("started", empty)
        results = d.get("results", empty)
        return Results(
            seq=_int(d["seq"], "seq"),
            started=started if started is empty else _strings(started, "started"),
            results=results if results is empty else tuple([structure_outcome(o) for o in _array(results, "results")]),
        )  # fmt: skip

    def unstructure_results(r: Results) -> dict[str, Any]:
        d: dict[str, Any] = {"seq": r.seq}
        if r.started:
            d["started"] = list(r.started)
        if r.results:
            d["results"] = [unstructure_outcome(o) for o in r.results]
        return d

    def structure_outcomes(d: Any, _: Any = None) -> Outcomes:
        _check_keys(d, outcomes_keys, ("results",), "outcomes")
        return Outcomes(results=tuple([structure_outcome(o) for o in _array(d["results"], "results")]))

    def unstructure_outcomes(o: Outcomes) -> dict[str, Any]:
        return {"results": [unstructure_outcome(outcome) for outcome in o.results]}

    def structure_submit(d: Any, _: Any = None) -> Submit:
        _check_keys(d, submit_keys, ("tasks",), "submit")
        wait = d.get("wait", True)
        if type(wait) is not bool:
            raise TypeError(f"wait: expected true or false, got {type(wait).__name__}")
        return Submit(tasks=tuple([structure_submission(s) for s in _array(d["tasks"], "tasks")]), wait=wait)

    def unstructure_submit(s: Submit) -> dict[str, Any]:
        d: dict[str, Any] = {"tasks": [unstructure_submission(t) for t in s.tasks]}
        if not s.wait:
            d["wait"] = False
        return d

    for cls, structure, unstructure in (
        (TaskSpec, structure_spec, unstructure_spec),
        (Outcome, structure_outcome, unstructure_outcome),
        (Submission, structure_submission, unstructure_submission),
        (Run, structure_run, unstructure_run),
        (Results, structure_results, unstructure_results),
        (Outcomes, structure_outcomes, unstructure_outcomes),
        (Submit, structure_submit, unstructure_submit),
    ):
        converter.register_structure_hook(cls, structure)
        converter.register_unstructure_hook(cls, unstructure)


converter = _make_converter()
# Straight to each class's hook by tag (decoding) or by class (encoding): the
# same hooks the tagged union calls, without its dispatch and dict copy.
_STRUCTURE_BY_TAG: dict[str, tuple[Any, type]] = {cls.TYPE: (converter.get_structure_hook(cls), cls) for cls in MESSAGE_TYPES}
_UNSTRUCTURE_BY_CLASS: dict[type, Any] = {cls: converter.get_unstructure_hook(cls) for cls in MESSAGE_TYPES}


def _make_dumps() -> Callable[[Any], str]:
    """Compact JSON text, UTF-8 kept as is, NaN and infinities refused, no circularity check (messages are trees).

    ``JSONEncoder.encode`` builds a new C encoder on every call; this one is
    built once (it holds no state between calls: without the circularity
    check there are no markers), which saves about 0.7 us per frame.
    """
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False)
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:  # pragma: no cover - CPython always has it
        return encoder.encode
    encode = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    join = "".join

    def dumps(obj: Any) -> str:
        return join(encode(obj, 0))

    return dumps


_dumps = _make_dumps()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_loads = _decoder.decode
_scan_once = _decoder.scan_once  # type: ignore[attr-defined]  # set in JSONDecoder.__init__, not declared
MAX_DEPTH = 100  # arrays/objects; deeper values are refused, so whatever decodes can be encoded again
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


_BRACKETS_AND_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')  # translate() deletes the rest
_OBJECTS_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")  # balanced either way, so the depth is the same
_QUOTED = re.compile(rb'"[^"]*"')


def _too_deep(payload: bytes) -> bool:
    """True if the JSON in ``payload`` (already known to parse) nests arrays/objects more than MAX_DEPTH deep.

    Runs at C speed, with no Python step per character or per value:

    1. drop escaped backslashes, then escaped quotes (left to right, as JSON
       pairs them), so every quote left opens or closes a string;
    2. keep only brackets and quotes, braces turned into brackets;
    3. drop every ``""`` pair: either an empty string, or the end of one
       string and the start of the next with nothing but deleted characters
       between them, which merges two strings into one; either way quotes
       still pair up in order, and what was inside a string stays inside;
    4. drop what is left inside quotes (strings that contain brackets: rare);
    5. strip innermost ``[]`` pairs, one nesting level per pass.  Valid JSON
       has balanced brackets outside strings, so the skeleton is empty after
       ``k`` passes exactly when the depth is at most ``k``.
    """
    if b"\\" in payload:
        payload = payload.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = payload.translate(_OBJECTS_AS_ARRAYS, _BRACKETS_AND_QUOTES).replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = _QUOTED.sub(b"", skeleton)
    for _ in range(MAX_DEPTH):
        if not skeleton:
            return False
        skeleton = skeleton.replace(b"[]", b"")
    return bool(skeleton)


def encode(message: Any) -> bytes:
    """The JSON payload for ``message`` (without the frame header).

    Raises :class:`LocalProtocolError` if a value in it is not JSON (a task
    argument or result that is a set, a datetime, NaN...).
    """
    unstructure = _UNSTRUCTURE_BY_CLASS.get(type(message))
    if unstructure is None:
        raise LocalProtocolError(f"{type(message).__name__} is not a protocol message", code="not-a-message")
    try:
        obj = unstructure(message)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _not_json(type(message), exc) from exc
    obj["type"] = message.TYPE
    return _dump(obj, type(message))


def encode_run(specs: list[dict[str, Any]], ack: int) -> bytes:
    """``encode(Run(tasks=..., ack=ack))`` for tasks already in wire form (see :func:`spec_payload`)."""
    obj: dict[str, Any] = {}
    if specs:
        obj["tasks"] = specs
    if ack != 0:
        obj["ack"] = ack
    obj["type"] = Run.TYPE
    return _dump(obj, Run)


def _dump(obj: dict[str, Any], kind: type) -> bytes:
    try:
        return _dumps(obj).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise _not_json(kind, exc) from exc


def _not_json(kind: type, exc: Exception) -> LocalProtocolError:
    return LocalProtocolError(
        f"cannot encode {kind.__name__} as JSON: {exc}; "
        "task arguments, results and messages must be JSON values (str, int, float, bool, None, list, dict)",
        code="not-json",
    )


def decode(payload: bytes) -> Any:
    """Parse one payload into a message, or raise :class:`RemoteProtocolError`."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"payload is not UTF-8 ({exc.reason} at byte {exc.start})", code="bad-utf8") from None
    try:
        # The C scanner straight away: JSONDecoder.decode() adds two regex
        # matches for surrounding whitespace, which our frames never have.
        # Anything else (whitespace, errors) takes decode() for its messages.
        try:
            obj, end = _scan_once(text, 0)
        except (StopIteration, ValueError):
            end = -1
        if end != len(text):
            obj = _loads(text)
    except RecursionError:
        raise RemoteProtocolError("payload nests JSON too deeply", code="bad-json") from None
    except ValueError as exc:
        raise RemoteProtocolError(f"payload is not JSON: {exc}", code="bad-json") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(payload):
        raise RemoteProtocolError(f"payload nests JSON more than {MAX_DEPTH} levels deep", code="bad-json")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            _dumps(obj).encode()
        except UnicodeEncodeError:
            raise RemoteProtocolError("payload has a string with an unpaired surrogate escape", code="bad-json") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"payload is JSON {type(obj).__name__}, not an object", code="bad-message")
    tag = obj.get("type")
    if not isinstance(tag, str):
        raise RemoteProtocolError('payload has no string "type" field', code="bad-message")
    entry = _STRUCTURE_BY_TAG.get(tag)
    if entry is None:
        raise RemoteProtocolError(f"unknown message type {tag[:64]!r}", code="unknown-message")
    del obj["type"]
    structure, cls = entry
    try:
        return structure(obj, cls)
    except RecursionError:
        raise RemoteProtocolError("payload nests JSON too deeply", code="bad-json") from None
    except Exception as exc:  # cattrs reports field errors as exception groups
        raise RemoteProtocolError(f"invalid {tag!r} message: {_describe(exc)}", code="bad-message") from None


def _describe(exc: BaseException) -> str:
    """Flatten a cattrs validation error into one line naming the fields."""
    try:
        notes = cattrs.transform_error(exc)  # type: ignore[arg-type]
    except Exception:
        notes = [str(exc)]
    return "; ".join(notes)[:500]
