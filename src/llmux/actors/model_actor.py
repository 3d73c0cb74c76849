"""The trio shells around the cores: each actor owns a mailbox and one core.

An actor loop only receives messages (or its core's next deadline), hands them to the core
with `now`, and performs the effects. All decisions are in `llmux.core`.

Mailboxes are unbounded so that `send_nowait` never fails: a `Finish` sent from a `finally`
during cancellation must never be lost, and a mailbox is drained as fast as it fills because
handling a message is synchronous and short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from llmux.actors.mailbox import SchedulerMailbox
from llmux.config import ModelConfig
from llmux.core.messages import (
    Acquire,
    Anomaly,
    Finish,
    Grant,
    Hook,
    HookDone,
    ModelInput,
    ModelStatus,
    Reject,
    RunHook,
    Tick,
    Transition,
    Unreachable,
)
from llmux.core.model import ACTIVE, ModelCore
from llmux.hooks import HookRunner
from llmux.observability.telemetry import Telemetry

# How many queued messages an actor handles before it reports to the scheduler: a burst of
# requests to the active model then costs the scheduler one message, not one per request.
BATCH = 512


class Ticket:
    """A request's claim on a model; the model actor answers it exactly once."""

    __slots__ = ("_answered", "outcome", "req_id")

    def __init__(self, req_id: int) -> None:
        self.req_id = req_id
        self.outcome: Grant | Reject | None = None
        self._answered = trio.Event()

    def answer(self, outcome: Grant | Reject) -> None:
        self.outcome = outcome
        self._answered.set()

    async def wait(self) -> Grant | Reject:
        if self.outcome is None:
            await self._answered.wait()
            assert self.outcome is not None
        return self.outcome


# A model actor's mailbox entry: a message (None: only report) and the ticket of an Acquire.
Mail = tuple[ModelInput | None, Ticket | None]


class ModelActor:
    def __init__(
        self,
        core: ModelCore,
        config: ModelConfig,
        *,
        hooks: HookRunner,
        telemetry: Telemetry,
        scheduler: SchedulerMailbox,
    ) -> None:
        self.core = core
        self.name = core.name
        self.config = config
        self.hooks = hooks
        self.telemetry = telemetry
        # A message of None only asks the loop for a report (see `_handle_now`).
        self._send, self._receive = trio.open_memory_channel[Mail](math.inf)
        self._tickets: dict[int, Ticket] = {}
        self.scheduler = scheduler
        # Messages posted and not yet taken by the loop, and the loop's hook nursery while it
        # runs: a request may bypass the mailbox only when the loop runs and nothing is ahead.
        self._unread = 0
        self._hooks: trio.Nursery | None = None
        self._report_asked = False

    # ---- the front end's side ----------------------------------------------------------------

    def acquire(self, req_id: int) -> Ticket:
        ticket = Ticket(req_id)
        # A full model queues the request, which arms a timeout only the loop waits for.
        if self._may_bypass() and self.core.has_room():
            self._tickets[req_id] = ticket
            self._handle_now(Acquire(req_id))
        else:
            self._unread += 1
            self._send.send_nowait((Acquire(req_id), ticket))
        return ticket

    def finish(self, req_id: int) -> None:
        if self._may_bypass():
            self._tickets.pop(req_id, None)
            self._handle_now(Finish(req_id))
        else:
            self.post(Finish(req_id))

    def status(self, now: float) -> ModelStatus:
        return self.core.status(now)

    def unreachable(self, req_id: int, detail: str) -> None:
        """Granted request `req_id` could not connect to the backend (before its Finish)."""
        self.post(Unreachable(req_id, detail))

    def post(self, message: ModelInput) -> None:
        self._unread += 1
        self._send.send_nowait((message, None))

    def _may_bypass(self) -> bool:
        """Whether a request's Acquire or Finish may be handled at once, in the caller's task.

        With an empty mailbox the loop would handle it next, alone, exactly so; handling it
        here saves the request two task switches. Only while Active: there an Acquire is
        answered at once (unless the model is full: `acquire` checks) and neither message adds
        a deadline the loop would have to wait for.
        """
        return self._unread == 0 and self._hooks is not None and self.core.state == ACTIVE

    def _handle_now(self, message: Acquire | Finish) -> None:
        assert self._hooks is not None
        self._perform(self.core.handle(message, trio.current_time()), self._hooks)
        if not self._report_asked:
            # The scheduler still hears of it, from the loop, once for a burst of these.
            self._report_asked = True
            self._send.send_nowait((None, None))

    # ---- the actor ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self.core.epoch == 0:
            # The core has no clock of its own: its first state began when its actor did.
            self.core.state_since = trio.current_time()
        async with trio.open_nursery() as hooks:
            self._hooks = hooks
            try:
                await self._loop(hooks)
            finally:
                self._hooks = None

    async def _loop(self, hooks: trio.Nursery) -> None:
        while True:
            batch = await self._next_batch()
            now = trio.current_time()
            if not batch:
                self._perform(self.core.handle(Tick(), now), hooks)
            for message, ticket in batch:
                if message is None:
                    self._report_asked = False
                    continue
                self._unread -= 1
                if ticket is not None:
                    self._tickets[message.req_id] = ticket  # type: ignore[union-attr]
                elif isinstance(message, Finish):
                    self._tickets.pop(message.req_id, None)
                self._perform(self.core.handle(message, now), hooks)
            report = self.core.report_if_changed()
            if report is not None:
                self.telemetry.model_report(report)
                self.scheduler.post(report)

    async def _next_batch(self) -> list[Mail]:
        deadline = self.core.next_deadline()
        batch: list[Mail] = []
        with trio.move_on_at(deadline if deadline is not None else math.inf):
            batch.append(await self._receive.receive())
        while batch and len(batch) < BATCH:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    def _perform(self, effects: Sequence[object], hooks: trio.Nursery) -> None:
        for effect in effects:
            match effect:
                case Grant(req_id=req_id):
                    ticket = self._tickets.pop(req_id, None)
                    if ticket is not None:
                        ticket.answer(effect)
                    self.telemetry.granted(self.name, effect.waited)
                case Reject(req_id=req_id):
                    ticket = self._tickets.pop(req_id, None)
                    if ticket is not None:
                        ticket.answer(effect)
                    self.telemetry.rejected(effect)
                case RunHook(hook=hook):
                    hooks.start_soon(self._run_hook, hook)
                case Transition():
                    self.telemetry.transition(effect)
                case Anomaly():
                    self.telemetry.anomaly(effect)

    async def _run_hook(self, hook: Hook) -> None:
        outcome = await self.hooks(self.name, hook)
        self.telemetry.hook_finished(self.name, hook, outcome)
        self.post(HookDone(hook, outcome.ok, outcome.detail))
