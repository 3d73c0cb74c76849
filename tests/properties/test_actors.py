"""The real trio actors (ModelActor, SchedulerActor) under whole request schedules.

No sockets and no processes: the hook runner is replaced by a `trio.sleep` of the scripted
duration, the clients are trio tasks that acquire, wait, "serve" and finish exactly as the
front end does, and each example runs in a fresh `trio.run` on a `MockClock` that jumps
whenever every task is blocked, so a schedule of minutes runs in milliseconds. The checks
are `llmux.testing`'s: a `Monitor` fed from a recording Telemetry sees every transition and
grant as the actors perform them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, target
from hypothesis import strategies as st

from llmux.actors import ModelActor, SchedulerActor, SchedulerMailbox, Ticket
from llmux.config import ModelConfig
from llmux.core.messages import Anomaly, Grant, Hook, PolicyError, Reject, Transition
from llmux.core.model import ModelCore
from llmux.core.policy import SwitchPolicy, starvation_bound
from llmux.core.scheduler import SchedulerCore
from llmux.core.world import HookScript, RequestRecord, Settings, bound_inputs, model_core
from llmux.core.world import scheduler_core as make_scheduler_core
from llmux.hooks import HookOutcome, HookRunner
from llmux.observability.metrics import Metrics
from llmux.observability.telemetry import Telemetry
from llmux.policies import BUILTIN
from llmux.testing import (
    NOTHING_LOST,
    InvariantViolation,
    Monitor,
    PlannedRequest,
    capacity_settings,
    hook_scripts,
    quantized,
    request_schedules,
)

MODELS = ("a", "b", "c")
MAX_SERVICE = 2.0
MAX_HOOK = 1.5


class RecordingTelemetry(Telemetry):
    """Feeds the monitor instead of logging; remembers the first violation and stops the run
    (an exception inside an actor would reach us wrapped in exception groups)."""

    def __init__(self, monitor: Monitor, cores: Mapping[str, ModelCore]) -> None:
        super().__init__(Metrics())
        self.monitor = monitor
        self.cores = cores
        self.violation: InvariantViolation | None = None
        self.stop = trio.CancelScope()

    def check(self, call: Any, *args: Any) -> None:
        if self.violation is not None:
            return
        try:
            call(*args)
        except InvariantViolation as exc:
            self.violation = exc
            self.stop.cancel()

    def transition(self, t: Transition) -> None:
        self.check(self.monitor.transition, t)

    def granted(self, model: str, waited: float) -> None:
        self.check(self.monitor.granted, model, None, self.cores[model].state)

    def rejected(self, reject: Reject) -> None:
        self.check(self.monitor.rejected, reject.req_id)

    def anomaly(self, a: Anomaly) -> None:
        self.check(self.monitor.anomaly, a)

    def policy_error(self, e: PolicyError) -> None:
        self.check(self.monitor.policy_error, e)

    def model_report(self, report: Any) -> None:
        pass

    def hook_finished(self, model: str, hook: Hook, outcome: HookOutcome) -> None:
        pass

    def switch_started(self, s: Any) -> None:
        self.check(self.monitor.switch_started, s)

    def switch_finished(self, s: Any) -> None:
        pass


def fake_hooks(scripts: Mapping[str, HookScript], telemetry: RecordingTelemetry) -> HookRunner:
    """A hook runner for the actors: a sleep of the scripted length."""
    attempts: dict[tuple[str, Hook], int] = {}

    async def run_hook(model: str, hook: Hook) -> HookOutcome:
        script = scripts[model]
        attempt = attempts.get((model, hook), 0)
        attempts[model, hook] = attempt + 1
        if hook is Hook.WAKE:
            duration, ok = script.wake_secs, attempt not in script.wake_failures
        else:
            duration, ok = script.sleep_secs, attempt not in script.sleep_failures
            in_flight = telemetry.cores[model].in_flight
            telemetry.check(
                telemetry.monitor.sleep_hook_started, model, set(in_flight), trio.current_time()
            )
        await trio.sleep(duration)
        if not ok:
            telemetry.monitor.hook_failed(trio.current_time())
        return HookOutcome(ok, "" if ok else "exit status 1", duration, "")

    return run_hook


class Served(msgspec.Struct):
    record: RequestRecord
    answered_at: float | None = None
    ticket: Ticket | None = None


def run_actors(
    policy: SwitchPolicy,
    scripts: Mapping[str, HookScript],
    schedule: Sequence[PlannedRequest],
    settings: Settings,
    *,
    core_class: type[ModelCore] = ModelCore,
    scheduler_class: type[SchedulerCore] = SchedulerCore,
) -> Monitor:
    """Run `schedule` through real actors; raise InvariantViolation if anything breaks."""
    cores = {name: model_core(name, settings, core_class) for name in scripts}
    inputs = bound_inputs(scripts, settings, max_service=MAX_SERVICE)
    bound = starvation_bound(policy, inputs)
    monitor = Monitor(
        scripts,
        drain_before_switch=settings.drain_before_switch,
        bound=bound,
        capacity=settings.capacity(scripts),
    )
    telemetry = RecordingTelemetry(monitor, cores)
    scheduler_core = make_scheduler_core(
        list(scripts), policy, settings, core_class=scheduler_class
    )
    served = [Served(RequestRecord(i, p.model, p.at, p.service)) for i, p in enumerate(schedule)]
    failures = sum(len(s.wake_failures) + len(s.sleep_failures) for s in scripts.values())
    cycle = inputs.switch_cycle_secs()
    patience = (failures + 2) * (bound if bound is not None else 10 * len(scripts) * cycle)
    if settings.max_in_flight is not None:
        # Every request may be queued behind all the others, served a few at a time.
        patience += len(schedule) * MAX_SERVICE
    horizon = max((p.at for p in schedule), default=0.0) + patience + MAX_SERVICE

    async def client(actor: ModelActor, plan: PlannedRequest, entry: Served) -> None:
        await trio.sleep_until(plan.at)
        record = entry.record
        ticket = entry.ticket = actor.acquire(record.req_id)
        try:
            limit = plan.cancel_after if plan.cancel_after is not None else math.inf
            with trio.move_on_after(limit) as scope:
                outcome = await ticket.wait()
                entry.answered_at = trio.current_time()
                if isinstance(outcome, Grant):
                    record.granted_at = entry.answered_at
                    await trio.sleep(plan.service)
                    record.finished_at = trio.current_time()
                else:
                    record.rejected = str(outcome.reason)
            if scope.cancelled_caught:
                record.cancelled_at = trio.current_time()
        finally:
            actor.finish(record.req_id)

    async def main() -> None:
        hooks = fake_hooks(scripts, telemetry)
        mailbox = SchedulerMailbox()
        with telemetry.stop:
            actors = {
                name: ModelActor(
                    core,
                    ModelConfig(port=1, wake="wake", sleep="sleep"),
                    hooks=hooks,
                    telemetry=telemetry,
                    scheduler=mailbox,
                )
                for name, core in cores.items()
            }
            scheduler = SchedulerActor(scheduler_core, actors, telemetry=telemetry, mailbox=mailbox)
            async with trio.open_nursery() as system:
                system.start_soon(scheduler.run)
                for actor in actors.values():
                    system.start_soon(actor.run)
                with trio.move_on_at(horizon):
                    async with trio.open_nursery() as clients:
                        for plan, entry in zip(schedule, served, strict=True):
                            clients.start_soon(client, actors[plan.model], plan, entry)
                await trio.testing.wait_all_tasks_blocked()
                system.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    if telemetry.violation is not None:
        raise telemetry.violation

    granted: dict[str, int] = dict.fromkeys(scripts, 0)
    for entry in served:
        record = entry.record
        if entry.answered_at is not None:
            monitor.waited(record.req_id, record.arrived, entry.answered_at, over=True)
        elif record.cancelled_at is not None:
            monitor.waited(record.req_id, record.arrived, record.cancelled_at, over=True)
        # A ticket can be granted after its client gave up (Acquire and Finish were both in
        # the mailbox): the client never sees it, and its Finish releases the slot.
        ticket = entry.ticket
        if record.granted_at is not None or (ticket and isinstance(ticket.outcome, Grant)):
            granted[record.model] += 1
        if not record.done:
            monitor.fail(NOTHING_LOST, f"request never ended by t={horizon}: {record!r}")
        if record.granted_at is not None and not (
            record.finished_at is not None or record.cancelled_at is not None
        ):
            monitor.fail(NOTHING_LOST, f"granted but neither served nor withdrawn: {record!r}")
    if granted != monitor.grants:
        monitor.fail(NOTHING_LOST, f"clients got {granted} grants, models made {monitor.grants}")
    for name, core in cores.items():
        if core.queue or core.in_flight:
            monitor.fail(
                NOTHING_LOST,
                f"{name} still holds queue {sorted(core.queue)}, in flight "
                f"{sorted(core.in_flight)} after every client left",
            )
        if scheduler_core.views[name] != core.report():
            monitor.fail(
                NOTHING_LOST,
                f"scheduler's view {scheduler_core.views[name]} != {name}'s {core.report()}",
            )
    return monitor


@st.composite
def cases(
    draw: st.DrawFn, drain: bool
) -> tuple[dict[str, HookScript], list[PlannedRequest], Settings]:
    scripts = draw(
        st.fixed_dictionaries({m: hook_scripts(MAX_HOOK, failures=True) for m in MODELS})
    )
    schedule = draw(
        request_schedules(MODELS, max_requests=30, horizon=20.0, max_service=MAX_SERVICE)
    )
    timeout = draw(st.none() | quantized(0.5, 20.0))
    min_active = draw(quantized(0.0, 2.0))
    # Mostly unlimited, so that most examples are held to the policy's starvation bound.
    max_in_flight = draw(st.sampled_from([None, None, None, 1, 2, 3]))
    capacity = draw(capacity_settings(MODELS))
    settings = Settings(timeout, drain, min_active, max_in_flight=max_in_flight, **capacity)
    return scripts, schedule, settings


@pytest.mark.parametrize("drain", [True, False], ids=["drain", "no-drain"])
@pytest.mark.parametrize("policy", sorted(BUILTIN))
def test_actors_keep_every_invariant(policy: str, drain: bool) -> None:
    @given(cases(drain))
    def check(case: tuple[dict[str, HookScript], list[PlannedRequest], Settings]) -> None:
        scripts, schedule, settings = case
        monitor = run_actors(BUILTIN[policy](), scripts, schedule, settings)
        target(monitor.max_wait_ratio, label="max wait / starvation bound")

    check()
