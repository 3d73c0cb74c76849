"""A policy module next to the config file loads, for `llmux run` and `llmux simulate` alike,
from any working directory and without PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmux.config import load_config
from llmux.policies import build_policy

# Its on_pending imports a sibling module only when first asked, as a policy may: the
# config's directory must still be on the import path then, not just while loading.
POLICY = """
from llmux.core.policy import BasePolicy, SwitchNow


class Nearby(BasePolicy):
    name = "nearby"

    def __init__(self, patience_secs: float = 0.0) -> None:
        self.patience_secs = patience_secs

    def on_pending(self, ctx):
        import {helper}

        return SwitchNow({helper}.REASON)
"""


@pytest.fixture
def config_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    """A config directory holding a policy module (named after the test, so that no two
    tests share an entry in sys.modules) and a config that names it; and the module's name."""
    module = f"nearby_{request.node.name}".replace("[", "_").replace("]", "_")
    helper = f"{module}_helper"
    directory = tmp_path / "conf"
    directory.mkdir()
    (directory / f"{module}.py").write_text(POLICY.replace("{helper}", helper))
    (directory / f"{helper}.py").write_text('REASON = "asked nearby"\n')
    config = {
        "models": {"a": {"port": 8101, "wake": "true", "sleep": "true"}},
        "policy": {"type": f"{module}:Nearby", "patience_secs": 3},
    }
    (directory / "config.json").write_text(json.dumps(config))
    saved_path = list(sys.path)
    yield directory, module
    sys.path[:] = saved_path
    for name in (module, helper):
        sys.modules.pop(name, None)


def test_load_config_imports_a_policy_module_next_to_the_config(
    config_dir: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, _ = config_dir
    monkeypatch.delenv("PYTHONPATH", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(directory / "config.json")
    assert config.policy_options == {"patience_secs": 3}
    # What the app does when it starts serving: build it again, from the type alone.
    policy = build_policy(config.policy.type, config.policy_options)
    assert policy.name == "nearby"
    assert getattr(policy, "patience_secs", None) == 3


def test_llmux_simulate_imports_a_policy_module_next_to_the_config(
    config_dir: tuple[Path, str], tmp_path: Path
) -> None:
    directory, module = config_dir
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed script, not `python -m`, which would put the working directory first.
    script = Path(sys.executable).parent / "llmux"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "llmux"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            *command,
            "simulate",
            str(directory / "config.json"),
            "--policy",
            f"{module}:Nearby",
            "--profile",
            "single",
            "--duration",
            "5",
            "--json",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    (result,) = report["results"]
    assert result["policy"] == f"{module}:Nearby"
    assert result["served"] == result["requests"] > 0
