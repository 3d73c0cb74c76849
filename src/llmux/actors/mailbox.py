"""The scheduler actor's mailbox, made before either side."""

from __future__ import annotations

import math

import trio

from llmux.core.messages import (
    SchedulerInput,
)


class SchedulerMailbox:
    """The scheduler actor's mailbox, made first and handed to both sides: the model actors
    post their reports into it, the scheduler actor reads it (no wiring after construction)."""

    def __init__(self) -> None:
        self._send, self.receive_channel = trio.open_memory_channel[SchedulerInput](math.inf)

    def post(self, message: SchedulerInput) -> None:
        self._send.send_nowait(message)
