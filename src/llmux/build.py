"""One builder from a config file to the cores' settings, for the server and the simulator.

`llmux run` builds its cores with `llmux.core.world.model_core` / `scheduler_core` from
`settings_from_config(config)`, and `llmux simulate` runs a World on the very same Settings, so
a policy author's simulation makes the server's decisions. `SIMULATED` says where each field
of a model's and the policy's config goes; a test fails when a field is added without
deciding (`tests/unit/test_build.py`).
"""

from __future__ import annotations

from typing import Any

from llmux.config import Config, ModelConfig
from llmux.core.world import Settings

# Config field -> the Settings field it becomes, or why the simulator has no use for it.
SIMULATED: dict[str, str] = {
    "models.port": "not simulated: a World's backends need no address",
    "models.wake": "hooks are scripted in a simulation (llmux simulate --hook-secs)",
    "models.sleep": "hooks are scripted in a simulation (llmux simulate --hook-secs)",
    "models.alive": "Settings.alive_probe",
    "models.engine": "compiled into the wake, sleep and alive hooks (llmux.engines); those "
    "are scripted in a simulation",
    "models.wake_timeout_secs": "hooks are scripted in a simulation: a scripted hook ends on time",
    "models.sleep_timeout_secs": "hooks are scripted in a simulation: a scripted hook ends on time",
    "models.alive_timeout_secs": "hooks are scripted in a simulation: a scripted hook ends on time",
    "models.health_interval_secs": "Settings.health_interval",
    "models.max_queue": "Settings.max_queue",
    "models.max_in_flight": "Settings.max_in_flight",
    "models.idle_sleep_secs": "Settings.idle_sleep",
    "models.needs": "Settings.needs",
    "models.persistent": "Settings.persistent",
    "policy.type": "the policy the simulation runs (or llmux simulate --policy)",
    "policy.request_timeout_secs": "Settings.request_timeout",
    "policy.drain_before_switch": "Settings.drain_before_switch",
    "policy.min_active_secs": "Settings.min_active",
}


def settings_from_config(config: Config) -> Settings:
    """The cores' settings for `config`: the server's, and its simulation's."""
    models = config.models
    policy = config.policy
    return Settings(
        request_timeout=policy.request_timeout_secs,
        drain_before_switch=policy.drain_before_switch,
        min_active=policy.min_active_secs,
        idle_sleep=_per_model(models, lambda m: m.idle_sleep_secs),
        max_in_flight=_per_model(models, lambda m: m.max_in_flight),
        max_queue=_per_model(models, lambda m: m.max_queue),
        health_interval=_per_model(models, lambda m: m.health_interval_secs),
        alive_probe={name: m.alive is not None for name, m in models.items()},
        resources=config.resources,
        needs=None
        if config.resources is None
        else {name: dict(m.needs or {}) for name, m in models.items()},
        persistent=frozenset(name for name, m in models.items() if m.persistent),
    )


def _per_model(models: dict[str, ModelConfig], field: Any) -> dict[str, Any] | None:
    values = {name: field(model) for name, model in models.items()}
    return values if any(v is not None for v in values.values()) else None
