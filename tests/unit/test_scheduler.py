"""SchedulerCore through the deterministic world: the switch sequence, timing and failures."""

from __future__ import annotations

from llmux.core.policy import BasePolicy, PendingContext, PolicyDecision, ScheduleContext, Skip
from llmux.core.world import HookScript, Settings, World
from llmux.policies.fifo import FifoPolicy


def model_events(world: World, model: str) -> list[str]:
    return [t.event for t in world.transitions if t.subject == model]


def hook_log(world: World) -> list[str]:
    return [f"{m}:{h}" for _, m, h in world.hook_runs]


def two_models(settings: Settings | None = None, **b: object) -> World:
    return World(
        {"a": HookScript(1.0, 0.5), "b": HookScript(2.0, 0.5, **b)},  # type: ignore[arg-type]
        FifoPolicy(),
        settings,
    )


def test_cold_start_wakes_the_model_and_records_a_cold_start_cost() -> None:
    world = two_models()
    req = world.submit("a", at=0.0, service=0.1)
    world.run()
    assert world.requests[req].granted_at == 1.0
    assert hook_log(world) == ["a:wake"]
    assert world.costs.estimate(None, "a") == 1.0
    assert world.costs.estimate("a", "b") is None


def test_switch_drains_then_sleeps_the_old_model_then_wakes_the_new_one() -> None:
    world = two_models()
    a = world.submit("a", at=0.0, service=3.0)
    b = world.submit("b", at=1.5, service=0.1)
    world.run()
    assert hook_log(world) == ["a:wake", "a:sleep", "b:wake"]
    # a's request (granted at 1.0, 3 s) finishes at 4.0; only then does a's sleep hook start.
    sleep_start = next(t for t, m, h in world.hook_runs if (m, h) == ("a", "sleep"))
    assert world.requests[a].finished_at == 4.0 == sleep_start
    # 0.5 s sleep + 2 s wake after the drain.
    assert world.requests[b].granted_at == 6.5
    assert world.costs.estimate("a", "b") == 2.5
    (switch,) = [s for s in world.switches if s.from_model == "a"]
    assert switch.drain_duration == 2.5 and switch.result == "success"
    assert not world.anomalies


def test_requests_for_the_same_model_need_no_switch() -> None:
    world = two_models()
    for i in range(5):
        world.submit("a", at=i * 0.1, service=0.1)
    world.run()
    assert hook_log(world) == ["a:wake"]
    assert all(r.finished_at is not None for r in world.requests.values())


def test_min_active_keeps_serving_the_active_model_before_switching() -> None:
    world = two_models(Settings(min_active=5.0))
    world.submit("a", at=0.0, service=0.1)
    world.submit("b", at=1.5, service=0.1)
    late_a = world.submit("a", at=3.0, service=0.1)
    world.run()
    # a woke at 1.0: it must stay active until 6.0 and keep admitting meanwhile.
    assert world.requests[late_a].granted_at == 3.0
    drain = next(t for t in world.transitions if t.subject == "a" and t.event == "drain")
    assert drain.at == 6.0


def test_a_failed_wake_fails_its_waiters_and_backs_off_before_retrying() -> None:
    world = two_models(wake_failures=frozenset({0}))
    first = world.submit("b", at=0.0, service=0.1)
    second = world.submit("b", at=3.0, service=0.1)
    world.run()
    assert world.requests[first].rejected == "hook_failed"
    assert model_events(world, "b")[:3] == ["wake", "wake_failed", "slept"]
    # Failure at 2.0, cleanup sleep until 2.5, backoff until 4.0; the retry then succeeds.
    retry = [t for t, m, h in world.hook_runs if (m, h) == ("b", "wake")][1]
    assert retry == 4.0
    assert world.requests[second].granted_at == 6.0
    results = [s.result for s in world.switches]
    assert results == ["failure", "success"]


def test_a_switch_nobody_waits_for_any_more_does_not_wake_the_target() -> None:
    world = two_models()
    world.submit("a", at=0.0, service=2.0)
    b = world.submit("b", at=1.5, service=0.1)
    world.cancel(b, at=2.0)  # during a's drain
    world.run()
    assert hook_log(world) == ["a:wake", "a:sleep"]
    assert [s.result for s in world.switches] == ["success", "cancelled"]
    assert world.scheduler.awake() == []


