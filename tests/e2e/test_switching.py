"""Switching end to end: real sockets, real `sh` hooks, llmux 2.4's end-to-end scenarios."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.e2e.conftest import running
from tests.waiting import wait_until


async def test_a_request_for_a_sleeping_model_wakes_it(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        reply = await rig.chat("a")
        assert reply.status_code == 200
        assert reply.json()["backend"] == "a"
        assert reply.headers["x-standin-backend"] == "a"
        assert rig.hook_runs() == ["a:wake"]
    # A graceful shutdown puts the awake model back to sleep.
    assert rig.hook_runs() == ["a:wake", "a:sleep"]


async def test_switching_sleeps_the_old_model_before_waking_the_new_one(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        assert (await rig.chat("a")).json()["backend"] == "a"
        assert (await rig.chat("b")).json()["backend"] == "b"
        assert (await rig.chat("a")).json()["backend"] == "a"
        assert rig.hook_runs() == ["a:wake", "a:sleep", "b:wake", "b:sleep", "a:wake"]
        assert await rig.metric("llmux_switch_total", **{"from": "a", "to": "b"}, result="success")
        assert await rig.metric(
            "llmux_switch_total", **{"from": "idle", "to": "a"}, result="success"
        )


async def test_requests_for_the_active_model_need_no_switch(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        for _ in range(5):
            assert (await rig.chat("a")).status_code == 200
        assert rig.hook_runs() == ["a:wake"]


async def test_a_switch_takes_as_long_as_its_hooks_and_no_longer_once_awake(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as rig:
        rig.hook_secs("a", "sleep", 0.3)
        rig.hook_secs("b", "wake", 0.5)
        await rig.chat("a")
        started = trio.current_time()
        assert (await rig.chat("b")).status_code == 200
        switched = trio.current_time() - started
        assert 0.8 <= switched < 3.0
        started = trio.current_time()
        await rig.chat("b")
        assert trio.current_time() - started < 0.5


async def test_concurrent_requests_for_one_model_share_one_wake(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        rig.hook_secs("a", "wake", 0.3)
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await rig.chat("a")).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        assert statuses == [200] * 20
        assert rig.hook_runs() == ["a:wake"]


async def test_concurrent_requests_for_different_models_are_all_served(tmp_path: Path) -> None:
    async with running(tmp_path, ("a", "b", "c")) as rig:
        served: list[tuple[str, str]] = []

        async def one(model: str) -> None:
            reply = await rig.chat(model)
            assert reply.status_code == 200, reply.text
            served.append((model, reply.json()["backend"]))

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, "abc"[i % 3])
        assert len(served) == 30
        assert all(model == backend for model, backend in served)
        wakes = [run for run in rig.hook_runs() if run.endswith(":wake")]
        # Each model is woken once per batch of its waiters, not once per request.
        assert 3 <= len(wakes) <= 6


async def test_a_stream_in_flight_is_drained_before_its_model_sleeps(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await rig.chat("a")
        chunks: list[bytes] = []
        streaming = trio.Event()
        stream_done = trio.Event()

        async def stream_a() -> None:
            request = {"model": "a", "stream": True, "max_tokens": 10, "chunk_delay": 0.05}
            async with rig.client.stream("POST", "/v1/chat/completions", json=request) as reply:
                async for chunk in reply.aiter_bytes():
                    chunks.append(chunk)
                    streaming.set()
            stream_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_a)
            await streaming.wait()
            reply = await rig.chat("b")
            assert reply.status_code == 200
            assert stream_done.is_set(), "b was served while a still streamed"
        body = b"".join(chunks)
        assert body.endswith(b"data: [DONE]\n\n")
        assert body.count(b"data: ") == 12  # 10 tokens, the finish chunk, [DONE]
        events = rig.hook_events()
        sleep_a = next(e for e in events if e.model == "a" and e.action == "sleep")
        assert sleep_a.phase == "start"
        assert await rig.metric("llmux_model_in_flight", model="a") == 0


async def test_requests_arriving_while_a_model_drains_wait_for_its_next_activation(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as rig:
        await rig.chat("a")
        results: dict[str, str] = {}

        async def ask(key: str, model: str, **fields: object) -> None:
            reply = await rig.chat(model, **fields)
            assert reply.status_code == 200
            results[key] = reply.headers["x-standin-backend"]

        async with trio.open_nursery() as nursery:
            # a is busy for ~0.5 s, b's request starts the drain, a's late request must wait
            # for a to come back rather than sneak in while a drains.
            nursery.start_soon(
                lambda: ask("slow-a", "a", stream=True, max_tokens=10, chunk_delay=0.05)
            )

            async def a_busy() -> bool:
                return await rig.metric("llmux_model_in_flight", model="a") == 1

            await wait_until(a_busy, what="the slow request in flight on a")
            nursery.start_soon(ask, "b", "b")
            await wait_until(lambda: rig.state("a") == "Draining", what="a Draining")
            nursery.start_soon(ask, "late-a", "a")
        assert results == {"slow-a": "a", "b": "b", "late-a": "a"}
        assert rig.hook_runs() == ["a:wake", "a:sleep", "b:wake", "b:sleep", "a:wake"]


async def test_switch_costs_are_tracked_per_direction_and_cold_starts_apart(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as rig:
        rig.hook_secs("a", "wake", 0.1)
        rig.hook_secs("b", "wake", 1.0)
        rig.hook_secs("a", "sleep", 0.05)
        rig.hook_secs("b", "sleep", 0.05)

        async def cost(source: str, target: str) -> float:
            return await rig.metric(
                "llmux_switch_cost_ema_seconds", **{"from": source, "to": target}
            )

        costs = rig.app.scheduler.core.costs
        assert costs.estimate(None, "a") is None
        await rig.chat("a")
        assert await cost("idle", "a") >= 0.1
        await rig.chat("b")
        a_to_b = await cost("a", "b")
        assert a_to_b >= 1.05
        assert costs.estimate("b", "a") is None
        await rig.chat("a")
        b_to_a = await cost("b", "a")
        assert 0.15 <= b_to_a < a_to_b
        assert await cost("idle", "b") == 0, "a warm switch is not a cold start"
