"""Config parsing never fails with anything but a one-line ConfigError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmux.config import Config, ConfigError, load_config, parse_config

KEYS = st.sampled_from(
    [
        "models", "policy", "port", "host", "api_keys", "limits", "shutdown_grace_secs",
        "wake", "sleep", "alive", "type", "request_timeout_secs", "drain_before_switch",
        "min_active_secs", "max_queue", "health_interval_secs", "wake_timeout_secs",
        "max_body_bytes", "max_headers", "a", "b", "",
    ]
)  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text()
JSONISH = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=20,
)
MODEL = st.fixed_dictionaries(
    {"port": st.integers(-5, 70000) | st.text(max_size=3), "wake": st.text(), "sleep": st.text()},
    optional={"alive": JSONISH, "max_queue": JSONISH, "health_interval_secs": JSONISH},
)
NEAR_VALID = st.fixed_dictionaries(
    {"models": st.dictionaries(st.text(max_size=5), MODEL, max_size=3)},
    optional={"policy": st.dictionaries(KEYS, JSONISH, max_size=3), "port": JSONISH},
)


def _parses_or_explains(data: object) -> None:
    try:
        config = parse_config(data)  # type: ignore[arg-type]
    except ConfigError as exc:
        message = str(exc)
        assert message
        assert "\n" not in message
        return
    assert isinstance(config, Config)
    assert config.models


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, JSONISH, max_size=6) | NEAR_VALID)
def test_any_decoded_document_is_a_config_or_a_config_error(data: dict[str, object]) -> None:
    _parses_or_explains(data)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
@given(content=st.binary(max_size=200) | NEAR_VALID.map(lambda d: json.dumps(d).encode()))
def test_any_file_is_a_config_or_a_config_error(
    tmp_path: Path, suffix: str, content: bytes
) -> None:
    path = tmp_path / f"config{suffix}"
    path.write_bytes(content)
    try:
        load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)
