"""The per-task hot path: hand-written converter hooks and positional constructors.

TaskSpec, Outcome and Submission are encoded and decoded once per task, tens
of thousands of times a second, and Run, Results, Outcomes and Submit once
per batch of them.  The hooks here do exactly what the ones cattrs generates
do (the same strictness, the same field order, defaults omitted) with less
work per call; tests/test_fast_hooks.py checks them against the generic
converter on every message.

Each structure hook first tries the common shape in one expression and
builds the record directly; anything else takes a careful path that says
exactly which field is wrong, as a ``TypeError`` that names the field
(:func:`.codec.decode` turns it into a :class:`RemoteProtocolError`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import cattrs

from .schema import Outcome, Outcomes, RemoteError, Results, Run, Submission, Submit, TaskSpec

__all__ = ["new_outcome", "new_results", "new_run", "new_spec", "new_submission", "register", "spec_payload"]

_EMPTY: tuple[()] = ()  # marks a missing key in ``d.get(key, _EMPTY)``; never a JSON value
_SPEC_KEYS = frozenset(("id", "name", "args", "kwargs", "attempt", "timeout"))
_ERROR_KEYS = frozenset(("type", "message", "traceback", "retry_after"))
_OUTCOME_KEYS = frozenset(("id", "status", "attempt", "value", "error", "reason"))
_SUBMISSION_KEYS = frozenset(("id", "name", "args", "kwargs", "timeout", "retries", "delay", "priority"))
_RUN_KEYS = frozenset(("tasks", "ack"))
_RESULTS_KEYS = frozenset(("seq", "started", "results"))
_OUTCOMES_KEYS = frozenset(("results",))
_SUBMIT_KEYS = frozenset(("tasks", "wait"))


# ------------------------------------------------------------------ checks
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


def _arguments(d: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    args = d.get("args", _EMPTY)
    kwargs = d.get("kwargs", _EMPTY)
    if args is _EMPTY:
        args = []
    elif type(args) is not list:
        raise TypeError(f"args: expected an array, got {type(args).__name__}")
    if kwargs is _EMPTY:
        kwargs = {}
    elif type(kwargs) is not dict:
        raise TypeError(f"kwargs: expected an object, got {type(kwargs).__name__}")
    return args, kwargs


# ----------------------------------------------------------- constructors
# ``new_spec(...)`` and its siblings build a record from every field, in
# declaration order, without attrs' keyword-only ``__init__`` (which sets
# each field through ``object.__setattr__``): they write the slots through
# their descriptors.  No checks: callers pass values already checked.
_new = object.__new__


def _slot_setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of a frozen attrs class, in field order; unpacking them pins the field count."""
    return tuple(cls.__dict__[field.name].__set__ for field in attrs.fields(cls))


_spec_id, _spec_name, _spec_args, _spec_kwargs, _spec_attempt, _spec_timeout = _slot_setters(TaskSpec)
_outcome_id, _outcome_status, _outcome_attempt, _outcome_value, _outcome_error, _outcome_reason = (
    _slot_setters(Outcome)
)
(
    _submission_id, _submission_name, _submission_args, _submission_kwargs, _submission_timeout,
    _submission_retries, _submission_delay, _submission_priority,
) = _slot_setters(Submission)  # fmt: skip
_run_tasks, _run_ack = _slot_setters(Run)
_results_seq, _results_started, _results_results = _slot_setters(Results)


def new_spec(
    task_id: str, name: str, args: list[Any], kwargs: dict[str, Any], attempt: int, timeout: float | None
) -> TaskSpec:
    spec = _new(TaskSpec)
    _spec_id(spec, task_id)
    _spec_name(spec, name)
    _spec_args(spec, args)
    _spec_kwargs(spec, kwargs)
    _spec_attempt(spec, attempt)
    _spec_timeout(spec, timeout)
    return spec


def new_outcome(
    task_id: str, status: str, attempt: int, value: Any, error: RemoteError | None, reason: str | None
) -> Outcome:
    outcome = _new(Outcome)
    _outcome_id(outcome, task_id)
    _outcome_status(outcome, status)
    _outcome_attempt(outcome, attempt)
    _outcome_value(outcome, value)
    _outcome_error(outcome, error)
    _outcome_reason(outcome, reason)
    return outcome


