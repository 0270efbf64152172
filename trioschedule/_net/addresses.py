"""Several dispatcher addresses: which one a worker or client tries next.

Several dispatchers may share one store (docs/HA.md): one leads, the others
are standbys that answer every hello with a ``not-leader`` error naming the
leader (or nobody, while none leads).  A peer is given every address and
goes through them in turn; a standby's redirect is tried next, at once.
:class:`Rotation` is that decision and nothing else (no I/O, no clock), so
:func:`~trioschedule._net.peerconn.stay_connected` stays the one loop that
connects, and the rotation can be tested step by step.

A *round* is one attempt at each address of the list (plus the redirects
met on the way).  Within a round the next address is tried at once; only
when a whole round has failed does the peer back off, so one address works
exactly as before: each failure is a round.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from .. import _defaults as defaults

__all__ = ["Address", "Rotation", "dispatchers_at", "format_address", "format_addresses", "parse_address", "peer_addresses"]

#: ``(host, port)``.
Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """``HOST:PORT`` (``[::1]:7311`` for IPv6) -> ``(host, port)``; ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"expected HOST:PORT, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range in {text!r}")
    return host, number


def format_address(address: Address) -> str:
    """``(host, port)`` -> ``HOST:PORT``, with brackets around an IPv6 host."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_addresses(addresses: Iterable[Address]) -> str:
    """``HOST:PORT, HOST:PORT``: how errors and logs name a list."""
    return ", ".join(format_address(address) for address in addresses)


def dispatchers_at(addresses: list[Address]) -> str:
    """``the dispatcher at HOST:PORT``, or every address when there are several: how a peer's errors name them."""
    if len(addresses) == 1:
        return f"the dispatcher at {format_address(addresses[0])}"
    return f"the dispatchers at {format_addresses(addresses)}"


def peer_addresses(host: str, port: int, addresses: Iterable[str | Address] | None) -> list[Address]:
    """A Worker's or Client's addresses: ``addresses`` when given (strings or pairs), else ``[(host, port)]``.

    Duplicates are dropped (the first stays); an empty list is a mistake.
    """
    if addresses is None:
        return [(host, int(port))]
    if isinstance(addresses, str):  # "a:1,b:2" would otherwise be taken apart letter by letter
        addresses = addresses.split(",")
    result: list[Address] = []
    for item in addresses:
        address = parse_address(item) if isinstance(item, str) else (str(item[0]), int(item[1]))
        if address not in result:
            result.append(address)
    if not result:
        raise ValueError("addresses must name at least one dispatcher (HOST:PORT)")
    return result


class Rotation:
    """Which address to try next, given how the attempts so far went.

    ``current`` is the address to try.  After an attempt, :meth:`failed`
    (with the standby's ``leader`` if it named one) or :meth:`succeeded`.
    :meth:`failed` returns True when the round is over: every address failed,
    and the caller backs off before the next round.

    A redirect is followed at once, but only to an address not yet tried
    this round and at most ``max_redirects`` times a round, so two standbys
    that name each other cost one attempt each, not a loop.

    When a connection that worked ends (:meth:`lost`), the next round starts
    with the *next* address and tries the one that led last: a leader that
    is paused or cut off still accepts TCP connections and would hold each
    attempt for the whole connect timeout, while a standby that took over
    answers at once, and one that did not yet names the leader (one extra
    round trip).  An address learnt from a redirect and not in the list
    comes last in that round, and is forgotten once it fails a whole round.
    """

    def __init__(self, addresses: Sequence[Address], *, max_redirects: int = defaults.MAX_REDIRECTS) -> None:
        if not addresses:
            raise ValueError("no dispatcher address to connect to")
        self.addresses: list[Address] = list(addresses)
        self.max_redirects = max_redirects
        self._start = 0  # the list index the next round starts from
        self._learnt: Address | None = None  # a redirect's address, outside the list, that worked
        self._leading: Address | None = None  # the address of the last connection that worked
        #: (address, error) of each failed attempt in this round, in order.
        self.failures: list[tuple[Address, Exception]] = []
        self._queue: deque[Address] = deque()
        self._tried: set[Address] = set()
        self._redirects = 0
        self._new_round()

    @property
    def current(self) -> Address:
        """The address to try now."""
        return self._queue[0]

    @property
    def several(self) -> bool:
        """More than one address is known (messages then name them all)."""
        return len(self.addresses) > 1

    def failed(self, exc: Exception, leader: Address | None = None) -> bool:
        """The attempt at :attr:`current` failed with ``exc``; True if that ends the round (back off, then retry).

        ``leader`` is where a standby said to go: tried next unless it was
        tried this round already or the round's redirects are used up.
        """
        address = self._queue.popleft()
        self._tried.add(address)
        self.failures.append((address, exc))
        if leader is not None and leader not in self._tried and self._redirects < self.max_redirects:
            self._redirects += 1
            if leader in self._queue:
                self._queue.remove(leader)
            self._queue.appendleft(leader)
            return False
        while self._queue and self._queue[0] in self._tried:
            self._queue.popleft()
        if self._queue:
            return False
        if self._learnt in self._tried:  # the leader we were sent to last time is gone: back to the list
            self._learnt = None
        self._new_round(keep_failures=True)
        return True

    def following(self, leader: Address | None) -> bool:
        """Whether :meth:`failed` with ``leader`` would try it next (for the caller's log line)."""
        return leader is not None and leader not in self._tried and self._redirects < self.max_redirects

    def succeeded(self) -> None:
        """The attempt at :attr:`current` connected (call :meth:`lost` when that connection ends)."""
        address = self._leading = self._queue[0]
        if address in self.addresses:
            self._start, self._learnt = self.addresses.index(address), None
        else:
            self._learnt = address
        self._new_round()

    def lost(self) -> None:
        """The connection that worked has ended: the next round starts after its address, which comes last."""
        if self._leading in self.addresses:
            self._start = (self.addresses.index(self._leading) + 1) % len(self.addresses)
        self._new_round()

    def _new_round(self, *, keep_failures: bool = False) -> None:
        order = self.addresses[self._start :] + self.addresses[: self._start]
        if self._learnt is not None:
            order.append(self._learnt)
        self._queue = deque(order)
        self._tried = set()
        self._redirects = 0
        if not keep_failures:
            self.failures = []

    def take_failures(self) -> list[tuple[Address, Exception]]:
        """The failed attempts of the round that just ended (and forget them)."""
        failures, self.failures = self.failures, []
        return failures
