"""Messages the cores receive and effects they return, as frozen data.

Every decision in llmux is `core.handle(message, now) -> [effects]`. The trio actors, the
simulator and the property suite all deliver these same messages and perform these same
effects, which is what makes a simulated run and a served run follow the same code.
"""

from __future__ import annotations

import enum

import msgspec


class Hook(enum.StrEnum):
    WAKE = "wake"
    SLEEP = "sleep"
    ALIVE = "alive"


class RejectReason(enum.StrEnum):
    """Why a request was answered with an error instead of being forwarded."""

    TIMEOUT = "timeout"
    HOOK_FAILED = "hook_failed"
    SHUTTING_DOWN = "shutting_down"
    QUEUE_FULL = "queue_full"
    PINNED = "pinned"


# ---- messages to a model actor -------------------------------------------------------------


class Acquire(msgspec.Struct, frozen=True):
    """A client request wants to be forwarded to this model."""

    req_id: int


class Finish(msgspec.Struct, frozen=True):
    """The request is over, whatever happened: response sent, client gone, or refused.

    Sent exactly once per Acquire from a `finally`, so it covers both a granted request
    (releases its in-flight slot) and a queued one (withdraws it).
    """

    req_id: int


class Unreachable(msgspec.Struct, frozen=True):
    """Granted request `req_id` could not connect to the model's backend (nobody listening:
    it crashed, or something else put it to sleep). A health signal: see ModelCore."""

    req_id: int
    detail: str = ""


class Wake(msgspec.Struct, frozen=True):
    cause: str = ""


class Drain(msgspec.Struct, frozen=True):
    cause: str = ""


class Adopt(msgspec.Struct, frozen=True):
    """The model was found already awake at start-up: take it as Active without waking it."""

    cause: str = ""


class SetPin(msgspec.Struct, frozen=True):
    """llmux is pinned to `model` (None: unpinned); any other model refuses requests."""

    model: str | None


class HookDone(msgspec.Struct, frozen=True):
    hook: Hook
    ok: bool
    detail: str = ""


class Tick(msgspec.Struct, frozen=True):
    """Time has passed: expire what is due (request deadlines, scheduler timers)."""


class Shutdown(msgspec.Struct, frozen=True):
    """Refuse queued and future requests; in-flight ones finish normally."""


ModelInput = (
    Acquire | Finish | Unreachable | Wake | Drain | Adopt | SetPin | HookDone | Tick | Shutdown
)


# ---- what a model reports to the scheduler -------------------------------------------------


class ModelReport(msgspec.Struct, frozen=True):
    """A model's externally visible summary; sent whenever it changes."""

    model: str
    state: str
    queue_depth: int
    oldest_arrival: float | None
    in_flight: int
    active_since: float | None
    # How many lifecycle transitions the model had taken: reports cross commands in flight
    # (a report sent just before a Wake was handled still says Sleeping), and this tells
    # the scheduler which reports predate its last command.
    epoch: int = 0
    # Since when an Active model has had nothing in flight and nobody waiting.
    idle_since: float | None = None


class ModelStatus(msgspec.Struct, frozen=True):
    """What a model core reports about itself for the status API (`ModelCore.status`)."""

    state: str
    in_flight: int
    queue_depth: int
    oldest_wait_secs: float | None
    time_in_state_secs: float
    max_in_flight: int | None


class SwitchStatus(msgspec.Struct, frozen=True):
    from_model: str | None
    to_model: str | None
    reason: str
    decided_at: float


class ResourceUsage(msgspec.Struct, frozen=True):
    """One resource: how much the models outside Sleeping hold of its capacity."""

    name: str
    used: float
    capacity: float


class SchedulerStatus(msgspec.Struct, frozen=True):
    """What the scheduler core reports about itself for the status API."""

    phase: str
    # The model woken (or adopted) last that still holds its resources.
    active: str | None
    pinned: str | None
    switch: SwitchStatus | None
    last_decision: str
    policy: str
    # Every switch-cost estimate: (from, to, seconds); from None is a cold start.
    switch_costs: list[tuple[str | None, str, float]]
    # Every model outside Sleeping, in the order they were woken.
    awake: list[str] = []
    resources: list[ResourceUsage] = []
    # What each model holds while not asleep, and which are never evicted to make room.
    needs: dict[str, dict[str, float]] = {}
    persistent: list[str] = []
    # Every switch under way, oldest first (`switch` is the first): several run at once
    # when they touch disjoint resources.
    switches: list[SwitchStatus] = []


# ---- control: an operator's commands, through the same machinery as policy decisions -------


class ManualWake(msgspec.Struct, frozen=True):
    """Make `model` the active one (switching as usual), whether or not anyone waits.

    With `reply_to`, the scheduler answers with CommandReply effects: at once (refused, done
    already, or accepted), then once more when the wake is over (done, failed, cancelled).
    """

    model: str
    cause: str = "manual wake"
    reply_to: int | None = None


