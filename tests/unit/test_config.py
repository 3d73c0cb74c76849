"""What a user sees when a config file is wrong: one line, naming the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmux.config import ConfigError, check_listen_port, load_config, parse_config

MODEL = {"wake": "true", "sleep": "true"}
ONE_MODEL = {"a": {"port": 8101, **MODEL}}


def write(tmp_path: Path, config: dict[str, Any], name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- unknown policy options ------------------------------------------------------------------


def test_a_misspelt_policy_field_is_named_with_the_field_it_meant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, {"models": ONE_MODEL, "policy": {"min_active_sec": 5}})
    assert load_error(Path("config.json")) == (
        "config.json: policy.min_active_sec: unknown option; did you mean `min_active_secs`? "
        "(a field of `policy`, not an option of FifoPolicy's constructor)"
    )


def test_a_misspelt_constructor_option_suggests_the_constructors_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"models": ONE_MODEL, "policy": {"type": "cost_quantum", "max_wait": 5}})
    assert str(info.value) == (
        "config: policy.max_wait: unknown option; did you mean `max_wait_secs`? "
        "(an option of CostQuantumPolicy's constructor)"
    )


def test_an_option_like_nothing_lists_what_is_valid() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"models": ONE_MODEL, "policy": {"colour": "red"}})
    message = str(info.value)
    assert message.startswith("config: policy.colour: unknown option; ")
    assert "FifoPolicy's constructor takes no options" in message
    assert "min_active_secs" in message


class TakesAnything:
    """A policy whose constructor takes **kwargs: llmux cannot know its options."""

    name = "anything"
    tick_interval_secs = None

    def __init__(self, **options: Any) -> None:
        self.options = options

    def on_pending(self, ctx: Any) -> Any:
        raise NotImplementedError

    def on_tick(self, ctx: Any) -> Any:
        return None


def test_a_constructor_with_kwargs_gets_every_option_as_before() -> None:
    config = parse_config(
        {
            "models": ONE_MODEL,
            "policy": {"type": f"{__name__}:TakesAnything", "min_active_sec": 5},
        }
    )
    assert config.policy_options == {"min_active_sec": 5}


def test_a_real_option_with_a_bad_value_is_still_the_constructors_complaint() -> None:
    with pytest.raises(ConfigError, match=r"policy 'cost_quantum' rejected its options"):
        parse_config({"models": ONE_MODEL, "policy": {"type": "cost_quantum", "max_wait_secs": -1}})


# ---- file formats ----------------------------------------------------------------------------


def test_an_unknown_extension_is_refused_with_the_ones_understood(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": ONE_MODEL}, name="llmux.conf")
    message = load_error(path)
    assert message.startswith(f"{path}: unknown config file extension '.conf'")
    assert ".json" in message and ".yaml/.yml" in message and ".toml" in message


def test_a_file_without_an_extension_is_read_as_json(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": ONE_MODEL}, name="llmux")
    assert list(load_config(path).models) == ["a"]


def test_a_yaml_syntax_error_names_the_file_not_a_byte_string(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("models: [unclosed\n")
    message = load_error(path)
    assert "<byte string>" not in message
    assert message.startswith(f"{path}: not valid YAML: ")
    assert f'in "{path}", line 1' in message
    toml = tmp_path / "config.toml"
    toml.write_text("models = [\n")
    assert load_error(toml).startswith(f"{toml}: not valid TOML: ")


# ---- ports -----------------------------------------------------------------------------------


def test_two_models_on_one_port_are_a_config_error_naming_both(tmp_path: Path) -> None:
    models = {"a": {"port": 8101, **MODEL}, "b": {"port": 8101, **MODEL}}
    path = write(tmp_path, {"models": models})
    assert load_error(path) == f"{path}: models.b.port: 8101 is also models.a.port"


def test_a_model_on_llmuxs_own_port_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": ONE_MODEL, "port": 8101})
    assert load_error(path) == f"{path}: models.a.port: 8101 is also llmux's own `port`"


def test_a_model_on_the_default_port_collides_with_it(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": {"a": {"port": 3000, **MODEL}}})
    assert "models.a.port: 3000 is also llmux's own `port`" in load_error(path)


def test_a_listen_port_override_may_not_be_a_models_port() -> None:
    config = parse_config({"models": {"a": {"port": 8101, **MODEL}, "b": {"port": 8102, **MODEL}}})
    with pytest.raises(ConfigError, match=r"^--port 8102: models\.b\.port is 8102 too$"):
        check_listen_port(config, 8102)
    check_listen_port(config, 3001)
    check_listen_port(config, 0)  # any free port: never a model's


# ---- log_requests ----------------------------------------------------------------------------


def test_request_logs_are_on_unless_the_config_turns_them_off() -> None:
    assert parse_config({"models": ONE_MODEL}).log_requests is True
    assert parse_config({"models": ONE_MODEL, "log_requests": False}).log_requests is False
    with pytest.raises(ConfigError, match="log_requests"):
        parse_config({"models": ONE_MODEL, "log_requests": "no"})


def test_an_engine_block_compiles_into_hooks_and_an_explicit_hook_overrides_its_own() -> None:
    engine = {"type": "llama.cpp", "command": "llama-server --port ${PORT} -m ${MODEL}.gguf"}
    config = parse_config(
        {"models": {"qwen": {"port": 8101, "engine": engine, "sleep": "my-sleep"}}}
    )
    model = config.models["qwen"]
    assert model.wake is not None and model.alive is not None
    assert "llmux.engines.process wake" in model.wake
    assert "'llama-server --port 8101 -m qwen.gguf'" in model.wake
    assert "llmux.engines.process alive --check-path /health" in model.alive
    assert model.sleep == "my-sleep"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"port": 8101, "sleep": "true"}, "models.m.wake: required (a shell command), unless"),
        (
            {"port": 8101, "engine": {"type": "command", "command": "x", "sleep_level": 1}},
            "models.m.engine.sleep_level: a 'command' engine has no sleep levels",
        ),
        ({"port": 8101, "engine": {"type": "vllm", "command": "x"}}, "models.m.engine.type"),
        (
            {"port": 8101, "engine": {"type": "command", "command": "x", "check_path": "h"}},
            "models.m.engine.check_path",
        ),
    ],
)
def test_engine_mistakes_are_one_line_config_errors(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"models": {"m": model}})
    assert message in str(info.value)
