"""The conformance kit's own machinery: how `CheckedWorld` drives a world, how schedules print.

`CheckedWorld` detects a world that spins by running it in short runs of
`World.run(max_steps=...)`, resuming after each `RunawayError`; that is only sound if a run
stopped that way carries on exactly where it stopped, which the first test holds `World` to.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmux.core.policy import Defer, PendingContext, PolicyDecision
from llmux.core.world import HookScript, RunawayError, Settings, World
from llmux.policies.fifo import FifoPolicy
from llmux.testing import (
    NO_LIVELOCK,
    CheckedWorld,
    InvariantViolation,
    PlannedRequest,
    Schedule,
    endless_traffic,
    hook_scripts,
    request_schedules,
)

MODELS = ("a", "b", "c")


def _world(scripts: dict[str, HookScript], schedule: Schedule) -> World:
    world = World(scripts, FifoPolicy(), Settings(request_timeout=6.0))
    for planned in schedule:
        req_id = world.submit(planned.model, planned.at, planned.service)
        if planned.cancel_after is not None:
            world.cancel(req_id, planned.at + planned.cancel_after)
    return world


@given(
    scripts=st.fixed_dictionaries({m: hook_scripts(2.0, failures=True) for m in MODELS}),
    schedule=request_schedules(MODELS, max_requests=20),
    steps=st.integers(1, 3),
)
def test_a_run_stopped_by_max_steps_resumes_where_it_stopped(
    scripts: dict[str, HookScript], schedule: Schedule, steps: int
) -> None:
    straight, stepped = _world(scripts, schedule), _world(scripts, schedule)
    straight.run()
    while True:
        try:
            stepped.run(max_steps=steps)
        except RunawayError:
            continue
        break
    assert stepped.requests == straight.requests
    assert stepped.transitions == straight.transitions
    assert stepped.hook_runs == straight.hook_runs
    assert stepped.now == straight.now


class CountingSpinner(FifoPolicy):
    """Defers by 0 s for ever once a model is active, counting how often it is asked."""

    name = "counting_spinner"

    def __init__(self) -> None:
        self.calls = 0

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        self.calls += 1
        return Defer(0.0, "not yet") if ctx.active_model is not None else super().on_pending(ctx)


@pytest.mark.parametrize("limit", [10, 100])
def test_a_world_that_spins_is_stopped_within_two_runs_of_the_limit(limit: int) -> None:
    policy = CountingSpinner()
    hooks = {"a": HookScript(0.5, 0.5), "b": HookScript(0.5, 0.5)}
    checked = CheckedWorld(hooks, policy, max_service=3.0, max_instants_at_one_time=limit)
    checked.submit("a", 0.0, 3.0)
    checked.submit("b", 1.0, 1.0)
    with pytest.raises(InvariantViolation) as info:
        checked.advance(10.0)
    assert info.value.invariant == NO_LIVELOCK
    assert f"spins at t=1.0: {limit} instants without virtual time advancing" in str(info.value)
    assert "defer b 0.000s: not yet" in str(info.value)
    assert policy.calls <= 2 * limit + 2


def test_a_world_that_creeps_is_stopped_after_max_steps() -> None:
    class Creeping(FifoPolicy):
        def on_pending(self, ctx: PendingContext) -> PolicyDecision:
            if ctx.active_model is None:
                return super().on_pending(ctx)
            return Defer(1e-6, "a little later")

    hooks = {"a": HookScript(0.5, 0.5), "b": HookScript(0.5, 0.5)}
    checked = CheckedWorld(hooks, Creeping(), max_service=3.0, max_steps=500)
    checked.submit("a", 0.0, 3.0)
    checked.submit("b", 1.0, 1.0)
    with pytest.raises(InvariantViolation) as info:
        checked.advance(2.0)
    assert info.value.invariant == NO_LIVELOCK
    assert "after 500 instants in one step (from t=0.0)" in str(info.value)


@given(
    st.one_of(
        request_schedules(("a", "model-b", "c_3"), max_requests=30),
        endless_traffic("a", "b", horizon=20.0),
    )
)
def test_a_schedule_prints_as_python_that_rebuilds_it(schedule: Schedule) -> None:
    text = repr(schedule)
    assert eval(text, {"Schedule": Schedule}) == schedule
    assert len(text.splitlines()) == (len(schedule) + 2 if schedule else 1)


def test_a_schedule_prints_one_line_per_request_with_its_id() -> None:
    schedule = Schedule(
        [PlannedRequest("a", 0.0, 3.0), PlannedRequest("b", 1.25, 0.25, cancel_after=2.0)]
    )
    assert repr(schedule) == (
        "Schedule.parse('''\n"
        "    #0  t=0.0   a  service=3.0\n"
        "    #1  t=1.25  b  service=0.25  cancel_after=2.0\n"
        "''')"
    )
    assert repr(Schedule()) == "Schedule()"
    assert Schedule.parse("t=1.5 a service=inf") == [PlannedRequest("a", 1.5, math.inf)]


@pytest.mark.parametrize(
    "line", ["t=0 service=1", "t=0 a b service=1", "a service=1", "t=0 a service=1 after=2"]
)
def test_a_schedule_line_that_is_not_a_request_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="line 2 of the schedule"):
        Schedule.parse(f"t=0 a service=1\n{line}")