def test_alternating_traffic_serves_everyone_without_livelock() -> None:
    world = two_models()
    for i in range(40):
        world.submit("a" if i % 2 else "b", at=i * 0.05, service=0.2)
    world.run()
    assert all(r.finished_at is not None for r in world.requests.values())
    assert not world.anomalies


def test_requests_that_wait_too_long_time_out() -> None:
    world = World({"a": HookScript(wake_secs=100.0)}, FifoPolicy(), Settings(request_timeout=30))
    req = world.submit("a", at=0.0, service=0.1)
    world.run()
    assert world.requests[req].rejected == "timeout"


class TickOnly(BasePolicy):
    """Never switches on arrival; switches to the longest queue every 10 s."""

    name = "tick-only"
    tick_interval_secs = 10.0

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return Skip("waiting for the tick") if ctx.active_model else super().on_pending(ctx)

    def on_tick(self, ctx: ScheduleContext) -> str | None:
        if not ctx.queue_depths:
            return None
        return max(ctx.queue_depths, key=lambda m: ctx.queue_depths[m])


def test_a_policy_tick_can_drive_the_switch() -> None:
    world = World({"a": HookScript(), "b": HookScript()}, TickOnly())
    world.submit("a", at=0.0, service=0.1)
    b = world.submit("b", at=2.0, service=0.1)
    world.run()
    drain = next(t for t in world.transitions if t.subject == "a" and t.event == "drain")
    assert drain.at >= 10.0
    assert world.requests[b].finished_at is not None


def test_a_report_that_crossed_the_wake_command_is_not_taken_for_a_failed_wake() -> None:
    """The model actor may report (still Sleeping, more waiters) after the scheduler sent
    Wake but before the model handled it; that is not the wake failing."""
    from llmux.core.messages import ModelReport, SendWake, SwitchFinished
    from llmux.core.scheduler import SchedulerCore

    core = SchedulerCore(["a"], FifoPolicy())
    effects = core.handle(ModelReport("a", "Sleeping", 1, 0.0, 0, None, epoch=0), 0.0)
    assert any(isinstance(e, SendWake) for e in effects)
    crossed = core.handle(ModelReport("a", "Sleeping", 5, 0.0, 0, None, epoch=0), 0.01)
    assert not any(isinstance(e, SwitchFinished) for e in crossed)
    assert core.phase == "Waking"
    assert core.views["a"].queue_depth == 5
    assert core.awake() == ["a"], "a is waking as far as the scheduler knows"
    done = core.handle(ModelReport("a", "Active", 0, None, 5, 0.3, epoch=2), 0.3)
    [finished] = [e for e in done if isinstance(e, SwitchFinished)]
    assert finished.result == "success"


def test_after_a_failed_wake_only_the_failed_model_backs_off() -> None:
    world = two_models(wake_failures=frozenset({0}))
    world.submit("b", at=0.0, service=0.1)
    a = world.submit("a", at=1.0, service=0.1)
    retry = world.submit("b", at=2.6, service=0.1)
    world.run()
    # b fails at 2.0 and its cleanup sleep ends at 2.5: a is woken then, not after b's 2 s
    # backoff (4.0); b itself is retried only once its backoff is over.
    a_wake = next(t for t, m, h in world.hook_runs if (m, h) == ("a", "wake"))
    assert a_wake == 2.5
    assert world.requests[a].granted_at == 3.5
    b_retry = [t for t, m, h in world.hook_runs if (m, h) == ("b", "wake")][1]
    assert b_retry >= 4.0
    assert world.requests[retry].finished_at is not None


def test_the_core_says_when_a_shutdown_has_wound_down_and_what_a_switch_cost() -> None:
    from llmux.core.messages import Shutdown, WoundDown

    seen: list[object] = []
    world = World(
        {"a": HookScript(1.0, 0.5), "b": HookScript(2.0, 0.5)}, FifoPolicy(), on_effect=seen.append
    )
    world.submit("a", at=0.0, service=1.0)
    world.command(Shutdown(), at=0.5)  # a is waking; its queued request is refused
    world.run()
    wound = [e for e in seen if isinstance(e, WoundDown)]
    assert [w.at for w in wound] == [1.5]  # a woke at 1.0, then slept (0.5 s) at once
    (switch,) = world.switches
    assert switch.cost_estimate == world.costs.estimate(None, "a") == 1.0
