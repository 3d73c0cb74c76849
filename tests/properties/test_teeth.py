"""The suite has teeth: deliberately broken policies and cores must be caught.

Each test runs a part of the suite against something broken on purpose and asserts that it
fails, and fails on the right invariant. The search is derandomized and does not shrink, so
these tests are deterministic and quick.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from llmux.core.messages import (
    Acquire,
    Drain,
    Finish,
    Grant,
    Hook,
    HookDone,
    ModelEffect,
    ModelInput,
    ModelReport,
    SchedulerEffect,
    SchedulerInput,
    SendDrain,
    SendWake,
)
from llmux.core.model import ModelCore
from llmux.core.policy import Defer, PendingContext, PolicyDecision, Skip
from llmux.core.scheduler import SchedulerCore
from llmux.core.world import HookScript, Settings
from llmux.policies.fifo import FifoPolicy
from llmux.testing import (
    ADMISSION,
    CANCELLATION,
    DRAIN,
    NO_LIVELOCK,
    NO_STARVATION,
    NOTHING_LOST,
    SINGLE_AWAKE,
    CheckedWorld,
    InvariantViolation,
    PlannedRequest,
    PolicyMachine,
    conformance_machine,
    hook_scripts,
    policy_conformance,
    request_schedules,
)
from tests.properties.test_actors import run_actors

TEETH = settings(
    max_examples=300,
    stateful_step_count=40,
    phases=[Phase.explicit, Phase.generate],
    database=None,
    derandomize=True,
    report_multiple_bugs=False,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def caught(machine: type[PolicyMachine]) -> InvariantViolation:
    with pytest.raises(InvariantViolation) as info:
        run_state_machine_as_test(machine, settings=TEETH)
    return info.value


# ---- broken policies ------------------------------------------------------------------------


class StickyPolicy(FifoPolicy):
    """Never switches away from a model with requests in flight, yet claims FIFO's bound: with
    steady traffic to the active model, everyone else starves."""

    name = "sticky"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        if ctx.active_model is not None and ctx.active_in_flight > 0:
            return Skip("the active model is busy")
        return super().on_pending(ctx)


class StubbornPolicy(FifoPolicy):
    """Never switches away from an active model at all, and promises nothing."""

    name = "stubborn"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return Skip("never") if ctx.active_model is not None else super().on_pending(ctx)

    def starvation_bound(self, inputs: object) -> None:  # type: ignore[override]
        return None


class SpinningPolicy(FifoPolicy):
    """Asks to be asked again in 0 s, for ever: the scheduler would spin at one instant."""

    name = "spinning"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return Defer(0.0, "not yet") if ctx.active_model is not None else super().on_pending(ctx)


# ---- broken cores ---------------------------------------------------------------------------


class HastyCore(ModelCore):
    """Starts the sleep hook at once on Drain, even with drain_before_switch on."""

    def handle(self, message: ModelInput, now: float) -> list[ModelEffect]:
        if not isinstance(message, Drain):
            return super().handle(message, now)
        keep = self.drain_before_switch
        self.drain_before_switch = False
        try:
            return super().handle(message, now)
        finally:
            self.drain_before_switch = keep


class ForgetfulCore(ModelCore):
    """Loses the newest waiter when a wake succeeds with two or more waiting."""

    def handle(self, message: ModelInput, now: float) -> list[ModelEffect]:
        woke = isinstance(message, HookDone) and message.hook is Hook.WAKE and message.ok
        if woke and len(self.queue) >= 2:
            self.queue.popitem()
        return super().handle(message, now)


class GreedyCore(ModelCore):
    """Keeps admitting requests while it drains."""

    def handle(self, message: ModelInput, now: float) -> list[ModelEffect]:
        if self.state == "Draining" and isinstance(message, Acquire):
            self.in_flight.add(message.req_id)
            return [Grant(self.name, message.req_id, 0.0)]
        return super().handle(message, now)


class DeafCore(ModelCore):
    """Ignores a client's Finish for a request that is still queued: it waits on forever."""

    def handle(self, message: ModelInput, now: float) -> list[ModelEffect]:
        if isinstance(message, Finish) and message.req_id in self.queue:
            return []
        return super().handle(message, now)


class ImpatientScheduler(SchedulerCore):
    """Wakes the target as soon as it tells the old model to drain, without waiting."""

    def handle(self, message: SchedulerInput, now: float) -> list[SchedulerEffect]:
        effects = super().handle(message, now)
        switch = self.switch
        draining = any(isinstance(e, SendDrain) for e in effects)
        if draining and switch is not None and switch.to_model is not None:
            effects.append(SendWake(switch.to_model, "impatient"))
        return effects


