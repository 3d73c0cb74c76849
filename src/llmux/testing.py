"""Property testing for llmux and for switch policies: strategies, invariants, conformance.

A policy author writes, in their own pytest file::

    from llmux.testing import policy_conformance
    from mypolicies import MyPolicy

    TestMyPolicy = policy_conformance(MyPolicy, min_active=5.0)

and gets a Hypothesis state machine that runs `MyPolicy` inside the real scheduler and model
cores (`llmux.core.world.World`, the same code the server runs) while requests arrive in
bursts, time passes, clients hang up and hooks fail, checking every invariant below after
every step and at every effect. llmux's own property suite (`tests/properties/`) is built
from this module too.

The invariants (`InvariantViolation.invariant` names the one that broke):

- ``single-awake``: at most one model is outside Sleeping at any instant, checked at every
  lifecycle transition, in the order the cores took them.
- ``admission``: a request is granted only by a model that is Active.
- ``drain``: with `drain_before_switch`, a sleep hook never starts while the model has
  requests in flight, and a Draining model always has some (it is not stuck). Without it,
  the drain is immediate: Active -drain-> Draining -drained-> SleepingDown at one instant
  and the sleep hook starts with the requests still in flight; llmux does not cut or
  reject them, they keep their in-flight slot until their own `Finish`, which may come
  while the model sleeps or after it woke again.
- ``nothing-lost``: every request ends exactly once (granted then finished or withdrawn,
  rejected, or withdrawn while queued); the cores' queues and in-flight sets hold exactly
  the requests that are waiting and running, and are empty once traffic stops.
- ``no-starvation``: if the policy declares a starvation bound B (see
  `llmux.core.policy.DeclaresStarvationBound`), no request still waits B seconds after
  arriving or after the last hook failure, whichever is later.
- ``cancellation``: a withdrawn request (queued, queued at a draining model, in flight at
  a draining model, in service) leaves nothing behind in any queue or in-flight set.
- ``edges``: every transition is one that `llmux.core.lifecycle.edges()` declares.
- ``no-anomaly``: the cores never report an `Anomaly`.
- ``no-livelock``: the world never spins at one instant (e.g. a policy deferring by 0 s):
  `CheckedWorld` stops it after `max_instants_at_one_time` instants without virtual time
  advancing (or `max_steps` instants in one step).
- ``policy-errors``: the policy never raises and always returns a decision (`on_pending` a
  `SwitchNow`, `Defer` or `Skip`, `on_tick` a model name or None). The scheduler contains
  such a bug (it takes FIFO's decision for that call and reports a `PolicyError`), so a
  server survives it, but it is a bug: the violation quotes the scheduler's one-line
  detail ("on_pending returned None, not SwitchNow, Defer or Skip").
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import unittest
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import msgspec
from hypothesis import HealthCheck, Phase, event, given, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from llmux.core.lifecycle import ModelLifecycle, SwitchSequence, edges
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
    Transition,
)
from llmux.core.model import ACTIVE, DRAINING, SLEEPING, ModelCore
from llmux.core.policy import SwitchPolicy, starvation_bound
from llmux.core.world import HookScript, RunawayError, Settings, World, bound_inputs

__all__ = [
    "INVARIANTS",
    "CheckedWorld",
    "InvariantViolation",
    "Monitor",
    "PlannedRequest",
    "Schedule",
    "conformance_machine",
    "endless_traffic",
    "hook_scripts",
    "load_profile",
    "policy_conformance",
    "quantized",
    "register_profiles",
    "request_schedules",
    "run_schedule",
]

SINGLE_AWAKE = "single-awake"
ADMISSION = "admission"
DRAIN = "drain"
NOTHING_LOST = "nothing-lost"
NO_STARVATION = "no-starvation"
CANCELLATION = "cancellation"
EDGES = "edges"
NO_ANOMALY = "no-anomaly"
NO_LIVELOCK = "no-livelock"
POLICY_ERRORS = "policy-errors"

INVARIANTS: dict[str, str] = {
    SINGLE_AWAKE: "at most one model is outside Sleeping at any instant",
    ADMISSION: "a request is granted only by an Active model",
    DRAIN: "with drain_before_switch, no sleep hook starts while requests are in flight",
    NOTHING_LOST: "every request ends exactly once and the counts return to zero",
    NO_STARVATION: "no request waits longer than the policy's declared starvation bound",
    CANCELLATION: "a withdrawn request leaves nothing behind",
    EDGES: "every transition is declared in llmux.core.lifecycle",
    NO_ANOMALY: "the cores never report an Anomaly",
    NO_LIVELOCK: "the world never spins at one instant",
    POLICY_ERRORS: "the policy never raises and always returns a decision",
}

# Float noise allowed when comparing waits with a bound.
SLACK = 1e-6
# Hook and service times are multiples of this, so that events often coincide: coincidences
# are where ordering bugs live.
QUANTUM = 0.25


class InvariantViolation(AssertionError):
    """An llmux invariant does not hold; `invariant` is one of the `INVARIANTS` keys."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"[{invariant}] {detail}")
        self.invariant = invariant
        self.detail = detail


