"""Shared test fixtures: worker classes used across the behaviour tests, and a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from trioschedule import Dispatcher, Worker, task


class MathWorker(Worker):
    """Quick, slow, failing and cancellable tasks for the behaviour tests."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("heartbeat_interval", 1.0)
        kwargs.setdefault("heartbeat_timeout", 5.0)
        super().__init__(*args, **kwargs)
        self.ran: list[tuple[str, tuple]] = []
        self.messages: list[object] = []
        self.cleaned_up: list[str] = []

    @task
    async def add(self, a, b):
        self.ran.append(("add", (a, b)))
        return a + b

    @task
    def mul(self, a, b):
        return a * b

    @task
    async def sleep(self, seconds, value=None):
        self.ran.append(("sleep", (seconds,)))
        try:
            await trio.sleep(seconds)
        finally:
            self.cleaned_up.append(f"sleep {seconds}")
        return value

    @task
    async def fail(self, message="boom"):
        raise ValueError(message)

    @task
    async def not_json(self):
        return {1, 2, 3}

    async def on_message(self, message):
        self.messages.append(message)


class OtherWorker(Worker):
    @task
    async def other(self):
        return "other"


def quick_dispatcher(**kwargs) -> Dispatcher:
    """A dispatcher with short timers, so tests under autojump_clock stay readable."""
    kwargs.setdefault("heartbeat_interval", 1.0)
    kwargs.setdefault("heartbeat_timeout", 5.0)
    kwargs.setdefault("session_grace", 3.0)
    return Dispatcher(**kwargs)


# ---------------------------------------------------------------- PostgreSQL (tests/postgres.py)
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One real PostgreSQL server for the session, started on first use and stopped by PID at the end.

    If it cannot start, every test that asks for it fails with the reason (never skipped).
    """
    from .postgres import running_server

    with running_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database of its own for each test: ``postgresql://postgres@127.0.0.1:PORT/NAME``."""
    if postgres_server.pid is None:  # a test restarted it and failed half-way: bring it back
        postgres_server.start()
    return postgres_server.database()
