"""SchedulerCore: decides when to switch and whom to evict, and sequences the switch, as pure code.

It sees the models only through their `ModelReport`s and acts on them only through
`SendDrain`/`SendWake` effects, so it holds the one rule no policy can break: a model is
woken only when its needs fit beside what every model outside Sleeping holds, for every
declared resource (`llmux.core.capacity`; without declared resources, one model at a time).

A switch to B: choose the victims that must make room (none if B fits beside the awake
models) -> (settle until each has been active `min_active`) -> drain them -> their sleep hooks
-> B's wake hook -> B active. Models that are not victims keep serving throughout: the
scheduler never touches them. Switches run one at a time. If, once the victims are asleep,
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
        self.phase: str = SEQUENCE.initial
        self.switch: SwitchRecord | None = None
        self.last_decision = "none yet"
        self._demand: set[str] = set()
        # Models that became Active (woken or adopted) and are not asleep again, oldest
        # first: the last is the one status calls "active".
        self._woken: list[str] = []
        self._usage: tuple[ResourceUsage, ...] = self._usage_now()
        # Per model, the first epoch that reflects our last command to it (see ModelReport).
        self._commanded_epoch: dict[str, int] = dict.fromkeys(models, 0)
        self._settle_until = math.inf
        # The model whose wake failed, until its cleanup sleep is done (phase Backoff).
        self._failed_model: str | None = None
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

    def next_deadline(self) -> float | None:
        """When this core next wants a Tick."""
        if self.phase == Phase.SETTLING:
            deadline = self._settle_until
        elif self.phase == Phase.IDLE:
            deadline = min(self._recheck_at, self._idle_deadline()[0], self._next_retry())
            if self._next_tick_at is not None:
                deadline = min(deadline, self._next_tick_at)
        else:
            deadline = math.inf
        return deadline if deadline < math.inf else None

    def status(self) -> SchedulerStatus:
        switch = self.switch
        return SchedulerStatus(
            phase=self.phase,
            active=self.active,
            pinned=self.pinned,
            switch=None
            if switch is None
            else SwitchStatus(switch.from_model, switch.to_model, switch.reason, switch.decided_at),
            last_decision=self.last_decision,
            policy=consult.policy_name(self.policy),
            switch_costs=[(s, t, estimate) for (s, t), estimate in self.costs.items()],
            awake=self._awake_in_order(),
            resources=list(self._usage),
            needs={name: dict(self.capacity.needs_of(name)) for name in self.views},
            persistent=sorted(self.capacity.persistent),
        )

    def awake(self) -> list[str]:
        """The models outside Sleeping: they hold their needs."""
        return [name for name, view in self.views.items() if view.state != SLEEPING]

    def is_quiet(self) -> bool:
        """Every model is asleep and no switch is under way."""
        return self.phase in (Phase.IDLE, Phase.BACKOFF) and not self.awake()

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

        switch = self.switch
        if switch is None:
            return
        if self.phase == Phase.RETIRING and report.model in switch.victims:
            if report.state in (SLEEPING_DOWN, SLEEPING) and switch.sleep_started_at is None:
                switch.sleep_started_at = now
            self._check_retired(switch, now, effects)
        elif self.phase == Phase.WAKING and report.model == switch.to_model:
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
            if self.switch is None or self.switch.to_model != name:
                self.last_decision = f"adopted {name}: found awake at start-up"
        elif view.state == SLEEPING and name in self._woken:
            self._woken.remove(name)
            if self.switch is None:
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
            self._take(SwitchEvent.RETIRED, f"{victims} asleep: {switch.reason}", now, effects)
            self.switch = None
            return
        if self._wanted(switch.to_model) and not self.closing:
            self._wake(switch, now, effects)
            return
        self._take(
            SwitchEvent.RETIRED, f"nobody waits for {switch.to_model} any more", now, effects
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
        self.switch = None

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
        self._take(SwitchEvent.ACTIVATED, f"{target} is active", now, effects)
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
        self.switch = None

    def _wake_failed(
        self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]
    ) -> None:
        target = _target(switch)
        started = _cost_clock_start(switch)
        self._failed_model = target
        self._retry_at[target] = now + self.failure_backoff
        if target in self.manual_targets:
            self.manual_targets.remove(target)  # reported to the operator; not retried forever
        self._take(SwitchEvent.WAKE_FAILED, f"{target} failed to wake", now, effects)
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
        self.switch = None

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
        if self.phase == Phase.BACKOFF:
            self._end_backoff(now, effects)
        if self.closing:
            self._wind_down(now, effects)
            return
        if self.phase == Phase.SETTLING and now >= self._settle_until and self.switch is not None:
            self._settle_until = math.inf
            if self._wanted(self.switch.to_model):
                self._retire(self.switch, now, effects)
            else:
                self._take(
                    SwitchEvent.CANCEL,
                    f"nobody waits for {self.switch.to_model} any more",
                    now,
                    effects,
                )
                self.switch = None
        if self.phase == Phase.IDLE:
            self._decide(now, effects)

    def _end_backoff(self, now: float, effects: list[SchedulerEffect]) -> None:
        """Backoff ends once the failed model's cleanup sleep is done (it holds its needs
        until then). Its own retry waits `failure_backoff` (`_retry_at`); requests for the
        other models do not."""
        failed = self._failed_model
        if failed is None or self.views[failed].state == SLEEPING:
            self._failed_model = None
            self._take(
                SwitchEvent.RECOVERED, f"{failed} is asleep after its failed wake", now, effects
            )

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
        switch = self.switch
        if self.phase == Phase.SETTLING and switch is not None:
            switch.to_model = None
            self._settle_until = math.inf
            self._retire(switch, now, effects)
        elif self.phase == Phase.RETIRING and switch is not None:
            switch.to_model = None
        elif self.phase == Phase.IDLE and self.awake():
            self._sleep_only(tuple(self._awake_in_order()), "shutting down", now, effects)

    def _sleep_only(
        self, models: tuple[str, ...], reason: str, now: float, effects: list[SchedulerEffect]
    ) -> None:
        """Put `models` to sleep and wake nothing."""
        switch = SwitchRecord(models, None, reason, now)
        self.switch = switch
        self._retire(switch, now, effects)

    def _idle_deadline(self) -> tuple[float, str | None]:
        """When the first Active model reaches its idle_sleep_secs, and which."""
        soonest: tuple[float, str | None] = (math.inf, None)
        for name in self._woken:
            idle = self.idle_sleep.get(name)
            view = self.views[name]
            if idle is None or view.idle_since is None or view.state != ACTIVE:
                continue
            if name != self.pinned and view.idle_since + idle < soonest[0]:
                soonest = (view.idle_since + idle, name)
        return soonest

    def _wanted(self, model: str | None) -> bool:
        return model is not None and (
            model in self._demand or model in self.manual_targets or model == self.pinned
        )

    def _decide(self, now: float, effects: list[SchedulerEffect]) -> None:
        self._recheck_at = math.inf
        if self.sleep_wanted is not None:
            model, self.sleep_wanted = self.sleep_wanted, None
            if self.views[model].state == ACTIVE:
                self.last_decision = f"sleep {model}: manual sleep"
                self._sleep_only((model,), self.last_decision, now, effects)
                return
        if self._operator_targets(now, effects):
            return  # an operator's choice overrides the policy
        deadline, idle_model = self._idle_deadline()
        if deadline <= now and idle_model is not None:
            idle = self.idle_sleep[idle_model]
            self.last_decision = f"sleep {idle_model}: idle for {idle:g}s"
            self._sleep_only((idle_model,), self.last_decision, now, effects)
            return
        if not self._consult_policy(now, effects):
            self._maybe_tick(now, effects)

    def _operator_targets(self, now: float, effects: list[SchedulerEffect]) -> bool:
        """Start the switch to the pinned model, or to the first manual target that is not
        active yet. True while any of them is still to be made active (or llmux is pinned):
        the policy has no say until then."""
        targets = [self.pinned] if self.pinned is not None else list(self.manual_targets)
        for target in targets:
            state = self.views[target].state
            if state == ACTIVE:
                if target in self.manual_targets:
                    self.manual_targets.remove(target)
                continue
            if state != SLEEPING or self._backing_off(target, now):
                return True  # retried when it is asleep, or its backoff over (next_deadline)
            victims = self._default_victims(target)
            if victims is None:
                return True  # room is freed by a model leaving service; its report comes
            self.last_decision = f"switch to {target}: {'pinned' if self.pinned else 'manual'}"
            self._start(target, victims, self.last_decision, now, effects, settle=False)
            return True
        return self.pinned is not None

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
        staying = [name for name in self.awake() if name not in victims]
        if not self.capacity.fits(target, staying):
            over = ", ".join(
                f"{r} {u:g}/{c:g}" for r, u, c in self.capacity.over([*staying, target])
            )
            return f"leaves too little room ({over})"
        return None

    # ---- asking the policy -----------------------------------------------------------------

    def _consult_policy(self, now: float, effects: list[SchedulerEffect]) -> bool:
        """Ask the policy about each sleeping model that waits, oldest waiter first; the first
        SwitchNow starts a switch (True)."""
        plans: dict[str, tuple[str, ...]] = {}
        for name in sorted(self._demand, key=lambda name: (_arrived(self.views[name], now), name)):
            if self.views[name].state == SLEEPING and not self._backing_off(name, now):
                victims = self._default_victims(name)
                if victims is not None:
                    plans[name] = victims
                else:
                    self.last_decision = f"wait: no room for {name} until a model leaves service"
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
        self.switch = switch
        effects.append(SwitchStarted(switch.from_model, target, reason, now, victims))
        if not victims:
            self._wake(switch, now, effects)
            return
        if not settle:
            self._retire(switch, now, effects)
            return
        settle_until = max((self.views[v].active_since or now) + self.min_active for v in victims)
        if now < settle_until:
            self._settle_until = settle_until
            self._take(
                SwitchEvent.SETTLE,
                f"{', '.join(victims)} active less than {self.min_active}s",
                now,
                effects,
            )
            return
        self._retire(switch, now, effects)

    def _retire(self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]) -> None:
        switch.drain_started_at = now
        self._take(SwitchEvent.RETIRE, switch.reason, now, effects)
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
            if self.phase == Phase.RETIRING:
                self._take(SwitchEvent.RETIRED, "wake refused", now, effects)
            self.switch = None
            return
        switch.wake_started_at = now
        self._take(SwitchEvent.WAKE, switch.reason, now, effects)
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

    def _take(self, event: str, cause: str, now: float, effects: list[SchedulerEffect]) -> None:
        source = self.phase
        self.phase = SEQUENCE.step(self.phase, event)
        effects.append(Transition(SWITCH_MACHINE, SCHEDULER, source, self.phase, event, cause, now))

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
