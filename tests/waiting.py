"""Waiting on a condition, for the tests that watch llmux from the outside.

A test that sleeps "long enough" for something to happen fails on a loaded machine and wastes
time on an idle one. Instead it names the condition it waits for and a deadline: the wait ends
as soon as the condition holds, and only a condition that never holds fails the test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

# Generous: the suites share two cores with other jobs, and a deadline only costs time when
# the condition never holds (the test then fails anyway).
DEFAULT_TIMEOUT = 10.0
# Short next to the hooks and requests the tests wait for, long enough not to spin.
DEFAULT_INTERVAL = 0.02


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - a deadline the failure message names
    interval: float = DEFAULT_INTERVAL,
    what: str | Callable[[], str] = "the condition",
) -> None:
    """Return once `predicate()` (plain or async) is true; fail the test after `timeout`.

    `what` says what was awaited in the failure message; a callable is asked only then, so it
    can report the state that did not match."""
    with trio.move_on_after(timeout):
        while True:
            holds = predicate()
            if not isinstance(holds, bool):
                holds = await holds
            if holds:
                return
            # Polling is the only way to see state that other processes (hooks, llmux as a
            # subprocess) or other tasks change without telling us.
            await trio.sleep(interval)
    description = what() if callable(what) else what
    raise AssertionError(f"not within {timeout:g} s: {description}")
