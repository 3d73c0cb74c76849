"""The harness's own checks have teeth: they fail on the faults they are there to catch."""

from __future__ import annotations

import pytest

from tests.faults.harness import Outcome, Tally
from tests.faults.report import latest, table
from tests.hooklog import HookEvent, single_awake_violations


def log(*lines: str) -> list[HookEvent]:
    events = []
    for i, line in enumerate(lines):
        model, action, phase = line.split()
        events.append(HookEvent(float(i), model, action, phase))
    return events


def test_a_clean_switch_passes() -> None:
    assert not single_awake_violations(
        log("a wake start", "a wake end", "a sleep start", "a sleep end", "b wake start")
    )


def test_a_wake_before_the_previous_sleep_ended_is_caught() -> None:
    assert single_awake_violations(
        log("a wake start", "a wake end", "a sleep start", "b wake start", "a sleep end")
    )


def test_a_failed_or_killed_wake_counts_as_awake_until_its_cleanup_sleep_ended() -> None:
    failed = log("b wake start", "b wake failed", "a wake start")
    killed = log("b wake start", "b sleep start", "a wake start", "b sleep end")
    cleaned = log("b wake start", "b wake failed", "b sleep start", "b sleep end", "a wake start")
    assert single_awake_violations(failed)
    assert single_awake_violations(killed)
    assert not single_awake_violations(cleaned)


def test_a_wake_stamped_before_the_last_sleep_ended_is_caught() -> None:
    events = [
        HookEvent(1.0, "a", "sleep", "start"),
        HookEvent(2.0, "a", "sleep", "end"),
        HookEvent(1.5, "b", "wake", "start"),
    ]
    assert single_awake_violations(events)


def outcome(status: int | None, result: str, model: str = "a", backend: str = "a") -> Outcome:
    return Outcome(model, False, 0.0, status=status, result=result, backend=backend)


def test_the_tally_fails_on_lost_unexpected_misrouted_and_cut_responses() -> None:
    good = Tally([outcome(200, "complete"), outcome(None, "cancelled")])
    good.check()
    assert good.summary()["lost"] == 0
    for bad in (
        outcome(None, "lost"),
        outcome(502, "complete"),
        outcome(200, "complete", backend="b"),
        outcome(200, "cut"),
    ):
        with pytest.raises(AssertionError):
            Tally([bad]).check()
    Tally([outcome(502, "complete"), outcome(200, "cut")]).check(allowed=(200, 502), cut_ok=True)


def test_the_report_keeps_the_latest_record_per_scenario_in_order() -> None:
    base = {
        "outcome": "passed",
        "sent": 1,
        "answered": 1,
        "cancelled": 0,
        "lost": 0,
        "statuses": {"200": 1},
        "wakes": 1,
        "duration_secs": 1.0,
    }
    records = [
        {**base, "scenario": 10, "name": "soak"},
        {**base, "scenario": "9b", "name": "old"},
        {**base, "scenario": 2, "name": "b2b"},
        {**base, "scenario": "9b", "name": "new"},
    ]
    assert [r["name"] for r in latest(records)] == ["b2b", "new", "soak"]
    assert "| 9b | new | passed | 1 | 1 | 0 | 0 | 200: 1 |" in table(records)
