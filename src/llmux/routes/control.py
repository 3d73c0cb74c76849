"""The control API behind `/llmux/models/NAME/wake|sleep` and `/llmux/pin|unpin`.

Commands go to the scheduler as messages, exactly like a policy's decisions, so a manual
switch drains first, runs the same hooks and shows up in the same metrics, logs and events.
The scheduler core decides the outcome (refused, accepted, done, failed) and replies; this
module only waits for the reply and says it in HTTP (refusals through llmux.errors).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec
import trio

from llmux.actors import Command, SchedulerActor
from llmux.core.messages import CommandOutcome, CommandReply, ManualSleep, ManualWake, Pin
from llmux.errors import ErrorKind, LlmuxError
from llmux.http.connection import HttpConnection
from llmux.routes.proxy import extract_model

Answer = tuple[int, dict[str, Any]]

# A final reply that is a refusal or a failure, as the error it becomes.
_REFUSALS = {
    CommandOutcome.SHUTTING_DOWN: ErrorKind.SHUTTING_DOWN,
    CommandOutcome.PINNED: ErrorKind.CONFLICT,
    CommandOutcome.FAILED: ErrorKind.HOOK_FAILED,
}


def _picture(reply: CommandReply) -> dict[str, Any]:
    return {"model": reply.model, "state": reply.state, "active": reply.active}


async def _command(scheduler: SchedulerActor, command: Command, wait_secs: float | None) -> Answer:
    """200 once done, 202 if still under way when `wait_secs` ran out (0: at once)."""
    with scheduler.ask(command) as replies:
        reply = await replies.receive()
        if not reply.final and wait_secs != 0:
            with trio.move_on_after(wait_secs if wait_secs is not None else float("inf")):
                reply = await replies.receive()
    kind = _REFUSALS.get(reply.outcome)
    if kind is not None:
        raise LlmuxError(kind, reply.detail)
    if not reply.final:
        done = {} if wait_secs == 0 else {"done": False}
        return 202, {**_picture(reply), "accepted": True, **done}
    if reply.outcome is CommandOutcome.CANCELLED:
        return 200, {**_picture(reply), "cancelled": True}
    return 200, _picture(reply)


async def wake(scheduler: SchedulerActor, model: str, wait_secs: float | None) -> Answer:
    return await _command(scheduler, ManualWake(model), wait_secs)


async def sleep(scheduler: SchedulerActor, model: str, wait_secs: float | None) -> Answer:
    return await _command(scheduler, ManualSleep(model), wait_secs)


async def pin(scheduler: SchedulerActor, model: str, wait_secs: float | None) -> Answer:
    await _command(scheduler, Pin(model, "manual pin"), None)
    status, body = await wake(scheduler, model, wait_secs)
    return status, {**body, "pinned": model}


async def unpin(scheduler: SchedulerActor) -> Answer:
    with scheduler.ask(Pin(None, "manual unpin")) as replies:
        reply = await replies.receive()
    return 200, {"pinned": None, "active": reply.active}


async def handle(
    conn: HttpConnection,
    method: bytes,
    target: bytes,
    route: list[str],
    body: bytes,
    *,
    models: Collection[str],
    scheduler: SchedulerActor,
) -> bool:
    """Answer `/llmux/models/NAME/wake|sleep`, `/llmux/pin` and `/llmux/unpin` (`route` is
    the path after /llmux/, split); False if `route` is none of them."""
    if len(route) == 3 and route[0] == "models" and route[2] in ("wake", "sleep"):
        if method != b"POST":
            why = f"Use POST for /llmux/models/NAME/{route[2]}"
            raise LlmuxError(ErrorKind.METHOD_NOT_ALLOWED, why)
        command = wake if route[2] == "wake" else sleep
        answer = await command(scheduler, _known(route[1], models), _wait_secs(target))
    elif route == ["pin"] and method == b"POST":
        answer = await pin(scheduler, _known(extract_model(body), models), _wait_secs(target))
    elif route == ["unpin"] and method == b"POST":
        answer = await unpin(scheduler)
    else:
        return False
    await conn.respond(answer[0], msgspec.json.encode(answer[1]))
    return True


def _known(model: str, models: Collection[str]) -> str:
    if model not in models:
        raise LlmuxError(ErrorKind.MODEL_NOT_FOUND, f"Model not found: {model}")
    return model


def _wait_secs(target: bytes) -> float | None:
    """`?wait=SECONDS` (0: answer at once); by default wait until done."""
    query = target.partition(b"?")[2]
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"wait":
            try:
                return max(0.0, float(value))
            except ValueError:
                raise LlmuxError(
                    ErrorKind.BAD_REQUEST, "`wait` must be a number of seconds"
                ) from None
    return None
