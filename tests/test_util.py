"""one_error: how exceptions leave every public context manager and serve/run coroutine."""

from __future__ import annotations

import sys

import pytest
import trio

from trioschedule._util import background, one_error

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


async def fail_soon(exc: BaseException, delay: float = 1) -> None:
    await trio.sleep(delay)
    raise exc


async def test_the_bodys_own_exception_comes_out_unchanged(autojump_clock):
    error = KeyError("mine")
    with pytest.raises(KeyError) as info:
        async with one_error() as nursery:
            nursery.start_soon(trio.sleep_forever)  # cancelled by the body's exception, as in a nursery
            raise error
    assert info.value is error


async def test_the_bodys_exception_wins_over_a_background_failure_it_caused(autojump_clock):
    async def fail_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("cleanup failed")

    with pytest.raises(KeyError):
        async with one_error() as nursery:
            nursery.start_soon(fail_when_cancelled)
            await trio.sleep(1)
            raise KeyError("mine")


async def test_a_single_background_failure_comes_out_alone(autojump_clock):
    with pytest.raises(ValueError, match="background") as info:
        async with one_error() as nursery:
            nursery.start_soon(fail_soon, ValueError("background"))
            await trio.sleep_forever()  # cancelled because of it
    assert not isinstance(info.value, BaseExceptionGroup)


async def test_several_failures_at_once_come_out_as_the_group(autojump_clock):
    async def fail_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise KeyError("two")

    with pytest.raises(BaseExceptionGroup) as info:
        async with one_error() as nursery:
            nursery.start_soon(fail_soon, ValueError("one"))
            nursery.start_soon(fail_when_cancelled)
    assert sorted(type(exc).__name__ for exc in info.value.exceptions) == ["KeyError", "ValueError"]


async def test_a_body_that_ends_waits_for_its_tasks_as_a_nursery_does(autojump_clock):
    done = []

    async def work() -> None:
        await trio.sleep(5)
        done.append(trio.current_time())

    start = trio.current_time()
    async with one_error() as nursery:
        nursery.start_soon(work)
    assert done == [start + 5]


async def test_background_starts_its_runs_first_and_cancels_them_after_the_body(autojump_clock):
    events: list[str] = []

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        events.append("started")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            events.append("cancelled")

    async with background(run):
        events.append("body")
    assert events == ["started", "body", "cancelled"]


async def test_background_lets_a_failure_to_start_out_alone(autojump_clock):
    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise ConnectionError("cannot reach it")

    with pytest.raises(ConnectionError, match="cannot reach it"):
        async with background(run):
            pytest.fail("the body must not run")


async def test_a_body_cancelled_by_its_own_nursery_ends_quietly(autojump_clock):
    """A child that ends the nursery on purpose (a connection closing, say) cancels the body: nothing escapes."""
    try:
        async with one_error() as nursery:

            async def close_soon() -> None:
                await trio.sleep(1)
                nursery.cancel_scope.cancel()

            nursery.start_soon(close_soon)
            await trio.sleep_forever()
    except trio.Cancelled:  # (pytest-trio would let an escaped Cancelled pass as a success)
        pytest.fail("the body's Cancelled escaped the nursery that was cancelled")
    assert trio.current_time() == pytest.approx(1)


async def test_an_outer_cancellation_still_reaches_the_caller(autojump_clock):
    with trio.move_on_after(1) as outer:
        async with one_error():
            await trio.sleep_forever()
    assert outer.cancelled_caught
