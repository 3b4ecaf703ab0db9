"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium,
on a network where only this machine answers, and web apps served by uvicorn in a thread."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parent.parent


def artefacts(name: str) -> Path:
    """Where a test's screenshots go: ``CBX_TEST_ARTIFACTS`` or ``build/test-artifacts``."""
    base = Path(os.environ.get("CBX_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(app_factory: Callable[[], AbstractAsyncContextManager[Any]]) -> Iterator[str]:
    """Runs ``app_factory()`` (an async context manager yielding an ASGI app) under uvicorn in a
    thread with its own event loop; yields the base URL."""
    port = free_port()
    ready = threading.Event()
    failure: list[BaseException] = []
    box: dict[str, uvicorn.Server] = {}

    async def main() -> None:
        async with app_factory() as app:
            server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
            )
            box["server"] = server
            task = asyncio.create_task(server.serve())
            while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
                await asyncio.sleep(0.05)
            ready.set()
            await task

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(120) or failure:
        raise RuntimeError(f"the app did not start: {failure!r}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        box["server"].should_exit = True
        thread.join(60)


def chromium() -> webdriver.Chrome:
    binary = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        raise RuntimeError(
            "browser tests need Debian's chromium and chromium-driver: "
            "apt-get install chromium chromium-driver (.ci/run does)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        # A closed network: every host name but this machine's fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def requested_urls(browser: webdriver.Chrome) -> list[str]:
    """Every URL the pages asked for since the last call (from the DevTools performance log)."""
    out = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            out.append(message["params"]["request"]["url"])
    return out


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20, what: str = "page") -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # the element may not be there yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout_s:.0f} s for {what}: {last!r}")
