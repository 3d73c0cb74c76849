"""Fault scenario 11: a switch storm with several models awake within a declared capacity.

llmux as a real process in front of stand-in backends that the hooks start and stop; checked
from the outside, as the other scenarios are, but against the capacity instead of "one model
up": no request lost, no 502, the models up (hook log, and the stand-in processes in /proc)
always fit the GPU, and llmux exits 0 on SIGTERM leaving nothing behind.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.faults.conftest import Scenario

# a and b fit together (70 of 80); c (50) fits beside a only, so it evicts b, and b evicts c.
NEEDS = {"a": 30, "b": 40, "c": 50}
MODELS: dict[str, dict[str, object]] = {m: {"needs": {"gpu0": n}} for m, n in NEEDS.items()}
STORM_SECS = float(os.environ.get("LLMUX_STORM_SECS", "10"))
CLIENTS = 40


@pytest.mark.scenario(11, "switch storm within a capacity")
async def test_switch_storm_within_a_capacity(scenario: Scenario) -> None:
    """40 concurrent clients, one request after another to a random model of three (a quarter
    of them streamed) for STORM_SECS seconds, on an 80 GiB GPU where two of them fit."""
    async with scenario.run(MODELS, resources={"gpu0": 80}) as (server, clients):
        await clients.storm("abc", random.Random(11), concurrency=CLIENTS, secs=STORM_SECS)
        scenario.tally.check()
        assert server.wakes() >= 3, "the storm never switched"
        assert server.sampler.max_seen >= 2, "two models were never up together"
        # a fits beside either of the others, and evicting it never makes room for c beside b.
        assert "a:sleep" not in server.hook_runs()
        scenario.notes["clients"] = CLIENTS
        scenario.notes["storm_secs"] = STORM_SECS
