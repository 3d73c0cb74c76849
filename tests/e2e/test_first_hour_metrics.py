"""What a dashboard built on /metrics sees from the moment llmux starts."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Rig, running

STATES = ("Sleeping", "Waking", "Active", "Draining", "SleepingDown")


async def states_shown(rig: Rig) -> dict[str, list[str]]:
    """Per model, the states `llmux_model_state` marks with 1; every series must exist."""
    samples = await rig.metrics()
    shown: dict[str, list[str]] = {}
    for model in ("a", "b"):
        shown[model] = []
        for state in STATES:
            key = ("llmux_model_state", frozenset({"model": model, "state": state}.items()))
            assert key in samples, f"llmux_model_state{{{model}, {state}}} is not exported"
            if samples[key] == 1:
                shown[model].append(state)
    return shown


async def test_metrics_show_who_is_awake_and_zero_failures_from_start_up(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        assert await states_shown(rig) == {"a": ["Sleeping"], "b": ["Sleeping"]}
        samples = await rig.metrics()
        zero = {
            ("llmux_hook_failures_total", frozenset({"model": m, "hook": h}.items()))
            for m in ("a", "b")
            for h in ("wake", "sleep", "alive")
        }
        zero |= {("llmux_model_deaths_total", frozenset({"model": m}.items())) for m in "ab"}
        zero |= {
            ("llmux_switch_total", frozenset({"from": f, "to": t, "result": "failure"}.items()))
            for f, t in [("idle", "a"), ("b", "a"), ("idle", "b"), ("a", "b")]
        }
        zero |= {
            ("llmux_policy_errors_total", frozenset({"policy": "fifo", "where": w}.items()))
            for w in ("on_pending", "on_tick")
        }
        assert {key: samples.get(key) for key in zero} == dict.fromkeys(zero, 0.0)

        assert (await rig.chat("a")).status_code == 200
        assert await states_shown(rig) == {"a": ["Active"], "b": ["Sleeping"]}
        assert (await rig.chat("b")).status_code == 200
        assert await states_shown(rig) == {"a": ["Sleeping"], "b": ["Active"]}


async def test_a_model_adopted_at_start_up_is_shown_awake(tmp_path: Path) -> None:
    async with running(tmp_path, awake_at_start=("b",)) as rig:
        assert await states_shown(rig) == {"a": ["Sleeping"], "b": ["Active"]}
