"""Whole request schedules through the deterministic world, with scripted hook failures.

The state machine (test_world_conformance.py) builds its traffic step by step; these tests
draw a complete schedule up front (bursts of requests, clients that leave, hooks that fail on
given attempts), run it, and check every invariant, including each request's wait against
the policy's declared starvation bound; `target` steers the search towards long waits.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, target
from hypothesis import strategies as st

from llmux.core.world import HookScript, Settings
from llmux.policies import BUILTIN
from llmux.testing import (
    PlannedRequest,
    capacity_settings,
    hook_scripts,
    quantized,
    request_schedules,
    run_schedule,
)

MODELS = ("a", "b", "c")
MAX_SERVICE = 3.0


@pytest.mark.parametrize("drain", [True, False], ids=["drain", "no-drain"])
@pytest.mark.parametrize("policy", sorted(BUILTIN))
@given(
    scripts=st.fixed_dictionaries({m: hook_scripts(2.0, failures=True) for m in MODELS}),
    schedule=request_schedules(MODELS, max_requests=40, max_service=MAX_SERVICE),
    timeout=st.none() | quantized(0.5, 30.0),
    min_active=quantized(0.0, 3.0),
)
def test_whole_schedules_keep_every_invariant(
    policy: str,
    drain: bool,
    scripts: dict[str, HookScript],
    schedule: list[PlannedRequest],
    timeout: float | None,
    min_active: float,
) -> None:
    checked = run_schedule(
        BUILTIN[policy](),
        scripts,
        schedule,
        Settings(timeout, drain, min_active),
        max_service=MAX_SERVICE,
    )
    target(checked.monitor.max_wait_ratio, label="max wait / starvation bound")


@pytest.mark.parametrize("policy", sorted(BUILTIN))
@given(
    scripts=st.fixed_dictionaries({m: hook_scripts(2.0, failures=True) for m in MODELS}),
    schedule=request_schedules(MODELS, max_requests=40, max_service=MAX_SERVICE),
    capacity=capacity_settings(MODELS, max_resources=3, max_units=8),
    drain=st.booleans(),
    min_active=quantized(0.0, 3.0),
)
def test_whole_schedules_with_arbitrary_needs_and_capacities_keep_every_invariant(
    policy: str,
    scripts: dict[str, HookScript],
    schedule: list[PlannedRequest],
    capacity: dict[str, Any],
    drain: bool,
    min_active: float,
) -> None:
    checked = run_schedule(
        BUILTIN[policy](),
        scripts,
        schedule,
        Settings(None, drain, min_active, **capacity),
        max_service=MAX_SERVICE,
    )
    target(checked.monitor.max_wait_ratio, label="max wait / starvation bound")


MAX_REQUESTS_WITH_SLOTS = 20


@pytest.mark.parametrize("policy", sorted(BUILTIN))
@given(
    scripts=st.fixed_dictionaries({m: hook_scripts(2.0, failures=True) for m in MODELS}),
    schedule=request_schedules(MODELS, max_requests=MAX_REQUESTS_WITH_SLOTS, max_service=1.0),
    slots=st.integers(1, 3),
    drain=st.booleans(),
)
def test_backends_with_finite_slots_keep_every_invariant(
    policy: str,
    scripts: dict[str, HookScript],
    schedule: list[PlannedRequest],
    slots: int,
    drain: bool,
) -> None:
    # A request may now wait inside its backend for the ones ahead of it, so it stays in
    # flight for up to (requests ahead / slots + 1) services: the declared bound is checked
    # with that as the longest time in flight.
    longest_in_flight = (MAX_REQUESTS_WITH_SLOTS // slots + 1) * 1.0
    run_schedule(
        BUILTIN[policy](),
        scripts,
        schedule,
        Settings(drain_before_switch=drain, backend_slots=slots),
        max_service=longest_in_flight,
    )


@pytest.mark.parametrize("policy", sorted(BUILTIN))
@given(
    scripts=st.fixed_dictionaries({m: hook_scripts(2.0, failures=True) for m in MODELS}),
    schedule=request_schedules(MODELS, max_requests=30, max_service=MAX_SERVICE),
    max_in_flight=st.integers(1, 3),
    timeout=st.none() | quantized(0.5, 30.0),
    drain=st.booleans(),
)
def test_a_limit_on_requests_in_flight_keeps_every_invariant(
    policy: str,
    scripts: dict[str, HookScript],
    schedule: list[PlannedRequest],
    max_in_flight: int,
    timeout: float | None,
    drain: bool,
) -> None:
    checked = run_schedule(
        BUILTIN[policy](),
        scripts,
        schedule,
        Settings(timeout, drain, max_in_flight=max_in_flight),
        max_service=MAX_SERVICE,
    )
    for core in checked.world.models.values():
        assert core.max_in_flight == max_in_flight
    # Never more in flight than allowed, at any instant: replay grants and ends in time order.
    events = []
    for r in checked.world.requests.values():
        if r.granted_at is not None:
            end = r.finished_at if r.finished_at is not None else r.cancelled_at
            events.append((r.granted_at, 1, r.model))
            if end is not None:
                events.append((end, -1, r.model))
    load = dict.fromkeys(MODELS, 0)
    for _, delta, model in sorted(events, key=lambda e: (e[0], e[1])):
        load[model] += delta
        assert load[model] <= max_in_flight
