"""The ``@task`` decorator and the registry a worker builds from it.

``@task`` marks a method (or function) and leaves it callable as before; the
:class:`~trioschedule.Worker` subclass collects marked methods into a
registry when the class is created.  A worker runs only names in its registry:
that allow-list is what stops anyone from making it run something else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

import attrs

__all__ = ["TaskOptions", "task"]

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
    """

    name: str
    retries: int | None = None
    no_retry: tuple[str, ...] = ()
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
) -> Callable[[F], F]: ...
def task(
    fn: Any = None,
    /,
    *,
    name: str | None = None,
    retries: int | None = None,
    no_retry: Iterable[type[BaseException] | str] = (),
    thread: bool = True,
) -> Any:
    """Register a method as a task, under its own name unless ``name=`` says otherwise.

    Use it bare (``@task``) or with options (``@task(retries=3)``).  An
    ``async def`` runs on the worker's event loop; a plain ``def`` runs in a
    thread unless ``thread=False``.
    """

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
            is_async=inspect.iscoroutinefunction(function),
        )
        setattr(function, _ATTRIBUTE, options)
        return function

    return mark(fn) if fn is not None else mark


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