# ---- checking, event by event ----------------------------------------------------------------


_LIFECYCLE_EDGES = edges(ModelLifecycle)
_SWITCH_EDGES = edges(SwitchSequence)
_MACHINE_EDGES = {"ModelLifecycle": _LIFECYCLE_EDGES, "SwitchSequence": _SWITCH_EDGES}


class Monitor:
    """The invariants that can be checked from the effects alone, as they happen.

    Whoever runs the cores feeds it: `CheckedWorld` does from `World`'s effects, and the
    actor property test from a recording `Telemetry`. It raises `InvariantViolation` at the
    first event that breaks a rule.
    """

    def __init__(
        self,
        models: Iterable[str],
        *,
        drain_before_switch: bool,
        bound: float | None,
    ) -> None:
        self.states: dict[str, str] = dict.fromkeys(models, SLEEPING)
        self.drain_before_switch = drain_before_switch
        self.bound = bound
        self.transitions: list[Transition] = []
        self.answers: dict[int, str] = {}
        self.failure_ends: list[float] = []
        self.max_wait = 0.0
        self.grants: dict[str, int] = dict.fromkeys(self.states, 0)

    def fail(self, invariant: str, detail: str) -> None:
        raise InvariantViolation(invariant, detail)

    def awake(self) -> list[str]:
        return sorted(m for m, state in self.states.items() if state != SLEEPING)

    def transition(self, t: Transition) -> None:
        self.transitions.append(t)
        declared = _MACHINE_EDGES.get(t.machine)
        if declared is None or (t.source, t.event, t.target) not in declared:
            self.fail(EDGES, f"undeclared edge {t.machine} {t.source} -{t.event}-> {t.target}")
        if t.machine != "ModelLifecycle":
            return
        known = self.states.get(t.subject)
        if known != t.source:
            self.fail(
                EDGES,
                f"{t.subject} took {t.source} -{t.event}-> {t.target} at t={t.at} but its "
                f"previous transition left it in {known}",
            )
        self.states[t.subject] = t.target
        awake = self.awake()
        if len(awake) > 1:
            self.fail(SINGLE_AWAKE, f"{awake} are all awake at t={t.at} (after {t!r})")

    def granted(self, model: str, req_id: int | None, core_state: str) -> None:
        """`core_state`: the model core's state right after it decided the grant."""
        self.grants[model] = self.grants.get(model, 0) + 1
        if core_state != ACTIVE or self.states.get(model) != ACTIVE:
            self.fail(
                ADMISSION,
                f"request {req_id} granted by {model} in state {core_state} "
                f"(per its transitions: {self.states.get(model)})",
            )
        if req_id is not None:
            self._answer(req_id, "granted")

    def rejected(self, req_id: int) -> None:
        self._answer(req_id, "rejected")

    def _answer(self, req_id: int, how: str) -> None:
        before = self.answers.get(req_id)
        if before is not None:
            self.fail(NOTHING_LOST, f"request {req_id} was {before}, and then {how} too")
        self.answers[req_id] = how

    def sleep_hook_started(self, model: str, in_flight: Collection[int], at: float) -> None:
        if self.drain_before_switch and in_flight:
            self.fail(
                DRAIN,
                f"sleep hook of {model} started at t={at} with {sorted(in_flight)} in flight",
            )

    def hook_failed(self, finished_at: float) -> None:
        self.failure_ends.append(finished_at)

    def anomaly(self, a: Anomaly) -> None:
        self.fail(NO_ANOMALY, f"{a.where}: {a.detail}")

    def policy_error(self, e: PolicyError) -> None:
        """The scheduler reported that the policy raised or answered no decision."""
        self.fail(
            POLICY_ERRORS,
            f"{e.detail} (policy {e.policy!r}, at t={e.at}; llmux took FIFO's decision "
            f"instead, but the policy must not rely on that)",
        )

    def waited(self, req_id: int, arrived: float, until: float, *, over: bool) -> float:
        """Check a request's wait, from its arrival to `until` (when it was answered or
        withdrawn if `over`, else now and still waiting), against the declared bound."""
        wait = until - arrived
        self.max_wait = max(self.max_wait, wait)
        bound = self.bound
        if bound is None:
            return wait
        points = [arrived, *sorted(f for f in self.failure_ends if arrived < f < until), until]
        for start, end in itertools.pairwise(points):
            if end - start > bound + SLACK:
                status = "was answered" if over else "is still waiting"
                self.fail(
                    NO_STARVATION,
                    f"request {req_id} (arrived t={arrived}) {status} at t={until}: "
                    f"{end - start:g}s without any hook failure since t={start}, "
                    f"over the declared bound of {bound:g}s",
                )
        return wait

    @property
    def max_wait_ratio(self) -> float:
        """The longest wait seen, as a fraction of the bound (the wait itself if none)."""
        if self.bound is None or self.bound <= 0:
            return self.max_wait
        return self.max_wait / self.bound


