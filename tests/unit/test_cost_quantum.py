"""The cost_quantum policy: its rules one by one, its cost estimates, its bound, its config,
and, in the simulator, what it is for (fewer switches than FIFO, bounded waits)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from llmux.config import parse_config
from llmux.core.policy import (
    BoundInputs,
    Defer,
    PendingContext,
    PolicyDecision,
    Skip,
    SwitchNow,
    WaitingSummary,
)
from llmux.core.world import HookScript, World
from llmux.policies import BUILTIN, PolicyLoadError, build_policy
from llmux.policies.cost_quantum import CostQuantumPolicy
from llmux.policies.drain_first import DrainFirstPolicy
from llmux.policies.fifo import FifoPolicy
from llmux.simulate import generate_profile, simulate

COSTS = {("a", "b"): 2.0, ("a", "c"): 4.0, ("b", "a"): 3.0}


def ctx(
    target: str = "b",
    *,
    active: str | None = "a",
    waiting: Mapping[str, tuple[int, float]] | None = None,
    in_flight: int = 1,
    duration: float = 1.0,
    idle: float | None = None,
    costs: Mapping[tuple[str | None, str], float] = COSTS,
) -> PendingContext:
    """A decision round's context, as the scheduler builds it, asked about `target`."""
    summaries = {
        m: WaitingSummary(depth, age) for m, (depth, age) in (waiting or {"b": (1, 0.5)}).items()
    }
    return PendingContext(
        target_model=target,
        active_model=active,
        target_queue_depth=summaries[target].queue_depth,
        oldest_waiting=summaries[target].oldest_waiting,
        active_in_flight=in_flight,
        active_duration=duration,
        estimated_switch_cost=costs.get((active, target)),
        now=100.0,
        waiting=summaries,
        cost_estimates=costs,
        active_idle_secs=idle,
    )


def decide(policy: CostQuantumPolicy, context: PendingContext) -> PolicyDecision:
    return policy.on_pending(context)


POLICY = CostQuantumPolicy(max_wait_secs=30.0, quantum_factor=5.0, linger_factor=1.0)


# ---- the visit ------------------------------------------------------------------------------


def test_a_busy_model_keeps_the_gpu_for_a_quantum_scaled_by_the_switch_cost() -> None:
    # a -> b costs 2 s, so a's quantum is 5 x 2 = 10 s; 1 s of it is used.
    decision = decide(POLICY, ctx(duration=1.0))
    assert isinstance(decision, Defer) and decision.seconds == pytest.approx(9.0)
    # A dearer switch buys a longer visit: a -> c costs 4 s, a 20 s quantum.
    dear = decide(POLICY, ctx("c", waiting={"c": (1, 0.5)}, duration=1.0))
    assert isinstance(dear, Defer) and dear.seconds == pytest.approx(19.0)


def test_once_the_quantum_is_spent_the_best_waiting_model_goes_next() -> None:
    assert isinstance(decide(POLICY, ctx(duration=10.0)), SwitchNow)


def test_an_idle_model_is_left_after_lingering_as_long_as_a_switch_costs() -> None:
    lingering = decide(POLICY, ctx(in_flight=0, idle=0.5))
    assert isinstance(lingering, Defer) and lingering.seconds == pytest.approx(1.5)
    assert isinstance(decide(POLICY, ctx(in_flight=0, idle=2.0)), SwitchNow)
    eager = CostQuantumPolicy(linger_factor=0.0)
    assert isinstance(decide(eager, ctx(in_flight=0, idle=0.0)), SwitchNow)


def test_no_deferral_outlasts_the_moment_the_oldest_request_reaches_max_wait() -> None:
    decision = decide(POLICY, ctx(waiting={"b": (1, 29.0)}, duration=1.0))
    assert isinstance(decision, Defer) and decision.seconds == pytest.approx(1.0)


def test_a_request_that_waited_max_wait_overrides_the_quantum() -> None:
    decision = decide(POLICY, ctx(waiting={"b": (1, 30.0)}, duration=0.0))
    assert isinstance(decision, SwitchNow) and "max_wait_secs" in decision.reason


