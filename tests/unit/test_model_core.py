"""ModelCore, message by message: what a model does with each input in each state."""

from __future__ import annotations

import pytest

from llmux.core.messages import (
    Acquire,
    Anomaly,
    Drain,
    Finish,
    Grant,
    Hook,
    HookDone,
    Reject,
    RejectReason,
    RunHook,
    Shutdown,
    Tick,
    Transition,
    Unreachable,
    Wake,
)
from llmux.core.model import ModelCore


def kinds(effects: list[object]) -> list[str]:
    out = []
    for e in effects:
        match e:
            case Grant(req_id=r):
                out.append(f"grant {r}")
            case Reject(req_id=r, reason=why):
                out.append(f"reject {r} {why}")
            case RunHook(hook=h):
                out.append(f"hook {h}")
            case Transition(event=ev, target=t):
                out.append(f"{ev}->{t}")
            case Anomaly():
                out.append("anomaly")
    return out


def active_model(**kwargs: object) -> ModelCore:
    core = ModelCore("a", **kwargs)  # type: ignore[arg-type]
    core.handle(Wake("test"), 0.0)
    core.handle(HookDone(Hook.WAKE, True), 0.0)
    assert core.state == "Active"
    return core


def test_a_sleeping_model_queues_requests_until_it_is_awake() -> None:
    core = ModelCore("a")
    assert core.handle(Acquire(1), 1.0) == []
    assert core.handle(Acquire(2), 2.0) == []
    assert core.report().queue_depth == 2
    assert core.report().oldest_arrival == 1.0
    assert kinds(core.handle(Wake("x"), 3.0)) == ["wake->Waking", "hook wake"]
    effects = core.handle(HookDone(Hook.WAKE, True), 5.0)
    assert kinds(effects) == ["woke->Active", "grant 1", "grant 2"]
    waits = [e.waited for e in effects if isinstance(e, Grant)]
    assert waits == [4.0, 3.0]
    assert core.report().in_flight == 2 and core.report().queue_depth == 0


def test_an_active_model_grants_at_once() -> None:
    core = active_model()
    assert core.handle(Acquire(7), 1.0) == [Grant("a", 7, 0.0)]


def test_drain_waits_for_the_last_in_flight_request_before_the_sleep_hook() -> None:
    core = active_model()
    core.handle(Acquire(1), 1.0)
    core.handle(Acquire(2), 1.0)
    assert kinds(core.handle(Drain("switch"), 2.0)) == ["drain->Draining"]
    assert kinds(core.handle(Finish(1), 3.0)) == []
    assert kinds(core.handle(Finish(2), 4.0)) == ["drained->SleepingDown", "hook sleep"]


def test_a_draining_model_admits_nothing_new() -> None:
    core = active_model()
    core.handle(Acquire(1), 1.0)
    core.handle(Drain("switch"), 2.0)
    assert core.handle(Acquire(2), 2.5) == []
    assert core.report().queue_depth == 1 and core.report().in_flight == 1


def test_drain_of_an_idle_model_sleeps_at_once() -> None:
    core = active_model()
    assert kinds(core.handle(Drain("switch"), 2.0)) == [
        "drain->Draining",
        "drained->SleepingDown",
        "hook sleep",
    ]


def test_without_drain_before_switch_the_sleep_hook_starts_with_requests_in_flight() -> None:
    core = active_model(drain_before_switch=False)
    core.handle(Acquire(1), 1.0)
    assert kinds(core.handle(Drain("switch"), 2.0))[-1] == "hook sleep"
    assert core.report().in_flight == 1
    # The request still finishes and releases its slot.
    core.handle(Finish(1), 3.0)
    assert core.report().in_flight == 0


def test_a_failed_wake_answers_the_queue_runs_the_sleep_hook_and_ends_asleep() -> None:
    core = ModelCore("a")
    core.handle(Acquire(1), 0.0)
    core.handle(Wake("x"), 0.0)
    effects = core.handle(HookDone(Hook.WAKE, False, "exit status 3: no GPU"), 1.0)
    assert kinds(effects) == ["wake_failed->SleepingDown", "reject 1 hook_failed", "hook sleep"]
    reject = next(e for e in effects if isinstance(e, Reject))
    assert reject.detail == "Hook failed for a: exit status 3: no GPU"
    assert kinds(core.handle(HookDone(Hook.SLEEP, True), 2.0)) == ["slept->Sleeping"]


def test_a_failed_sleep_hook_still_ends_asleep() -> None:
    core = active_model()
    core.handle(Drain("x"), 1.0)
    assert kinds(core.handle(HookDone(Hook.SLEEP, False, "boom"), 2.0)) == [
        "sleep_failed->Sleeping"
    ]


def test_queued_requests_time_out_in_arrival_order() -> None:
    core = ModelCore("a", request_timeout=10.0)
    core.handle(Acquire(1), 0.0)
    core.handle(Acquire(2), 4.0)
    assert core.next_deadline() == 10.0
    assert core.handle(Tick(), 9.9) == []
    assert kinds(core.handle(Tick(), 10.0)) == ["reject 1 timeout"]
    assert core.next_deadline() == 14.0


