"""Sending a batch whose frame may be too large: halve it until each part fits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .._errors import ConnectionClosed, LocalProtocolError

__all__ = ["send_split"]

T = TypeVar("T")


def send_split(send: Callable[[list[T]], None], items: list[T], unsendable: Callable[[T, Exception], Any]) -> None:
    """``send(items)`` as one frame; if it cannot be encoded (too large, or a bad value), halve it.

    An item that cannot be sent even alone goes to ``unsendable`` so that its
    task ends with an error instead of vanishing.  A closed connection is
    left to its reader, which notices and recovers.
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
