"""Fault scenario 10: a bounded soak, then SIGTERM under load."""

from __future__ import annotations

import functools
import os
import random

import pytest
import trio

from tests.faults.conftest import Scenario
from tests.waiting import wait_until

SOAK_SECS = float(os.environ.get("LLMUX_SOAK_SECS", "45"))
SOAK_CLIENTS = 24
SEED = int(os.environ.get("LLMUX_SOAK_SEED", "10"))
THREE: dict[str, dict[str, object]] = {"a": {}, "b": {}, "c": {}}


@pytest.mark.scenario(10, "soak, then SIGTERM")
async def test_soak_then_sigterm(scenario: Scenario) -> None:
    """SOAK_SECS seconds of 24 clients on three models: each phase of 4 s favours one model;
    a request is plain (55 %), a stream read to the end (25 %), a stream abandoned after a few
    events (10 %) or a plain request the client gives up on after 0.05-1.5 s (10 %). Then, with
    three streams in flight on a and three requests for b queued behind them, SIGTERM: the
    streams finish, the queued requests get 503, llmux exits 0 and leaves no backend running."""
    rng = random.Random(SEED)
    async with scenario.run(THREE) as (server, clients):
        client = clients.client
        begin = trio.current_time()
        deadline = begin + SOAK_SECS

        async def one_client() -> None:
            while trio.current_time() < deadline:
                phase = int((trio.current_time() - begin) / 4)
                model = "abc"[phase % 3] if rng.random() < 0.6 else rng.choice("abc")
                kind = rng.random()
                if kind < 0.55:
                    await clients.chat(model, max_tokens=rng.randint(1, 32))
                elif kind < 0.80:
                    await clients.chat(
                        model,
                        stream=True,
                        max_tokens=rng.randint(4, 30),
                        chunk_delay=rng.uniform(0.005, 0.03),
                    )
                elif kind < 0.90:
                    await clients.chat(
                        model,
                        stream=True,
                        max_tokens=200,
                        chunk_delay=0.03,
                        abandon_after_events=rng.randint(1, 3),
                    )
                else:
                    await clients.chat(model, cancel_after=rng.uniform(0.05, 1.5))
                # Think time between a client's requests: part of the traffic, not a wait.
                await trio.sleep(rng.uniform(0, 0.3))

        probes = 0

        async def probe_metrics() -> None:
            nonlocal probes
            while trio.current_time() < deadline:
                assert (await client.get("/metrics")).status_code == 200
                assert (await client.get("/health")).status_code == 200
                probes += 1
                # An operator's scrape interval: the probe's pace, not a wait for anything.
                await trio.sleep(1.0)

        with trio.fail_after(SOAK_SECS + 120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe_metrics)
                for _ in range(SOAK_CLIENTS):
                    nursery.start_soon(one_client)
        soak_tally = scenario.tally.summary()

        # Nothing leaked: no request is left in flight or queued once every client is done.
        busy: dict[tuple[str, frozenset[object]], float] = {}

        async def nothing_held() -> bool:
            metrics = await server.metrics(client)
            busy.clear()
            busy.update(
                (key, value)
                for key, value in metrics.items()
                if key[0] in ("llmux_model_in_flight", "llmux_request_queue_depth") and value
            )
            return not busy

        await wait_until(
            nothing_held,
            interval=0.2,
            what=lambda: f"requests still held after the soak: {busy}",
        )

        # The end: streams in flight on a, requests for b queued behind its drain, SIGTERM.
        with trio.fail_after(120):
            assert (await clients.chat("a")).status == 200
            final_start = len(scenario.tally.outcomes)
            async with trio.open_nursery() as nursery:
                started = [trio.Event() for _ in range(3)]
                for event in started:
                    nursery.start_soon(
                        functools.partial(
                            clients.chat,
                            "a",
                            stream=True,
                            max_tokens=40,
                            chunk_delay=0.05,
                            first_event=event,
                        )
                    )
                for event in started:
                    await event.wait()
                for _ in range(3):
                    nursery.start_soon(clients.chat, "b")

                async def b_queued() -> bool:
                    depth = await server.metric(client, "llmux_request_queue_depth", model="b")
                    return depth >= 3

                await wait_until(
                    b_queued, timeout=60, interval=0.05, what="three requests queued for b"
                )
                status = await server.terminate()
            assert status == 0
            assert server.exit_secs is not None and server.exit_secs < 30
        final = scenario.tally.outcomes[final_start:]
        streams = [o for o in final if o.model == "a"]
        queued = [o for o in final if o.model == "b"]
        assert [o.result for o in streams] == ["complete"] * 3, streams
        assert [o.status for o in queued] == [503] * 3, queued
        assert all(o.detail == "llmux is shutting down" for o in queued)
        # 503 only for those: during the soak itself every answered request was a 200.
        assert [o for o in scenario.tally.with_status(503) if o not in queued] == []
        scenario.tally.check(allowed=(200, 503))
        scenario.notes["soak_secs"] = SOAK_SECS
        scenario.notes["clients"] = SOAK_CLIENTS
        scenario.notes["seed"] = SEED
        scenario.notes["soak"] = soak_tally
        scenario.notes["metric_probes"] = probes