def test_the_override_goes_to_the_oldest_waiter_whatever_the_scores() -> None:
    # b is deeper and cheaper to reach, but c's request is over the limit, and the
    # scheduler asks about c first (oldest waiter first).
    waiting = {"c": (1, 31.0), "b": (50, 29.0)}
    assert isinstance(decide(POLICY, ctx("c", waiting=waiting)), SwitchNow)
    assert isinstance(decide(POLICY, ctx("b", waiting=waiting)), Skip)


def test_with_nothing_active_the_best_model_is_woken_at_once() -> None:
    waiting = {"b": (1, 0.1), "c": (3, 0.1)}
    assert isinstance(decide(POLICY, ctx("c", active=None, waiting=waiting)), SwitchNow)
    assert isinstance(decide(POLICY, ctx("b", active=None, waiting=waiting)), Skip)


# ---- the next model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "best"),
    [
        # Same age and cost per request: the deeper queue.
        ({"b": (2, 1.0), "c": (8, 1.0)}, "c"),
        # Same depth: the older one, in proportion to the cheaper switch (a->b 2 s, a->c 4 s).
        ({"b": (4, 1.0), "c": (4, 3.0)}, "c"),
        ({"b": (4, 1.0), "c": (4, 1.5)}, "b"),
        # Depth x age / cost: 3 x 2 / 2 = 3 for b, 5 x 2 / 4 = 2.5 for c.
        ({"b": (3, 2.0), "c": (5, 2.0)}, "b"),
    ],
)
def test_the_next_model_has_the_most_waiting_per_second_of_switching(
    waiting: dict[str, tuple[int, float]], best: str
) -> None:
    for target in waiting:
        decision = decide(POLICY, ctx(target, waiting=waiting, duration=25.0))
        assert isinstance(decision, SwitchNow if target == best else Skip), (target, decision)


def test_the_quantum_is_scaled_by_the_cost_of_the_switch_to_the_chosen_model() -> None:
    # c is chosen (deeper), and a -> c costs 4 s: a 20 s quantum, not b's 10 s.
    waiting = {"b": (1, 1.0), "c": (9, 1.0)}
    decision = decide(POLICY, ctx("b", waiting=waiting, duration=12.0))
    assert isinstance(decision, Defer) and decision.seconds == pytest.approx(8.0)


def test_a_context_built_by_hand_without_the_round_is_judged_alone() -> None:
    bare = PendingContext("b", "a", 2, 0.5, 1, 100.0, 2.0, 100.0)
    assert isinstance(POLICY.on_pending(bare), SwitchNow)
    fresh = PendingContext("b", "a", 2, 0.5, 1, 1.0, None, 100.0)
    decision = POLICY.on_pending(fresh)  # prior 10 s: a 50 s quantum, capped by max_wait
    assert isinstance(decision, Defer) and decision.seconds == pytest.approx(29.5)


# ---- switch-cost estimates ------------------------------------------------------------------


def test_switch_costs_come_from_the_ema_then_the_mean_then_cold_starts_then_the_prior() -> None:
    policy = CostQuantumPolicy(prior_switch_secs=7.0)
    assert policy.estimated_cost("a", "b", COSTS) == 2.0
    # Never observed a -> d: the mean of the observed switches between models.
    assert policy.estimated_cost("a", "d", COSTS) == pytest.approx(3.0)
    # Only cold starts observed (wakes from nothing): their mean.
    assert policy.estimated_cost("a", "b", {(None, "a"): 1.0, (None, "c"): 2.0}) == 1.5
    assert policy.estimated_cost("a", "b", {}) == 7.0


def test_the_prior_sets_the_first_quantum() -> None:
    policy = CostQuantumPolicy(max_wait_secs=1000, quantum_factor=2.0, prior_switch_secs=3.0)
    decision = decide(policy, ctx(duration=1.0, costs={}))
    assert isinstance(decision, Defer) and decision.seconds == pytest.approx(5.0)


# ---- bound and configuration ----------------------------------------------------------------


