"""The optional starvation-bound part of the policy protocol, and FIFO's bound."""

from __future__ import annotations

from llmux.core.policy import BasePolicy, BoundInputs, starvation_bound
from llmux.core.world import HookScript, World
from llmux.policies.fifo import FifoPolicy

INPUTS = BoundInputs(
    models=3,
    max_wake_secs=2.0,
    max_sleep_secs=1.0,
    max_service_secs=4.0,
    min_active=0.5,
    failure_backoff=2.0,
)


def test_a_switch_cycle_is_hold_drain_sleep_and_wake() -> None:
    assert INPUTS.switch_cycle_secs() == 0.5 + 4.0 + 1.0 + 2.0
    # A policy's own hold counts only where it is longer than min_active.
    assert INPUTS.switch_cycle_secs(hold=3.0) == 3.0 + 4.0 + 1.0 + 2.0
    assert INPUTS.switch_cycle_secs(hold=0.1) == INPUTS.switch_cycle_secs()


def test_without_draining_a_cycle_does_not_wait_for_requests() -> None:
    inputs = BoundInputs(3, 2.0, 1.0, 4.0, min_active=0.5, drain_before_switch=False)
    assert inputs.switch_cycle_secs() == 0.5 + 1.0 + 2.0


def test_fifo_bound_is_n_cycles_plus_one_cycle_or_a_backoff() -> None:
    cycle = 7.5
    assert FifoPolicy().starvation_bound(INPUTS) == 3 * cycle + cycle
    instant = BoundInputs(2, 0.0, 0.0, 0.0, failure_backoff=2.0)
    assert FifoPolicy().starvation_bound(instant) == 2.0


def test_the_bound_is_optional() -> None:
    class Plain:
        name = "plain"
        tick_interval_secs = None

    assert starvation_bound(Plain(), INPUTS) is None
    assert starvation_bound(BasePolicy(), INPUTS) is None
    assert starvation_bound(FifoPolicy(), INPUTS) == 30.0


def test_a_request_that_arrives_at_time_zero_is_not_served_last() -> None:
    # Regression (found by tests/properties): the scheduler ranked waiters by
    # `oldest_arrival or now`, so an arrival at t=0.0 counted as arriving "now" and, with
    # steady alternating traffic to two other models, was served only when that stopped.
    world = World(
        {"a": HookScript(0.0, 0.25), "b": HookScript(0.25, 0.75), "c": HookScript(0.0, 0.0)},
        FifoPolicy(),
    )
    world.submit("b", at=0.0, service=0.0)  # b starts waking at once
    c = world.submit("c", at=0.0, service=0.0)  # c waits for b's wake
    for i in range(10):
        world.submit("a", at=0.25 + i * 1.25, service=0.0)
        world.submit("b", at=0.75 + i * 0.75, service=0.0)
    world.run()
    granted = world.requests[c].granted_at
    assert granted is not None and granted <= 1.0
