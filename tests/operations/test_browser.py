"""The status page in a real browser (Debian's headless chromium) against a real dispatcher and two workers.

The page must load with no console error (a blocked inline script or style
would be a CSP error here), make no request beyond its own origin, show both
workers, and update its done count after a ``map`` without a reload.
Screenshots go to the test's temporary directory; with
``TRIOSCHEDULE_SCREENSHOT=PATH`` one is also written there (that is how
docs/images/status-page.png is made).
"""

from __future__ import annotations

import base64
import os

import pytest
import trio

from trioschedule import Dispatcher, open_client

from ..processes import processes, wait_for
from .cdp import open_page
from .helpers import api_status, start_dispatcher_with_http

pytestmark = pytest.mark.browser

N = 200


async def _text(page, element_id: str) -> str:
    # (null-safe: the first evaluations may run before the navigation has replaced about:blank)
    return await page.evaluate(f"(document.getElementById({element_id!r}) || {{}}).textContent || ''")


async def _screenshot(page, path: str) -> None:
    shot = await page.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))


async def test_the_status_page_in_chromium(tmp_path):
    with processes(tmp_path) as procs:
        port, http = await start_dispatcher_with_http(procs)
        procs.start_worker(port, "--concurrency", "4", name="worker-1")
        procs.start_worker(port, "--concurrency", "2", name="worker-2")

        workers = await wait_for(lambda: _connected(http, 2), timeout=30, interval=0.2)
        base = f"http://127.0.0.1:{http}/"
        async with open_page(tmp_path) as page:
            await page.send("Page.navigate", {"url": base})
            # Both workers shown, by pid, once the first poll has come back.
            pids = sorted(str(w["pid"]) for w in workers)

            async def shown_workers():
                text = await page.evaluate("(document.querySelector('#workers tbody') || {}).textContent || ''")
                return all(pid in text for pid in pids)

            await wait_for(shown_workers, timeout=30, interval=0.2)
            assert await _text(page, "workers-count") == "2"
            assert await _text(page, "done-count") == "0"
            await page.evaluate("window.__sameDocument = true")  # gone if the page reloaded

            async with open_client("127.0.0.1", port) as client:
                assert await client.map("add", [(i, 1) for i in range(N)]) == [i + 1 for i in range(N)]
                await client.map("fail", [("out of cheese",)], return_exceptions=True)
                async with trio.open_nursery() as nursery:  # two slow ones still running for the picture
                    nursery.start_soon(client.call, "slow_add", 1, 2, 3.0)
                    nursery.start_soon(client.call, "slow_add", 3, 4, 3.0)

                    async def counted():
                        return await _text(page, "done-count") == f"{N:,}"

                    await wait_for(counted, timeout=30, interval=0.2)
                    assert await page.evaluate("window.__sameDocument === true")  # updated without a reload
                    await wait_for(lambda: _has(page, "running", "slow_add"), timeout=15, interval=0.2)
                    await wait_for(lambda: _has(page, "failures", "out of cheese"), timeout=15, interval=0.2)
                    await page.evaluate("document.querySelector('#failures summary').click()")  # its traceback
                    await _screenshot(page, os.path.join(str(tmp_path), "status-page.png"))
                    if os.environ.get("TRIOSCHEDULE_SCREENSHOT"):
                        await _screenshot(page, os.environ["TRIOSCHEDULE_SCREENSHOT"])
            # The traceback of the failure is on the page, as text (the remote worker's frames).
            assert "RuntimeError" in await _text(page, "failures")
            assert "raise RuntimeError(message)" in await page.evaluate(
                "document.querySelector('#failures pre').textContent")
            assert await page.evaluate("document.getElementById('schedules-section').classList.contains('hidden')")
            navigations = [e for e in page.events if e["method"] == "Page.frameNavigated"
                           and "parentId" not in e["params"]["frame"]]  # fmt: skip
            assert len(navigations) == 1, navigations
            assert page.errors() == []
            assert page.requested() and all(url.startswith(base) for url in page.requested()), page.requested()


