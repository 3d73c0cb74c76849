"""SchedulerCore: decides when to switch and whom to evict, and sequences the switch, as pure code.

It sees the models only through their `ModelReport`s and acts on them only through
`SendDrain`/`SendWake` effects, so it holds the one rule no policy can break: a model is
woken only when its needs fit beside what every model outside Sleeping holds, for every
declared resource (`llmux.core.capacity`; without declared resources, one model at a time).

A switch to B: choose the victims that must make room (none if B fits beside the awake
models) -> (settle until each has been active `min_active`) -> drain them -> their sleep hooks
-> B's wake hook -> B active. Models that are not victims keep serving throughout: the
scheduler never touches them. Switches that touch disjoint resources run at once (two GPUs,
two wakes); those that contend run in order, oldest waiter first. If, once the victims are asleep,
nobody waits for B any more, B is not woken: the policy is asked afresh instead (llmux 2.4
woke B anyway, then switched back).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import msgspec

from llmux.core import consult
from llmux.core.capacity import Capacity
from llmux.core.cost import SwitchCostTracker
from llmux.core.lifecycle import SWITCH_MACHINE, Compiled, Phase, SwitchEvent, SwitchSequence
from llmux.core.messages import (
    Anomaly,
    CommandOutcome,
    CommandReply,
    ManualSleep,
    ManualWake,
    ModelReport,
    Pin,
    ResourcesUsed,
    ResourceUsage,
    SchedulerEffect,
    SchedulerInput,
    SchedulerStatus,
    SendDrain,
    SendPin,
    SendWake,
    Shutdown,
    SwitchFinished,
    SwitchStarted,
    SwitchStatus,
    Tick,
    Transition,
    WoundDown,
)
from llmux.core.model import ACTIVE, DRAINING, SLEEPING, SLEEPING_DOWN, WAKING
from llmux.core.policy import (
    Defer,
    PendingContext,
    ResidentSummary,
    ScheduleContext,
    SwitchNow,
    SwitchPolicy,
    WaitingSummary,
)

SCHEDULER = "scheduler"
SEQUENCE = Compiled(SwitchSequence)
FAILURE_BACKOFF_SECS = 2.0
# A victim's restore cost before its wake was ever observed (only the order matters).
_UNKNOWN_RESTORE_SECS = 1.0


class SwitchRecord(msgspec.Struct):
    # The models put to sleep to make room (or, without a target, just put to sleep).
    victims: tuple[str, ...]
    # None: only put the victims to sleep (idle, manual sleep, shutdown), wake nothing.
    to_model: str | None
    reason: str
    decided_at: float
    drain_started_at: float | None = None
    sleep_started_at: float | None = None
    wake_started_at: float | None = None
    # Where this switch is in the SwitchSequence machine, and until when it settles.
    phase: str = Phase.IDLE
    settle_until: float = math.inf

    @property
    def from_model(self) -> str | None:
        """The first victim: the direction the switch-cost estimate is kept for."""
        return self.victims[0] if self.victims else None


class SchedulerCore:
    def __init__(
        self,
        models: Sequence[str],
        policy: SwitchPolicy,
        *,
        min_active: float = 0.0,
        failure_backoff: float = FAILURE_BACKOFF_SECS,
        costs: SwitchCostTracker | None = None,
        idle_sleep: Mapping[str, float | None] | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self.policy = policy
        self.capacity = capacity if capacity is not None else Capacity.single(models)
        # Per model: put it to sleep after this long active with nothing to do.
        self.idle_sleep = dict(idle_sleep or {})
        self.min_active = min_active
        self.failure_backoff = failure_backoff
        self.costs = costs if costs is not None else SwitchCostTracker()
        self.views: dict[str, ModelReport] = {
            name: ModelReport(name, SLEEPING, 0, None, 0, None) for name in models
        }
        # The switches under way, oldest first. Several run at once when they touch
        # disjoint resources (two GPUs, two wakes); a failed wake's stays, in Backoff, until
        # its cleanup sleep is over.
        self.switches: list[SwitchRecord] = []
        self.last_decision = "none yet"
        self._demand: set[str] = set()
        # Models that became Active (woken or adopted) and are not asleep again, oldest
        # first: the last is the one status calls "active".
        self._woken: list[str] = []
        self._usage: tuple[ResourceUsage, ...] = self._usage_now()
        # Per model, the first epoch that reflects our last command to it (see ModelReport).
        self._commanded_epoch: dict[str, int] = dict.fromkeys(models, 0)
        # Per model whose wake failed: no new wake of it before this time. Only that model
        # waits; the others are switched to as soon as the failed one is asleep again.
        self._retry_at: dict[str, float] = {}
        self._recheck_at = math.inf
        self._next_tick_at: float | None = None
        self.closing = False
        self._wound_down = False  # WoundDown was announced
        # Operators' wishes (manual wakes, the preload list), in order: make these models
        # active, whoever waits (each cleared once it is).
        self.manual_targets: list[str] = []
        # While set, this model is never evicted, and other models refuse requests.
        self.pinned: str | None = None
        # An operator asked for this model to be put to sleep (done when no switch runs).
        self.sleep_wanted: str | None = None
        # Operators' commands still under way, by model: the reply_to of each, answered
        # when the wake (or sleep) is over.
        self._wake_waiters: dict[str, list[int]] = {}
        self._sleep_waiters: dict[str, list[int]] = {}

    # ---- queries ---------------------------------------------------------------------------

    @property
    def active(self) -> str | None:
        """The model woken (or adopted) last that still holds its resources."""
        return self._woken[-1] if self._woken else None

    @property
    def switch(self) -> SwitchRecord | None:
        """The oldest switch under way (None if none)."""
        return self.switches[0] if self.switches else None

    @property
    def phase(self) -> str:
        """The oldest switch's phase; Idle when none runs."""
        return self.switches[0].phase if self.switches else SEQUENCE.initial

    def next_deadline(self) -> float | None:
        """When this core next wants a Tick."""
        deadline = min(
            (s.settle_until for s in self.switches if s.phase == Phase.SETTLING),
            default=math.inf,
        )
        # An idle sleep that must wait for a switch under way is asked for when it ends (a
        # report comes then), not at its past deadline, again and again.
        idle = next(
            (at for at, name in self._idle_deadlines() if self._free_to_start(name, (name,))),
            math.inf,
        )
        deadline = min(deadline, self._recheck_at, idle, self._next_retry())
        if self._next_tick_at is not None and not self.switches:
            deadline = min(deadline, self._next_tick_at)
        return deadline if deadline < math.inf else None

    def status(self) -> SchedulerStatus:
        switches = [
            SwitchStatus(s.from_model, s.to_model, s.reason, s.decided_at) for s in self.switches
        ]
        return SchedulerStatus(
            phase=self.phase,
            active=self.active,
            pinned=self.pinned,
            switch=switches[0] if switches else None,
            last_decision=self.last_decision,
            policy=consult.policy_name(self.policy),
            switch_costs=[(s, t, estimate) for (s, t), estimate in self.costs.items()],
            awake=self._awake_in_order(),
            resources=list(self._usage),
            needs={name: dict(self.capacity.needs_of(name)) for name in self.views},
            persistent=sorted(self.capacity.persistent),
            switches=switches,
        )

    def awake(self) -> list[str]:
        """The models outside Sleeping: they hold their needs."""
        return [name for name, view in self.views.items() if view.state != SLEEPING]

    def is_quiet(self) -> bool:
        """Every model is asleep and no switch is under way."""
        return all(s.phase == Phase.BACKOFF for s in self.switches) and not self.awake()

    def _awake_in_order(self) -> list[str]:
        return [*self._woken, *(name for name in self.awake() if name not in self._woken)]

    def _usage_now(self) -> tuple[ResourceUsage, ...]:
        used = self.capacity.used(self.awake())
        return tuple(
            ResourceUsage(name, used.get(name, 0.0), capacity)
            for name, capacity in self.capacity.resources.items()
        )

    # ---- the one entry point ----------------------------------------------------------------

    def handle(self, message: SchedulerInput, now: float) -> list[SchedulerEffect]:
        effects: list[SchedulerEffect] = []
        match message:
            case ModelReport():
                self._observe(message, now, effects)
            case Tick():
                pass
            case Shutdown():
                self.closing = True
                for model in list(self._wake_waiters):
                    self._answer_wake(model, CommandOutcome.SHUTTING_DOWN, effects)
            case ManualWake():
                self._manual_wake(message, effects)
            case ManualSleep():
                self._manual_sleep(message, effects)
            case Pin():
                self._pin(message, effects)
            case _:
                raise TypeError(f"not a scheduler message: {message!r}")
        self._advance(now, effects)
        if self._sleep_waiters:
            self._answer_sleeps(effects)
        if self.closing and not self._wound_down and self.is_quiet():
            self._wound_down = True
            effects.append(WoundDown(now))
        return effects

    # ---- following the models --------------------------------------------------------------

    def _observe(self, report: ModelReport, now: float, effects: list[SchedulerEffect]) -> None:
        if report.model not in self.views:
            effects.append(Anomaly(SCHEDULER, f"report from unknown model {report.model!r}"))
            return
        if report.epoch < self._commanded_epoch[report.model]:
            # Sent before the model handled our last command: its queue figures are news,
            # its lifecycle state is not (we already know what we told it to do).
            previous = self.views[report.model]
            report = msgspec.structs.replace(
                report,
                state=previous.state,
                active_since=previous.active_since,
                epoch=previous.epoch,
            )
        self._set_view(report, now, effects)
        if report.queue_depth:
            self._demand.add(report.model)
        else:
            self._demand.discard(report.model)

        for switch in list(self.switches):
            if switch.phase == Phase.RETIRING and report.model in switch.victims:
                if report.state in (SLEEPING_DOWN, SLEEPING) and switch.sleep_started_at is None:
                    switch.sleep_started_at = now
                self._check_retired(switch, now, effects)
            elif switch.phase == Phase.WAKING and report.model == switch.to_model:
                if report.state == ACTIVE:
                    self._activated(switch, report, now, effects)
                elif report.state != WAKING:
                    self._wake_failed(switch, now, effects)

    def _set_view(self, view: ModelReport, now: float, effects: list[SchedulerEffect]) -> None:
        """Record a model's state (reported, or commanded), and what changes with it: the
        woken order, unprompted moves (adoption, leaving service) and the resources held."""
        name = view.model
        before = self.views[name].state
        self.views[name] = view
        if view.state == before:
            return
        if view.state == ACTIVE and name not in self._woken:
            self._woken.append(name)
            if all(s.to_model != name for s in self.switches):
                self.last_decision = f"adopted {name}: found awake at start-up"
        elif view.state == SLEEPING and name in self._woken:
            self._woken.remove(name)
            if all(name not in s.victims for s in self.switches):
                self.last_decision = f"{name} left service on its own"
        if (before == SLEEPING) != (view.state == SLEEPING):
            usage = self._usage_now()
            if usage != self._usage:
                self._usage = usage
                effects.append(ResourcesUsed(usage, now))

    def _check_retired(
        self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]
    ) -> None:
        if all(self.views[victim].state == SLEEPING for victim in switch.victims):
            self._after_retire(switch, now, effects)

    def _after_retire(
        self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]
    ) -> None:
        victims = ", ".join(switch.victims)
        if switch.to_model is None:
            self._take(
                switch, SwitchEvent.RETIRED, f"{victims} asleep: {switch.reason}", now, effects
            )
            self._end(switch)
            return
        if self._wanted(switch.to_model) and not self.closing:
            self._wake(switch, now, effects)
            return
        self._take(
            switch,
            SwitchEvent.RETIRED,
            f"nobody waits for {switch.to_model} any more",
            now,
            effects,
        )
        effects.append(
            SwitchFinished(
                switch.from_model,
                switch.to_model,
                "cancelled",
                0.0,
                self._drain_duration(switch),
                "the requests that asked for the switch went away",
                now,
            )
        )
        self._end(switch)

    def _activated(
        self,
        switch: SwitchRecord,
        report: ModelReport,
        now: float,
        effects: list[SchedulerEffect],
    ) -> None:
        target = _target(switch)
        started = _cost_clock_start(switch)
        duration = now - started
        self.costs.observe(switch.from_model, target, duration)
        if target in self.manual_targets:
            self.manual_targets.remove(target)
        self._take(switch, SwitchEvent.ACTIVATED, f"{target} is active", now, effects)
        self._answer_wake(target, CommandOutcome.DONE, effects)
        effects.append(
            SwitchFinished(
                switch.from_model,
                target,
                "success",
                duration,
                self._drain_duration(switch),
                "",
                now,
                self.costs.estimate(switch.from_model, target),
            )
        )
        self._end(switch)

    def _wake_failed(
        self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]
    ) -> None:
        target = _target(switch)
        started = _cost_clock_start(switch)
        self._retry_at[target] = now + self.failure_backoff
        if target in self.manual_targets:
            self.manual_targets.remove(target)  # reported to the operator; not retried forever
        # The switch stays, in Backoff, until the target's cleanup sleep is over: the target
        # holds its needs until then.
        self._take(switch, SwitchEvent.WAKE_FAILED, f"{target} failed to wake", now, effects)
        detail = f"Hook failed for {target}: its wake hook failed (see the logs)"
        self._answer_wake(target, CommandOutcome.FAILED, effects, detail)
        effects.append(
            SwitchFinished(
                switch.from_model,
                target,
                "failure",
                now - started,
                self._drain_duration(switch),
                "wake hook failed",
                now,
            )
        )

    @staticmethod
    def _drain_duration(switch: SwitchRecord) -> float | None:
        if switch.drain_started_at is None or switch.sleep_started_at is None:
            return None
        return switch.sleep_started_at - switch.drain_started_at

    # ---- deciding --------------------------------------------------------------------------

    def _advance(self, now: float, effects: list[SchedulerEffect]) -> None:
        if self._retry_at:
            # Forget backoffs that are over, so next_deadline never asks for a past time.
            self._retry_at = {m: at for m, at in self._retry_at.items() if at > now}
        for switch in [s for s in self.switches if s.phase == Phase.BACKOFF]:
            self._end_backoff(switch, now, effects)
        if self.closing:
            self._wind_down(now, effects)
            return
        for switch in [s for s in self.switches if s.phase == Phase.SETTLING]:
            if now < switch.settle_until:
                continue
            switch.settle_until = math.inf
            if self._wanted(switch.to_model):
                self._retire(switch, now, effects)
            else:
                cause = f"nobody waits for {switch.to_model} any more"
                self._take(switch, SwitchEvent.CANCEL, cause, now, effects)
                self._end(switch)
        self._decide(now, effects)

    def _end_backoff(
        self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]
    ) -> None:
        """Backoff ends once the failed model's cleanup sleep is done (it holds its needs
        until then). Its own retry waits `failure_backoff` (`_retry_at`); requests for the
        other models do not."""
        failed = _target(switch)
        if self.views[failed].state == SLEEPING:
            cause = f"{failed} is asleep after its failed wake"
            self._take(switch, SwitchEvent.RECOVERED, cause, now, effects)
            self._end(switch)

    def _backing_off(self, model: str, now: float) -> bool:
        """Whether `model` failed to wake less than `failure_backoff` ago."""
        return self._retry_at.get(model, -math.inf) > now

    def _next_retry(self) -> float:
        """When a model that is wanted but backing off may be woken again."""
        return min(
            (at for model, at in self._retry_at.items() if self._wanted(model)),
            default=math.inf,
        )

    def _wind_down(self, now: float, effects: list[SchedulerEffect]) -> None:
        """Shutting down: start nothing, and put every awake model to sleep once idle."""
        for switch in list(self.switches):
            if switch.phase == Phase.SETTLING:
                switch.to_model = None
                switch.settle_until = math.inf
                self._retire(switch, now, effects)
            elif switch.phase == Phase.RETIRING:
                switch.to_model = None
        involved = {m for s in self.switches for m in (*s.victims, s.to_model)}
        left = tuple(m for m in self._awake_in_order() if m not in involved)
        if left:
            self._sleep_only(left, "shutting down", now, effects)

    def _sleep_only(
        self, models: tuple[str, ...], reason: str, now: float, effects: list[SchedulerEffect]
    ) -> None:
        """Put `models` to sleep and wake nothing."""
        switch = SwitchRecord(models, None, reason, now)
        self.switches.append(switch)
        self._retire(switch, now, effects)

    def _idle_deadlines(self) -> list[tuple[float, str]]:
        """When each Active model (not pinned) reaches its idle_sleep_secs, soonest first."""
        deadlines = []
        for name in self._woken:
            idle = self.idle_sleep.get(name)
            view = self.views[name]
            if idle is None or view.idle_since is None or view.state != ACTIVE:
                continue
            if name != self.pinned:
                deadlines.append((view.idle_since + idle, name))
        return sorted(deadlines)

    def _wanted(self, model: str | None) -> bool:
        return model is not None and (
            model in self._demand or model in self.manual_targets or model == self.pinned
        )

    def _decide(self, now: float, effects: list[SchedulerEffect]) -> None:
        """Start whatever may start now. A switch may run beside the ones under way only
        when it touches none of their resources (`_touches`)."""
        self._recheck_at = math.inf
        model = self.sleep_wanted
        if model is not None and self.views[model].state != ACTIVE:
            self.sleep_wanted = None
        elif model is not None and self._free_to_start(model, (model,)):
            self.sleep_wanted = None
            self.last_decision = f"sleep {model}: manual sleep"
            self._sleep_only((model,), self.last_decision, now, effects)
        if self._operator_targets(now, effects):
            return  # an operator's choice overrides the policy
        for deadline, idle_model in self._idle_deadlines():
            if deadline <= now and self._free_to_start(idle_model, (idle_model,)):
                idle = self.idle_sleep[idle_model]
                self.last_decision = f"sleep {idle_model}: idle for {idle:g}s"
                self._sleep_only((idle_model,), self.last_decision, now, effects)
        while self._consult_policy(now, effects):
            pass  # each round starts one switch; the next sees it under way
        if not self.switches:
            self._maybe_tick(now, effects)

    def _operator_targets(self, now: float, effects: list[SchedulerEffect]) -> bool:
        """Start the switches to the pinned model, or to the manual targets not active yet,
        in order, as far as they may start now. True while any of them is still to be made
        active (or llmux is pinned): the policy has no say until then."""
        targets = [self.pinned] if self.pinned is not None else list(self.manual_targets)
        pending = self.pinned is not None
        for target in targets:
            state = self.views[target].state
            if state == ACTIVE:
                if target in self.manual_targets:
                    self.manual_targets.remove(target)
                continue
            pending = True
            if state != SLEEPING or self._backing_off(target, now):
                continue  # retried when it is asleep, or its backoff over (next_deadline)
            if not self._free_to_start(target, ()):
                break  # in order: a later target does not overtake an earlier one
            victims = self._default_victims(target)
            if victims is None or not self._free_to_start(target, victims):
                break  # room is freed by a model leaving service, or a switch ending
            self.last_decision = f"switch to {target}: {'pinned' if self.pinned else 'manual'}"
            self._start(target, victims, self.last_decision, now, effects, settle=False)
        return pending

    # ---- what switches touch ---------------------------------------------------------------

    def _touches(self, target: str | None, victims: Sequence[str]) -> set[str]:
        """The resources a switch waking `target` and evicting `victims` reserves or frees."""
        models = [*victims, *([target] if target is not None else [])]
        return {r for m in models for r, amount in self.capacity.needs_of(m).items() if amount > 0}

    def _touched_by_switches(self) -> set[str]:
        touched: set[str] = set()
        for switch in self.switches:
            touched |= self._touches(switch.to_model, switch.victims)
        return touched

    def _involved(self, model: str) -> bool:
        """Whether `model` is the target or a victim of a switch under way."""
        return any(model == s.to_model or model in s.victims for s in self.switches)

    def _free_to_start(self, target: str | None, victims: Sequence[str]) -> bool:
        """Whether a switch waking `target` (None: sleeping `victims` only) may start beside
        the switches under way: none of its models is in one, none of its resources touched."""
        models = [*victims, *([target] if target is not None else [])]
        if any(self._involved(m) for m in models):
            return False
        return not self._touches(target, victims) & self._touched_by_switches()

    # ---- whom to evict ---------------------------------------------------------------------

    def _evictable(self, model: str) -> bool:
        """Never evicted: a model that is not Active (Waking, Draining, SleepingDown), the
        pinned one, a persistent one."""
        return (
            self.views[model].state == ACTIVE
            and model != self.pinned
            and model not in self.capacity.persistent
        )

    def _default_victims(self, target: str) -> tuple[str, ...] | None:
        """The models to evict so that `target` fits: those whose load (requests in flight
        and queued) times estimated restore cost (their cold wake) is smallest, then the
        longest idle. () if it fits already; None if it cannot fit until a model that may
        not be evicted leaves on its own."""
        holders = self.awake()
        return self.capacity.victims(
            target,
            holders,
            [name for name in holders if self._evictable(name)],
            cheapest_first=self._eviction_cost,
        )

    def _eviction_cost(self, model: str) -> tuple[float, float, str]:
        view = self.views[model]
        restore = self.costs.estimate(None, model)
        load = view.in_flight + view.queue_depth
        idle_since = view.idle_since if view.idle_since is not None else math.inf
        return (
            load * (restore if restore is not None else _UNKNOWN_RESTORE_SECS),
            idle_since,
            model,
        )

    def _policy_victims(self, target: str, evict: Sequence[str]) -> str | None:
        """What is wrong with a policy's own victims for `target`, or None if they do."""
        victims = list(evict)
        for name in victims:
            if name not in self.views:
                return f"names {name!r}, which is not a model"
            if name == target:
                return f"names the target {name!r} itself"
            if not self._evictable(name):
                state = self.views[name].state
                why = (
                    "pinned"
                    if name == self.pinned
                    else "persistent"
                    if name in self.capacity.persistent
                    else state
                )
                return f"names {name!r}, which may not be evicted ({why})"
        if not self._free_to_start(target, victims):
            return "touches a model or resource that a switch under way holds"
        staying = [name for name in self.awake() if name not in victims]
        if not self.capacity.fits(target, staying):
            over = ", ".join(
                f"{r} {u:g}/{c:g}" for r, u, c in self.capacity.over([*staying, target])
            )
            return f"leaves too little room ({over})"
        return None

    # ---- asking the policy -----------------------------------------------------------------

    def _consult_policy(self, now: float, effects: list[SchedulerEffect]) -> bool:
        """Ask the policy about each sleeping model that waits and may be switched to now,
        oldest waiter first; the first SwitchNow starts a switch (True).

        A model whose switch would touch a resource that a switch under way touches waits,
        and so does any younger one whose switch would touch the same resources: the oldest
        waiter is never overtaken on its own resources, which is what keeps the declared
        starvation bounds with several switches at once."""
        plans: dict[str, tuple[str, ...]] = {}
        reserved = self._touched_by_switches()
        for name in sorted(self._demand, key=lambda name: (_arrived(self.views[name], now), name)):
            if self.views[name].state != SLEEPING or self._backing_off(name, now):
                continue
            own = self._touches(name, ())
            if own & reserved:
                reserved |= own
                continue
            victims = self._default_victims(name)
            if victims is None or self._touches(name, victims) & reserved:
                if victims is None and not self.switches:
                    self.last_decision = f"wait: no room for {name} until a model leaves service"
                reserved |= own
                continue
            plans[name] = victims
        # The whole round's picture, shared by every call of it (see PendingContext).
        waiting = {
            name: WaitingSummary(
                self.views[name].queue_depth, now - _arrived(self.views[name], now)
            )
            for name in plans
        }
        estimates = dict(self.costs.items())
        residents = self._residents(now)
        free = {usage.name: max(usage.capacity - usage.used, 0.0) for usage in self._usage}
        if not plans:
            return False
        for target, victims in plans.items():
            ctx = self._pending_context(
                target, victims, now, waiting, plans, estimates, residents, free
            )
            decision = consult.ask_pending(self.policy, ctx, now, effects)
            if isinstance(decision, SwitchNow):
                if decision.evict is not None:
                    problem = self._policy_victims(target, decision.evict)
                    if problem is None:
                        victims = tuple(dict.fromkeys(decision.evict))
                    else:
                        consult.bad_victims(self.policy, target, problem, now, effects)
                self.last_decision = f"switch to {target}: {decision.reason}"
                self._start(target, victims, self.last_decision, now, effects)
                return True
            if isinstance(decision, Defer):
                self._recheck_at = min(self._recheck_at, consult.recheck(now, decision.seconds))
                self.last_decision = f"defer {target} {decision.seconds:.3f}s: {decision.reason}"
            else:
                self.last_decision = f"skip {target}: {decision.reason}"
        return False

    def _pending_context(
        self,
        target: str,
        victims: tuple[str, ...],
        now: float,
        waiting: Mapping[str, WaitingSummary],
        evictions: Mapping[str, tuple[str, ...]],
        estimates: Mapping[tuple[str | None, str], float],
        residents: Mapping[str, ResidentSummary],
        free: Mapping[str, float],
    ) -> PendingContext:
        view = self.views[target]
        oldest = view.oldest_arrival
        first = victims[0] if victims else None
        return PendingContext(
            target_model=target,
            active_model=first,
            target_queue_depth=view.queue_depth,
            oldest_waiting=now - oldest if oldest is not None else 0.0,
            active_in_flight=sum(self.views[v].in_flight for v in victims),
            active_duration=min((self._active_duration(v, now) for v in victims), default=0.0),
            estimated_switch_cost=self.costs.estimate(first, target),
            now=now,
            waiting=waiting,
            cost_estimates=estimates,
            active_idle_secs=self._idle_secs(victims, now),
            evict=victims,
            evictions=evictions,
            residents=residents,
            free=free,
        )

    def _residents(self, now: float) -> dict[str, ResidentSummary]:
        return {
            name: ResidentSummary(
                state=self.views[name].state,
                in_flight=self.views[name].in_flight,
                queue_depth=self.views[name].queue_depth,
                active_duration=self._active_duration(name, now),
                idle_secs=self._idle_secs((name,), now),
                evictable=self._evictable(name),
                needs=self.capacity.needs_of(name),
            )
            for name in self._awake_in_order()
        }

    def _active_duration(self, model: str, now: float) -> float:
        since = self.views[model].active_since
        return now - since if since is not None else 0.0

    def _idle_secs(self, models: Sequence[str], now: float) -> float | None:
        """How long `models` have all had nothing in flight or queued (None if any is busy
        or not Active, or there are none)."""
        idle: list[float] = []
        for name in models:
            view = self.views[name]
            if view.state != ACTIVE or view.in_flight or view.idle_since is None:
                return None
            idle.append(max(now - view.idle_since, 0.0))
        return min(idle) if idle else None

    def _maybe_tick(self, now: float, effects: list[SchedulerEffect]) -> None:
        interval = self.policy.tick_interval_secs
        if interval is None:
            return
        if not any(self.views[name].state == SLEEPING for name in self._demand):
            # A tick can only start a switch towards a waiting model; with nobody waiting,
            # ticking would only keep an idle server (and the simulator) busy forever.
            self._next_tick_at = None
            return
        if self._next_tick_at is None:
            self._next_tick_at = now + interval
            return
        if now < self._next_tick_at:
            return
        self._next_tick_at = now + interval
        target = consult.ask_tick(self.policy, self._schedule_context(now), now, effects)
        if (
            target is None
            or target not in self._demand
            or self.views[target].state != SLEEPING
            or self._backing_off(target, now)
        ):
            return
        victims = self._default_victims(target)
        if victims is not None:
            self.last_decision = f"switch to {target}: policy tick"
            self._start(target, victims, self.last_decision, now, effects)

    def _schedule_context(self, now: float) -> ScheduleContext:
        active = self.active
        costs: dict[str, float] = {}
        for name in self.views:
            estimate = self.costs.estimate(active, name)
            if estimate is not None:
                costs[name] = estimate
        return ScheduleContext(
            active_model=active,
            active_duration=self._active_duration(active, now) if active else 0.0,
            active_in_flight=self.views[active].in_flight if active else 0,
            queue_depths={name: self.views[name].queue_depth for name in self._demand},
            oldest_waiting={name: now - _arrived(self.views[name], now) for name in self._demand},
            switch_costs=costs,
            now=now,
            awake=tuple(self._awake_in_order()),
        )

    # ---- switching -------------------------------------------------------------------------

    def _start(
        self,
        target: str,
        victims: tuple[str, ...],
        reason: str,
        now: float,
        effects: list[SchedulerEffect],
        *,
        settle: bool = True,
    ) -> None:
        switch = SwitchRecord(victims, target, reason, now)
        self.switches.append(switch)
        effects.append(SwitchStarted(switch.from_model, target, reason, now, victims))
        if not victims:
            self._wake(switch, now, effects)
            return
        if not settle:
            self._retire(switch, now, effects)
            return
        settle_until = max((self.views[v].active_since or now) + self.min_active for v in victims)
        if now < settle_until:
            switch.settle_until = settle_until
            self._take(
                switch,
                SwitchEvent.SETTLE,
                f"{', '.join(victims)} active less than {self.min_active}s",
                now,
                effects,
            )
            return
        self._retire(switch, now, effects)

    def _retire(self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]) -> None:
        switch.drain_started_at = now
        self._take(switch, SwitchEvent.RETIRE, switch.reason, now, effects)
        for victim in switch.victims:
            # One that is not Active is already leaving service on its own (it died): wait.
            if self.views[victim].state == ACTIVE:
                self._command(victim, DRAINING, now, effects)
                effects.append(SendDrain(victim, switch.reason))
        self._check_retired(switch, now, effects)

    def _wake(self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]) -> None:
        target = _target(switch)
        holders = self.awake()
        if not self.capacity.fits(target, holders):
            over = self.capacity.over([*holders, target])
            detail = ", ".join(f"{r} {u:g} of {c:g}" for r, u, c in over)
            effects.append(
                Anomaly(
                    SCHEDULER, f"refusing to wake {target}: {holders} awake, it would need {detail}"
                )
            )
            if switch.phase == Phase.RETIRING:
                self._take(switch, SwitchEvent.RETIRED, "wake refused", now, effects)
            self._end(switch)
            return
        switch.wake_started_at = now
        self._take(switch, SwitchEvent.WAKE, switch.reason, now, effects)
        self._command(target, WAKING, now, effects)
        effects.append(SendWake(target, switch.reason))

    def _command(
        self, model: str, expected_state: str, now: float, effects: list[SchedulerEffect]
    ) -> None:
        """Record that `model` was told to move on, so older reports cannot undo it (a wake
        reserves its needs from here on)."""
        view = self.views[model]
        self._set_view(msgspec.structs.replace(view, state=expected_state), now, effects)
        self._commanded_epoch[model] = view.epoch + 1

    def _take(
        self,
        switch: SwitchRecord,
        event: str,
        cause: str,
        now: float,
        effects: list[SchedulerEffect],
    ) -> None:
        source = switch.phase
        switch.phase = SEQUENCE.step(source, event)
        effects.append(
            Transition(SWITCH_MACHINE, SCHEDULER, source, switch.phase, event, cause, now)
        )

    def _end(self, switch: SwitchRecord) -> None:
        """The switch is over (its last transition taken): it holds nothing any more."""
        self.switches.remove(switch)

    # ---- an operator's commands ------------------------------------------------------------

    def _manual_wake(self, command: ManualWake, effects: list[SchedulerEffect]) -> None:
        model, reply_to = command.model, command.reply_to
        if model not in self.views:
            effects.append(Anomaly(SCHEDULER, f"manual wake of unknown model {model!r}"))
            return
        if self.closing:
            self._reply(
                effects, reply_to, CommandOutcome.SHUTTING_DOWN, model, "llmux is shutting down"
            )
            return
        if self.pinned is not None and model != self.pinned:
            self.last_decision = f"refused {command.cause} of {model}: pinned to {self.pinned}"
            detail = f"llmux is pinned to {self.pinned}: unpin it first"
            self._reply(effects, reply_to, CommandOutcome.PINNED, model, detail)
            return
        if self.sleep_wanted == model:
            self.sleep_wanted = None
            self._answer_sleep(model, CommandOutcome.CANCELLED, effects)
        if self.views[model].state == ACTIVE:
            self._reply(effects, reply_to, CommandOutcome.DONE, model)
            return  # already what was asked
        if model not in self.manual_targets:
            self.manual_targets.append(model)
        self.last_decision = f"{command.cause}: {model}"
        self._reply(effects, reply_to, CommandOutcome.ACCEPTED, model)
        if reply_to is not None:
            self._wake_waiters.setdefault(model, []).append(reply_to)

    def _manual_sleep(self, command: ManualSleep, effects: list[SchedulerEffect]) -> None:
        model, reply_to = command.model, command.reply_to
        if model not in self.views:
            effects.append(Anomaly(SCHEDULER, f"manual sleep of unknown model {model!r}"))
            return
        if self.pinned == model:
            self.last_decision = f"refused {command.cause} of {model}: it is pinned"
            detail = f"{model} is pinned: unpin it first"
            self._reply(effects, reply_to, CommandOutcome.PINNED, model, detail)
            return
        if model in self.manual_targets:
            self.manual_targets.remove(model)
            self._answer_wake(model, CommandOutcome.CANCELLED, effects)
        # Honoured by _decide once no switch is under way.
        self.sleep_wanted = model
        self._reply(effects, reply_to, CommandOutcome.ACCEPTED, model)
        if reply_to is not None:
            self._sleep_waiters.setdefault(model, []).append(reply_to)

    def _pin(self, command: Pin, effects: list[SchedulerEffect]) -> None:
        model = command.model
        if model is not None and model not in self.views:
            effects.append(Anomaly(SCHEDULER, f"pin of unknown model {model!r}"))
            return
        if model is not None and self.closing:
            detail = "llmux is shutting down"
            self._reply(effects, command.reply_to, CommandOutcome.SHUTTING_DOWN, model, detail)
            return
        self.pinned = model
        self.manual_targets.clear()
        self.last_decision = f"pinned to {model}" if model else "unpinned"
        if command.cause:
            self.last_decision += f": {command.cause}"
        effects.extend(SendPin(name, model) for name in self.views)
        for other in [m for m in self._wake_waiters if model is not None and m != model]:
            detail = f"llmux is pinned to {model}: unpin it first"
            self._answer_wake(other, CommandOutcome.PINNED, effects, detail)
        self._reply(effects, command.reply_to, CommandOutcome.DONE, model)

    # ---- answering an operator -------------------------------------------------------------

    def _reply(
        self,
        effects: list[SchedulerEffect],
        reply_to: int | None,
        outcome: CommandOutcome,
        model: str | None,
        detail: str = "",
    ) -> None:
        if reply_to is None:
            return
        state = self.views[model].state if model is not None else None
        final = outcome is not CommandOutcome.ACCEPTED
        effects.append(
            CommandReply(reply_to, outcome, final, model, state, self.active, self.pinned, detail)
        )

    def _answer_wake(
        self,
        model: str,
        outcome: CommandOutcome,
        effects: list[SchedulerEffect],
        detail: str = "",
    ) -> None:
        for reply_to in self._wake_waiters.pop(model, []):
            self._reply(effects, reply_to, outcome, model, detail)

    def _answer_sleep(
        self, model: str, outcome: CommandOutcome, effects: list[SchedulerEffect]
    ) -> None:
        for reply_to in self._sleep_waiters.pop(model, []):
            self._reply(effects, reply_to, outcome, model)

    def _answer_sleeps(self, effects: list[SchedulerEffect]) -> None:
        """A manual sleep is done once its model is asleep and no longer waited for."""
        for model in list(self._sleep_waiters):
            if self.views[model].state == SLEEPING and self.sleep_wanted != model:
                self._answer_sleep(model, CommandOutcome.DONE, effects)


def _arrived(view: ModelReport, now: float) -> float:
    """The model's oldest waiter's arrival (`now` if none). Not `oldest_arrival or now`: a
    request that arrived at t=0.0 (the simulator's and MockClock's start) would then count
    as arriving now, and be served after everyone else, for ever."""
    return view.oldest_arrival if view.oldest_arrival is not None else now


def _target(switch: SwitchRecord) -> str:
    """The model a waking switch wakes (only sleep-only switches have none)."""
    assert switch.to_model is not None, "a sleep-only switch never wakes anything"
    return switch.to_model


def _cost_clock_start(switch: SwitchRecord) -> float:
    """When the switch stopped the victims serving: the first sleep hook's start, or the
    wake's (nothing evicted), or the decision. Explicit `is None` tests: a time of 0.0 is a
    real time."""
    for started in (switch.sleep_started_at, switch.wake_started_at):
        if started is not None:
            return started
    return switch.decided_at
