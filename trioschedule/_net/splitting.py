"""Sending a batch whose frame may come out too large: halve it until each part fits.

A batch (tasks for a worker, submissions, results) goes as one frame when it
can, because one frame is one write and one journal transaction.  Encoding
refuses a frame over the peer's size limit, or a value that is not JSON, with
:class:`LocalProtocolError` before anything is queued, so halving and trying
again is safe; only an item that cannot be sent even alone is given up on,
and its caller says why to whoever waits for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .._errors import ConnectionClosed, LocalProtocolError

__all__ = ["send_split"]

T = TypeVar("T")


def send_split(
    send: Callable[[list[T]], None],
    items: list[T],
    unsendable: Callable[[T, LocalProtocolError], None],
) -> None:
    """``send(items)`` as one frame; if it cannot be encoded (too large, or a bad value), halve it.

    An item that cannot be sent even alone goes to ``unsendable`` so that its
    task ends with an error instead of vanishing.  A closed connection is
    left to its reader, which notices and recovers (what was not sent is sent
    again on the next connection).  Parts go in order: the first half before
    the second.
    """
    try:
        send(items)
    except ConnectionClosed:
        pass
    except LocalProtocolError as exc:
        if len(items) == 1:
            unsendable(items[0], exc)
            return
        middle = len(items) // 2
        send_split(send, items[:middle], unsendable)
        send_split(send, items[middle:], unsendable)