def new_submission(
    task_id: str, name: str, args: list[Any], kwargs: dict[str, Any], timeout: float | None, retries: int | None,
    delay: float | None, priority: int,
) -> Submission:  # fmt: skip
    submission = _new(Submission)
    _submission_id(submission, task_id)
    _submission_name(submission, name)
    _submission_args(submission, args)
    _submission_kwargs(submission, kwargs)
    _submission_timeout(submission, timeout)
    _submission_retries(submission, retries)
    _submission_delay(submission, delay)
    _submission_priority(submission, priority)
    return submission


def new_run(tasks: tuple[TaskSpec, ...], ack: int) -> Run:
    run = _new(Run)
    _run_tasks(run, tasks)
    _run_ack(run, ack)
    return run


def new_results(seq: int, started: tuple[str, ...], results: tuple[Outcome, ...]) -> Results:
    frame = _new(Results)
    _results_seq(frame, seq)
    _results_started(frame, started)
    _results_results(frame, results)
    return frame


# ------------------------------------------------------ per-task records
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


def structure_spec(d: Any, _: Any = None) -> TaskSpec:
    if type(d) is dict and _SPEC_KEYS.issuperset(d):
        task_id, name = d.get("id"), d.get("name")
        args: Any = d.get("args", _EMPTY)
        kwargs = d.get("kwargs", _EMPTY)
        attempt, timeout = d.get("attempt", 1), d.get("timeout")
        if (
            type(task_id) is str and type(name) is str and (type(args) is list or args is _EMPTY)
            and kwargs is _EMPTY and type(attempt) is int and timeout is None
        ):  # fmt: skip
            return new_spec(task_id, name, args if type(args) is list else [], {}, attempt, None)
    _check_keys(d, _SPEC_KEYS, ("id", "name"), "task")
    args, kwargs = _arguments(d)
    return new_spec(
        _str(d["id"], "id"), _str(d["name"], "name"), args, kwargs,
        _int(d.get("attempt", 1), "attempt"), _optional_number(d.get("timeout"), "timeout"),
    )  # fmt: skip


def unstructure_spec(t: TaskSpec) -> dict[str, Any]:
    return spec_payload(t.id, t.name, t.args, t.kwargs, t.attempt, t.timeout)


def structure_remote_error(d: Any, _: Any = None) -> RemoteError:
    _check_keys(d, _ERROR_KEYS, ("type", "message"), "error")
    return RemoteError(
        type=_str(d["type"], "type"), message=_str(d["message"], "message"),
        traceback=_str(d.get("traceback", ""), "traceback"),
        retry_after=_optional_number(d.get("retry_after"), "retry_after"),
    )  # fmt: skip


def unstructure_remote_error(e: RemoteError) -> dict[str, Any]:
    d: dict[str, Any] = {"type": e.type, "message": e.message}
    if e.traceback != "":
        d["traceback"] = e.traceback
    if e.retry_after is not None:
        d["retry_after"] = e.retry_after
    return d


def structure_outcome(d: Any, _: Any = None) -> Outcome:
    if type(d) is dict and _OUTCOME_KEYS.issuperset(d):
        task_id, status, attempt = d.get("id"), d.get("status"), d.get("attempt", 0)
        if type(task_id) is str and type(status) is str and type(attempt) is int and "error" not in d and "reason" not in d:
            return new_outcome(task_id, status, attempt, d.get("value"), None, None)
    _check_keys(d, _OUTCOME_KEYS, ("id", "status"), "outcome")
    error = d.get("error")
    reason = d.get("reason")
    return new_outcome(
        _str(d["id"], "id"), _str(d["status"], "status"), _int(d.get("attempt", 0), "attempt"), d.get("value"),
        None if error is None else structure_remote_error(error),
        None if reason is None else _str(reason, "reason"),
    )  # fmt: skip


def unstructure_outcome(o: Outcome) -> dict[str, Any]:
    d: dict[str, Any] = {"id": o.id, "status": o.status}
    if o.attempt != 0:
        d["attempt"] = o.attempt
    if o.value is not None:
        d["value"] = o.value
    if o.error is not None:
        d["error"] = unstructure_remote_error(o.error)
    if o.reason is not None:
        d["reason"] = o.reason
    return d


