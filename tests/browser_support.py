"""Headless Chromium for the browser tests: Debian's chromium driven by Playwright.

    async with chromium_page() as (page, console):
        await page.goto(url)   # console: the lines the page logged
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["CHROMIUM_ARGS", "chromium_executable", "chromium_page"]


CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)


@contextlib.asynccontextmanager
async def chromium_page(*extra_args: str) -> AsyncIterator[tuple[Any, list[str]]]:
    """A page of headless Chromium (Debian's, through Playwright) and the console lines
    it logs; not a skip when missing: `make test` installs chromium (tools/bootstrap.sh)."""
    from playwright.async_api import async_playwright

    executable = chromium_executable()
    assert executable, "chromium is not installed (tools/bootstrap.sh)"
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=executable, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            page = await browser.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            yield page, console
        finally:
            await browser.close()


def chromium_executable() -> str | None:
    """Debian's Chromium for Playwright (``executable_path=``): Playwright's own
    browser download is not available here, so tests must launch this one."""
    import shutil

    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None
