"""The status page at /llmux/, in a real browser, against a real llmux.

llmux runs in-process (the end-to-end rig: real `sh` hooks, gated stand-in backends on
loopback); a headless Chromium opens the page; requests sent with httpx switch models, and the
page must follow: each model's lifecycle diagram highlights its current state, the scheduler's
diagram its phase, and the journal lists the transitions, newest first.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import trio
from playwright.sync_api import Page, expect

from tests.browser.conftest import BrowserThread, PageLog, open_page
from tests.e2e.conftest import running

# Generous: a 2-core machine running other jobs, a browser, hooks that are real processes.
TIMEOUT_MS = 30_000

LIFECYCLE_CYCLE = ["wake", "woke", "drain", "drained", "slept"]


# ---- things done on the browser's thread -------------------------------------------------------


def expect_highlight(page: Page, model: str, state: str) -> None:
    """The model's panel says `state`, and its diagram highlights that state and no other."""
    panel = page.locator(f'[data-model="{model}"]')
    expect(panel).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)
    current = panel.locator("svg.lifecycle g.state.current")
    expect(current).to_have_count(1, timeout=TIMEOUT_MS)
    expect(current).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)


def expect_phase(page: Page, phase: str) -> None:
    panel = page.locator("#scheduler")
    expect(panel).to_have_attribute("data-phase", phase, timeout=TIMEOUT_MS)
    current = panel.locator("svg g.state.current")
    expect(current).to_have_count(1, timeout=TIMEOUT_MS)
    expect(current).to_have_attribute("data-state", phase, timeout=TIMEOUT_MS)


def expect_fact(page: Page, where: str, fact: str, text: str) -> None:
    expect(page.locator(f'{where} [data-fact="{fact}"]')).to_have_text(text, timeout=TIMEOUT_MS)


def expect_journal_row(page: Page, subject: str, event: str, count: int = 1) -> None:
    rows = page.locator(f'#journal li[data-subject="{subject}"][data-event="{event}"]')
    expect(rows).to_have_count(count, timeout=TIMEOUT_MS)


def journal(page: Page) -> list[dict[str, Any]]:
    """The journal's rows as shown, top to bottom: their data attributes, and the text of
    their time, transition and cause."""
    rows: list[dict[str, Any]] = page.eval_on_selector_all(
        "#journal li",
        """rows => rows.map(r => ({
            ...r.dataset,
            time: r.querySelector("time").textContent,
            line: r.querySelector(".line").textContent,
            cause: r.querySelector(".cause").textContent,
        }))""",
    )
    return rows


def diagram_gaps(page: Page, model: str) -> list[str]:
    """States and edges of the status JSON's machines that a diagram on the page lacks."""
    gaps: list[str] = page.evaluate(
        """async (model) => {
            const status = await (await api("status")).json();
            const gaps = [];
            const check = (root, machine) => {
                const def = status.machines[machine];
                for (const state of def.states) {
                    if (!root.querySelector(`g.state[data-state="${state}"]`)) {
                        gaps.push(`${machine}: state ${state}`);
                    }
                }
                for (const [source, event, target] of def.edges) {
                    const edge = root.querySelector(
                        `g.edge[data-source="${source}"][data-target="${target}"]`);
                    if (!edge || !edge.dataset.events.split(" ").includes(event)) {
                        gaps.push(`${machine}: ${source} -${event}-> ${target}`);
                    }
                }
            };
            check(document.querySelector(`[data-model="${model}"] svg.lifecycle`),
                  "ModelLifecycle");
            check(document.querySelector("#scheduler svg"), "SwitchSequence");
            return gaps;
        }""",
        model,
    )
    return gaps


def sse_parse(page: Page, chunks: list[str]) -> list[list[str]]:
    """Feed the page's own SSE parser `chunks` and return the events it dispatched."""
    events: list[list[str]] = page.evaluate(
        """(chunks) => {
            const got = [];
            const parser = new SseParser((type, data) => got.push([type, data]));
            for (const chunk of chunks) parser.feed(chunk);
            return got;
        }""",
        chunks,
    )
    return events


def drop_event_stream(page: Page) -> None:
    """Cut the page's event stream; it must reconnect by itself."""
    page.evaluate("eventAbort.abort()")
    expect(page.locator("#connection")).to_have_attribute("data-opened", "2", timeout=TIMEOUT_MS)
    expect(page.locator("#connection")).to_have_attribute("data-status", "live", timeout=TIMEOUT_MS)


def enter_key(page: Page) -> None:
    """The page asks for a key; give it one through its form."""
    expect(page.locator("#auth")).to_be_visible(timeout=TIMEOUT_MS)
    page.fill("#auth-key", "sekrit")
    page.click('#auth button[type="submit"]')
    expect(page.locator("#auth")).to_be_hidden(timeout=TIMEOUT_MS)


