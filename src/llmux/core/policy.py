"""The switch-policy protocol: what a policy sees and what it may answer.

A policy is pure: it gets a context (with `now`) and returns a decision. It never sleeps,
never awaits and never touches a model; the scheduler core turns its decision into a switch
that still obeys `min_active_secs`, draining and the declared capacities (see
`llmux.core.capacity`). So a policy can be wrong about *when* to switch, or about *whom* to
evict, but it cannot break the multiplexer.

The contexts carry what llmux 2.4's `PolicyContext` and `ScheduleContext` carry, in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import msgspec


class WaitingSummary(msgspec.Struct, frozen=True):
    """One model's waiting requests, as `PendingContext.waiting` lists them."""

    queue_depth: int
    # How long its oldest waiting request has waited (s).
    oldest_waiting: float


class ResidentSummary(msgspec.Struct, frozen=True):
    """A model that holds resources (is not Sleeping), as `PendingContext.residents` lists it."""

    state: str
    in_flight: int
    queue_depth: int
    # How long it has been Active (0 if it is not).
    active_duration: float
    # How long it has had nothing in flight or queued (None while busy or not Active).
    idle_secs: float | None
    # Whether it may be evicted now: Active, not pinned, not persistent.
    evictable: bool
    needs: Mapping[str, float] = {}


class PendingContext(msgspec.Struct, frozen=True):
    """Asked for each sleeping model that has queued requests.

    The first eight fields describe the one model asked about. "Active" there means the
    switch's victims: the models the scheduler would evict to make room for the target
    (`evict`, its default choice). `active_model` is the first of them, None when the target
    fits beside every awake model (then waking it disturbs nobody); `active_in_flight` sums
    their requests in flight, `active_duration` is the shortest time any of them has been
    Active, and `estimated_switch_cost` is for the switch from `active_model`. With one model
    awake at a time (no `resources` declared) that is simply the active model.

    The other fields, filled in by the scheduler, give the whole picture of that decision
    round, so that a policy can compare the candidates instead of judging each alone (they
    default to "unknown" for a context built by hand): `waiting` lists every model the
    scheduler will ask about in this round (the target included), `cost_estimates` every
    switch-cost estimate (EMA, seconds) by (from, to) direction, `from` None being a cold
    start (a direction missing there has never been observed), `active_idle_secs` how long
    the victims have all had nothing in flight or queued (None while any is busy, or when
    there is no victim), `evictions` the default victims of every model in `waiting` (()
    for one that fits beside the awake models), `residents` every model that holds
    resources, and `free` what is left of each resource.
    """

    target_model: str
    active_model: str | None
    target_queue_depth: int
    oldest_waiting: float
    active_in_flight: int
    active_duration: float
    estimated_switch_cost: float | None
    now: float
    waiting: Mapping[str, WaitingSummary] = {}
    cost_estimates: Mapping[tuple[str | None, str], float] = {}
    active_idle_secs: float | None = None
    evict: tuple[str, ...] = ()
    evictions: Mapping[str, tuple[str, ...]] = {}
    residents: Mapping[str, ResidentSummary] = {}
    free: Mapping[str, float] = {}


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
    # Every model outside Sleeping (the active one among them).
    awake: tuple[str, ...] = ()


class SwitchNow(msgspec.Struct, frozen=True):
    """Wake the target now, evicting `evict` first (None: the scheduler's default choice,
    `PendingContext.evict`). A list of your own must name only models that may be evicted
    (`ResidentSummary.evictable`) and free enough room; otherwise it counts as a policy error
    and the default choice is taken."""

    reason: str = ""
    evict: tuple[str, ...] | None = None


class Defer(msgspec.Struct, frozen=True):
    """Ask again after `seconds` (or sooner, if anything changes)."""

    seconds: float
    reason: str = ""


class Skip(msgspec.Struct, frozen=True):
    """Not now; ask again when something changes."""

    reason: str = ""


PolicyDecision = SwitchNow | Defer | Skip


class BoundInputs(msgspec.Struct, frozen=True):
    """What a policy's starvation bound may depend on: the deployment and the workload.

    `max_*` are upper limits of the workload (every hook run and every request's service
    time stays within them), not observations. `failure_backoff` is the scheduler's pause
    after a failed wake.
    """

    models: int
    max_wake_secs: float
    max_sleep_secs: float
    max_service_secs: float
    min_active: float = 0.0
    request_timeout: float | None = None
    drain_before_switch: bool = True
    failure_backoff: float = 2.0
    # The models' max_in_flight, if any is set (the smallest). With a limit, a model's queue
    # is granted a few at a time as requests finish, so a wait depends on how many requests
    # are ahead, not only on N and C.
    max_in_flight: int | None = None

    def switch_cycle_secs(self, hold: float = 0.0) -> float:
        """The longest one switch can take once the scheduler has picked its target.

        Keep the active model until it has been up `max(min_active, hold)` seconds (`hold`
        is how long the policy itself keeps it, e.g. a quantum), drain it (at most one
        service time, since nothing is granted once the drain starts; nothing with
        `drain_before_switch` off), run its sleep hook, then the target's wake hook.
        """
        drain = self.max_service_secs if self.drain_before_switch else 0.0
        return max(self.min_active, hold) + drain + self.max_sleep_secs + self.max_wake_secs


@runtime_checkable
class SwitchPolicy(Protocol):
    """Implement this (or subclass `BasePolicy`) to write your own policy.

    `on_pending` is called whenever no switch is in progress and a model other than the
    active one has queued requests, once per such model, oldest waiter first; the first
    `SwitchNow` wins. `on_tick`, if `tick_interval_secs` is set, is called that often and
    may name a model to switch to.

    Optionally, a policy may also define `starvation_bound(inputs: BoundInputs) ->
    float | None` (see `DeclaresStarvationBound`): it is not part of this protocol, so a
    policy without it still loads.
    """

    name: str
    tick_interval_secs: float | None

    def on_pending(self, ctx: PendingContext) -> PolicyDecision: ...

    def on_tick(self, ctx: ScheduleContext) -> str | None: ...


@runtime_checkable
class DeclaresStarvationBound(Protocol):
    """A policy that promises no request waits forever, and says how long is forever.

    `starvation_bound(inputs)` returns B (seconds) such that, under this policy, a request
    still waiting at any instant s (at or after its arrival) is over by s + B: granted,
    rejected (it timed out, or its model failed to wake) or withdrawn by its client, unless
    some hook run fails during (s, s + B]. In particular, with hooks that never fail, no
    request waits longer than B. It must hold whatever else arrives, as long as the
    workload stays within `inputs`. None means "no bound is promised". `llmux.testing`
    checks the promise.
    """

    def starvation_bound(self, inputs: BoundInputs) -> float | None: ...


def starvation_bound(policy: object, inputs: BoundInputs) -> float | None:
    """The bound `policy` declares for `inputs`, or None if it declares none."""
    if not isinstance(policy, DeclaresStarvationBound):
        return None
    return policy.starvation_bound(inputs)


class BasePolicy:
    """Defaults for the optional parts of the protocol."""

    name = "base"
    tick_interval_secs: float | None = None

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return SwitchNow("default")

    def on_tick(self, ctx: ScheduleContext) -> str | None:
        return None

    def starvation_bound(self, inputs: BoundInputs) -> float | None:
        """No promise by default; override it to have `llmux.testing` hold you to one."""
        return None
