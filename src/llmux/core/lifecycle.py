"""The two state machines llmux runs, as python-statemachine classes.

These classes are the single source of truth for the edges: the cores drive them (and so
cannot take an edge that is not declared here), `docs/state-diagram.md` is rendered from them,
and the property suite checks every observed transition against `edges()`.

They carry no callbacks: the cores decide what to do around a transition and return effects.

The cores step each machine through its transitions compiled into a table (`Compiled`), in
the manner of h11's `_state.py`, rather than through a python-statemachine instance.
python-statemachine's engine is a full statechart interpreter (event queues, macrosteps,
callback resolution): 0.1-0.2 ms per transition when warm and ~0.8 ms for the first after the
process sat idle, which is what a switch looks like (a hook runs, llmux waits). A switch takes
eight transitions, three of them right after a wait: ~3 ms of a switch's overhead went there.
The table is built from the classes below, so they remain the single source of truth; a
property test checks that the table and a python-statemachine instance agree on every
sequence of events, and an undeclared edge raises as the strict `StateMachine` does.
"""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine


class ModelLifecycle(StateMachine):
    """One model's lifecycle. Taken a few times per switch, never per request."""

    sleeping = State("Sleeping", initial=True)
    waking = State("Waking")
    active = State("Active")
    draining = State("Draining")
    sleeping_down = State("SleepingDown")

    wake = sleeping.to(waking)
    woke = waking.to(active)
    # A failed wake still runs the sleep hook, so a half-woken model never holds the GPU.
    wake_failed = waking.to(sleeping_down)
    drain = active.to(draining)
    # Found awake at start-up (its `alive` hook succeeded): serve it instead of waking another.
    adopt = sleeping.to(active)
    # Its `alive` hook failed while it served: stop admitting, let in-flight requests end,
    # then run the sleep hook as cleanup; waiting requests make the scheduler wake it again.
    died = active.to(draining)
    drained = draining.to(sleeping_down)
    slept = sleeping_down.to(sleeping)
    sleep_failed = sleeping_down.to(sleeping)


class SwitchSequence(StateMachine):
    """The scheduler's progress through one switch."""

    idle = State("Idle", initial=True)
    settling = State("Settling")
    retiring = State("Retiring")
    waking = State("Waking")
    backoff = State("Backoff")

    # A victim has not been up for min_active_secs yet: wait, keep serving it.
    settle = idle.to(settling)
    # Nothing needs to settle: drain and sleep the victims (the models making room) now.
    retire = idle.to(retiring) | settling.to(retiring)
    # The target fits (nothing to evict, or the victims are asleep): wake it.
    wake = idle.to(waking) | retiring.to(waking)
    # The demand that started the switch went away before anything was disturbed.
    cancel = settling.to(idle)
    # The victims are asleep and nobody is waiting any more: wake nothing.
    retired = retiring.to(idle)
    activated = waking.to(idle)
    wake_failed = waking.to(backoff)
    recovered = backoff.to(idle)


MACHINES: tuple[type[StateMachine], ...] = (ModelLifecycle, SwitchSequence)
MODEL_MACHINE = "ModelLifecycle"
SWITCH_MACHINE = "SwitchSequence"


# The names the classes above declare, as constants for the code that steps and observes the
# machines (tests/unit/test_lifecycle.py holds each set to its class).
class ModelState:
    SLEEPING = "Sleeping"
    WAKING = "Waking"
    ACTIVE = "Active"
    DRAINING = "Draining"
    SLEEPING_DOWN = "SleepingDown"


class ModelEvent:
    WAKE = "wake"
    WOKE = "woke"
    WAKE_FAILED = "wake_failed"
    DRAIN = "drain"
    ADOPT = "adopt"
    DIED = "died"
    DRAINED = "drained"
    SLEPT = "slept"
    SLEEP_FAILED = "sleep_failed"


class Phase:
    IDLE = "Idle"
    SETTLING = "Settling"
    RETIRING = "Retiring"
    WAKING = "Waking"
    BACKOFF = "Backoff"


class SwitchEvent:
    SETTLE = "settle"
    RETIRE = "retire"
    WAKE = "wake"
    CANCEL = "cancel"
    RETIRED = "retired"
    ACTIVATED = "activated"
    WAKE_FAILED = "wake_failed"
    RECOVERED = "recovered"


class UndeclaredTransition(ValueError):
    """An event the machine class does not declare for the current state."""


class Compiled:
    """A machine class's transitions as a table: `step(state, event)` is a dict lookup."""

    __slots__ = ("_next", "initial", "machine")

    def __init__(self, machine: type[StateMachine]) -> None:
        self.machine = machine
        (initial,) = (state.name for state in machine.states if state.initial)
        self.initial: str = str(initial)
        self._next: dict[tuple[str, str], str] = {}
        for source, event, target in edges(machine):
            if self._next.setdefault((source, event), target) != target:
                raise ValueError(f"{machine.__name__}: {event} from {source} is ambiguous")

    def step(self, state: str, event: str) -> str:
        """The state `event` leads to from `state`; UndeclaredTransition if none."""
        try:
            return self._next[(state, event)]
        except KeyError:
            raise UndeclaredTransition(
                f"{self.machine.__name__}: no {event!r} transition from {state}"
            ) from None


def edges(machine: type[Any]) -> frozenset[tuple[str, str, str]]:
    """Every declared (source state name, event, target state name) of a machine class."""
    return frozenset(
        (transition.source.name, str(event), transition.target.name)
        for state in machine.states
        for transition in state.transitions
        for event in transition.events
    )


def state_name(machine: StateMachine) -> str:
    """The display name ("SleepingDown") of the machine's current state."""
    (state,) = machine.configuration
    return str(state.name)