def assert_stayed_local(log: PageLog, base_url: str) -> None:
    foreign = [url for url in log.requests if not url.startswith((base_url + "/", "data:"))]
    assert not foreign, f"the page fetched from elsewhere: {foreign}"
    assert not log.errors, log.errors


async def assert_only_the_page_is_open(url: str) -> None:
    """With api_keys set, the page itself must load without a key (a browser cannot send one
    with a navigation; the page holds no data) while the data behind it stays guarded."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as anonymous:
        page = await anonymous.get("/llmux/")
        assert page.status_code == 200, (
            "GET /llmux/ must answer without a key, like /health: the page reads the key from "
            f"its #key=... fragment and sends it on each API call (got {page.status_code})"
        )
        for path in ("/llmux/status", "/llmux/events"):
            assert (await anonymous.get(path)).status_code == 401, path


# ---- the tests ---------------------------------------------------------------------------------


async def test_page_follows_switches(tmp_path: Any, browser: BrowserThread) -> None:
    async with running(tmp_path) as rig, open_page(browser, rig.url + "/llmux/") as (page, log):
        # Nothing has run yet: both models asleep, the scheduler idle.
        await browser.run(expect_highlight, page, "a", "Sleeping")
        await browser.run(expect_highlight, page, "b", "Sleeping")
        await browser.run(expect_phase, page, "Idle")
        assert await browser.run(diagram_gaps, page, "a") == []
        assert await browser.run(diagram_gaps, page, "b") == []

        # A request for a wakes it; b stays asleep.
        response = await rig.chat("a")
        assert response.status_code == 200, response.text
        await browser.run(expect_highlight, page, "a", "Active")
        await browser.run(expect_highlight, page, "b", "Sleeping")
        await browser.run(expect_fact, page, "#scheduler", "active", "a")
        await browser.run(expect_journal_row, page, "a", "woke")

        # A request for b, with a slow wake hook so the page can be caught mid-switch: a is
        # already asleep (single GPU) while b is still waking.
        rig.hook_secs("b", "wake", 2.5)
        async with trio.open_nursery() as nursery:
            responses = []

            async def chat_b() -> None:
                responses.append(await rig.chat("b"))

            nursery.start_soon(chat_b)
            await browser.run(expect_highlight, page, "b", "Waking")
            await browser.run(expect_highlight, page, "a", "Sleeping")
            await browser.run(expect_phase, page, "Waking")
        assert responses[0].status_code == 200, responses[0].text
        await browser.run(expect_highlight, page, "b", "Active")
        await browser.run(expect_highlight, page, "a", "Sleeping")
        await browser.run(expect_phase, page, "Idle")
        await browser.run(expect_fact, page, "#scheduler", "active", "b")

        # The journal: newest first, a's whole cycle and b's wake, each with time and cause.
        await browser.run(expect_journal_row, page, "a", "slept")
        await browser.run(expect_journal_row, page, "b", "woke")
        rows = await browser.run(journal, page)
        seqs = [int(row["seq"]) for row in rows]
        assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
        oldest_first = rows[::-1]
        assert [r["event"] for r in oldest_first if r["subject"] == "a"] == LIFECYCLE_CYCLE
        assert [r["event"] for r in oldest_first if r["subject"] == "b"] == ["wake", "woke"]
        assert any(r["subject"] == "scheduler" for r in rows)
        woke = next(r for r in rows if r["subject"] == "b" and r["event"] == "woke")
        assert woke["line"] == "b Waking → Active woke"
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", woke["time"])
        # Every row shows its cause (the wording is llmux's).
        assert all(row["cause"].strip() for row in rows), rows

        # Cut the event stream: the page reconnects and rebuilds the same journal.
        await browser.run(drop_event_stream, page)
        await browser.run(
            lambda: expect(page.locator("#journal li")).to_have_count(len(rows), timeout=TIMEOUT_MS)
        )
        assert [r["seq"] for r in await browser.run(journal, page)] == [r["seq"] for r in rows]

        # The status is shown too: counts per model, idle now.
        await browser.run(expect_fact, page, '[data-model="b"]', "in_flight", "0")
        await browser.run(expect_fact, page, '[data-model="b"]', "queue_depth", "0")
    assert_stayed_local(log, rig.url)


async def test_sse_parser(tmp_path: Any, browser: BrowserThread) -> None:
    """The page's SSE parser: events split anywhere across chunks, CRLF, comments."""
    async with running(tmp_path) as rig, open_page(browser, rig.url + "/llmux/") as (page, _):
        chunks = [
            ": keep-alive\n\n",
            "event: transition\r\nda",
            'ta: {"seq": 1}\r',
            "\n\r\n",
            "data: two\ndata: lines\n\n",
            "event: other\ndata:no-space\n",
            "\n: trailing comment\n\nevent: incomplete\ndata: never dispatched",
        ]
        assert await browser.run(sse_parse, page, chunks) == [
            ["transition", '{"seq": 1}'],
            ["message", "two\nlines"],
            ["other", "no-space"],
        ]


