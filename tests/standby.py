"""A stand-in standby dispatcher on a real TCP port, for the peer side of several dispatchers.

It does what docs/PROTOCOL.md says a standby does and nothing more: read the
first frame (the hello), answer it with the ``not-leader`` error frame naming
``leader`` (or null), and close.  Tests change ``leader`` while it runs, the
way a real standby learns of a new leader.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from trioschedule._protocol.framing import FrameDecoder, encode_frame


class StandIn:
    """Answers every hello with ``error{code: "not-leader", leader}``; ``hellos`` records each hello's role."""

    def __init__(self, leader: str | None = None) -> None:
        self.leader = leader
        self.port = 0
        self.hellos: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def frame(self) -> bytes:
        message = f"this dispatcher is a standby; the leader is {self.leader}" if self.leader else (
            "this dispatcher is a standby; no leader yet")  # fmt: skip
        payload = {"code": "not-leader", "message": message, "leader": self.leader, "type": "error"}
        return encode_frame(json.dumps(payload, separators=(",", ":")).encode())

    async def _answer(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        try:
            with trio.move_on_after(5):
                while (frame := decoder.next_frame()) is None:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    decoder.receive_data(data)
                self.hellos.append(json.loads(frame).get("role", "?"))
                await stream.send_all(self.frame())
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    async def serve(self, *, port: int = 0, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._answer, listeners, task_status=task_status)  # type: ignore[arg-type]


@asynccontextmanager
async def stand_in(leader: str | None = None, *, port: int = 0) -> AsyncIterator[StandIn]:
    """A :class:`StandIn` listening on 127.0.0.1 for the length of the block."""
    standby = StandIn(leader)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: standby.serve(port=port, task_status=task_status))
        try:
            yield standby
        finally:
            nursery.cancel_scope.cancel()
