"""The picture behind `GET /llmux/status` and `llmux status`: every model's state, queue and
last transition, the scheduler's phase and last decision, switch-cost estimates, and the
machines' definitions (so a client draws the same diagram as docs/state-diagram.md)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from llmux.actors import ModelActor, SchedulerActor
from llmux.core.lifecycle import MACHINES, edges
from llmux.observability.journal import Journal


def machine_definitions() -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    for machine in MACHINES:
        states = [str(state.name) for state in machine.states]
        initial = next(str(state.name) for state in machine.states if state.initial)
        definitions[machine.__name__] = {
            "states": states,
            "initial": initial,
            "edges": [list(edge) for edge in sorted(edges(machine))],
        }
    return definitions


def build_status(
    models: Mapping[str, ModelActor],
    scheduler: SchedulerActor,
    journal: Journal,
    now: float,
) -> dict[str, Any]:
    """`now` is trio's clock; times shown to people are wall-clock."""
    wall_offset = time.time() - now
    model_status: dict[str, Any] = {}
    for name, actor in sorted(models.items()):
        model = actor.status(now)
        model_status[name] = {
            "state": model.state,
            "in_flight": model.in_flight,
            "queue_depth": model.queue_depth,
            "oldest_wait_secs": _rounded(model.oldest_wait_secs),
            "time_in_state_secs": round(model.time_in_state_secs, 6),
            "last_transition": journal.last_by_subject.get(name),
            "idle_sleep_secs": actor.config.idle_sleep_secs,
            "max_in_flight": model.max_in_flight,
            "port": actor.config.port,
        }
    picture = scheduler.status()
    for name, entry in model_status.items():
        entry["needs"] = picture.needs.get(name, {})
        entry["persistent"] = name in picture.persistent
    switch = picture.switch
    return {
        "models": model_status,
        "scheduler": {
            "phase": picture.phase,
            "active": picture.active,
            "awake": picture.awake,
            "pinned": picture.pinned,
            "switch": None
            if switch is None
            else {
                "from": switch.from_model,
                "to": switch.to_model,
                "reason": switch.reason,
                "started_at": round(switch.decided_at + wall_offset, 6),
            },
            "switches": [
                {"from": s.from_model, "to": s.to_model, "reason": s.reason}
                for s in picture.switches
            ],
            "last_decision": picture.last_decision,
            "last_transition": journal.last_by_subject.get("scheduler"),
            "policy": picture.policy,
        },
        "resources": [
            {"name": r.name, "used": r.used, "capacity": r.capacity} for r in picture.resources
        ],
        "switch_costs": [
            {"from": source or "idle", "to": target, "estimate_secs": round(estimate, 6)}
            for source, target, estimate in picture.switch_costs
        ],
        "machines": machine_definitions(),
    }


def _rounded(value: float | None) -> float | None:
    return round(value, 6) if value is not None else None