async def test_buttons_wake_pin_unpin(tmp_path: Any, browser: BrowserThread) -> None:
    async with running(tmp_path) as rig, open_page(browser, rig.url + "/llmux/") as (page, log):
        await browser.run(expect_highlight, page, "a", "Sleeping")

        await browser.run(lambda: page.click('[data-model="a"] [data-action="wake"]'))
        await browser.run(expect_highlight, page, "a", "Active")
        await browser.run(expect_highlight, page, "b", "Sleeping")

        await browser.run(lambda: page.click('[data-model="b"] [data-action="pin"]'))
        await browser.run(expect_highlight, page, "b", "Active")
        await browser.run(expect_highlight, page, "a", "Sleeping")
        await browser.run(expect_fact, page, "#scheduler", "pinned", "b")
        pin_b = '[data-model="b"] [data-action="pin"]'

        def pinned_shown() -> None:
            expect(page.locator('[data-model="b"] [data-tag="pinned"]')).to_be_visible(
                timeout=TIMEOUT_MS
            )
            expect(page.locator(pin_b)).to_have_text("Unpin", timeout=TIMEOUT_MS)
            expect(page.locator('#scheduler [data-action="unpin"]')).to_be_enabled(
                timeout=TIMEOUT_MS
            )

        await browser.run(pinned_shown)
        await browser.run(lambda: page.click('#scheduler [data-action="unpin"]'))
        await browser.run(expect_fact, page, "#scheduler", "pinned", "none")
        await browser.run(expect_highlight, page, "b", "Active")
    assert_stayed_local(log, rig.url)


async def test_api_key_from_the_fragment(tmp_path: Any, browser: BrowserThread) -> None:
    """With api_keys set, the page takes its key from #key=... and sends it as a bearer token
    for the status and the event stream alike."""
    async with running(tmp_path, api_keys=("sekrit",)) as rig:
        await assert_only_the_page_is_open(rig.url)
        url = rig.url + "/llmux/#key=sekrit"
        async with open_page(browser, url) as (page, log):
            await browser.run(expect_highlight, page, "a", "Sleeping")
            await browser.run(
                lambda: expect(page.locator("#connection")).to_have_attribute(
                    "data-status", "live", timeout=TIMEOUT_MS
                )
            )
            assert (await rig.chat("a")).status_code == 200
            await browser.run(expect_highlight, page, "a", "Active")
            await browser.run(expect_journal_row, page, "a", "woke")
            assert await browser.run(lambda: page.locator("#auth").is_hidden())
        assert_stayed_local(log, rig.url)


async def test_asks_for_a_missing_key(tmp_path: Any, browser: BrowserThread) -> None:
    async with running(tmp_path, api_keys=("sekrit",)) as rig:
        await assert_only_the_page_is_open(rig.url)
        async with open_page(browser, rig.url + "/llmux/") as (page, _):
            await browser.run(enter_key, page)
            await browser.run(expect_highlight, page, "a", "Sleeping")
            assert await browser.run(lambda: page.evaluate("location.hash")) == "#key=sekrit"


async def test_page_shows_several_active_models_and_the_resources_they_hold(
    tmp_path: Any, browser: BrowserThread
) -> None:
    needs = {"a": {"gpu0": 30.0}, "b": {"gpu0": 40.0}}
    async with (
        running(tmp_path, resources={"gpu0": 80.0}, needs=needs, persistent=("a",)) as rig,
        open_page(browser, rig.url + "/llmux/") as (page, log),
    ):
        await browser.run(expect_fact, page, "#scheduler", "resources", "gpu0 0 of 80")
        await browser.run(expect_fact, page, '[data-model="a"]', "needs", "gpu0 30 (persistent)")
        await browser.run(expect_fact, page, '[data-model="b"]', "needs", "gpu0 40")
        assert (await rig.chat("a")).status_code == 200
        assert (await rig.chat("b")).status_code == 200
        await browser.run(expect_highlight, page, "a", "Active")
        await browser.run(expect_highlight, page, "b", "Active")
        await browser.run(expect_fact, page, "#scheduler", "awake", "a, b")
        await browser.run(expect_fact, page, "#scheduler", "resources", "gpu0 70 of 80")
        assert log.errors == []
