"""docs/state-diagram.md is generated from the machines that run, and must not drift."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from llmux.cli.diagram import render_markdown

ROOT = Path(__file__).parents[2]
CORE = ROOT / "src" / "llmux" / "core"


def test_the_committed_state_diagram_matches_the_machines() -> None:
    committed = (ROOT / "docs" / "state-diagram.md").read_text()
    assert committed == render_markdown(), (
        "docs/state-diagram.md is stale: run `llmux diagram > docs/state-diagram.md`"
    )


def test_llmux_diagram_prints_the_same_document() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "llmux", "diagram"], capture_output=True, text=True, check=True
    ).stdout
    assert printed == render_markdown()


def test_the_diagram_shows_every_lifecycle_state_and_the_failure_edge() -> None:
    text = render_markdown()
    for state in ("Sleeping", "Waking", "Active", "Draining", "SleepingDown"):
        assert f'state "{state}"' in text
    assert "waking --> sleeping_down : Wake failed" in text


# Decisions live in the core, which must stay synchronous and free of I/O so the simulator and
# the property suite can drive it; these modules would let time or the world leak in.
FORBIDDEN = {"trio", "anyio", "asyncio", "socket", "subprocess", "time", "os", "threading", "h11"}


def test_the_core_imports_nothing_that_does_io_or_reads_the_clock() -> None:
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.AsyncFunctionDef):
                offenders.append(f"{path.name}: async def {node.name}")
            offenders += [
                f"{path.name}: {name}" for name in names if name.split(".")[0] in FORBIDDEN
            ]
    assert offenders == []
