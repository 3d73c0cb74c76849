"""The suite has teeth: deliberately broken policies and cores must be caught.

Each test runs a part of the suite against something broken on purpose and asserts that it
fails, and fails on an invariant that the breakage can trip. The search is derandomized and
does not shrink, so these tests are quick, and repeatable for one version of the code.

Derandomizing does not make them robust, though: Hypothesis derives the seed from the test's
code, so any change to the kit, the cores or Hypothesis sends the search down another path,
and the real actors' runs depend on trio's scheduling order anyway. On another path a broken
core may trip another invariant first (a lost waiter that has also waited past FIFO's bound
is `no-starvation` before the bookkeeping sees it as `nothing-lost`). So a test does not pin
the one invariant its seed happened to trip: it names every invariant its breakage can trip,
each with the reason, and `caught` asserts that the violation is one of those. That still
proves the breakage is caught, and as what kind of fault: FIFO with correct cores passes the
whole conformance suite, so any violation here comes from the breakage, and a symptom
outside the named set fails the test. Most sets have one member, because the first event
that differs from a correct run is itself the violation.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from llmux.core.capacity import Capacity
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
    SwitchStarted,
)
from llmux.core.model import ModelCore
from llmux.core.policy import (
    BasePolicy,
    Defer,
    PendingContext,
    PolicyDecision,
    ScheduleContext,
    Skip,
    SwitchNow,
)
from llmux.core.scheduler import SchedulerCore
from llmux.core.world import HookScript, Settings
from llmux.policies.fifo import FifoPolicy
from llmux.testing import (
    ADMISSION,
    CANCELLATION,
    CAPACITY,
    DRAIN,
    EDGES,
    EVICTION,
    NO_ANOMALY,
    NO_LIVELOCK,
    NO_STARVATION,
    NOTHING_LOST,
    POLICY_ERRORS,
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


def caught(machine: type[PolicyMachine], *trippable: str) -> InvariantViolation:
    """Run the state machine, which must fail on one of the `trippable` invariants."""
    with pytest.raises(InvariantViolation) as info:
        run_state_machine_as_test(machine, settings=TEETH)
    return tripped(info.value, *trippable)


def tripped(violation: InvariantViolation, *trippable: str) -> InvariantViolation:
    assert violation.invariant in trippable, (
        f"caught, but as {violation.invariant}, which this breakage cannot explain "
        f"(expected one of {', '.join(trippable)}): {violation}"
    )
    return violation


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

    def starvation_bound(self, inputs: object) -> None:
        return None


class SpinningPolicy(FifoPolicy):
    """Asks to be asked again in 0 s, for ever: the scheduler would spin at one instant."""

    name = "spinning"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return Defer(0.0, "not yet") if ctx.active_model is not None else super().on_pending(ctx)


class ColdStartForgotten(FifoPolicy):
    """Forgets the case where nothing is awake yet: on_pending falls through to None."""

    name = "cold_start_forgotten"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        if ctx.active_model is not None:
            return super().on_pending(ctx)
        return None  # type: ignore[return-value]  # meant: SwitchNow("nothing is awake")


class TrustsEstimates(FifoPolicy):
    """Reads the switch-cost estimate of a direction never observed: a KeyError."""

    name = "trusts_estimates"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        cost = ctx.cost_estimates[(ctx.active_model, ctx.target_model)]
        return SwitchNow(f"switch ~{cost:g}s")


class TickReturnsAPair(BasePolicy):
    """Switches only on its tick, which returns the (model, wait) pair instead of the model."""

    name = "tick_returns_a_pair"
    tick_interval_secs = 1.0

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        if ctx.active_model is None:
            return SwitchNow("nothing is awake")
        return Defer(60.0, "the tick decides")

    def on_tick(self, ctx: ScheduleContext) -> str | None:
        waiting = [(m, w) for m, w in ctx.oldest_waiting.items() if m != ctx.active_model]
        return max(waiting, key=lambda mw: mw[1]) if waiting else None  # type: ignore[return-value]


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


class OverbookingScheduler(SchedulerCore):
    """Believes every resource is one unit larger than declared (with no resources
    declared: that two models fit where one does)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        true = self.capacity
        self.capacity = Capacity(
            {name: amount + 1 for name, amount in true.resources.items()},
            true.needs,
            true.persistent,
        )


class LoadingEvictor(SchedulerCore):
    """Evicts a model that is still waking to make room for another that waits (the race
    Ollama and llama.cpp's router fixed: unloading a model that is loading)."""

    def handle(self, message: SchedulerInput, now: float) -> list[SchedulerEffect]:
        effects = super().handle(message, now)
        waking = [name for name, view in self.views.items() if view.state == "Waking"]
        waiting = [
            name for name, view in self.views.items() if view.queue_depth and name not in waking
        ]
        if waking and waiting:
            effects.append(
                SwitchStarted(waking[0], waiting[0], "evict the loader", now, (waking[0],))
            )
        return effects


