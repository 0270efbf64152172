"""The ``@task`` decorator and the registry a worker builds from it.

``@task`` marks a method (or function) and leaves it callable as before; the
:class:`~trioschedule.Worker` subclass collects marked methods into a
registry when the class is created.  A worker runs only names in its registry:
that allow-list is what stops anyone from making it run something else.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

import attrs

__all__ = ["Retry", "TaskOptions", "task"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = "__trioschedule_task__"


@attrs.frozen(kw_only=True)
class TaskOptions:
    """How a registered task runs.

    ``name`` is what callers submit.  ``retries`` is the default number of
    retries after the task raises (a ``submit(retries=...)`` overrides it).
    ``no_retry`` names exception types (by class or type name) that are never
    retried.  ``thread`` runs a plain function in a worker thread (the
    default, so a blocking call cannot stall the connection); pass
    ``thread=False`` for quick pure functions to run them inline.
    ``retry_delay`` is a fixed wait in seconds before each retry, in place of
    the dispatcher's exponential backoff.  ``time_limit`` bounds each attempt
    in seconds (the worker stops it and reports a timeout); with
    ``retry_on_timeout=True`` such an attempt is retried like an error.
    """

    name: str
    retries: int | None = None
    no_retry: tuple[str, ...] = ()
    retry_delay: float | None = None
    time_limit: float | None = None
    retry_on_timeout: bool = False
    thread: bool = True
    is_async: bool = False


@overload
def task(fn: F, /) -> F: ...
@overload
def task(
    *,
    name: str | None = None,
    retries: int | None = None,
    no_retry: Iterable[type[BaseException] | str] = (),
    thread: bool = True,
    retry_delay: float | None = None,
    time_limit: float | None = None,
    retry_on_timeout: bool = False,
) -> Callable[[F], F]: ...
def task(
    fn: Any = None,
    /,
    *,
    name: str | None = None,
    retries: int | None = None,
    no_retry: Iterable[type[BaseException] | str] = (),
    thread: bool = True,
    retry_delay: float | None = None,
    time_limit: float | None = None,
    retry_on_timeout: bool = False,
) -> Any:
    """Register a method as a task, under its own name unless ``name=`` says otherwise.

    Use it bare (``@task``) or with options (``@task(retries=3)``).  An
    ``async def`` runs on the worker's event loop; a plain ``def`` runs in a
    thread unless ``thread=False``.  ``retry_on_timeout`` needs a
    ``time_limit``: the submission's ``timeout=`` is a deadline for the whole
    task, and once it has passed there is nothing left to retry in.
    """
    _check_seconds("retry_delay", retry_delay, allow_zero=True)
    _check_seconds("time_limit", time_limit, allow_zero=False)
    if retry_on_timeout and time_limit is None:
        raise ValueError("retry_on_timeout=True needs a time_limit= (seconds per attempt) to retry after")

    def mark(function: F) -> F:
        if not callable(function):
            raise TypeError(f"@task needs a function, got {function!r}")
        if retries is not None and retries < 0:
            raise ValueError("retries must be >= 0")
        options = TaskOptions(
            name=name or function.__name__,
            retries=retries,
            no_retry=tuple(e if isinstance(e, str) else e.__name__ for e in no_retry),
            thread=thread,
            retry_delay=None if retry_delay is None else float(retry_delay),
            time_limit=None if time_limit is None else float(time_limit),
            retry_on_timeout=retry_on_timeout,
            is_async=inspect.iscoroutinefunction(function),
        )
        setattr(function, _ATTRIBUTE, options)
        return function

    return mark(fn) if fn is not None else mark


def _check_seconds(what: str, value: float | None, *, allow_zero: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{what} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


class Retry(Exception):
    """Raise it from a task to ask for a retry, after ``after`` seconds if given.

    The attempt ends as an error of type ``Retry`` whose message is
    ``reason``; the dispatcher retries it like any other error (it counts
    against the task's ``retries``, and when none are left the task fails
    with this error), but waits exactly ``after`` seconds (no jitter) instead
    of its backoff.  ``after=None`` keeps the task's ``retry_delay`` or the
    backoff.  Why a count: a task that asks for retries forever is the
    poison task that retry limits exist to stop.
    """

    def __init__(self, after: float | None = None, reason: str | None = None) -> None:
        _check_seconds("after", after, allow_zero=True)
        self.after = None if after is None else float(after)
        self.reason = reason
        super().__init__(reason if reason is not None else ("retry requested" if after is None else f"retry requested in {after:g} s"))


def task_options(obj: Any) -> TaskOptions | None:
    """The options ``@task`` attached to ``obj``, if any."""
    return getattr(obj, _ATTRIBUTE, None)


def collect_tasks(cls: type) -> dict[str, tuple[str, TaskOptions]]:
    """Map task name -> (attribute name, options) over ``cls`` and its bases."""
    registry: dict[str, tuple[str, TaskOptions]] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            options = task_options(getattr(value, "__func__", value))
            if options is not None:
                registry[options.name] = (attribute, options)
    return registry