def test_no_timeout_means_no_deadline() -> None:
    core = ModelCore("a")
    core.handle(Acquire(1), 0.0)
    assert core.next_deadline() is None


@pytest.mark.parametrize("granted", [False, True])
def test_finish_releases_exactly_what_the_request_held(granted: bool) -> None:
    core = active_model() if granted else ModelCore("a")
    core.handle(Acquire(1), 0.0)
    core.handle(Finish(1), 1.0)
    report = core.report()
    assert (report.queue_depth, report.in_flight) == (0, 0)
    # A second Finish (after a timeout answered it, say) changes nothing.
    assert core.handle(Finish(1), 2.0) == []


def test_shutdown_answers_the_queue_and_refuses_newcomers() -> None:
    core = ModelCore("a")
    core.handle(Acquire(1), 0.0)
    assert kinds(core.handle(Shutdown(), 1.0)) == ["reject 1 shutting_down"]
    assert kinds(core.handle(Acquire(2), 1.0)) == ["reject 2 shutting_down"]


@pytest.mark.parametrize(
    "message",
    [Drain("x"), HookDone(Hook.WAKE, True), HookDone(Hook.SLEEP, True)],
)
def test_a_message_the_state_cannot_take_is_an_anomaly_not_a_crash(message: object) -> None:
    core = ModelCore("a")
    assert kinds(core.handle(message, 0.0)) == ["anomaly"]  # type: ignore[arg-type]
    assert core.state == "Sleeping"


def test_reports_are_sent_only_when_something_changed() -> None:
    core = active_model()
    assert core.report_if_changed() is not None
    assert core.report_if_changed() is None
    core.handle(Acquire(1), 1.0)
    assert core.report_if_changed() is not None


def test_a_full_queue_refuses_new_waiters_but_never_the_active_model() -> None:
    core = ModelCore("m", max_queue=2)
    assert core.handle(Acquire(1), 0.0) == []
    assert core.handle(Acquire(2), 0.0) == []
    [refusal] = core.handle(Acquire(3), 0.0)
    assert isinstance(refusal, Reject)
    assert refusal.reason is RejectReason.QUEUE_FULL
    assert "max_queue 2" in refusal.detail
    core.handle(Finish(1), 0.1)  # a waiter left: there is room again
    assert core.handle(Acquire(4), 0.2) == []
    core.handle(Wake("test"), 0.3)
    core.handle(HookDone(Hook.WAKE, True, ""), 1.0)
    # Active: requests are admitted, not queued, so the bound does not apply.
    for req_id in range(10, 20):
        [grant] = core.handle(Acquire(req_id), 1.0)
        assert isinstance(grant, Grant)


def test_an_adopted_model_is_active_without_a_wake_hook() -> None:
    from llmux.core.messages import Adopt

    core = ModelCore("m")
    core.handle(Acquire(1), 0.0)
    effects = core.handle(Adopt("alive at start-up"), 0.5)
    assert [type(e) for e in effects] == [Transition, Grant]
    assert core.state == "Active"
    assert not any(isinstance(e, RunHook) for e in effects)


def test_a_failed_health_probe_takes_the_model_out_of_service_after_draining() -> None:
    core = ModelCore("m", health_interval=10.0)
    core.handle(Wake("test"), 0.0)
    core.handle(HookDone(Hook.WAKE, True, ""), 1.0)
    assert core.next_deadline() == 11.0
    assert core.handle(Tick(), 5.0) == []
    [probe] = core.handle(Tick(), 11.0)
    assert probe == RunHook("m", Hook.ALIVE)
    assert core.next_deadline() is None, "one probe at a time"
    assert core.handle(HookDone(Hook.ALIVE, True, ""), 11.2) == []
    assert core.next_deadline() == 21.2
    core.handle(Acquire(7), 15.0)
    core.handle(Tick(), 21.2)
    died = core.handle(HookDone(Hook.ALIVE, False, "exit status 7"), 21.3)
    assert [t.event for t in died if isinstance(t, Transition)] == ["died"]
    assert core.state == "Draining", "request 7 is still in flight"
    assert core.handle(Acquire(8), 21.4) == [], "a dead model admits nobody"
    finished = core.handle(Finish(7), 21.5)
    assert RunHook("m", Hook.SLEEP) in finished
    core.handle(HookDone(Hook.SLEEP, True, ""), 22.0)
    assert core.state == "Sleeping"
    assert core.report().queue_depth == 1, "request 8 waits for the next wake"
    assert core.next_deadline() is None


def test_every_reason_to_refuse_a_request_has_an_http_status() -> None:
    from llmux.errors import ERRORS, REJECTION

    assert set(REJECTION) == set(RejectReason)
    assert all(kind in ERRORS for kind in REJECTION.values())


