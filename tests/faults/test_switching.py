"""Fault scenarios 1-5: switching under pressure.

Each runs llmux as a real process in front of real stand-in backends that the models' hooks
start and stop, and checks from the outside: no request lost, at most one model awake at any
time (hook log and /proc), no request forwarded to a sleeping backend (no 502), llmux exits 0
on SIGTERM leaving nothing behind.
"""

from __future__ import annotations

import functools
import os
import random

import pytest
import trio

from tests.faults.conftest import Scenario
from tests.faults.harness import Outcome

TWO: dict[str, dict[str, object]] = {"a": {}, "b": {}}
THREE: dict[str, dict[str, object]] = {"a": {}, "b": {}, "c": {}}
STORM_SECS = float(os.environ.get("LLMUX_STORM_SECS", "10"))
STORM_CLIENTS = 60


def switches(first: str, order: list[str]) -> list[str]:
    """The hook runs of serving `order` one request at a time, `first` waking cold."""
    runs = [f"{first}:wake"]
    current = first
    for model in order:
        if model != current:
            runs += [f"{current}:sleep", f"{model}:wake"]
            current = model
    return runs


async def wait_all(events: list[trio.Event]) -> None:
    for event in events:
        await event.wait()


@pytest.mark.scenario(1, "switch storm")
async def test_switch_storm(scenario: Scenario) -> None:
    """60 concurrent clients, each sending one request after another to a random model of
    three (a quarter of them streamed) for STORM_SECS seconds."""
    async with scenario.run(THREE) as (server, clients):
        await clients.storm("abc", random.Random(1), concurrency=STORM_CLIENTS, secs=STORM_SECS)
        scenario.tally.check()
        assert server.wakes() >= 3, "the storm never switched"
        scenario.notes["clients"] = STORM_CLIENTS
        scenario.notes["storm_secs"] = STORM_SECS


@pytest.mark.scenario(2, "back-to-back switches")
async def test_back_to_back_switches(scenario: Scenario) -> None:
    """a, b, a, b, ... one request at a time (every other one streamed): every request is a
    switch, and each switch sleeps the old model before waking the new one."""
    order = ["a", "b"] * 5
    async with scenario.run(TWO) as (server, clients):
        with trio.fail_after(180):
            for i, model in enumerate(order):
                outcome = await clients.chat(
                    model, stream=i % 2 == 1, max_tokens=5, chunk_delay=0.01
                )
                assert outcome.status == 200, outcome
                assert outcome.backend == model
        assert server.hook_runs() == switches("a", order[1:])
        scenario.tally.check()


@pytest.mark.scenario(3, "double-switch race")
async def test_double_switch_race(scenario: Scenario) -> None:
    """While a is active, requests for b and for c arrive within milliseconds of each other
    (0, 5 and 50 ms apart): both are served, one switch after the other, never two wakes at
    once."""
    async with scenario.run(THREE) as (server, clients):
        with trio.fail_after(180):
            for gap in (0.0, 0.005, 0.05):
                assert (await clients.chat("a")).status == 200
                before = len(server.hook_runs())
                outcomes: list[Outcome] = []

                async def ask(model: str, results: list[Outcome] = outcomes) -> None:
                    results.append(await clients.chat(model))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask, "b")
                    # The gap between the two arrivals is what the scenario varies.
                    await trio.sleep(gap)
                    nursery.start_soon(ask, "c")
                assert sorted((o.model, o.status) for o in outcomes) == [("b", 200), ("c", 200)]
                runs = server.hook_runs()[before:]
                assert runs in (
                    ["a:sleep", "b:wake", "b:sleep", "c:wake"],
                    ["a:sleep", "c:wake", "c:sleep", "b:wake"],
                ), runs
        scenario.tally.check()


@pytest.mark.scenario(4, "flood for the old model during its sleep")
async def test_flood_for_the_old_model_while_it_goes_to_sleep(scenario: Scenario) -> None:
    """a is active; a request for b starts a switch, and requests for a keep arriving every
    20 ms for 3 s, through a's drain and sleep and b's wake (both slowed to 0.5 s). The ones
    that arrive once a is draining wait for a's next activation: none may reach a's backend
    while it is down (that would be a 502)."""
    async with scenario.run(TWO) as (server, clients):
        assert (await clients.chat("a")).status == 200
        server.delay("a", "sleep", 0.5)
        server.delay("b", "wake", 0.5)
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(clients.chat, "b")
                flood_until = trio.current_time() + 3.0
                while trio.current_time() < flood_until:
                    nursery.start_soon(clients.chat, "a")
                    # The flood's rate (one request every 20 ms): the traffic, not a wait.
                    await trio.sleep(0.02)
        scenario.tally.check()
        assert server.hook_runs() == ["a:wake", "a:sleep", "b:wake", "b:sleep", "a:wake"]
        scenario.notes["flood"] = sum(1 for o in scenario.tally.outcomes if o.model == "a") - 1


@pytest.mark.scenario(5, "streams during switches")
async def test_streams_during_switches(scenario: Scenario) -> None:
    """Six slow streams (30 events, 30 ms apart) on the active model, then requests for the
    other model (half of them streamed) while they run, three rounds a -> b -> a -> b: the
    switch waits for the streams, and every stream ends with its last event and [DONE]."""
    async with scenario.run(TWO) as (server, clients):
        with trio.fail_after(180):
            for current, other in (("a", "b"), ("b", "a"), ("a", "b")):
                async with trio.open_nursery() as nursery:
                    started = [trio.Event() for _ in range(6)]
                    for event in started:
                        nursery.start_soon(
                            functools.partial(
                                clients.chat,
                                current,
                                stream=True,
                                max_tokens=30,
                                chunk_delay=0.03,
                                first_event=event,
                            )
                        )
                    await wait_all(started)
                    for i in range(4):
                        nursery.start_soon(
                            functools.partial(
                                clients.chat,
                                other,
                                stream=i % 2 == 0,
                                max_tokens=10,
                                chunk_delay=0.01,
                            )
                        )
        scenario.tally.check()
        streams = [o for o in scenario.tally.outcomes if o.stream]
        assert len(streams) == 3 * 6 + 3 * 2
        assert all(o.result == "complete" for o in streams)
        assert server.hook_runs() == switches("a", ["b", "a", "b"])
