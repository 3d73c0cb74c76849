"""The hook log both end-to-end suites keep: `EPOCH.NANOS MODEL wake|sleep start|end|failed`
lines appended by their hook scripts, and the capacity checks read from it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llmux.core.capacity import Capacity


@dataclass(frozen=True)
class HookEvent:
    at: float
    model: str
    action: str  # wake | sleep
    phase: str  # start | end | failed


def read_hook_log(path: Path) -> list[HookEvent]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        at, model, action, phase = line.split()
        events.append(HookEvent(float(at), model, action, phase))
    return events


def single_awake_violations(
    events: Iterable[HookEvent], initially_awake: Iterable[str] = ()
) -> list[str]:
    """From the hook log: a wake never starts while another model may be awake.

    A model may be awake from its wake's start until its sleep has ended (or failed): a wake
    that failed, or was killed, counts as awake until its cleanup sleep is over."""
    awake: set[str] = set(initially_awake)
    last_sleep_end = -math.inf
    problems = []
    for event in events:
        if event.action == "wake" and event.phase == "start":
            if awake:
                problems.append(f"{event.at:.3f}: {event.model} woke while {sorted(awake)} awake")
            if event.at < last_sleep_end:
                problems.append(f"{event.at:.3f}: {event.model} woke before the last sleep ended")
            awake.add(event.model)
        elif event.action == "sleep" and event.phase in ("end", "failed"):
            awake.discard(event.model)
            last_sleep_end = max(last_sleep_end, event.at)
    return problems


def capacity_violations(
    events: Iterable[HookEvent], capacity: Capacity, initially_awake: Iterable[str] = ()
) -> list[str]:
    """From the hook log: a wake never starts unless its needs fit beside what every model
    that may be awake holds (from its wake's start until its sleep has ended or failed)."""
    holding: set[str] = set(initially_awake)
    problems = []
    for event in events:
        if event.action == "wake" and event.phase == "start":
            over = capacity.over([*holding, event.model])
            if over:
                problems.append(
                    f"{event.at:.3f}: {event.model} woke beside {sorted(holding)}: {over}"
                )
            holding.add(event.model)
        elif event.action == "sleep" and event.phase in ("end", "failed"):
            holding.discard(event.model)
    return problems