class ManualSleep(msgspec.Struct, frozen=True):
    """Put `model` to sleep if it is the active one (drain first, as always); replies as
    ManualWake does."""

    model: str
    cause: str = "manual sleep"
    reply_to: int | None = None


class Pin(msgspec.Struct, frozen=True):
    """Keep `model` awake and refuse requests for any other (None: unpin)."""

    model: str | None
    cause: str = ""
    reply_to: int | None = None


class CommandOutcome(enum.StrEnum):
    ACCEPTED = "accepted"  # under way: a final reply follows
    DONE = "done"
    FAILED = "failed"  # the wake hook failed
    CANCELLED = "cancelled"  # a later command undid it (a sleep of the model being woken)
    SHUTTING_DOWN = "shutting_down"
    PINNED = "pinned"  # refused: llmux is pinned (to another model, or to this one)


SchedulerInput = ModelReport | Tick | Shutdown | ManualWake | ManualSleep | Pin


# ---- effects -------------------------------------------------------------------------------


class Grant(msgspec.Struct, frozen=True):
    """Forward request `req_id` now; it counts as in flight until its Finish."""

    model: str
    req_id: int
    waited: float


class Reject(msgspec.Struct, frozen=True):
    model: str
    req_id: int
    reason: RejectReason
    detail: str
    waited: float


class RunHook(msgspec.Struct, frozen=True):
    model: str
    hook: Hook


class Transition(msgspec.Struct, frozen=True):
    """An edge was taken; the shells turn these into logs, metrics and the journal.

    `machine` names the class ("ModelLifecycle" or "SwitchSequence"), `subject` the model
    (or "scheduler").
    """

    machine: str
    subject: str
    source: str
    target: str
    event: str
    cause: str
    at: float


class SendWake(msgspec.Struct, frozen=True):
    model: str
    cause: str


class SendDrain(msgspec.Struct, frozen=True):
    model: str
    cause: str


class SendPin(msgspec.Struct, frozen=True):
    model: str
    pinned_to: str | None


class SwitchStarted(msgspec.Struct, frozen=True):
    """A switch was decided. `evict`: the models drained and put to sleep to make room (the
    first is `from_model`); () when the target fits beside every awake model."""

    from_model: str | None
    to_model: str
    reason: str
    at: float
    evict: tuple[str, ...] = ()


class ResourcesUsed(msgspec.Struct, frozen=True):
    """What the models outside Sleeping hold changed (a wake reserved, a sleep released)."""

    usage: tuple[ResourceUsage, ...]
    at: float


class SwitchFinished(msgspec.Struct, frozen=True):
    """A switch ended. `duration` is sleep-hook start (or wake start) to activation.

    That span is what the GPU spends not serving, so it is what the cost estimate tracks;
    the drain that precedes it depends on traffic, not on the models, and is reported apart.
    """

    from_model: str | None
    to_model: str
    result: str  # "success" | "failure" | "cancelled"
    duration: float
    drain_duration: float | None
    detail: str
    at: float
    # After a success: the switch-cost estimate (EMA) for this direction, this switch included.
    cost_estimate: float | None = None


class WoundDown(msgspec.Struct, frozen=True):
    """Shutting down, and nothing is awake or under way any more: the server may exit."""

    at: float


class PolicyError(msgspec.Struct, frozen=True):
    """The switch policy raised, or answered something that is not a decision.

    The scheduler contains it: it takes FIFO's decision for that call (switch to the model
    asked about; no switch on a tick), so a bug in a user's policy costs that policy its say
    for one round, never a waiter or the server. `where` is "on_pending" or "on_tick";
    `detail` says what happened in one line ("on_pending returned None, not SwitchNow,
    Defer or Skip", or the exception's type and message).
    """

    policy: str
    where: str
    detail: str
    at: float


class CommandReply(msgspec.Struct, frozen=True):
    """The scheduler's answer to an operator's command sent with `reply_to`: the outcome and
    the picture at that moment, so the shell answers without reading the core."""

    reply_to: int
    outcome: CommandOutcome
    final: bool
    model: str | None
    state: str | None
    active: str | None
    pinned: str | None
    detail: str = ""


class Anomaly(msgspec.Struct, frozen=True):
    """A message that the current state cannot accept. Never expected; logged loudly and
    asserted absent by the property suite."""

    where: str
    detail: str


ModelEffect = Grant | Reject | RunHook | Transition | Anomaly
SchedulerEffect = (
    SendWake
    | SendDrain
    | SendPin
    | SwitchStarted
    | SwitchFinished
    | ResourcesUsed
    | Transition
    | PolicyError
    | CommandReply
    | WoundDown
    | Anomaly
)