def structure_submission(d: Any, _: Any = None) -> Submission:
    if type(d) is dict and _SUBMISSION_KEYS.issuperset(d):
        task_id, name = d.get("id"), d.get("name")
        args: Any = d.get("args", _EMPTY)
        priority = d.get("priority", 0)
        if (
            type(task_id) is str and type(name) is str and (type(args) is list or args is _EMPTY)
            and type(priority) is int and "kwargs" not in d and "timeout" not in d and "retries" not in d
            and "delay" not in d
        ):  # fmt: skip
            return new_submission(task_id, name, args if type(args) is list else [], {}, None, None, None, priority)
    _check_keys(d, _SUBMISSION_KEYS, ("id", "name"), "submission")
    args, kwargs = _arguments(d)
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


# ------------------------------------------------ the frames that carry them
def structure_run(d: Any, _: Any = None) -> Run:
    if type(d) is dict and _RUN_KEYS.issuperset(d):
        tasks, ack = d.get("tasks", _EMPTY), d.get("ack", 0)
        if type(tasks) is list and type(ack) is int:
            return new_run(tuple([structure_spec(t) for t in tasks]), ack)
    _check_keys(d, _RUN_KEYS, (), "run")
    tasks = d.get("tasks", _EMPTY)
    return Run(
        tasks=tasks if tasks is _EMPTY else tuple([structure_spec(t) for t in _array(tasks, "tasks")]),
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
    if type(d) is dict and _RESULTS_KEYS.issuperset(d):
        seq, started, results = d.get("seq"), d.get("started", _EMPTY), d.get("results", _EMPTY)
        if type(seq) is int and started is _EMPTY and type(results) is list:
            return new_results(seq, started, tuple([structure_outcome(o) for o in results]))
    _check_keys(d, _RESULTS_KEYS, ("seq",), "results")
    started = d.get("started", _EMPTY)
    results = d.get("results", _EMPTY)
    return Results(
        seq=_int(d["seq"], "seq"),
        started=started if started is _EMPTY else _strings(started, "started"),
        results=results if results is _EMPTY else tuple([structure_outcome(o) for o in _array(results, "results")]),
    )  # fmt: skip


def unstructure_results(r: Results) -> dict[str, Any]:
    d: dict[str, Any] = {"seq": r.seq}
    if r.started:
        d["started"] = list(r.started)
    if r.results:
        d["results"] = [unstructure_outcome(o) for o in r.results]
    return d


def structure_outcomes(d: Any, _: Any = None) -> Outcomes:
    _check_keys(d, _OUTCOMES_KEYS, ("results",), "outcomes")
    return Outcomes(results=tuple([structure_outcome(o) for o in _array(d["results"], "results")]))


def unstructure_outcomes(o: Outcomes) -> dict[str, Any]:
    return {"results": [unstructure_outcome(outcome) for outcome in o.results]}


def structure_submit(d: Any, _: Any = None) -> Submit:
    _check_keys(d, _SUBMIT_KEYS, ("tasks",), "submit")
    wait = d.get("wait", True)
    if type(wait) is not bool:
        raise TypeError(f"wait: expected true or false, got {type(wait).__name__}")
    return Submit(tasks=tuple([structure_submission(s) for s in _array(d["tasks"], "tasks")]), wait=wait)


def unstructure_submit(s: Submit) -> dict[str, Any]:
    d: dict[str, Any] = {"tasks": [unstructure_submission(t) for t in s.tasks]}
    if not s.wait:
        d["wait"] = False
    return d


_HOOKS: tuple[tuple[type, Callable[[Any, Any], Any], Callable[[Any], dict[str, Any]]], ...] = (
    (TaskSpec, structure_spec, unstructure_spec),
    (RemoteError, structure_remote_error, unstructure_remote_error),
    (Outcome, structure_outcome, unstructure_outcome),
    (Submission, structure_submission, unstructure_submission),
    (Run, structure_run, unstructure_run),
    (Results, structure_results, unstructure_results),
    (Outcomes, structure_outcomes, unstructure_outcomes),
    (Submit, structure_submit, unstructure_submit),
)


def register(converter: cattrs.Converter) -> None:
    """Use the hand-written hooks in ``converter`` for the per-task records and their frames."""
    for cls, structure, unstructure in _HOOKS:
        converter.register_structure_hook(cls, structure)
        converter.register_unstructure_hook(cls, unstructure)
