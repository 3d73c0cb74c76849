"""A broken policy is contained by SchedulerCore: it costs the policy its say for one call
(FIFO's decision is taken instead), never a waiter, and it is reported as a PolicyError."""

from __future__ import annotations

import math

import pytest

from llmux.core.policy import (
    BasePolicy,
    Defer,
    PendingContext,
    PolicyDecision,
    ScheduleContext,
    SwitchNow,
)
from llmux.core.world import HookScript, World


class Raises(BasePolicy):
    name = "raises"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        raise ValueError("boom\nsecond line")


class ReturnsNone(BasePolicy):
    name = "returns_none"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return None  # type: ignore[return-value]


class DefersNaN(BasePolicy):
    name = "defers_nan"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return Defer(math.nan)


class BrokenTick(BasePolicy):
    """Switches away from a model only on its tick (it defers otherwise), and the tick raises."""

    name = "broken_tick"
    tick_interval_secs = 0.5

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        if ctx.active_model is None:
            return SwitchNow("cold start")
        return Defer(60.0, "wait for the tick")

    def on_tick(self, ctx: ScheduleContext) -> str | None:
        raise KeyError("no such model")


def _run(policy: BasePolicy) -> World:
    world = World({"a": HookScript(1.0, 0.5), "b": HookScript(1.0, 0.5)}, policy)
    world.submit("a", at=0.0, service=0.5)
    world.submit("b", at=0.1, service=0.5)
    world.submit("a", at=0.2, service=0.5)
    world.run(max_steps=10_000)
    return world


@pytest.mark.parametrize(
    ("policy", "detail"),
    [
        (Raises(), "on_pending raised ValueError: boom second line"),
        (ReturnsNone(), "on_pending returned None, not SwitchNow, Defer or Skip"),
        (DefersNaN(), "on_pending returned Defer(nan), whose seconds are not a number"),
    ],
)
def test_a_broken_on_pending_falls_back_to_fifo_and_serves_everyone(
    policy: BasePolicy, detail: str
) -> None:
    world = _run(policy)
    # Every request is served, in FIFO's order, as if the policy were fifo.
    assert all(r.finished_at is not None for r in world.requests.values())
    assert [(t, m, str(h)) for t, m, h in world.hook_runs][:2] == [
        (0.0, "a", "wake"),
        (1.5, "a", "sleep"),
    ]
    assert world.policy_errors, "the error must be reported"
    assert {e.detail for e in world.policy_errors} == {detail}
    assert {(e.policy, e.where) for e in world.policy_errors} == {(policy.name, "on_pending")}
    assert not world.anomalies


def test_a_tick_that_raises_is_reported_and_names_no_model() -> None:
    world = World({"a": HookScript(1.0, 0.5), "b": HookScript(1.0, 0.5)}, BrokenTick())
    a = world.submit("a", at=0.0, service=0.5)
    b = world.submit("b", at=2.0, service=0.5)
    world.run(until=5.0)
    assert world.requests[a].finished_at is not None
    assert world.requests[b].granted_at is None  # the deferral holds; the tick chose nobody
    assert len(world.policy_errors) >= 3  # one per tick: every 0.5 s while b waits
    assert {(e.where, e.detail) for e in world.policy_errors} == {
        ("on_tick", "on_tick raised KeyError: 'no such model'")
    }
    later = world.submit("a", at=6.0, service=0.5)
    world.run(until=10.0)
    assert world.requests[later].finished_at is not None  # still serving


def test_the_simulator_stops_on_a_broken_policy_and_says_what_it_did() -> None:
    from llmux.simulate import SimulationError, TraceRequest, simulate

    trace = [TraceRequest(0.0, "a", 1.0), TraceRequest(0.5, "b", 1.0)]
    with pytest.raises(SimulationError, match=r"on_pending returned None, not SwitchNow"):
        simulate(trace, ReturnsNone())


class DefersUntilTimePasses(BasePolicy):
    """Waits until a moment 1e-13 s after it first saw the request, by deferring for what is
    left, rounded down to nothing: the float trap of a quantum's last instant."""

    name = "defers_until_time_passes"

    def __init__(self) -> None:
        self.until: float | None = None

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        if self.until is None:
            self.until = ctx.now + 1e-13
        if ctx.now < self.until:
            return Defer(1e-300, "almost there")
        return SwitchNow("time has passed")


def test_a_positive_defer_too_small_for_the_clock_still_lets_time_pass() -> None:
    world = World({"a": HookScript(1.0, 0.5)}, DefersUntilTimePasses())
    req = world.submit("a", at=1.0, service=0.5)
    world.run(max_steps=10_000)  # before: the same instant, asked again for ever
    assert world.requests[req].finished_at is not None
