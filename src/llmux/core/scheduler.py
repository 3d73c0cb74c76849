"""SchedulerCore: decides when to switch and sequences the switch, as pure code.

It sees the models only through their `ModelReport`s and acts on them only through
`SendDrain`/`SendWake` effects, so it holds the one rule no policy can break: a model is
woken only once every model is Sleeping (at most one model is ever outside Sleeping).

A switch from A to B: (settle until A has been active `min_active`) -> drain A -> A's sleep
hook -> B's wake hook -> B active. If, once A is asleep, nobody waits for B any more, B is
not woken: the policy is asked afresh instead (llmux 2.4 woke B anyway, then switched back).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import msgspec

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
    PolicyError,
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
    PolicyDecision,
    ScheduleContext,
    Skip,
    SwitchNow,
    SwitchPolicy,
    WaitingSummary,
)

SCHEDULER = "scheduler"
SEQUENCE = Compiled(SwitchSequence)
FAILURE_BACKOFF_SECS = 2.0


class SwitchRecord(msgspec.Struct):
    from_model: str | None
    # None: only put `from_model` to sleep (shutdown), wake nothing.
    to_model: str | None
    reason: str
    decided_at: float
    drain_started_at: float | None = None
    sleep_started_at: float | None = None
    wake_started_at: float | None = None


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
    ) -> None:
        self.policy = policy
        # Per model: put it to sleep after this long active with nothing to do.
        self.idle_sleep = dict(idle_sleep or {})
        self.min_active = min_active
        self.failure_backoff = failure_backoff
        self.costs = costs if costs is not None else SwitchCostTracker()
        self.views: dict[str, ModelReport] = {
            name: ModelReport(name, SLEEPING, 0, None, 0, None) for name in models
        }
        self.phase: str = SEQUENCE.initial
        self.active: str | None = None
        self.switch: SwitchRecord | None = None
        self.last_decision = "none yet"
        self._demand: set[str] = set()
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
        # An operator's wish: make this model active, whoever waits (cleared once it is).
        self.manual_target: str | None = None
        # While set, no switch away from this model, and other models refuse requests.
        self.pinned: str | None = None
        # An operator asked for this model to be put to sleep (done when the GPU is idle).
        self.sleep_wanted: str | None = None
        # Operators' commands still under way, by model: the reply_to of each, answered
        # when the wake (or sleep) is over.
        self._wake_waiters: dict[str, list[int]] = {}
        self._sleep_waiters: dict[str, list[int]] = {}

    # ---- queries ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When this core next wants a Tick."""
        if self.phase == Phase.SETTLING:
            deadline = self._settle_until
        elif self.phase == Phase.IDLE:
            deadline = min(self._recheck_at, self._idle_deadline(), self._next_retry())
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
            policy=self._policy_name(),
            switch_costs=[(s, t, estimate) for (s, t), estimate in self.costs.items()],
        )

    def awake(self) -> list[str]:
        return [name for name, view in self.views.items() if view.state != SLEEPING]

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
        self.views[report.model] = report
        if report.queue_depth:
            self._demand.add(report.model)
        else:
            self._demand.discard(report.model)
        self._follow_unprompted(report)

        switch = self.switch
        if switch is None:
            return
        if self.phase == Phase.RETIRING and report.model == switch.from_model:
            if report.state in (SLEEPING_DOWN, SLEEPING) and switch.sleep_started_at is None:
                switch.sleep_started_at = now
            if report.state == SLEEPING:
                self.active = None
                self._after_retire(switch, now, effects)
        elif self.phase == Phase.WAKING and report.model == switch.to_model:
            if report.state == ACTIVE:
                self._activated(switch, report, now, effects)
            elif report.state != WAKING:
                self._wake_failed(switch, now, effects)

    def _follow_unprompted(self, report: ModelReport) -> None:
        """Lifecycle moves the scheduler did not ask for: adoption at start-up, and an active
        model that died (its alive hook failed) and has gone to sleep on its own."""
        if self.switch is not None:
            return
        if self.active is None and report.state == ACTIVE and len(self.awake()) == 1:
            self.active = report.model
            self.last_decision = f"adopted {report.model}: found awake at start-up"
        elif self.active == report.model and report.state == SLEEPING:
            self.active = None
            self.last_decision = f"{report.model} left service on its own"

    def _after_retire(
        self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]
    ) -> None:
        if switch.to_model is None:
            self._take(
                SwitchEvent.RETIRED, f"{switch.from_model} is asleep: {switch.reason}", now, effects
            )
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
        self.active = target
        if self.manual_target == target:
            self.manual_target = None
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
        if self.manual_target == target:
            self.manual_target = None  # reported to the operator; not retried forever
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
        """Backoff ends once the failed model's cleanup sleep is done (nothing else may wake
        before: it is not asleep). Its own retry waits `failure_backoff` (`_retry_at`);
        requests for the other models do not."""
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
        """Shutting down: start nothing, and put the awake model to sleep once it is idle."""
        if self.phase == Phase.SETTLING and self.switch is not None:
            self.switch.to_model = None
            self._settle_until = math.inf
            self._retire(self.switch, now, effects)
        elif self.phase == Phase.RETIRING and self.switch is not None:
            self.switch.to_model = None
        elif self.phase == Phase.IDLE and self.active is not None:
            switch = SwitchRecord(self.active, None, "shutting down", now)
            self.switch = switch
            self._retire(switch, now, effects)

    def _sleep_only(self, reason: str, now: float, effects: list[SchedulerEffect]) -> None:
        """Put the active model to sleep and wake nothing."""
        assert self.active is not None
        switch = SwitchRecord(self.active, None, reason, now)
        self.switch = switch
        self._retire(switch, now, effects)

    def _idle_deadline(self) -> float:
        if self.active is None or self.pinned is not None:
            return math.inf
        idle = self.idle_sleep.get(self.active)
        since = self.views[self.active].idle_since
        if idle is None or since is None or self.views[self.active].state != ACTIVE:
            return math.inf
        return since + idle

    def _wanted(self, model: str | None) -> bool:
        return model is not None and (
            model in self._demand or model in (self.manual_target, self.pinned)
        )

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
        if model == self.active and self.views[model].state == ACTIVE:
            self._reply(effects, reply_to, CommandOutcome.DONE, model)
            return  # already what was asked
        self.manual_target = model
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
        if self.manual_target == model:
            self.manual_target = None
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
        self.manual_target = None
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

    def is_quiet(self) -> bool:
        """Every model is asleep and no switch is under way."""
        return self.phase in (Phase.IDLE, Phase.BACKOFF) and not self.awake()

    def _active_duration(self, now: float) -> float:
        if self.active is None:
            return 0.0
        since = self.views[self.active].active_since
        return now - since if since is not None else 0.0

    def _active_in_flight(self) -> int:
        return self.views[self.active].in_flight if self.active is not None else 0

    def _decide(self, now: float, effects: list[SchedulerEffect]) -> None:
        self._recheck_at = math.inf
        if self.sleep_wanted is not None:
            model, self.sleep_wanted = self.sleep_wanted, None
            if model == self.active:
                self.last_decision = f"sleep {model}: manual sleep"
                self._sleep_only(self.last_decision, now, effects)
                return
        target = self.pinned or self.manual_target
        if target is not None:
            if self._backing_off(target, now):
                return  # retried when its backoff is over (see next_deadline)
            if target != self.active and self.views[target].state == SLEEPING:
                self.last_decision = f"switch to {target}: {'pinned' if self.pinned else 'manual'}"
                self._start(target, self.last_decision, now, effects, settle=False)
            return  # an operator's choice overrides the policy
        if self._idle_deadline() <= now and self.active is not None:
            idle = self.idle_sleep[self.active]
            self.last_decision = f"sleep {self.active}: idle for {idle:g}s"
            self._sleep_only(self.last_decision, now, effects)
            return
        if not self._consult_policy(now, effects):
            self._maybe_tick(now, effects)

    def _consult_policy(self, now: float, effects: list[SchedulerEffect]) -> bool:
        """Ask the policy about each model that waits, oldest waiter first; the first
        SwitchNow starts a switch (True)."""
        candidates = sorted(
            (
                name
                for name in self._demand
                if name != self.active
                and self.views[name].state == SLEEPING
                and not self._backing_off(name, now)
            ),
            key=lambda name: (_arrived(self.views[name], now), name),
        )
        # The whole round's picture, shared by every call of it (see PendingContext).
        waiting = {
            name: WaitingSummary(
                self.views[name].queue_depth, now - _arrived(self.views[name], now)
            )
            for name in candidates
        }
        estimates = dict(self.costs.items())
        active_idle = self._active_idle_secs(now)
        for target in candidates:
            view = self.views[target]
            oldest = view.oldest_arrival
            ctx = PendingContext(
                target_model=target,
                active_model=self.active,
                target_queue_depth=view.queue_depth,
                oldest_waiting=now - oldest if oldest is not None else 0.0,
                active_in_flight=self._active_in_flight(),
                active_duration=self._active_duration(now),
                estimated_switch_cost=self.costs.estimate(self.active, target),
                now=now,
                waiting=waiting,
                cost_estimates=estimates,
                active_idle_secs=active_idle,
            )
            decision = self._ask_pending(ctx, now, effects)
            if isinstance(decision, SwitchNow):
                self.last_decision = f"switch to {target}: {decision.reason}"
                self._start(target, self.last_decision, now, effects)
                return True
            if isinstance(decision, Defer):
                self._recheck_at = min(self._recheck_at, _recheck(now, decision.seconds))
                self.last_decision = f"defer {target} {decision.seconds:.3f}s: {decision.reason}"
            else:
                self.last_decision = f"skip {target}: {decision.reason}"
        return False

    def _maybe_tick(self, now: float, effects: list[SchedulerEffect]) -> None:
        interval = self.policy.tick_interval_secs
        if interval is None:
            return
        if not self._demand - {self.active}:
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
        target = self._ask_tick(now, effects)
        if target is None:
            return
        if target in self._demand and target != self.active and not self._backing_off(target, now):
            self.last_decision = f"switch to {target}: policy tick"
            self._start(target, self.last_decision, now, effects)

    # ---- asking the policy, which may be a user's and may be broken ---------------------------

    def _ask_pending(
        self, ctx: PendingContext, now: float, effects: list[SchedulerEffect]
    ) -> PolicyDecision:
        """The policy's decision, or FIFO's (switch now) if the policy raised or answered
        something that is not a decision: a bug in a policy costs it its say for this call,
        never a waiter or the server."""
        try:
            decision: object = self.policy.on_pending(ctx)
        except Exception as exc:
            problem = f"on_pending raised {_one_line(exc)}"
        else:
            if isinstance(decision, SwitchNow | Skip | Defer) and _well_formed(decision):
                return decision
            problem = _not_a_decision(decision)
        effects.append(PolicyError(self._policy_name(), "on_pending", problem, now))
        return SwitchNow("policy error, so FIFO's choice")

    def _ask_tick(self, now: float, effects: list[SchedulerEffect]) -> str | None:
        """The model the policy's tick names, or None; a broken tick names none."""
        try:
            target: object = self.policy.on_tick(self._schedule_context(now))
        except Exception as exc:
            problem = f"on_tick raised {_one_line(exc)}"
        else:
            if target is None or isinstance(target, str):
                return target
            problem = f"on_tick returned {_describe(target)}, not a model name or None"
        effects.append(PolicyError(self._policy_name(), "on_tick", problem, now))
        return None

    def _policy_name(self) -> str:
        name = getattr(self.policy, "name", None)
        return name if isinstance(name, str) else type(self.policy).__name__

    def _active_idle_secs(self, now: float) -> float | None:
        """How long the active model has had nothing in flight or queued (None if busy)."""
        if self.active is None:
            return None
        view = self.views[self.active]
        if view.state != ACTIVE or view.in_flight or view.idle_since is None:
            return None
        return max(now - view.idle_since, 0.0)

    def _schedule_context(self, now: float) -> ScheduleContext:
        costs: dict[str, float] = {}
        for name in self.views:
            estimate = self.costs.estimate(self.active, name)
            if estimate is not None:
                costs[name] = estimate
        return ScheduleContext(
            active_model=self.active,
            active_duration=self._active_duration(now),
            active_in_flight=self._active_in_flight(),
            queue_depths={name: self.views[name].queue_depth for name in self._demand},
            oldest_waiting={name: now - _arrived(self.views[name], now) for name in self._demand},
            switch_costs=costs,
            now=now,
        )

    # ---- switching -------------------------------------------------------------------------

    def _start(
        self,
        target: str,
        reason: str,
        now: float,
        effects: list[SchedulerEffect],
        *,
        settle: bool = True,
    ) -> None:
        switch = SwitchRecord(self.active, target, reason, now)
        self.switch = switch
        effects.append(SwitchStarted(self.active, target, reason, now))
        if self.active is None:
            self._wake(switch, now, effects)
            return
        if not settle:
            self._retire(switch, now, effects)
            return
        since = self.views[self.active].active_since
        settle_until = (since if since is not None else now) + self.min_active
        if now < settle_until:
            self._settle_until = settle_until
            self._take(
                SwitchEvent.SETTLE,
                f"{self.active} has been active less than {self.min_active}s",
                now,
                effects,
            )
            return
        self._retire(switch, now, effects)

    def _retire(self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]) -> None:
        assert switch.from_model is not None
        switch.drain_started_at = now
        self._take(SwitchEvent.RETIRE, switch.reason, now, effects)
        if self.views[switch.from_model].state != ACTIVE:
            return  # already leaving service on its own (it died): just wait for it
        self._command(switch.from_model, DRAINING)
        effects.append(SendDrain(switch.from_model, switch.reason))

    def _wake(self, switch: SwitchRecord, now: float, effects: list[SchedulerEffect]) -> None:
        awake = self.awake()
        if awake:
            effects.append(
                Anomaly(SCHEDULER, f"refusing to wake {switch.to_model}: {awake} not asleep")
            )
            if self.phase == Phase.RETIRING:
                self._take(SwitchEvent.RETIRED, "wake refused", now, effects)
            self.switch = None
            return
        switch.wake_started_at = now
        self._take(SwitchEvent.WAKE, switch.reason, now, effects)
        self._command(_target(switch), WAKING)
        effects.append(SendWake(_target(switch), switch.reason))

    def _command(self, model: str, expected_state: str) -> None:
        """Record that `model` was told to move on, so older reports cannot undo it."""
        view = self.views[model]
        self.views[model] = msgspec.structs.replace(view, state=expected_state)
        self._commanded_epoch[model] = view.epoch + 1

    def _take(self, event: str, cause: str, now: float, effects: list[SchedulerEffect]) -> None:
        source = self.phase
        self.phase = SEQUENCE.step(self.phase, event)
        effects.append(Transition(SWITCH_MACHINE, SCHEDULER, source, self.phase, event, cause, now))


