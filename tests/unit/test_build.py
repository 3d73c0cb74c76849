"""One builder from a config to the cores: every field of a model's and of the policy's config
reaches the simulated run (or says why a simulation has no use for it)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from llmux.build import SIMULATED, settings_from_config
from llmux.config import ModelConfig, PolicySettings, parse_config
from llmux.simulate import TraceRequest, simulate

MODEL = {"port": 8101, "wake": "true", "sleep": "true"}
# A value other than the default for every field that becomes a Settings field.
NON_DEFAULT: dict[str, Any] = {
    "models.alive": "true",
    "models.health_interval_secs": 5.0,
    "models.max_queue": 3,
    "models.max_in_flight": 2,
    "models.idle_sleep_secs": 30.0,
    "models.needs": {"gpu0": 16.0},
    "models.persistent": True,
    "policy.request_timeout_secs": 9.0,
    "policy.drain_before_switch": False,
    "policy.min_active_secs": 4.0,
}


def _config(field: str | None = None, value: Any = None) -> Any:
    model = dict(MODEL)
    policy: dict[str, Any] = {}
    if field is not None:
        section, _, name = field.partition(".")
        (model if section == "models" else policy)[name] = value
    if field == "models.health_interval_secs":
        model["alive"] = "true"  # the config refuses health checks without an alive hook
    top: dict[str, Any] = {}
    if field == "models.needs":
        top["resources"] = {"gpu0": 80.0}  # needs draw on declared resources
    return parse_config({"models": {"a": model}, "policy": policy, **top})


def test_every_model_and_policy_field_is_accounted_for() -> None:
    fields = {
        *(f"models.{name}" for name in ModelConfig.__struct_fields__),
        *(f"policy.{name}" for name in PolicySettings.__struct_fields__),
    }
    missing = fields - set(SIMULATED)
    assert not missing, f"say in llmux.build.SIMULATED where these go: {sorted(missing)}"
    assert set(SIMULATED) <= fields, "SIMULATED names a field the config no longer has"


@pytest.mark.parametrize(
    "field", sorted(f for f, where in SIMULATED.items() if where.startswith("Settings."))
)
def test_each_field_reaches_the_settings_the_simulation_runs_on(field: str) -> None:
    target = SIMULATED[field].removeprefix("Settings.")
    baseline = msgspec.structs.asdict(settings_from_config(_config()))
    changed = msgspec.structs.asdict(settings_from_config(_config(field, NON_DEFAULT[field])))
    assert changed[target] != baseline[target], f"{field} does not reach Settings.{target}"


def test_a_simulation_honours_max_queue_and_idle_sleep_from_the_config() -> None:
    # The bug this builder fixed: llmux simulate ignored both.
    model = {**MODEL, "max_queue": 1, "idle_sleep_secs": 5.0}
    config = parse_config({"models": {"a": model, "b": dict(MODEL, port=8102)}})
    settings = settings_from_config(config)
    burst = [TraceRequest(0.0, "a", 1.0), TraceRequest(0.0, "a", 1.0), TraceRequest(0.0, "a", 1.0)]
    (result,) = simulate([*burst, TraceRequest(60.0, "a", 1.0)], "fifo", settings=settings)
    assert result.rejected_by_reason == {"queue_full": 2}  # one may wait; the rest: refused
    # a went to sleep after 5 s idle, so the request at t=60 needed a second wake.
    assert result.switches == 2