def test_the_bound_is_fifos_plus_max_wait() -> None:
    inputs = BoundInputs(
        models=3, max_wake_secs=2.0, max_sleep_secs=1.0, max_service_secs=3.0, min_active=1.0
    )
    cycle = 1.0 + 3.0 + 1.0 + 2.0
    assert CostQuantumPolicy(max_wait_secs=20).starvation_bound(inputs) == 20 + 3 * cycle + cycle
    fifo = FifoPolicy().starvation_bound(inputs)
    assert CostQuantumPolicy(max_wait_secs=0).starvation_bound(inputs) == fifo


def test_it_is_built_in_with_documented_defaults() -> None:
    assert BUILTIN["cost_quantum"] is CostQuantumPolicy
    policy = CostQuantumPolicy()
    assert (policy.max_wait_secs, policy.quantum_factor, policy.linger_factor) == (60, 12, 0.25)
    assert policy.prior_switch_secs == 10 and policy.tick_interval_secs is None


def test_it_loads_from_a_config_file_with_its_options() -> None:
    config = parse_config(
        {
            "models": {"a": {"port": 9001, "wake": "true", "sleep": "true"}},
            "policy": {"type": "cost_quantum", "max_wait_secs": 45, "quantum_factor": 4},
        }
    )
    policy = build_policy(config.policy.type, config.policy_options)
    assert isinstance(policy, CostQuantumPolicy)
    assert (policy.max_wait_secs, policy.quantum_factor, policy.linger_factor) == (45, 4, 0.25)


@pytest.mark.parametrize(
    "options",
    [{"max_wait_secs": -1}, {"quantum_factor": float("inf")}, {"linger": 1}, {"prior": 1}],
)
def test_bad_options_are_refused_with_one_line(options: dict[str, float]) -> None:
    with pytest.raises(PolicyLoadError, match="rejected its options"):
        build_policy("cost_quantum", options)


# ---- in the scheduler -----------------------------------------------------------------------


def test_the_scheduler_gives_the_whole_round_and_idle_time_to_the_policy() -> None:
    seen: list[PendingContext] = []

    class Recorder(FifoPolicy):
        def on_pending(self, ctx: PendingContext) -> PolicyDecision:
            seen.append(ctx)
            return Defer(1.0) if ctx.active_model else SwitchNow()

    world = World({m: HookScript(1.0, 1.0) for m in "abc"}, Recorder())
    world.submit("a", at=0.0, service=1.0)  # a wakes at 1, serves until 2
    world.submit("b", at=1.5, service=0.0)
    world.submit("c", at=2.5, service=0.0)
    world.submit("c", at=2.5, service=0.0)
    world.run(until=3.0)
    last = seen[-1]
    assert last.active_model == "a" and last.now == 2.5
    assert last.waiting == {"b": WaitingSummary(1, 1.0), "c": WaitingSummary(2, 0.0)}
    assert last.active_idle_secs == pytest.approx(0.5)  # idle since its request ended at 2
    assert last.cost_estimates == {(None, "a"): 1.0}
    busy = next(c for c in seen if c.active_model == "a" and c.active_in_flight)
    assert busy.active_idle_secs is None


def test_fewer_switches_than_fifo_and_waits_within_max_wait_on_steady_traffic() -> None:
    workload = generate_profile("interleaved", ["a", "b"], duration=300)
    hooks = {m: HookScript(7.5, 2.5) for m in ("a", "b")}
    fifo, drain, quantum = simulate(
        workload, ["fifo", DrainFirstPolicy(), CostQuantumPolicy()], hooks
    )
    assert quantum.switches * 3 < fifo.switches
    assert quantum.busy_fraction > drain.busy_fraction > fifo.busy_fraction
    # The override at 60 s, then at most a drain (0.75 s) and one switch (10 s).
    assert quantum.wait_max is not None and quantum.wait_max <= 60 + 0.75 + 10 + 1e-6


def test_drain_first_starves_a_model_that_cost_quantum_serves_within_max_wait() -> None:
    workload = generate_profile("surge", ["a", "b"])
    hooks = {m: HookScript(1.5, 0.5) for m in ("a", "b")}
    drain, quantum = simulate(workload, [DrainFirstPolicy(), CostQuantumPolicy()], hooks)
    assert drain.wait_max is not None and drain.wait_max > 100
    assert quantum.wait_max is not None and quantum.wait_max <= 60 + 0.75 + 2 + 1e-6
