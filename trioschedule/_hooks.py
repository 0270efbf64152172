"""Running user hooks so that a hook that raises never takes anything down."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["HookRunner"]


class HookRunner:
    """Calls the ``on_*`` hooks of ``owner``: logged with traceback and counted when they raise.

    ``call`` queues a hook for the runner task (hooks run one at a time, in
    the order they were queued, off the connection's hot path); ``call_now``
    awaits it in place.  Hooks the subclass did not override are skipped at
    no cost.
    """

    def __init__(self, owner: Any, log: logging.Logger) -> None:
        self._owner = owner
        self._log = log
        self._queue: deque[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = deque()
        self._wakeup = trio.Event()
        self.errors = 0
        self._overridden: dict[str, bool] = {}

    def overridden(self, hook: Callable[..., Any]) -> bool:
        name = hook.__name__
        known = self._overridden.get(name)
        if known is None:
            defining = next(k for k in type(self._owner).__mro__ if name in vars(k))
            base = next(k for k in reversed(type(self._owner).__mro__) if name in vars(k))
            known = self._overridden[name] = defining is not base
        return known

    def call(self, hook: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self.overridden(hook):
            self._queue.append((hook, args))
            self._wakeup.set()

    async def call_now(self, hook: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if not self.overridden(hook):
            return
        try:
            await hook(*args)
        except Exception:  # noqa: BLE001 - a hook that raises is logged and counted, never fatal
            self.errors += 1
            self._log.exception("hook %s raised (the %s carries on)", hook.__name__, type(self._owner).__name__)

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._queue:
                hook, args = self._queue.popleft()
                await self.call_now(hook, *args)
