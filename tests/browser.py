"""Headless chromium driven over the DevTools protocol, for the tests of the HTML pages.

`chromium()` launches a headless chromium and gives a `DevTools` session on its page, with
every console error, uncaught exception, log entry of level error and Content-Security-Policy
violation collected (`errors()`): a test asserts that there are none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = "/usr/bin/chromium"

# Runs in every document before its own scripts (DevTools-injected, so the page's CSP does
# not apply to it): it records the page's Content-Security-Policy violations.
_WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} refused ${e.blockedURI || "inline"}`);
});
"""


class DevTools:
    """One page's DevTools session: calls, events, and what the page complained about.

    A reader task takes every message off the websocket: answers go to their callers,
    events to `events`, so a test may await other things while the page runs.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last_id = 0
        self.events: list[dict[str, Any]] = []
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.arrived = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                future = self.waiting.pop(data.get("id", -1), None)
                if future is not None:
                    if not future.done():
                        future.set_result(data)
                else:
                    self.events.append(data)
                    self.arrived.set()
        finally:
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("the DevTools connection closed"))
            self.arrived.set()

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.last_id] = future
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        message = await future
        assert "error" not in message, f"{method}: {message['error']}"
        result: dict[str, Any] = message["result"]
        return result

    async def event(self, method: str, since: int = 0) -> dict[str, Any]:
        """The first event `method` (among those from index `since` on), waiting for it."""
        while True:
            for e in self.events[since:]:
                if e.get("method") == method:
                    return e
            assert not self.reader.done(), "the DevTools connection closed"
            self.arrived.clear()
            await self.arrived.wait()

    async def navigate(self, url: str) -> None:
        """Opens `url` and waits for its load event."""
        since = len(self.events)
        await self.call("Page.navigate", url=url)
        await self.event("Page.loadEventFired", since)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, every: float = 0.05) -> Any:
        """Polls the expression until it is truthy; its value. Fails with the last value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"after {timeout} s, still false: {expression} (gave {value!r})")
            await asyncio.sleep(every)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (scrolled into view first)."""
        box = await self.evaluate(
            f"""(() => {{
              const node = document.querySelector({json.dumps(selector)});
              if (!node) return null;
              node.scrollIntoView({{block: "center"}});
              const r = node.getBoundingClientRect();
              return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()"""
        )
        assert box, f"no element matches {selector}"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="left" if kind != "mouseMoved" else "none",
                clickCount=1 if kind != "mouseMoved" else 0,
            )

    async def screenshot(self, path: Path) -> None:
        png = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(png["data"]))

    def errors(self, ignore: tuple[str, ...] = ()) -> list[str]:
        """Exceptions, console errors and log entries of level error (where a refusal by the
        Content-Security-Policy shows), but those containing any of `ignore`."""
        out = []
        for e in self.events:
            params = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(str(params["exceptionDetails"]))
            elif e.get("method") == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "assert",
            ):
                out.append(str(params["args"]))
            elif e.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append(params["entry"]["text"])
        return [text for text in out if not any(part in text for part in ignore)]

    async def csp_violations(self) -> list[str]:
        """The Content-Security-Policy violations the current document saw."""
        return list(await self.evaluate("window.__cspViolations || []"))


@contextlib.asynccontextmanager
async def chromium(profile: Path, width: int = 1280, height: int = 2000) -> AsyncIterator[DevTools]:
    """A headless chromium (profile in `profile`, removed after) and a session on its page."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)")
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--remote-debugging-port=0",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            assert proc.returncode is None, f"chromium exited with status {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.05)
        port = port_file.read_text().splitlines()[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            target = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = DevTools(ws)
                try:
                    for domain in ("Runtime", "Log", "Page"):
                        await cdp.call(f"{domain}.enable")
                    await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=_WATCH_CSP)
                    await cdp.call(
                        "Emulation.setDeviceMetricsOverride",
                        width=width,
                        height=height,
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    yield cdp
                finally:
                    await cdp.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