class PersistenceIgnored(SchedulerCore):
    """Evicts persistent models like any other, and (as an LRU would: an embedding model
    is often the longest idle) before any other."""

    def _evictable(self, model: str) -> bool:
        return self.views[model].state == "Active" and model != self.pinned

    def _eviction_cost(self, model: str) -> tuple[float, float, str]:
        cost = super()._eviction_cost(model)
        return (-1.0, *cost[1:]) if model in self.capacity.persistent else cost


# ---- the tests ------------------------------------------------------------------------------
#
# Each test names the invariants its breakage can trip (see the module docstring), and why.


def test_a_policy_that_starves_under_steady_traffic_is_caught() -> None:
    # Only waits are wrong (the cores are correct, and stop skipping once traffic stops),
    # and the waits are checked against the bound before anything else.
    caught(conformance_machine(StickyPolicy), NO_STARVATION)


def test_the_endless_traffic_test_catches_a_starving_policy() -> None:
    case_class = policy_conformance(StickyPolicy, hypothesis_settings=TEETH)
    case = case_class("test_endless_traffic_does_not_starve_another_model")
    with pytest.raises(InvariantViolation) as info:
        case.test_endless_traffic_does_not_starve_another_model()  # type: ignore[attr-defined]
    # As above: only the lone request's wait is wrong.
    tripped(info.value, NO_STARVATION)


def test_a_policy_that_never_switches_is_caught_even_without_a_bound() -> None:
    # No bound, so no-starvation is not checked: only "everything ends once traffic stops".
    caught(conformance_machine(StubbornPolicy), NOTHING_LOST)


def test_a_policy_that_spins_is_caught() -> None:
    # It spins the first time it defers, at one instant: nothing else has happened since the
    # FIFO-like decisions before, and no time passes for a wait to grow.
    caught(conformance_machine(SpinningPolicy), NO_LIVELOCK)


@pytest.mark.parametrize(
    ("policy", "detail"),
    [
        (ColdStartForgotten, "on_pending returned None, not SwitchNow, Defer or Skip"),
        (TrustsEstimates, "on_pending raised KeyError: (None, "),
        (TickReturnsAPair, "on_tick returned a tuple (("),
    ],
    ids=["returns-none", "raises", "tick-returns-no-name"],
)
def test_a_policy_that_raises_or_answers_no_decision_is_caught_with_the_cores_detail(
    policy: type[BasePolicy], detail: str
) -> None:
    # The first bad answer is reported at once as a PolicyError effect; before it, the policy
    # behaved correctly (FIFO's decisions, or a tick-only policy without a bound).
    violation = caught(conformance_machine(policy), POLICY_ERRORS)
    assert detail in violation.detail
    assert f"policy {policy.name!r}" in violation.detail


def test_a_core_that_sleeps_with_requests_in_flight_is_caught() -> None:
    # It differs from a correct core only when it starts the sleep hook with requests in
    # flight, which is the violation.
    machine = conformance_machine(FifoPolicy, drain_before_switch=True, core_class=HastyCore)
    caught(machine, DRAIN)


def test_a_core_that_loses_a_waiter_is_caught() -> None:
    # The lost waiter is still waiting as far as its client knows. The check after the step
    # compares the waits with FIFO's bound first, then the queues with the requests: so the
    # loss shows as nothing-lost, or as no-starvation if by then the lost request has
    # waited longer than the bound (a long `advance`, or traffic stopping).
    caught(conformance_machine(FifoPolicy, core_class=ForgetfulCore), NOTHING_LOST, NO_STARVATION)


def test_a_core_that_admits_while_draining_is_caught() -> None:
    # Its first deviation is a Grant by a Draining model, checked as it happens.
    machine = conformance_machine(FifoPolicy, drain_before_switch=True, core_class=GreedyCore)
    caught(machine, ADMISSION)


def test_a_core_that_leaks_withdrawn_waiters_is_caught() -> None:
    # Its first deviation is a withdrawn waiter left in the queue, checked right after the
    # client leaves.
    caught(conformance_machine(FifoPolicy, core_class=DeafCore), CANCELLATION)


def test_a_scheduler_that_wakes_before_the_old_model_sleeps_is_caught() -> None:
    # Instant hooks: by the end of the step the old model is asleep again, so only a check
    # over the transition log, in order, can see two models awake at once. (One fixed run,
    # no search: it has one outcome.)
    hooks = {"a": HookScript(0.0, 0.0), "b": HookScript(0.0, 0.0)}
    checked = CheckedWorld(hooks, FifoPolicy(), Settings(), max_service=1.0)
    world = checked.world
    world.scheduler = ImpatientScheduler(list(hooks), FifoPolicy(), costs=world.costs)
    checked.submit("a", 0.0, 1.0)
    checked.submit("b", 0.5, 1.0)
    with pytest.raises(InvariantViolation) as info:
        checked.settle()
    tripped(info.value, SINGLE_AWAKE)


