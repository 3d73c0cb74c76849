"""See and steer: /llmux/status, /llmux/events, manual wake/sleep, pin, idle sleep, preload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.e2e.conftest import Rig, running
from tests.waiting import wait_until

LIFECYCLE_HOOKS = {"wake": "wake", "drained": "sleep", "wake_failed": "sleep"}


async def _status(rig: Rig) -> dict[str, Any]:
    reply = await rig.client.get("/llmux/status")
    assert reply.status_code == 200
    return reply.json()  # type: ignore[no-any-return]


async def test_status_shows_each_model_the_scheduler_and_the_machines(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        status = await _status(rig)
        assert {name: m["state"] for name, m in status["models"].items()} == {
            "a": "Sleeping",
            "b": "Sleeping",
        }
        assert status["scheduler"]["phase"] == "Idle"
        assert status["scheduler"]["active"] is None
        assert status["scheduler"]["policy"] == "fifo"
        lifecycle = status["machines"]["ModelLifecycle"]
        assert lifecycle["initial"] == "Sleeping"
        assert ["Waking", "woke", "Active"] in lifecycle["edges"]

        assert (await _status(rig))["models"]["a"]["time_in_state_secs"] < 60
        await rig.chat("a")
        # The client has its answer a moment before llmux counts the request as finished.

        async def a_idle() -> bool:
            return bool((await _status(rig))["models"]["a"]["in_flight"] == 0)

        await wait_until(a_idle, what="nothing in flight on a")
        status = await _status(rig)
        a = status["models"]["a"]
        assert a["state"] == "Active"
        assert a["in_flight"] == 0
        assert a["queue_depth"] == 0
        assert a["last_transition"]["event"] == "woke"
        assert a["last_transition"]["cause"] == "wake hook succeeded"
        assert status["scheduler"]["active"] == "a"
        assert status["scheduler"]["last_decision"].startswith("switch to a")
        assert [c["from"] for c in status["switch_costs"]] == ["idle"]


async def test_status_shows_what_a_waiting_request_waits_for(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await rig.chat("a")
        rig.hold_wake("b")  # b stays Waking while the test looks
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.chat, "b")
            status: dict[str, Any] = {}

            async def waited_a_while() -> bool:
                # The request's wait is what the status reports: let some of it pass.
                status.update(await _status(rig))
                waited = status["models"]["b"]["oldest_wait_secs"]  # None: not queued yet
                return waited is not None and bool(waited >= 0.4)

            await wait_until(waited_a_while, what="the request for b waiting 0.4 s")
            rig.hold_wake("b", holding=False)
            assert status["models"]["b"]["state"] == "Waking"
            assert status["models"]["b"]["queue_depth"] == 1
            assert status["models"]["b"]["oldest_wait_secs"] >= 0.4
            assert status["scheduler"]["phase"] == "Waking"
            assert status["scheduler"]["switch"]["from"] == "a"
            assert status["scheduler"]["switch"]["to"] == "b"


async def _until_state(rig: Rig, model: str, state: str) -> None:
    async def reached() -> bool:
        return bool((await _status(rig))["models"][model]["state"] == state)

    await wait_until(reached, what=f"{model} {state}")


async def _collect_events(
    rig: Rig,
    activations: int,
    into: list[dict[str, Any]],
    subscribed: trio.Event | None = None,
) -> None:
    """Events until the scheduler has finished `activations` switches; `subscribed` is set
    once the stream's head has come (llmux has subscribed it to the live journal by then)."""
    async with rig.client.stream("GET", "/llmux/events") as reply:
        assert reply.headers["content-type"] == "text/event-stream"
        if subscribed is not None:
            subscribed.set()
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line.removeprefix("data: ")))
                if sum(e["event"] == "activated" for e in into) >= activations:
                    return


def _hooks_from_events(events: list[dict[str, Any]]) -> list[str]:
    return [
        f"{e['subject']}:{LIFECYCLE_HOOKS[e['event']]}"
        for e in events
        if e["machine"] == "ModelLifecycle" and e["event"] in LIFECYCLE_HOOKS
    ]


