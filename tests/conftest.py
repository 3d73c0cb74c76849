"""Fixtures for every test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _state_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """llmux's default state directory (and so any pid file a hook keeps there) is under
    XDG_STATE_HOME, else ~/.local/state: a test that runs llmux without naming a state_dir
    must not write into the home directory of whoever runs the tests, nor find what an
    earlier run left there. Tests that need their own still set state_dir or
    XDG_STATE_HOME themselves."""
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if saved is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = saved
