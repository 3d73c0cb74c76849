"""Where llmux keeps state that should outlive a restart (the `state_dir` field)."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> str:
    """`$XDG_STATE_HOME/llmux`, else `~/.local/state/llmux`: where the XDG base directory
    spec puts state that should outlive a restart (a pid file the next llmux reads) but is
    not worth backing up."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    # The spec says to ignore a relative XDG_STATE_HOME.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return str(base / "llmux")


def resolve_state_dir(value: str | None, base_dir: str) -> str:
    """The absolute state directory of a `state_dir` field (None: the default); a relative
    path is relative to the config file's directory, like the hooks' working directory."""
    if value is None:
        return default_state_dir()
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(value)))