def test_the_actor_suite_reports_a_policy_error_too() -> None:
    schedule = [PlannedRequest("a", 0.0, 1.0), PlannedRequest("b", 0.5, 1.0)]
    with pytest.raises(InvariantViolation) as info:
        run_actors(
            ColdStartForgotten(), {"a": HookScript(), "b": HookScript()}, schedule, Settings()
        )
    tripped(info.value, POLICY_ERRORS)
    assert "on_pending returned None, not SwitchNow, Defer or Skip" in info.value.detail


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
    # The actor suite checks waits only once the run is over, request by request, and the
    # loss delays nobody else (no cancellations here): the lost request never ends, and its
    # model's grants and queue no longer match the clients' (all nothing-lost).
    tripped(info.value, NOTHING_LOST)


# What the actor suite checks (test_actors.run_actors): everything but the state-machine-only
# checks (cancellation and no-livelock need CheckedWorld's driver).
ACTOR_SUITE_INVARIANTS = (
    SINGLE_AWAKE,
    ADMISSION,
    DRAIN,
    NOTHING_LOST,
    NO_STARVATION,
    EDGES,
    NO_ANOMALY,
    POLICY_ERRORS,
)


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
    with pytest.raises(InvariantViolation) as info:
        _actors_with_a_credulous_scheduler()
    # A lost track shows wherever the scheduler's picture first misleads it: it may wake a
    # second model, admit through a model it thinks is Active, leave a request behind, or
    # make one wait past the bound. Any invariant it trips is this breakage's (FIFO and the
    # real actors pass the actor suite), so the set is every invariant the actor suite checks.
    tripped(info.value, *ACTOR_SUITE_INVARIANTS)


# ---- capacity (several models awake) ----------------------------------------------------------


def test_a_scheduler_that_exceeds_a_capacity_by_one_unit_is_caught() -> None:
    # Its first deviation is a wake that does not fit, caught at that model's wake transition.
    # Drawn capacities give every deployment one unit of slack it does not have.
    caught(conformance_machine(FifoPolicy, scheduler_class=OverbookingScheduler), CAPACITY)


def test_a_scheduler_that_evicts_a_model_still_waking_is_caught() -> None:
    # Caught as the eviction is decided, before anything is done to the loading model.
    caught(conformance_machine(FifoPolicy, scheduler_class=LoadingEvictor), EVICTION)


def test_a_scheduler_that_evicts_a_persistent_model_is_caught() -> None:
    # A fixed run, not a search: the searches reach a drawn persistent model that is awake
    # while another does not fit too rarely to count on. The eviction decision itself is the
    # violation; the correct scheduler evicts b instead.
    hooks = {m: HookScript(1.0, 1.0) for m in "abc"}
    settings = Settings(
        resources={"g": 80.0},
        needs={"a": {"g": 20.0}, "b": {"g": 40.0}, "c": {"g": 40.0}},
        persistent=frozenset({"a"}),
    )
    for scheduler_class, expected in ((SchedulerCore, None), (PersistenceIgnored, EVICTION)):
        checked = CheckedWorld(
            hooks, FifoPolicy(), settings, max_service=1.0, scheduler_class=scheduler_class
        )
        for at, model in ((0.0, "a"), (5.0, "b"), (10.0, "c")):
            checked.submit(model, at, 0.5)
        if expected is None:
            checked.settle()
            assert checked.world.models["a"].state == "Active"
            continue
        with pytest.raises(InvariantViolation) as info:
            checked.settle()
        tripped(info.value, expected)


def test_an_eviction_that_does_not_wait_for_granted_requests_is_caught() -> None:
    # A victim with granted requests put to sleep at once (its drain skipped), in a fixed run
    # where c's wake must evict b while b serves a long request.
    hooks = {m: HookScript(1.0, 1.0) for m in "abc"}
    settings = Settings(
        resources={"g": 80.0},
        needs={"a": {"g": 30.0}, "b": {"g": 40.0}, "c": {"g": 50.0}},
    )
    for core_class, expected in ((ModelCore, None), (HastyCore, DRAIN)):
        checked = CheckedWorld(
            hooks, FifoPolicy(), settings, max_service=10.0, core_class=core_class
        )
        checked.submit("a", 0.0, 1.0)
        checked.submit("b", 0.0, 10.0)
        checked.submit("c", 5.0, 1.0)
        if expected is None:
            checked.settle()  # the correct core drains b first: nothing to catch
            continue
        with pytest.raises(InvariantViolation) as info:
            checked.settle()
        tripped(info.value, expected)