# ---- a World with every invariant checked ----------------------------------------------------


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
            hooks, policy, settings, on_effect=self._on_effect, core_class=core_class
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
            hooks, drain_before_switch=settings.drain_before_switch, bound=self.bound
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


# ---- strategies --------------------------------------------------------------------------------


def quantized(low: float, high: float, quantum: float = QUANTUM) -> st.SearchStrategy[float]:
    """Multiples of `quantum` in [low, high]; shrinks towards `low`."""
    return st.integers(math.ceil(low / quantum), math.floor(high / quantum)).map(
        lambda k: k * quantum
    )


def hook_scripts(max_secs: float = 2.0, *, failures: bool = False) -> st.SearchStrategy[HookScript]:
    """Hook durations in [0, max_secs] (0 included: instant hooks are an edge case)."""
    attempts = st.frozensets(st.integers(0, 4), max_size=2) if failures else st.just(frozenset())
    return st.builds(
        HookScript,
        wake_secs=quantized(0.0, max_secs),
        sleep_secs=quantized(0.0, max_secs),
        wake_failures=attempts,
        sleep_failures=attempts,
    )


class PlannedRequest(msgspec.Struct, frozen=True):
    """One request of a schedule: its client leaves `cancel_after` seconds after arriving
    (None: it stays until it is answered and served)."""

    model: str
    at: float
    service: float
    cancel_after: float | None = None


class Schedule(list[PlannedRequest]):
    """A request schedule (a list of `PlannedRequest`) that prints one short line per request,
    so that a failing example stays readable::

        Schedule.parse('''
            #0  t=0.0   a  service=3.0
            #1  t=1.25  b  service=0.25  cancel_after=2.0
        ''')

    which is also Python that rebuilds it (to replay it with `run_schedule`). ``#n`` is the
    request's id in the world `run_schedule` builds (ids follow the schedule's order): the id
    an `InvariantViolation` names. `request_schedules` and `endless_traffic` draw these.
    """

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """The schedule that `repr` printed: one request a line, as ``[#n] t=AT MODEL
        service=SECS [cancel_after=SECS]`` (model names without spaces or ``=``)."""
        schedule = cls()
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if fields and fields[0].startswith("#"):
                fields = fields[1:]
            if not fields:
                continue
            named = dict(f.split("=", 1) for f in fields if "=" in f)
            models = [f for f in fields if "=" not in f]
            unknown = set(named) - {"t", "service", "cancel_after"}
            if len(models) != 1 or unknown or not {"t", "service"} <= set(named):
                raise ValueError(
                    f"line {number} of the schedule: {line.strip()!r} is not "
                    f"'t=AT MODEL service=SECS [cancel_after=SECS]'"
                )
            cancel = named.get("cancel_after")
            schedule.append(
                PlannedRequest(
                    models[0],
                    float(named["t"]),
                    float(named["service"]),
                    float(cancel) if cancel is not None else None,
                )
            )
        return schedule

    def lines(self) -> list[str]:
        """One line per request, in columns."""
        rows = [
            (
                f"#{i}",
                f"t={r.at!r}",
                r.model,
                f"service={r.service!r}",
                f"cancel_after={r.cancel_after!r}" if r.cancel_after is not None else "",
            )
            for i, r in enumerate(self)
        ]
        widths = [max((len(row[k]) for row in rows), default=0) for k in range(4)]
        return [
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, [*widths, 0], strict=True)
            ).rstrip()
            for row in rows
        ]

    def __repr__(self) -> str:
        if not self:
            return "Schedule()"
        body = "".join(f"\n    {line}" for line in self.lines())
        return f"Schedule.parse('''{body}\n''')"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """Hypothesis's (and IPython's) pretty printer: the same, indented where it is."""
        if not self:
            p.text("Schedule()")
            return
        p.text("Schedule.parse('''")
        with p.indent(4):
            for line in self.lines():
                p.break_()
                p.text(line)
        p.break_()
        p.text("''')")


