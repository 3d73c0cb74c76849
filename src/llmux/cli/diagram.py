"""Renders `docs/state-diagram.md` from the state machine classes that run."""

from __future__ import annotations

from statemachine.contrib.diagram import formatter

from llmux.core.lifecycle import MACHINES

HEADER = """# llmux state diagram

Generated from the state machine classes in `src/llmux/core/lifecycle.py` — do not edit by
hand. Regenerate with `llmux diagram > docs/state-diagram.md`; a test fails when this file and
the classes disagree.
"""


def render_markdown() -> str:
    sections = [HEADER]
    for machine in MACHINES:
        doc = (machine.__doc__ or "").strip()
        mermaid = formatter.render(machine, "mermaid").rstrip()
        sections.append(f"## {machine.__name__}\n\n{doc}\n\n```mermaid\n{mermaid}\n```\n")
    return "\n".join(sections)
