"""The control API behind `/llmux/models/NAME/wake|sleep` and `/llmux/pin|unpin`.

Commands go to the scheduler as messages, exactly like a policy's decisions, so a manual
switch drains first, runs the same hooks and shows up in the same metrics, logs and events.
The HTTP side then waits until the scheduler's picture shows the outcome.
"""

from __future__ import annotations

from typing import Any

import trio

from llmux.actors import SchedulerActor
from llmux.core.messages import ManualSleep, ManualWake, Pin
from llmux.core.model import ACTIVE, SLEEPING
from llmux.core.scheduler import SchedulerCore

Answer = tuple[int, dict[str, Any]]


def _error(status: int, message: str) -> Answer:
    return status, {"error": {"message": message, "type": "llmux_error"}}


def _model_state(core: SchedulerCore, model: str) -> dict[str, Any]:
    return {"model": model, "state": core.views[model].state, "active": core.active}


async def wake(scheduler: SchedulerActor, model: str, wait_secs: float | None) -> Answer:
    core = scheduler.core
    if core.closing:
        return _error(503, "llmux is shutting down")
    if core.pinned is not None and core.pinned != model:
        return _error(409, f"llmux is pinned to {core.pinned}: unpin it first")
    failures = core.wake_failures[model]
    scheduler.post(ManualWake(model))
    if wait_secs == 0:
        return 202, {**_model_state(core, model), "accepted": True}

    def settled(c: SchedulerCore) -> bool:
        woke = c.active == model and c.views[model].state == ACTIVE
        return woke or c.wake_failures[model] > failures

    with trio.move_on_after(wait_secs if wait_secs is not None else float("inf")):
        await scheduler.wait_for(settled)
    if core.wake_failures[model] > failures:
        return _error(500, f"Hook failed for {model}: its wake hook failed (see the logs)")
    if not settled(core):
        return 202, {**_model_state(core, model), "accepted": True, "done": False}
    return 200, _model_state(core, model)


async def sleep(scheduler: SchedulerActor, model: str, wait_secs: float | None) -> Answer:
    core = scheduler.core
    if core.pinned == model:
        return _error(409, f"{model} is pinned: unpin it first")
    scheduler.post(ManualSleep(model))
    if wait_secs == 0:
        return 202, {**_model_state(core, model), "accepted": True}

    def asleep(c: SchedulerCore) -> bool:
        return c.views[model].state == SLEEPING and c.sleep_wanted != model

    with trio.move_on_after(wait_secs if wait_secs is not None else float("inf")):
        await scheduler.wait_for(asleep)
    if not asleep(core):
        return 202, {**_model_state(core, model), "accepted": True, "done": False}
    return 200, _model_state(core, model)


async def pin(scheduler: SchedulerActor, model: str, wait_secs: float | None) -> Answer:
    core = scheduler.core
    if core.closing:
        return _error(503, "llmux is shutting down")
    scheduler.post(Pin(model, "manual pin"))
    await scheduler.wait_for(lambda c: c.pinned == model)
    status, body = await wake(scheduler, model, wait_secs)
    if status >= 400:
        return status, body
    return status, {**body, "pinned": model}


async def unpin(scheduler: SchedulerActor) -> Answer:
    scheduler.post(Pin(None, "manual unpin"))
    await scheduler.wait_for(lambda c: c.pinned is None)
    return 200, {"pinned": None, "active": scheduler.core.active}