def request_schedules(
    models: Sequence[str],
    *,
    max_requests: int = 40,
    horizon: float = 30.0,
    max_service: float = 3.0,
    cancels: bool = True,
) -> st.SearchStrategy[Schedule]:
    """Whole request schedules: bursts of requests to a model, some of whose clients leave.

    A schedule is a list of bursts (a model, a start, a count, a gap); bursts to different
    models interleave, which is what makes a policy switch.
    """
    cancel_after = st.none() | quantized(0.0, 2 * max_service) if cancels else st.none()

    @st.composite
    def burst(draw: st.DrawFn) -> list[PlannedRequest]:
        model = draw(st.sampled_from(list(models)))
        start = draw(quantized(0.0, horizon))
        count = draw(st.integers(1, 8))
        gap = draw(quantized(0.0, max_service))
        return [
            PlannedRequest(
                model,
                start + i * gap,
                draw(quantized(0.0, max_service)),
                draw(cancel_after),
            )
            for i in range(count)
        ]

    return (
        st.lists(burst(), min_size=1, max_size=max(1, max_requests // 4))
        .map(lambda bursts: sorted((r for b in bursts for r in b), key=lambda r: r.at))
        .map(lambda schedule: Schedule(schedule[:max_requests]))
    )


def endless_traffic(
    busy: str,
    other: str,
    *,
    max_service: float = 3.0,
    horizon: float = 150.0,
) -> st.SearchStrategy[Schedule]:
    """Requests to `busy`, each taking `max_service` and overlapping so that it always has one
    in flight, from 0 to `horizon`, and one request for `other` in the first half."""

    @st.composite
    def schedule(draw: st.DrawFn) -> Schedule:
        gap = draw(quantized(max(QUANTUM, max_service / 2), max_service))
        first = draw(quantized(0.0, max_service))
        stream = [
            PlannedRequest(busy, first + i * gap, max_service)
            for i in range(int((horizon - first) / gap) + 1)
        ]
        lone = PlannedRequest(other, draw(quantized(0.0, horizon / 2)), max_service)
        return Schedule(sorted([*stream, lone], key=lambda r: r.at))

    return schedule()


def run_schedule(
    policy: SwitchPolicy,
    hooks: Mapping[str, HookScript],
    schedule: Sequence[PlannedRequest],
    settings: Settings | None = None,
    *,
    max_service: float,
    core_class: type[ModelCore] = ModelCore,
) -> CheckedWorld:
    """Run a whole schedule through a `CheckedWorld`, checking at every arrival, then
    `settle()`. Raises `InvariantViolation`; returns the world for further assertions."""
    checked = CheckedWorld(hooks, policy, settings, max_service=max_service, core_class=core_class)
    world = checked.world
    for planned in schedule:
        req_id = checked.submit(planned.model, planned.at, planned.service)
        if planned.cancel_after is not None:
            world.cancel(req_id, planned.at + planned.cancel_after)
    for at in sorted({p.at for p in schedule}):
        checked._run(at)
        checked.check()
    checked.settle()
    return checked


# ---- the conformance state machine ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
    policy_factory: Callable[[], SwitchPolicy]
    models: tuple[str, ...]
    max_service: float
    max_hook_secs: float
    min_active: float
    request_timeout: float | Literal["any"] | None
    drain_before_switch: bool | None
    core_class: type[ModelCore]


class PolicyMachine(RuleBasedStateMachine):
    """The rules and invariants; `conformance_machine` makes a subclass per configuration."""

    config: ClassVar[_Config]

    def __init__(self) -> None:
        super().__init__()
        self.checked: CheckedWorld | None = None
        self.broken = False

    @property
    def world(self) -> CheckedWorld:
        assert self.checked is not None
        return self.checked

    def _guard(self, step: Callable[[], object]) -> None:
        try:
            step()
        except BaseException:
            self.broken = True
            raise

    @invariant()
    def every_invariant_holds(self) -> None:
        if self.checked is not None:
            self._guard(self.checked.check)

    def teardown(self) -> None:
        checked = self.checked
        if checked is None or self.broken:
            return
        checked.settle()
        target(checked.monitor.max_wait_ratio, label="max wait / starvation bound")
        for where in checked.cancels:
            event(f"cancelled while {where}")


def conformance_machine(
    policy_class: Callable[..., SwitchPolicy],
    *,
    policy_options: Mapping[str, Any] | None = None,
    models: Sequence[str] = ("a", "b", "c"),
    max_service: float = 3.0,
    max_hook_secs: float = 2.0,
    min_active: float = 0.0,
    request_timeout: float | Literal["any"] | None = "any",
    drain_before_switch: bool | None = None,
    core_class: type[ModelCore] = ModelCore,
) -> type[PolicyMachine]:
    """The Hypothesis state machine that `policy_conformance` runs.

    `request_timeout="any"` and `drain_before_switch=None` let each example choose.
    """
    options = dict(policy_options or {})
    config = _Config(
        policy_factory=lambda: policy_class(**options),
        models=tuple(models),
        max_service=max_service,
        max_hook_secs=max_hook_secs,
        min_active=min_active,
        request_timeout=request_timeout,
        drain_before_switch=drain_before_switch,
        core_class=core_class,
    )
    cycle = min_active + max_service + 2 * max_hook_secs
    model_names = st.sampled_from(config.models)
    services = quantized(0.0, max_service)
    drains = st.booleans() if drain_before_switch is None else st.just(drain_before_switch)
    timeouts: st.SearchStrategy[float | None] = (
        st.none() | quantized(QUANTUM, 3 * cycle)
        if request_timeout == "any"
        else st.just(request_timeout)
    )

    def has_live_requests(self: PolicyMachine) -> bool:
        return self.checked is not None and bool(self.checked.world.live_requests())

    class Machine(PolicyMachine):
        @initialize(
            hooks=st.fixed_dictionaries({m: hook_scripts(max_hook_secs) for m in config.models}),
            drain=drains,
            timeout=timeouts,
        )
        def start(self, hooks: dict[str, HookScript], drain: bool, timeout: float | None) -> None:
            settings = Settings(
                request_timeout=timeout, drain_before_switch=drain, min_active=min_active
            )
            self.checked = CheckedWorld(
                hooks,
                config.policy_factory(),
                settings,
                max_service=max_service,
                core_class=config.core_class,
            )

        @rule(model=model_names, service=services)
        def arrive(self, model: str, service: float) -> None:
            world = self.world
            self._guard(lambda: world.submit(model, world.world.now, service))
            self._guard(lambda: world.advance(0.0))

        @rule(
            model=model_names,
            count=st.integers(2, 24),
            gap=quantized(0.0, max_service),
            service=services,
        )
        def stream(self, model: str, count: int, gap: float, service: float) -> None:
            """A burst of `count` requests, one every `gap` seconds, from now on."""
            world = self.world
            for i in range(count):
                world.submit(model, world.world.now + i * gap, service)
            self._guard(lambda: world.advance(0.0))

        @rule(dt=quantized(0.0, cycle))
        def advance(self, dt: float) -> None:
            self._guard(lambda: self.world.advance(dt))

        @precondition(has_live_requests)
        @rule(pick=st.integers(0, 63))
        def cancel(self, pick: int) -> None:
            live = self.world.world.live_requests()
            self._guard(lambda: self.world.cancel(live[pick % len(live)].req_id))

        @rule(model=model_names, hook=st.sampled_from(Hook))
        def fail_next_hook(self, model: str, hook: Hook) -> None:
            self.world.fail_next_hook(model, hook)

        @rule()
        def quiesce(self) -> None:
            """Traffic stops; everything must end, within the bound if one is declared."""
            self._guard(self.world.settle)

    name = getattr(policy_class, "__name__", "Policy")
    Machine.config = config
    Machine.__name__ = Machine.__qualname__ = f"{name}Conformance"
    return Machine


def policy_conformance(
    policy_class: Callable[..., SwitchPolicy],
    *,
    policy_options: Mapping[str, Any] | None = None,
    models: Sequence[str] = ("a", "b", "c"),
    max_service: float = 3.0,
    max_hook_secs: float = 2.0,
    min_active: float = 0.0,
    request_timeout: float | Literal["any"] | None = "any",
    drain_before_switch: bool | None = None,
    core_class: type[ModelCore] = ModelCore,
    hypothesis_settings: settings | None = None,
) -> type[unittest.TestCase]:
    """A unittest/pytest test case class holding `policy_class` to every llmux invariant.

    `policy_options` go to the policy's constructor (as the config file's extra `policy`
    keys would). `min_active`, `request_timeout` and `drain_before_switch` are the
    deployment's settings: by default every example picks a timeout (or none) and a drain
    mode. `max_service` and `max_hook_secs` bound the generated workload, and are what the
    policy's `starvation_bound` is given. Hypothesis settings come from the loaded profile
    (see `register_profiles`) unless `hypothesis_settings` is given.

    The class has two tests: the state machine (`test_state_machine`), and
    `test_endless_traffic_does_not_starve_another_model` (only meaningful with a declared
    bound: one model always busy, one request for another).
    """
    machine = conformance_machine(
        policy_class,
        policy_options=policy_options,
        models=models,
        max_service=max_service,
        max_hook_secs=max_hook_secs,
        min_active=min_active,
        request_timeout=request_timeout,
        drain_before_switch=drain_before_switch,
        core_class=core_class,
    )
    config = machine.config
    busy, other = config.models[0], config.models[1]

    def current_settings() -> settings:
        base = hypothesis_settings if hypothesis_settings is not None else settings()
        return settings(base, deadline=None, suppress_health_check=list(HealthCheck))

    @st.composite
    def traffic_cases(draw: st.DrawFn) -> tuple[dict[str, HookScript], list[PlannedRequest]]:
        hooks = draw(st.fixed_dictionaries({m: hook_scripts(max_hook_secs) for m in models}))
        return hooks, draw(endless_traffic(busy, other, max_service=max_service))

    class ConformanceTest(machine.TestCase):  # type: ignore[name-defined,misc]
        def test_state_machine(self) -> None:
            run_state_machine_as_test(machine, settings=current_settings())

        def test_endless_traffic_does_not_starve_another_model(self) -> None:
            drain = drain_before_switch if drain_before_switch is not None else True
            timeout = None if request_timeout == "any" else request_timeout

            @current_settings()
            @given(traffic_cases())
            def check(case: tuple[dict[str, HookScript], list[PlannedRequest]]) -> None:
                hooks, schedule = case
                checked = run_schedule(
                    config.policy_factory(),
                    hooks,
                    schedule,
                    Settings(timeout, drain, min_active),
                    max_service=max_service,
                    core_class=core_class,
                )
                target(checked.monitor.max_wait_ratio, label="max wait / starvation bound")

            check()

    ConformanceTest.__name__ = ConformanceTest.__qualname__ = f"Test{machine.__name__}"
    return ConformanceTest


# ---- Hypothesis profiles -------------------------------------------------------------------


def register_profiles() -> None:
    """Register llmux's Hypothesis profiles: "ci" (quick, the default for the suite), "dev"
    (quicker still) and "thorough" (for a nightly run or before a release)."""
    common: dict[str, Any] = {
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    settings.register_profile("dev", max_examples=10, stateful_step_count=20, **common)
    settings.register_profile("ci", max_examples=75, stateful_step_count=50, **common)
    settings.register_profile(
        "thorough",
        max_examples=1000,
        stateful_step_count=100,
        phases=list(Phase),
        **common,
    )


def load_profile(default: str = "ci") -> str:
    """Load the profile named by $HYPOTHESIS_PROFILE (or `default`); returns its name."""
    register_profiles()
    name = os.environ.get("HYPOTHESIS_PROFILE", default)
    settings.load_profile(name)
    return name
