"""The two state machines llmux runs, as python-statemachine classes.

These classes are the single source of truth for the edges: the cores drive them (and so
cannot take an edge that is not declared here), `docs/state-diagram.md` is rendered from them,
and the property suite checks every observed transition against `edges()`.

They carry no callbacks: the cores decide what to do around a transition and return effects.
The strict `StateMachine` base raises on an undeclared edge instead of ignoring it.
"""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine


class ModelLifecycle(StateMachine):
    """One model's lifecycle. Driven a few times per switch, never per request."""

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

    # The active model has not been up for min_active_secs yet: wait, keep serving it.
    settle = idle.to(settling)
    # Nothing needs to settle: drain and sleep the active model now.
    retire = idle.to(retiring) | settling.to(retiring)
    # Nothing is awake: wake the target straight away.
    wake = idle.to(waking) | retiring.to(waking)
    # The demand that started the switch went away before anything was disturbed.
    cancel = settling.to(idle)
    # The old model is asleep and nobody is waiting any more: leave the GPU idle.
    retired = retiring.to(idle)
    activated = waking.to(idle)
    wake_failed = waking.to(backoff)
    recovered = backoff.to(idle)


MACHINES: tuple[type[StateMachine], ...] = (ModelLifecycle, SwitchSequence)


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