async def test_the_event_stream_shows_the_transitions_the_hook_log_shows(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        events: list[dict[str, Any]] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                # Live, not replayed: the switches start once the stream is subscribed.
                subscribed = trio.Event()
                nursery.start_soon(_collect_events, rig, 2, events, subscribed)
                await subscribed.wait()
                await rig.chat("a")
                await rig.chat("b")
        assert _hooks_from_events(events) == rig.hook_runs() == ["a:wake", "a:sleep", "b:wake"]
        lifecycle = [(e["subject"], e["event"]) for e in events if e["subject"] != "scheduler"]
        assert lifecycle == [
            ("a", "wake"),
            ("a", "woke"),
            ("a", "drain"),
            ("a", "drained"),
            ("a", "slept"),
            ("b", "wake"),
            ("b", "woke"),
        ]
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        drain = next(e for e in events if e["event"] == "drain")
        assert drain["cause"].startswith("switch to b")

        scheduler = [
            (e["source"], e["event"], e["target"]) for e in events if e["subject"] == "scheduler"
        ]
        assert scheduler == [
            ("Idle", "wake", "Waking"),
            ("Waking", "activated", "Idle"),
            ("Idle", "retire", "Retiring"),
            ("Retiring", "wake", "Waking"),
            ("Waking", "activated", "Idle"),
        ]
        late: list[dict[str, Any]] = []
        with trio.fail_after(5):
            await _collect_events(rig, 2, late)
        assert late == events, "a late subscriber gets the journal first"


async def test_manual_wake_and_sleep_go_through_the_usual_switch(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await rig.chat("a")
        reply = await rig.client.post("/llmux/models/b/wake")
        assert reply.status_code == 200
        assert reply.json() == {"model": "b", "state": "Active", "active": "b"}
        assert rig.hook_runs() == ["a:wake", "a:sleep", "b:wake"]
        assert await rig.metric("llmux_switch_total", **{"from": "a", "to": "b"}, result="success")

        reply = await rig.client.post("/llmux/models/b/sleep")
        assert reply.status_code == 200
        assert reply.json()["state"] == "Sleeping"
        assert rig.hook_runs() == ["a:wake", "a:sleep", "b:wake", "b:sleep"]
        assert (await _status(rig))["scheduler"]["active"] is None

        accepted = await rig.client.post("/llmux/models/a/wake?wait=0")
        assert accepted.status_code == 202
        await rig.hooks_become(["a:wake", "a:sleep", "b:wake", "b:sleep", "a:wake"])

        assert (await rig.client.post("/llmux/models/zz/wake")).status_code == 404
        assert (await rig.client.get("/llmux/models/a/wake")).status_code == 405


async def test_a_failed_manual_wake_is_reported(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.fail_wake("a")
        reply = await rig.client.post("/llmux/models/a/wake")
        assert reply.status_code == 500
        assert reply.json()["error"]["message"].startswith("Hook failed for a")


async def test_pinning_keeps_one_model_awake_and_refuses_the_others(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await rig.chat("b")
        reply = await rig.client.post("/llmux/pin", json={"model": "a"})
        assert reply.status_code == 200
        assert reply.json()["pinned"] == "a"
        assert reply.json()["state"] == "Active"
        refused = await rig.chat("b")
        assert refused.status_code == 503
        assert refused.json()["error"]["message"] == (
            "llmux is pinned to a: requests for b are refused until it is unpinned"
        )
        assert (await rig.client.post("/llmux/models/b/wake")).status_code == 409
        assert (await rig.client.post("/llmux/models/a/sleep")).status_code == 409
        assert (await rig.chat("a")).status_code == 200
        assert (await _status(rig))["scheduler"]["pinned"] == "a"

        assert (await rig.client.post("/llmux/unpin")).status_code == 200
        assert (await rig.chat("b")).status_code == 200
        assert rig.hook_runs() == ["b:wake", "b:sleep", "a:wake", "a:sleep", "b:wake"]


async def test_an_idle_model_is_put_to_sleep_after_idle_sleep_secs(tmp_path: Path) -> None:
    async with running(tmp_path, idle_sleep_secs=0.5) as rig:
        request = {"model": "a", "stream": True, "max_tokens": 15, "chunk_delay": 0.05}
        async with rig.client.stream("POST", "/v1/chat/completions", json=request) as reply:
            await reply.aread()  # ~0.75 s in flight: longer than the idle limit, not idle
        assert rig.hook_runs() == ["a:wake"]
        await rig.hooks_become(["a:wake", "a:sleep"])
        await _until_state(rig, "a", "Sleeping")
        status = await _status(rig)
        assert status["scheduler"]["last_decision"] == "sleep a: idle for 0.5s"
        assert (await rig.chat("a")).status_code == 200


async def test_preload_wakes_a_model_at_start_up(tmp_path: Path) -> None:
    async with running(tmp_path, preload="b") as rig:
        await rig.hooks_become(["b:wake"])
        await _until_state(rig, "b", "Active")


async def test_the_control_api_needs_a_key_when_keys_are_set(tmp_path: Path) -> None:
    async with running(tmp_path, api_keys=("k",)) as rig:
        async with httpx.AsyncClient(base_url=rig.url) as anonymous:
            for method, path in [
                ("GET", "/llmux/status"),
                ("GET", "/llmux/events"),
                ("POST", "/llmux/models/a/wake"),
                ("POST", "/llmux/unpin"),
            ]:
                assert (await anonymous.request(method, path)).status_code == 401
            page = await anonymous.get("/llmux/")
            assert page.status_code == 200, "the page is open; what it fetches is not"
            assert page.headers["content-type"].startswith("text/html")
        assert (await rig.client.get("/llmux/status")).status_code == 200
        assert rig.hook_runs() == []


def _status_cli(url: str, *extra: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "llmux", "status", "--url", url, *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stdout, done.stderr


async def test_llmux_status_prints_the_picture_in_a_terminal(tmp_path: Path) -> None:
    async with running(tmp_path, api_keys=("k",)) as rig:
        await rig.chat("a")
        code, out, err = await trio.to_thread.run_sync(_status_cli, rig.url, "--key", "k")
        assert code == 0, err
        assert "policy fifo  active a" in out
        assert "a  Sleeping → Waking → [Active] → Draining → SleepingDown   in flight 0" in out
        assert "b  [Sleeping] → Waking" in out
        assert "last: Waking -woke-> Active (wake hook succeeded)" in out
        assert "[Idle] → Settling" in out
        assert "switch costs: idle→a" in out
        code, _, err = await trio.to_thread.run_sync(_status_cli, rig.url)
        assert code == 1
        assert "401" in err
    code, _, err = await trio.to_thread.run_sync(_status_cli, rig.url, "--key", "k")
    assert code == 1
    assert "cannot reach" in err
