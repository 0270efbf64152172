"""Small helpers shared by the dispatcher, the worker and the client."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._errors import ConnectionClosed, ProtocolError

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["background", "one_error", "single_error", "until_closed"]


def single_error(group: BaseExceptionGroup) -> BaseException | None:  # type: ignore[type-arg]
    """The one real exception in ``group`` (ignoring Cancelled), or None if there are several or none."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


@asynccontextmanager
async def one_error() -> AsyncIterator[trio.Nursery]:
    """A nursery that lets out one exception, never a group: trioschedule's exception-group policy.

    Every public context manager and every ``serve``/``run`` coroutine leaves
    through this, so a caller writes ``except AuthenticationError:`` and not
    ``except* AuthenticationError:``:

    * the body's own exception comes out unchanged (it cancels the nursery
      first, as a nursery body's exception does), whatever the background
      tasks raised meanwhile;
    * a single failure of a background task comes out alone, not in a group
      of one, also when the body was merely cancelled because of it;
    * several real failures at once come out as the group, since none of them
      can be chosen over the others.  Cancelled never counts as a failure.

    The body runs inside the nursery: ``async with one_error() as nursery:``
    is ``async with trio.open_nursery() as nursery:`` with this policy.
    """
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except trio.Cancelled:
                raise  # the nursery's own scope absorbs it if it was the one cancelled
            except BaseException as exc:  # noqa: BLE001 - raised again below, outside the nursery
                error = exc
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # A background task failed.  If the body was merely cancelled because
        # of it, the background failure is the one to report.
        if error is None or isinstance(error, trio.Cancelled):
            single = single_error(group)
            if single is not None:
                raise single from None
            raise
    if error is not None:
        raise error


@asynccontextmanager
async def background(*runs: Callable[..., Awaitable[Any]]) -> AsyncIterator[trio.Nursery]:
    """Run each ``run`` (started with ``nursery.start``) beside the body, then cancel them.

    Exceptions leave as :func:`one_error` says.
    """
    async with one_error() as nursery:
        for run in runs:
            await nursery.start(run)
        try:
            yield nursery
        finally:
            nursery.cancel_scope.cancel()


async def until_closed(fn: Callable[[], Any], scope: trio.CancelScope) -> None:
    """Run one of a connection's tasks; when it ends for any reason, end the connection."""
    try:
        await fn()
    except (ConnectionClosed, ProtocolError):
        pass
    finally:
        scope.cancel()

