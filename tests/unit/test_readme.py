"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]


def _indented_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = ROOT / "README.md"
    first_screen = readme.read_text().split("---", 1)[0]
    commands = [c for c in _indented_commands(first_screen) if c.startswith("python3 -m venv")]
    assert len(commands) == 2, "the README's first screen gives exactly two set-up commands"
    install_and_run, run_tests = commands
    assert install_and_run.endswith("llmux run examples/config.json")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert run_tests in ci_lines


def test_every_config_in_the_readme_is_a_valid_config() -> None:
    import json
    import re

    from llmux.config import parse_config

    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    configs = [json.loads(block) for block in blocks if '"models"' in block]
    assert len(configs) >= 2
    for config in configs:
        parse_config(config)
