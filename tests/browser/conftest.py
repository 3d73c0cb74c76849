"""A headless system Chromium, driven by Playwright's sync API from trio tests.

Playwright's sync API belongs to the thread that started it, so one dedicated thread owns the
browser and every call goes to it: `await browser.run(fn, *args)` runs `fn(*args)` there while
trio keeps serving llmux in this thread.

The browser is the system's (`/usr/bin/chromium`), never one Playwright downloads. Without it
the tests are skipped, except in CI (env `CI` set), where `.ci/run` installs it and its absence
is a failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

CHROMIUM = Path("/usr/bin/chromium")

T = TypeVar("T")


class BrowserThread:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
        self._thread.submit(self._start).result()

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"]
        )

    def _stop(self) -> None:
        self.browser.close()
        self._playwright.stop()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the browser's thread."""
        future = self._thread.submit(fn, *args)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def close(self) -> None:
        self._thread.submit(self._stop).result(timeout=60)
        self._thread.shutdown()


@pytest.fixture(scope="session")
def browser() -> Iterator[BrowserThread]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run should have installed chromium")
        pytest.skip(f"no system Chromium at {CHROMIUM} (apt-get install chromium)")
    thread = BrowserThread()
    try:
        yield thread
    finally:
        thread.close()


@dataclass
class PageLog:
    """What a page did besides drawing: every URL it asked for, every error it logged."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def open_page(browser: BrowserThread, url: str) -> AsyncIterator[tuple[Any, PageLog]]:
    """A fresh browser context with one page at `url`; closed on exit."""
    log = PageLog()

    def start() -> tuple[Any, Any]:
        context = browser.browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.on("request", lambda request: log.requests.append(request.url))
        page.on("pageerror", lambda error: log.errors.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: (
                message.type == "error" and log.errors.append(f"console: {message.text}")
            ),
        )
        page.goto(url)
        return context, page

    context, page = await browser.run(start)
    try:
        yield page, log
    finally:
        await browser.run(context.close)