async def test_the_page_asks_for_the_token_and_escapes_what_it_shows(tmp_path):
    token = "page-t0ken"
    with processes(tmp_path, TRIOSCHEDULE_TOKEN=token) as procs:
        port, http = await start_dispatcher_with_http(procs)
        procs.start_worker(port, name="worker-1")
        await wait_for(lambda: _connected(http, 1, token), timeout=30, interval=0.2)
        hostile = "<img src=x onerror=\"window.__pwned=1\">"
        async with open_client("127.0.0.1", port, token=token) as client:
            await client.map("fail", [(hostile,)], return_exceptions=True)
        async with open_page(tmp_path, width=1000, height=700) as page:
            await page.send("Page.navigate", {"url": f"http://127.0.0.1:{http}/"})
            shown = "document.getElementById('auth') && !document.getElementById('auth').classList.contains('hidden')"
            await wait_for(lambda: page.evaluate(shown), timeout=30, interval=0.2)
            await page.evaluate(f"document.getElementById('token').value = {token!r}; "
                                "document.getElementById('login').requestSubmit()")  # fmt: skip
            await wait_for(lambda: _has(page, "failures", hostile), timeout=30, interval=0.2)
            assert await page.evaluate("window.__pwned === undefined")  # shown as text, never run
            assert await page.evaluate("document.querySelectorAll('#failures img').length") == 0
            assert await page.evaluate("sessionStorage.getItem('trioschedule-token')") == token
            # The one error is the first poll's 401 (chromium logs refused requests); nothing else.
            errors = page.errors()
            assert all(e["method"] == "Log.entryAdded" and "401" in e["params"]["entry"]["text"] for e in errors), errors


async def _connected(http: int, count: int, token: str | None = None):
    workers = [w for w in (await api_status(http, token))["workers"] if w["connected"]]
    return workers if len(workers) >= count else None


async def _has(page, element_id: str, needle: str) -> bool:
    return needle in await _text(page, element_id)


class _WithSchedules(Dispatcher):
    """A dispatcher whose status document has the ``schedules`` array the time-scheduling work adds."""

    def status(self):
        document = super().status()
        document["schedules"] = [{
            "name": "nightly <report>", "task": "add", "kind": "cron", "spec": "0 3 * * *", "paused": False,
            "next_run": "2030-01-02T03:00:00Z", "next_runs": ["2030-01-02T03:00:00Z", "2030-01-03T03:00:00Z"],
            "last_runs": [{"fire_time": "2030-01-01T03:00:00Z", "task_id": "s-1", "status": "ok"}],
            "misfired": 1, "skipped": 0, "runs": 7,
        }, {
            "name": "paused-one", "task": "add", "kind": "every", "spec": 60, "paused": True, "next_run": None,
            "next_runs": [], "last_runs": [], "misfired": 0, "skipped": 2, "runs": 0,
        }]  # fmt: skip
        return document


async def test_schedules_are_shown_when_the_status_has_them(tmp_path):
    async with trio.open_nursery() as nursery:
        d = _WithSchedules(port=0, http="127.0.0.1:0")
        await nursery.start(d.serve)
        async with open_page(tmp_path, width=1100, height=800) as page:
            await page.send("Page.navigate", {"url": f"http://127.0.0.1:{d.http_port}/"})
            await wait_for(lambda: _has(page, "schedules", "nightly <report>"), timeout=30, interval=0.2)
            assert not await page.evaluate("document.getElementById('schedules-section').classList.contains('hidden')")
            rows = await page.evaluate("[...document.querySelectorAll('#schedules tbody tr')].map(r => r.textContent)")
            assert len(rows) == 2 and "paused" in rows[1] and "0 3 * * *" in rows[0] and "every 60" in rows[1]
            assert "2030" in rows[0] and "7" in rows[0]
            assert page.errors() == []
            await _screenshot(page, os.path.join(str(tmp_path), "schedules.png"))
        nursery.cancel_scope.cancel()
