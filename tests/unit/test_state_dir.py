"""`state_dir`: where it is, how a config names it, and that every hook is told."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from llmux.config import ConfigError, load_config, parse_config
from llmux.hooks import prepare_state_dir, run_hook

MODELS = {"a": {"port": 8000, "wake": "true", "sleep": "true"}}


def test_the_default_is_under_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert parse_config({"models": MODELS}).state_dir == str(tmp_path / "xdg" / "llmux")


def test_without_xdg_state_home_the_default_is_under_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    expected = str(tmp_path / ".local" / "state" / "llmux")
    assert parse_config({"models": MODELS}).state_dir == expected
    # The XDG spec: a relative XDG_STATE_HOME is invalid and ignored.
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    assert parse_config({"models": MODELS}).state_dir == expected


def test_a_relative_state_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "llmux.json"
    path.write_text(json.dumps({"models": MODELS, "state_dir": "run/state"}))
    assert load_config(path).state_dir == str(tmp_path / "conf" / "run" / "state")


def test_an_absolute_or_home_state_dir_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = parse_config({"models": MODELS, "state_dir": str(tmp_path / "s")}, base_dir="/x")
    assert config.state_dir == str(tmp_path / "s")
    config = parse_config({"models": MODELS, "state_dir": "~/llmux"}, base_dir="/x")
    assert config.state_dir == str(tmp_path / "home" / "llmux")


def test_an_empty_state_dir_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="state_dir"):
        parse_config({"models": MODELS, "state_dir": ""})


def test_the_state_dir_is_created_private_with_its_parents(tmp_path: Path) -> None:
    where = tmp_path / "a" / "b"
    prepare_state_dir(str(where))
    assert where.is_dir()
    assert where.stat().st_mode & 0o077 == 0
    prepare_state_dir(str(where))  # already there: fine


async def test_every_hook_is_told_the_state_dir(tmp_path: Path) -> None:
    outcome = await run_hook(
        'echo "$LLMUX_STATE_DIR" > seen',
        model="a",
        port=8000,
        cwd=str(tmp_path),
        timeout=30,
        state_dir=str(tmp_path / "state"),
    )
    assert outcome.ok, outcome
    seen = await trio.Path(tmp_path / "seen").read_text()
    assert seen == f"{tmp_path / 'state'}{os.linesep}"
