"""The dispatcher's operations endpoint (``Dispatcher(http="HOST:PORT")``, ``dispatcher --http``).

``server.py`` is a small read-only HTTP/1.1 server on h11; ``app.py`` routes
``/``, ``/metrics`` and ``/api/status``; ``metrics.py`` is the Prometheus
collector; ``page.html`` is the status page, one self-contained file.
Imported only when a dispatcher is given ``http``: a dispatcher without it
never loads prometheus-client.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

import trio

from .._net.security import warn_if_exposed
from .app import OperationsApp
from .server import HttpLimits, serve_http

if TYPE_CHECKING:
    from .._dispatcher.dispatcher import Dispatcher

__all__ = ["HttpLimits", "parse_address", "serve_operations"]

log = logging.getLogger("trioschedule.http")


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as ``(host, port)``; raises ValueError saying what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"http address {address!r} is not HOST:PORT (for example 127.0.0.1:9100)")
    return host.strip("[]"), int(port)


async def serve_operations(
    dispatcher: Dispatcher, address: str, limits: HttpLimits | None = None, *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:  # fmt: skip
    """Serve the endpoint for ``dispatcher`` on ``address`` until cancelled; ``started()`` gives the bound port."""
    host, port = parse_address(address)
    try:
        listeners: list[Any] = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise OSError(exc.errno, f"cannot serve http on {address}: the address is already in use") from None
    bound = int(listeners[0].socket.getsockname()[1])
    ssl_context = dispatcher.ssl_context
    if ssl_context is not None:  # the dispatcher's own certificate: https on this port
        listeners = [trio.SSLListener(lst, ssl_context, https_compatible=True) for lst in listeners]
    app = OperationsApp(dispatcher)
    warn_if_exposed(log, host, dispatcher.secrets, ssl_context, exposes="read the dispatcher's status and metrics")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.throughput.run)
        await nursery.start(serve_http, app, listeners, limits or HttpLimits())
        log.info("%s serving http%s on %s:%d (/, /metrics, /api/status)", dispatcher.name,
                 "s" if ssl_context is not None else "", host or "*", bound)  # fmt: skip
        task_status.started(bound)
