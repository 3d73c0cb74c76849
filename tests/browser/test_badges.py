"""The badges beside a model's name on the status page."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import BrowserThread, open_page
from tests.browser.test_ui import TIMEOUT_MS, assert_stayed_local, expect_highlight
from tests.e2e.conftest import running


def visible_badges(page: Page, model: str) -> list[str]:
    badges: list[str] = page.eval_on_selector_all(
        f'[data-model="{model}"] header .badge',
        "nodes => nodes.filter(n => !n.hidden).map(n => n.textContent)",
    )
    return badges


async def test_the_active_model_says_active_once(tmp_path: Path, browser: BrowserThread) -> None:
    async with running(tmp_path) as rig, open_page(browser, rig.url + "/llmux/") as (page, log):
        assert (await rig.chat("a")).status_code == 200
        await browser.run(expect_highlight, page, "a", "Active")
        await browser.run(
            lambda: expect(page.locator('#scheduler [data-fact="active"]')).to_have_text(
                "a", timeout=TIMEOUT_MS
            )
        )
        assert await browser.run(visible_badges, page, "a") == ["Active"]
        assert await browser.run(visible_badges, page, "b") == ["Sleeping"]

        # Pinned is news the state does not tell: that badge stays.
        await browser.run(lambda: page.click('[data-model="a"] [data-action="pin"]'))
        await browser.run(
            lambda: expect(page.locator('[data-model="a"] [data-tag="pinned"]')).to_be_visible(
                timeout=TIMEOUT_MS
            )
        )
        assert await browser.run(visible_badges, page, "a") == ["Active", "pinned"]
    assert_stayed_local(log, rig.url)
