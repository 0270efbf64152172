"""Just enough of the Chrome DevTools protocol to drive Debian's headless ``chromium`` from a test.

Chromium is started with ``--remote-debugging-port=0`` and a temporary
profile; the port it picked is read from the ``DevToolsActivePort`` file it
writes there, and one websocket (trio-websocket) carries the commands of one
page session (``Target.attachToTarget`` with ``flatten``).  Every event is
kept, so a test can look for console errors after the fact.  The browser is
stopped by its PID in ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import open_websocket_url

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One page: ``send`` a command and await its result; every event lands in ``events``."""

    def __init__(self, ws: Any, nursery: trio.Nursery) -> None:
        self.ws = ws
        self.nursery = nursery
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        self._next = 0
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}

    async def reader(self) -> None:
        while True:
            message = json.loads(await self.ws.get_message())
            if "id" in message and message["id"] in self._waiting:
                await self._waiting.pop(message["id"]).send(message)
            elif "method" in message:
                self.events.append(message)

    async def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> Any:
        self._next += 1
        ident = self._next
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[ident] = send
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if self.session is not None and not browser:
            message["sessionId"] = self.session
        await self.ws.send_message(json.dumps(message))
        with trio.fail_after(30):
            answer = await receive.receive()
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[dict[str, Any]]:
        """Console errors, uncaught exceptions and error log entries (CSP violations, failed loads) so far."""
        def is_error(event: dict[str, Any]) -> bool:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                return params.get("type") in ("error", "assert")
            if method == "Log.entryAdded":
                return params.get("entry", {}).get("level") == "error"
            return method == "Runtime.exceptionThrown"

        return [event for event in self.events if is_error(event)]

    def requested(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]


@asynccontextmanager
async def open_page(tmp_path: Any, width: int = 1280, height: int = 1000) -> AsyncIterator[Page]:
    """A headless chromium with one blank page attached, its Runtime, Log, Network and Page domains on."""
    assert CHROMIUM, "chromium is not installed (.ci/run installs it with apt-get)"
    profile = os.path.join(str(tmp_path), "chromium-profile")
    os.makedirs(profile, exist_ok=True)
    log = open(os.path.join(str(tmp_path), "chromium.log"), "w")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--metrics-recording-only", "--mute-audio",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         f"--window-size={width},{height}", "about:blank"],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        active = os.path.join(profile, "DevToolsActivePort")
        with trio.fail_after(60):
            while not (os.path.exists(active) and len(open(active).read().splitlines()) >= 2):
                assert proc.poll() is None, f"chromium exited with {proc.returncode}: see {log.name}"
                await trio.sleep(0.1)
        port, path = open(active).read().splitlines()[:2]
        async with open_websocket_url(f"ws://127.0.0.1:{port}{path}", max_message_size=64 * 1024 * 1024) as ws:
            async with trio.open_nursery() as nursery:
                page = Page(ws, nursery)
                nursery.start_soon(page.reader)
                target = (await page.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
                page.session = (await page.send("Target.attachToTarget", {"targetId": target, "flatten": True}))[
                    "sessionId"]  # fmt: skip
                for domain in ("Runtime", "Log", "Network", "Page"):
                    await page.send(f"{domain}.enable")
                await page.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                                       "deviceScaleFactor": 1, "mobile": False})  # fmt: skip
                try:
                    yield page
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the browser and its helpers, nothing else
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
