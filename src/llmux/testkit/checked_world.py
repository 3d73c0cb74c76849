"""A World with every invariant checked at each effect and after every step."""

from __future__ import annotations

import math
from collections.abc import Mapping

from llmux.core.messages import (
    Anomaly,
    Grant,
    Hook,
    ManualSleep,
    ManualWake,
    Pin,
    PolicyError,
    Reject,
    RunHook,
    Shutdown,
    SwitchStarted,
    Transition,
)
from llmux.core.model import ACTIVE, DRAINING, ModelCore
from llmux.core.policy import SwitchPolicy, starvation_bound
from llmux.core.scheduler import SchedulerCore
from llmux.core.world import HookScript, RunawayError, Settings, World, bound_inputs

# ---- a World with every invariant checked ----------------------------------------------------
from llmux.testkit.invariants import (
    CANCELLATION,
    DRAIN,
    EDGES,
    NO_LIVELOCK,
    NOTHING_LOST,
    SLACK,
    InvariantViolation,
    Monitor,
)


class CheckedWorld:
    """A `World` fed to a `Monitor`, plus the checks that need the cores' state.

    Drive it with `submit`, `cancel`, `fail_next_hook` and `advance`; call `check()` after
    each step and `settle()` at the end (it stops nothing by itself: it lets everything that
    is scheduled happen, heals the hooks, and checks that everything ends in time).

    A world that spins fails ``no-livelock``: after `max_instants_at_one_time` instants in a
    row without virtual time advancing (a policy deferring by 0 s for ever is caught within
    milliseconds), or after `max_steps` instants in one step (time creeping forward by tiny
    deferrals). A correct world needs one or two instants per virtual time (zero-second hooks
    and services are done within one), so the default of 100 leaves a wide margin.
    """

    def __init__(
        self,
        hooks: Mapping[str, HookScript],
        policy: SwitchPolicy,
        settings: Settings | None = None,
        *,
        max_service: float,
        core_class: type[ModelCore] = ModelCore,
        scheduler_class: type[SchedulerCore] = SchedulerCore,
        max_steps: int = 50_000,
        max_instants_at_one_time: int = 100,
        liveness_horizon: float | None = None,
    ) -> None:
        if max_instants_at_one_time < 1 or max_steps < 1:
            raise ValueError("max_steps and max_instants_at_one_time must be at least 1")
        settings = settings if settings is not None else Settings()
        self.settings = settings
        self.max_steps = max_steps
        self.max_instants_at_one_time = max_instants_at_one_time
        self.world = World(
            hooks,
            policy,
            settings,
            on_effect=self._on_effect,
            core_class=core_class,
            scheduler_class=scheduler_class,
        )
        self.inputs = bound_inputs(
            hooks,
            settings,
            max_service=max_service,
            failure_backoff=self.world.scheduler.failure_backoff,
        )
        self.bound = starvation_bound(policy, self.inputs)
        if self.bound is not None and not (math.isfinite(self.bound) and self.bound >= 0):
            raise ValueError(f"{policy!r} declared a starvation bound of {self.bound!r}")
        self.max_service = max_service
        if liveness_horizon is None:
            # Without a declared bound, "eventually" means within this long after traffic
            # stops: generous, 10x what FIFO promises.
            cycle = self.inputs.switch_cycle_secs()
            liveness_horizon = 10 * (len(hooks) * cycle + max(cycle, self.inputs.failure_backoff))
        self.liveness_horizon = liveness_horizon
        self.monitor = Monitor(
            hooks,
            drain_before_switch=settings.drain_before_switch,
            bound=self.bound,
            capacity=settings.capacity(hooks),
        )
        self.last_arrival = 0.0
        self._failures_seen = 0
        self.cancels: dict[str, int] = {}

    # ---- effects, as they happen -------------------------------------------------------------

    def _on_effect(self, effect: object) -> None:
        world = self.world
        self._note_failures()
        match effect:
            case Grant(model=model, req_id=req_id):
                record = world.requests[req_id]
                if record.cancelled_at is not None:
                    self.monitor.fail(
                        CANCELLATION,
                        f"request {req_id} granted at t={world.now} although its client "
                        f"left at t={record.cancelled_at}",
                    )
                self.monitor.granted(model, req_id, world.models[model].state)
                self.monitor.waited(req_id, record.arrived, world.now, over=True)
            case Reject(req_id=req_id):
                record = world.requests[req_id]
                self.monitor.rejected(req_id)
                self.monitor.waited(req_id, record.arrived, world.now, over=True)
            case RunHook(model=model, hook=Hook.SLEEP):
                self.monitor.sleep_hook_started(model, world.models[model].in_flight, world.now)
            case Transition():
                self.monitor.transition(effect)
            case SwitchStarted():
                self.monitor.switch_started(effect)
            case Anomaly():
                self.monitor.anomaly(effect)
            case PolicyError():
                self.monitor.policy_error(effect)
            case _:
                pass

    def _note_failures(self) -> None:
        outcomes = self.world.hook_outcomes
        while self._failures_seen < len(outcomes):
            outcome = outcomes[self._failures_seen]
            if outcome.finished > self.world.now:
                break
            if not outcome.ok:
                self.monitor.hook_failed(outcome.finished)
            self._failures_seen += 1

    # ---- inputs ------------------------------------------------------------------------------

    def submit(self, model: str, at: float, service: float) -> int:
        if service > self.max_service:
            raise ValueError(f"service {service} is over the declared max {self.max_service}")
        self.last_arrival = max(self.last_arrival, at)
        return self.world.submit(model, at, service)

    def cancel(self, req_id: int) -> str:
        """The client of `req_id` goes away now; returns where the request was."""
        world = self.world
        record = world.requests[req_id]
        core = world.models[record.model]
        if record.done:
            where = "over"
        elif req_id in core.queue:
            where = "queued at a draining model" if core.state == DRAINING else "queued"
        elif req_id in core.in_flight:
            where = "in flight at a draining model" if core.state == DRAINING else "in service"
        else:
            where = "not arrived"
        waiting = record.granted_at is None and not record.done
        world.cancel(req_id, world.now)
        self._run(world.now)
        if record.cancelled_at is not None and waiting:
            self.monitor.waited(req_id, record.arrived, record.cancelled_at, over=True)
        for name, other in world.models.items():
            if req_id in other.queue or req_id in other.in_flight:
                self.monitor.fail(
                    CANCELLATION, f"request {req_id}, withdrawn while {where}, is still in {name}"
                )
        self.cancels[where] = self.cancels.get(where, 0) + 1
        return where

    def fail_next_hook(self, model: str, hook: Hook) -> None:
        self.world.fail_next_hook(model, hook)

    def command(self, message: ManualWake | ManualSleep | Pin | Shutdown) -> None:
        """An operator's command (or shutdown) now."""
        self.world.command(message, self.world.now)
        self._run(self.world.now)

    def advance(self, dt: float) -> None:
        self._run(self.world.now + dt)

    def _run(self, until: float) -> None:
        """Run the world until `until`, in runs of at most `max_instants_at_one_time`
        instants: a run that ends where it began, in virtual time, spun."""
        world = self.world
        chunk = self.max_instants_at_one_time
        started = world.now
        left = self.max_steps
        while left > 0:
            began = world.now
            steps = min(chunk, left)
            try:
                world.run(until, max_steps=steps)
            except RunawayError:
                # World.run raises before it processes the instant over its limit, so
                # calling it again carries on exactly where it stopped (held by
                # tests/properties/test_kit.py).
                left -= steps
                if steps == chunk and world.now == began:
                    raise self._livelock(
                        f"the world spins at t={world.now}: {chunk} instants without virtual "
                        f"time advancing"
                    ) from None
            else:
                self._note_failures()
                return
        raise self._livelock(
            f"still busy at t={world.now} after {self.max_steps} instants in one step "
            f"(from t={started})"
        )

    def _livelock(self, what: str) -> InvariantViolation:
        decision = self.world.scheduler.last_decision
        return InvariantViolation(NO_LIVELOCK, f"{what}; the scheduler's last decision: {decision}")

    # ---- checks on the cores' state ----------------------------------------------------------

    def check(self) -> None:
        """Everything that must hold between steps (call after each one)."""
        world = self.world
        self._note_failures()
        queued: dict[str, set[int]] = {name: set() for name in world.models}
        running: dict[str, set[int]] = {name: set() for name in world.models}
        for record in world.requests.values():
            if record.arrived > world.now:
                continue
            if record.granted_at is None:
                if not record.done:
                    queued[record.model].add(record.req_id)
                    self.monitor.waited(record.req_id, record.arrived, world.now, over=False)
            elif record.finished_at is None and record.cancelled_at is None:
                running[record.model].add(record.req_id)
            if record.rejected is not None and record.granted_at is not None:
                self.monitor.fail(NOTHING_LOST, f"request {record.req_id} granted and rejected")
        for name, core in world.models.items():
            for what, held, expected in (
                ("queue", set(core.queue), queued[name]),
                ("in-flight set", core.in_flight, running[name]),
            ):
                if held != expected:
                    self._bookkeeping(name, what, held, expected)
            if core.state == ACTIVE and core.queue and core.has_room():
                self.monitor.fail(
                    NOTHING_LOST, f"{name} is Active with room but {sorted(core.queue)} wait"
                )
            if core.state == DRAINING and not world.settings.drain_before_switch:
                self.monitor.fail(DRAIN, f"{name} stays Draining with drain_before_switch off")
            if core.state == DRAINING and not core.in_flight:
                self.monitor.fail(DRAIN, f"{name} is Draining with nothing in flight")
            if core.state != self.monitor.states[name]:
                self.monitor.fail(
                    EDGES, f"{name} is {core.state} but its transitions say {self.monitor.states}"
                )
            if world.scheduler.views[name] != core.report():
                self.monitor.fail(
                    NOTHING_LOST,
                    f"the scheduler sees {world.scheduler.views[name]} but {name} is "
                    f"{core.report()}",
                )
        if world.anomalies:
            self.monitor.anomaly(world.anomalies[0])
        if world.policy_errors:
            self.monitor.policy_error(world.policy_errors[0])

    def _bookkeeping(self, model: str, what: str, held: set[int], expected: set[int]) -> None:
        extra = held - expected
        cancelled = sorted(r for r in extra if self.world.requests[r].cancelled_at is not None)
        invariant = CANCELLATION if cancelled else NOTHING_LOST
        self.monitor.fail(
            invariant,
            f"{model}'s {what} holds {sorted(held)} at t={self.world.now}, but the requests "
            f"say {sorted(expected)} (withdrawn: {cancelled}; "
            f"missing: {sorted(expected - held)})",
        )

    def settle(self) -> None:
        """Let every scheduled arrival happen, make every hook that starts from then on
        succeed, run until everything is over, and check that it is."""
        world = self.world
        self._run(max(world.now, self.last_arrival))
        world.heal_hooks()
        failing = [o.finished for o in world.hook_outcomes if not o.ok]
        quiet_from = max([world.now, *failing])
        horizon = self.bound if self.bound is not None else self.liveness_horizon
        # Everything still waiting at `quiet_from` is answered within the bound, and
        # whatever was granted finishes within one service time after that.
        self._run(quiet_from + horizon + self.max_service + SLACK)
        self.check()
        self.check_quiet()

    def check_quiet(self) -> None:
        """Once traffic has stopped and time ran out: every request ended, counts are zero."""
        world = self.world
        for record in world.requests.values():
            answer = self.monitor.answers.get(record.req_id)
            if record.cancelled_at is not None:
                ok = answer in (None, "granted")
            elif answer == "granted":
                ok = record.finished_at is not None
            else:
                ok = answer == "rejected"
            if not ok or not record.done:
                self.monitor.fail(
                    NOTHING_LOST,
                    f"request {record.req_id} for {record.model} (arrived t={record.arrived}) "
                    f"has not ended properly by t={world.now}: {record!r}, answer {answer}",
                )
        for name, core in world.models.items():
            if core.queue or core.in_flight:
                self.monitor.fail(
                    NOTHING_LOST,
                    f"{name} still holds queue {sorted(core.queue)} and in flight "
                    f"{sorted(core.in_flight)} at t={world.now} after traffic stopped",
                )
