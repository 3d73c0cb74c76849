"""The scheduler actor: the scheduler core's mailbox loop, its effects, and the operator's
commands with their replies."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import msgspec
import trio

from llmux.actors.mailbox import SchedulerMailbox
from llmux.actors.model_actor import ModelActor
from llmux.core.messages import (
    Anomaly,
    CommandReply,
    Drain,
    ManualSleep,
    ManualWake,
    Pin,
    PolicyError,
    ResourcesUsed,
    SchedulerInput,
    SchedulerStatus,
    SendDrain,
    SendPin,
    SendWake,
    SetPin,
    Shutdown,
    SwitchFinished,
    SwitchStarted,
    Tick,
    Transition,
    Wake,
    WoundDown,
)
from llmux.core.scheduler import SchedulerCore
from llmux.observability.telemetry import Telemetry

Command = ManualWake | ManualSleep | Pin


class SchedulerActor:
    def __init__(
        self,
        core: SchedulerCore,
        models: Mapping[str, ModelActor],
        *,
        telemetry: Telemetry,
        mailbox: SchedulerMailbox,
    ) -> None:
        self.core = core
        self.models = dict(models)
        self.telemetry = telemetry
        self.mailbox = mailbox
        # Operators' commands waiting for the core's replies, by reply_to.
        self._replies: dict[int, trio.MemorySendChannel[CommandReply]] = {}
        self._reply_ids = itertools.count()
        self.quiet = trio.Event()
        telemetry.resources_used(core.status().resources)
        self._handled = trio.Event()

    def post(self, message: SchedulerInput) -> None:
        self.mailbox.post(message)

    async def run(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            message: SchedulerInput = Tick()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                message = await self.mailbox.receive_channel.receive()
            self._perform(self.core.handle(message, trio.current_time()))
            self._handled.set()
            self._handled = trio.Event()

    @contextlib.contextmanager
    def ask(self, command: Command) -> Iterator[trio.MemoryReceiveChannel[CommandReply]]:
        """Send an operator's command; the core's replies to it arrive on the channel (the
        last one has `final` set). Leaving the block forgets the command's later replies."""
        reply_to = next(self._reply_ids)
        send, receive = trio.open_memory_channel[CommandReply](math.inf)
        self._replies[reply_to] = send
        self.post(msgspec.structs.replace(command, reply_to=reply_to))
        try:
            yield receive
        finally:
            self._replies.pop(reply_to, None)

    def status(self) -> SchedulerStatus:
        return self.core.status()

    async def wait_for(self, condition: Callable[[SchedulerStatus], bool]) -> None:
        """Until the core's report, after it handled some message, satisfies `condition`."""
        while not condition(self.core.status()):
            await self._handled.wait()

    def _perform(self, effects: Sequence[object]) -> None:
        for effect in effects:
            match effect:
                case SendWake(model=model, cause=cause):
                    self.models[model].post(Wake(cause))
                case SendDrain(model=model, cause=cause):
                    self.models[model].post(Drain(cause))
                case SendPin(model=model, pinned_to=pinned_to):
                    self.models[model].post(SetPin(pinned_to))
                case SwitchStarted():
                    self.telemetry.switch_started(effect)
                case SwitchFinished():
                    self.telemetry.switch_finished(effect)
                case ResourcesUsed(usage=usage):
                    self.telemetry.resources_used(usage)
                case WoundDown():
                    self.quiet.set()
                case PolicyError():
                    self.telemetry.policy_error(effect)
                case CommandReply(reply_to=reply_to):
                    channel = self._replies.get(reply_to)
                    if channel is not None:
                        channel.send_nowait(effect)
                case Transition():
                    self.telemetry.transition(effect)
                case Anomaly():
                    self.telemetry.anomaly(effect)

    def shutdown(self) -> None:
        for actor in self.models.values():
            actor.post(Shutdown())
        self.post(Shutdown())
