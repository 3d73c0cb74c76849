"""What /metrics and the log show about models and policies, from start-up on.

Telemetry is fed the effects the cores really emit (through the deterministic World), and
read back the way Prometheus reads it: from the rendered exposition text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmux.core.messages import Hook, PolicyError, Transition
from llmux.core.world import HookScript, World
from llmux.observability.logs import LOGGER_NAME
from llmux.observability.metrics import Metrics
from llmux.observability.status import machine_definitions
from llmux.observability.telemetry import MODEL_STATES, Telemetry
from llmux.policies.fifo import FifoPolicy

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def exported_states(metrics: Metrics, models: list[str]) -> dict[str, list[str]]:
    """Per model, the states `llmux_model_state` says it is in (exactly one, if all is well);
    every model x state series must be there."""
    samples = scrape(metrics)
    shown: dict[str, list[str]] = {}
    for model in models:
        shown[model] = []
        for state in MODEL_STATES:
            key = ("llmux_model_state", frozenset({"model": model, "state": state}.items()))
            assert key in samples, f"no llmux_model_state series for {model}/{state}"
            if samples[key] == 1:
                shown[model].append(state)
    return shown


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every record of the llmux logger, whatever `llmux.observability.logs.configure` did
    to it before."""
    logger = logging.getLogger(LOGGER_NAME)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_the_lifecycle_gauge_has_every_state_of_the_machine() -> None:
    assert list(MODEL_STATES) == machine_definitions()["ModelLifecycle"]["states"]


def test_every_model_is_exported_asleep_from_start_up() -> None:
    metrics = Metrics()
    Telemetry(metrics).declare_models(["a", "b"])
    assert exported_states(metrics, ["a", "b"]) == {"a": ["Sleeping"], "b": ["Sleeping"]}


async def test_the_lifecycle_gauge_follows_every_model_through_a_switch() -> None:
    # Async only because the journal, which Telemetry also feeds, reads trio's clock.
    metrics = Metrics()
    telemetry = Telemetry(metrics)
    telemetry.declare_models(["a", "b"])

    def perform(effect: object) -> None:
        if isinstance(effect, Transition):
            telemetry.transition(effect)

    world = World(
        {"a": HookScript(1.0, 0.5), "b": HookScript(2.0, 0.5)}, FifoPolicy(), on_effect=perform
    )
    world.submit("a", at=0.0, service=3.0)
    world.submit("b", at=1.5, service=0.1)
    visited: set[str] = set()
    for step in range(41):
        world.run(until=step * 0.25)
        truth = {name: [core.state] for name, core in world.models.items()}
        assert exported_states(metrics, ["a", "b"]) == truth, f"at t={world.now}"
        visited.update(core.state for core in world.models.values())
    # The switch went through every state, so each was checked at least once.
    assert visited == set(MODEL_STATES)
    assert exported_states(metrics, ["a", "b"]) == {"a": ["Sleeping"], "b": ["Active"]}


def test_failure_counters_are_exported_at_zero_from_start_up() -> None:
    metrics = Metrics()
    Telemetry(metrics).declare_models(["a", "b"], policy="fifo")
    samples = scrape(metrics)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    for model in ("a", "b"):
        for hook in Hook:
            assert value("llmux_hook_failures_total", model=model, hook=hook.value) == 0
        assert value("llmux_model_deaths_total", model=model) == 0
    # A switch fails in its wake: into each model, cold or from the other one.
    for source, target in [("idle", "a"), ("b", "a"), ("idle", "b"), ("a", "b")]:
        labels = {"from": source, "to": target, "result": "failure"}
        assert value("llmux_switch_total", **labels) == 0, labels
    assert value("llmux_switch_total", **{"from": "a", "to": "a", "result": "failure"}) is None
    for where in ("on_pending", "on_tick"):
        assert value("llmux_policy_errors_total", policy="fifo", where=where) == 0


def test_a_policy_error_is_logged_as_an_error_and_counted(
    records: list[logging.LogRecord],
) -> None:
    metrics = Metrics()
    telemetry = Telemetry(metrics)
    detail = "on_pending returned None, not SwitchNow, Defer or Skip"
    telemetry.policy_error(PolicyError("mine", "on_pending", detail, at=3.0))
    telemetry.policy_error(PolicyError("mine", "on_pending", "ZeroDivisionError: x", at=4.0))
    telemetry.policy_error(PolicyError("mine", "on_tick", "KeyError: 'c'", at=5.0))

    samples = scrape(metrics)
    pending = (
        "llmux_policy_errors_total",
        frozenset({"policy": "mine", "where": "on_pending"}.items()),
    )
    tick = ("llmux_policy_errors_total", frozenset({"policy": "mine", "where": "on_tick"}.items()))
    assert (samples.get(pending), samples.get(tick)) == (2, 1)

    logged = [r for r in records if getattr(r, "event", None) == "policy_error"]
    assert [r.levelno for r in logged] == [logging.ERROR] * 3
    assert getattr(logged[0], "fields", None) == {
        "policy": "mine",
        "where": "on_pending",
        "detail": detail,
    }
    assert "mine" in logged[0].getMessage() and detail in logged[0].getMessage()