def _well_formed(decision: PolicyDecision) -> bool:
    """A Defer's seconds must be a number (NaN would make every deadline NaN)."""
    if not isinstance(decision, Defer):
        return True
    seconds: object = decision.seconds
    return isinstance(seconds, int | float) and not math.isnan(seconds)


def _not_a_decision(decision: object) -> str:
    """What is wrong with a policy's answer to on_pending."""
    if isinstance(decision, Defer):
        return f"on_pending returned Defer({decision.seconds!r}), whose seconds are not a number"
    return f"on_pending returned {_describe(decision)}, not SwitchNow, Defer or Skip"


def _recheck(now: float, seconds: float) -> float:
    """When to ask again after Defer(seconds). A positive wait always moves time forward: one
    too small for `now` to notice (a quantum's last 1e-15 s) would otherwise ask again at the
    same instant, for ever."""
    at = now + max(seconds, 0.0)
    return math.nextafter(now, math.inf) if seconds > 0 and at <= now else at


def _describe(value: object) -> str:
    return "None" if value is None else f"a {type(value).__name__} ({value!r:.60})"


def _one_line(exc: Exception) -> str:
    """The exception as a traceback's last line says it: `ValueError: boom`."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    """When the GPU stopped serving for this switch: the sleep hook's start, or the wake's
    (cold), or the decision. Explicit `is None` tests: a time of 0.0 is a real time."""
    for started in (switch.sleep_started_at, switch.wake_started_at):
        if started is not None:
            return started
    return switch.decided_at
