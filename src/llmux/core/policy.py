"""The switch-policy protocol: what a policy sees and what it may answer.

A policy is pure: it gets a context (with `now`) and returns a decision. It never sleeps,
never awaits and never touches a model; the scheduler core turns its decision into a switch
that still obeys `min_active_secs`, draining and the single-awake rule. So a policy can be
wrong about *when* to switch, but it cannot break the multiplexer.

The contexts carry what llmux 2.4's `PolicyContext` and `ScheduleContext` carry, in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import msgspec


class PendingContext(msgspec.Struct, frozen=True):
    """Asked for each model that has queued requests while another model (or none) is active."""

    target_model: str
    active_model: str | None
    target_queue_depth: int
    oldest_waiting: float
    active_in_flight: int
    active_duration: float
    estimated_switch_cost: float | None
    now: float


class ScheduleContext(msgspec.Struct, frozen=True):
    """Given to a policy on its periodic tick: the whole picture."""

    active_model: str | None
    active_duration: float
    active_in_flight: int
    queue_depths: Mapping[str, int]
    oldest_waiting: Mapping[str, float]
    # Estimated cost of switching from the active model (or from nothing) to each model;
    # a model missing here has never been observed in that direction.
    switch_costs: Mapping[str, float]
    now: float


class SwitchNow(msgspec.Struct, frozen=True):
    reason: str = ""


class Defer(msgspec.Struct, frozen=True):
    """Ask again after `seconds` (or sooner, if anything changes)."""

    seconds: float
    reason: str = ""


class Skip(msgspec.Struct, frozen=True):
    """Not now; ask again when something changes."""

    reason: str = ""


PolicyDecision = SwitchNow | Defer | Skip


@runtime_checkable
class SwitchPolicy(Protocol):
    """Implement this (or subclass `BasePolicy`) to write your own policy.

    `on_pending` is called whenever no switch is in progress and a model other than the
    active one has queued requests, once per such model, oldest waiter first; the first
    `SwitchNow` wins. `on_tick`, if `tick_interval_secs` is set, is called that often and
    may name a model to switch to.
    """

    name: str
    tick_interval_secs: float | None

    def on_pending(self, ctx: PendingContext) -> PolicyDecision: ...

    def on_tick(self, ctx: ScheduleContext) -> str | None: ...


class BasePolicy:
    """Defaults for the optional parts of the protocol."""

    name = "base"
    tick_interval_secs: float | None = None

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return SwitchNow("default")

    def on_tick(self, ctx: ScheduleContext) -> str | None:
        return None