# ---- max_in_flight ---------------------------------------------------------------------------


def test_a_full_model_queues_requests_and_grants_them_in_order_as_others_finish() -> None:
    core = active_model(max_in_flight=2)
    assert kinds(core.handle(Acquire(1), 1.0)) == ["grant 1"]
    assert kinds(core.handle(Acquire(2), 1.0)) == ["grant 2"]
    assert core.handle(Acquire(3), 2.0) == []
    assert core.handle(Acquire(4), 3.0) == []
    assert core.report().queue_depth == 2 and core.report().in_flight == 2
    effects = core.handle(Finish(2), 5.0)
    assert kinds(effects) == ["grant 3"]
    assert [e.waited for e in effects if isinstance(e, Grant)] == [3.0]
    assert kinds(core.handle(Finish(1), 6.0)) == ["grant 4"]
    assert core.handle(Finish(3), 7.0) == [] and core.idle_since is None
    assert core.handle(Finish(4), 8.0) == [] and core.idle_since == 8.0


def test_waking_grants_only_as_many_as_the_limit_allows() -> None:
    core = ModelCore("a", max_in_flight=2)
    for req in (1, 2, 3):
        core.handle(Acquire(req), 0.0)
    core.handle(Wake("x"), 0.0)
    effects = core.handle(HookDone(Hook.WAKE, True), 1.0)
    assert kinds(effects) == ["woke->Active", "grant 1", "grant 2"]
    assert list(core.queue) == [3]


def test_requests_queued_behind_a_full_model_wait_for_its_next_visit_when_it_drains() -> None:
    core = active_model(max_in_flight=1)
    core.handle(Acquire(1), 0.0)
    core.handle(Acquire(2), 0.0)
    assert kinds(core.handle(Drain("switch"), 1.0)) == ["drain->Draining"]
    # Nothing is granted once the drain started: 2 waits for the model to come back.
    assert kinds(core.handle(Finish(1), 2.0)) == ["drained->SleepingDown", "hook sleep"]
    assert list(core.queue) == [2]
    core.handle(HookDone(Hook.SLEEP, True), 3.0)
    assert core.report().state == "Sleeping" and core.report().queue_depth == 1


def test_requests_queued_behind_a_full_model_time_out_and_count_towards_max_queue() -> None:
    core = active_model(max_in_flight=1, max_queue=1, request_timeout=10.0)
    core.handle(Acquire(1), 0.0)
    assert core.handle(Acquire(2), 1.0) == []
    assert kinds(core.handle(Acquire(3), 1.0)) == [f"reject 3 {RejectReason.QUEUE_FULL}"]
    assert core.next_deadline() == 11.0
    assert kinds(core.handle(Tick(), 11.0)) == [f"reject 2 {RejectReason.TIMEOUT}"]


def test_without_an_alive_hook_two_unreachable_requests_in_a_row_take_it_out_of_service() -> None:
    core = active_model()
    for req in (1, 2, 3):
        core.handle(Acquire(req), 1.0)
    assert core.handle(Unreachable(1, "refused"), 1.1) == []  # one could be a race
    core.handle(Finish(1), 1.1)
    effects = core.handle(Unreachable(2, "refused"), 1.2)
    assert kinds(effects) == ["died->Draining"]
    assert "could not reach its backend: refused" in effects[0].cause  # type: ignore[union-attr]
    core.handle(Finish(2), 1.2)
    # Request 3 is still in flight: it drains as usual, then the sleep hook cleans up.
    assert kinds(core.handle(Finish(3), 1.3)) == ["drained->SleepingDown", "hook sleep"]


def test_a_request_that_gets_through_resets_the_unreachable_count() -> None:
    core = active_model()
    for req in (1, 2, 3):
        core.handle(Acquire(req), 1.0)
    core.handle(Unreachable(1, "refused"), 1.1)
    core.handle(Finish(1), 1.1)
    core.handle(Finish(2), 1.2)  # answered by the backend: it is there after all
    assert core.handle(Unreachable(3, "refused"), 1.3) == []
    assert core.state == "Active"


def test_with_an_alive_hook_an_unreachable_backend_is_probed_at_once() -> None:
    core = active_model(alive_probe=True)
    core.handle(Acquire(1), 1.0)
    core.handle(Acquire(2), 1.0)
    assert kinds(core.handle(Unreachable(1, "refused"), 1.1)) == ["hook alive"]
    assert core.handle(Unreachable(2, "refused"), 1.1) == []  # one probe at a time
    effects = core.handle(HookDone(Hook.ALIVE, False, "exit status 1"), 1.5)
    assert kinds(effects) == ["died->Draining"]


def test_an_unreachable_report_after_the_model_left_service_is_ignored() -> None:
    core = active_model()
    core.handle(Acquire(1), 1.0)
    core.handle(Drain("switch"), 1.1)
    assert core.handle(Unreachable(1, "refused"), 1.2) == []
    assert core.handle(Unreachable(99, "refused"), 1.2) == []
