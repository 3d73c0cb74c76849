"""The trio shells around the cores: one actor per model, one for the scheduler, and the
scheduler's mailbox they share (see model_actor for how an actor loop works)."""

from llmux.actors.mailbox import SchedulerMailbox
from llmux.actors.model_actor import ModelActor, Ticket
from llmux.actors.scheduler_actor import Command, SchedulerActor

__all__ = ["Command", "ModelActor", "SchedulerActor", "SchedulerMailbox", "Ticket"]