# ---- the tests ------------------------------------------------------------------------------


def test_a_policy_that_starves_under_steady_traffic_is_caught() -> None:
    assert caught(conformance_machine(StickyPolicy)).invariant == NO_STARVATION


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_the_endless_traffic_test_catches_a_starving_policy() -> None:
    case_class = policy_conformance(StickyPolicy, hypothesis_settings=TEETH)
    case = case_class("test_endless_traffic_does_not_starve_another_model")
    with pytest.raises(InvariantViolation) as info:
        case.test_endless_traffic_does_not_starve_another_model()  # type: ignore[attr-defined]
    assert info.value.invariant == NO_STARVATION


def test_a_policy_that_never_switches_is_caught_even_without_a_bound() -> None:
    assert caught(conformance_machine(StubbornPolicy)).invariant == NOTHING_LOST


def test_a_policy_that_spins_is_caught() -> None:
    assert caught(conformance_machine(SpinningPolicy)).invariant == NO_LIVELOCK


def test_a_core_that_sleeps_with_requests_in_flight_is_caught() -> None:
    machine = conformance_machine(FifoPolicy, drain_before_switch=True, core_class=HastyCore)
    assert caught(machine).invariant == DRAIN


def test_a_core_that_loses_a_waiter_is_caught() -> None:
    assert caught(conformance_machine(FifoPolicy, core_class=ForgetfulCore)).invariant == (
        NOTHING_LOST
    )


def test_a_core_that_admits_while_draining_is_caught() -> None:
    machine = conformance_machine(FifoPolicy, drain_before_switch=True, core_class=GreedyCore)
    assert caught(machine).invariant == ADMISSION


def test_a_core_that_leaks_withdrawn_waiters_is_caught() -> None:
    assert caught(conformance_machine(FifoPolicy, core_class=DeafCore)).invariant == CANCELLATION


def test_a_scheduler_that_wakes_before_the_old_model_sleeps_is_caught() -> None:
    # Instant hooks: by the end of the step the old model is asleep again, so only a check
    # over the transition log, in order, can see two models awake at once.
    hooks = {"a": HookScript(0.0, 0.0), "b": HookScript(0.0, 0.0)}
    checked = CheckedWorld(hooks, FifoPolicy(), Settings(), max_service=1.0)
    world = checked.world
    world.scheduler = ImpatientScheduler(list(hooks), FifoPolicy(), costs=world.costs)
    checked.submit("a", 0.0, 1.0)
    checked.submit("b", 0.5, 1.0)
    with pytest.raises(InvariantViolation) as info:
        checked.settle()
    assert info.value.invariant == SINGLE_AWAKE


@settings(TEETH, max_examples=100)
@given(
    st.fixed_dictionaries({m: hook_scripts(1.0) for m in "abc"}),
    request_schedules("abc", max_requests=30, max_service=2.0, cancels=False),
)
def _actors_with_a_forgetful_core(
    scripts: dict[str, HookScript], schedule: list[PlannedRequest]
) -> None:
    run_actors(FifoPolicy(), scripts, schedule, Settings(), core_class=ForgetfulCore)


def test_the_actor_suite_catches_a_lost_waiter_too() -> None:
    with pytest.raises(InvariantViolation) as info:
        _actors_with_a_forgetful_core()
    assert info.value.invariant == NOTHING_LOST


class CredulousScheduler(SchedulerCore):
    """Takes every report at face value, even one the model sent before it handled the
    scheduler's last command (the race llmux's epoch check closes)."""

    def _observe(self, report: ModelReport, now: float, effects: list[SchedulerEffect]) -> None:
        self._commanded_epoch = dict.fromkeys(self._commanded_epoch, 0)
        super()._observe(report, now, effects)


@settings(TEETH, max_examples=200)
@given(
    st.fixed_dictionaries({m: hook_scripts(1.0) for m in "abc"}),
    request_schedules("abc", max_requests=30, max_service=2.0, cancels=False),
)
def _actors_with_a_credulous_scheduler(
    scripts: dict[str, HookScript], schedule: list[PlannedRequest]
) -> None:
    run_actors(FifoPolicy(), scripts, schedule, Settings(), scheduler_class=CredulousScheduler)


def test_the_actor_suite_catches_reports_that_cross_commands() -> None:
    """Only real actors deliver a report after a command was sent and before it was handled;
    a scheduler that trusts such a report takes a wake for failed and loses track."""
    with pytest.raises(InvariantViolation):
        _actors_with_a_credulous_scheduler()
