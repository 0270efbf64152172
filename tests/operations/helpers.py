"""Starting a command-line dispatcher with ``--http`` and reading its endpoint, for the HTTP tests."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

import trio

from ..processes import Processes


async def start_dispatcher_with_http(procs: Processes, *args: str) -> tuple[int, int]:
    """(dispatcher port, http port) of a ``dispatcher ... --http 127.0.0.1:0`` process."""
    proc, port = await procs.start_dispatcher("--store", "memory:", "--http", "127.0.0.1:0", *args)
    with trio.fail_after(20):
        line = await trio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
    match = re.search(r"status page on http://127\.0\.0\.1:(\d+)/", line)
    assert match, f"unexpected dispatcher output: {line!r} (log: {procs.log('dispatcher')})"
    return port, int(match.group(1))


def fetch(url: str, token: str | None = None, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` (blocking: call it through ``trio.to_thread``); (status, headers, body), errors included."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


async def get(url: str, token: str | None = None, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(fetch, url, token, accept)


async def api_status(http_port: int, token: str | None = None) -> dict[str, Any]:
    status, _, body = await get(f"http://127.0.0.1:{http_port}/api/status", token)
    assert status == 200, body
    return json.loads(body)
