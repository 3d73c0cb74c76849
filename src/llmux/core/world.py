"""A deterministic world: the same cores the server runs, composed with virtual time.

Requests arrive, take their service time once granted, and may be cancelled; hooks take the
time (and succeed or fail as) the script says. A backend serves any number of requests at once
unless `Settings.backend_slots` says otherwise: then it serves that many and queues the rest,
first come first served, as a GPU's batch does once it is full. Messages between cores are
delivered in order at the instant they are sent, exactly as the actors' mailboxes deliver
them, and every core gets a Tick when its own deadline comes. No threads, no sockets, no
sleeps: the same inputs give the same run, which is what the simulator and the property suite
build on.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import msgspec

from llmux.core.capacity import Capacity
from llmux.core.cost import SwitchCostTracker
from llmux.core.messages import (
    Acquire,
    Anomaly,
    Drain,
    Finish,
    Grant,
    Hook,
    HookDone,
    ManualSleep,
    ManualWake,
    ModelInput,
    Pin,
    PolicyError,
    Reject,
    RunHook,
    SchedulerInput,
    SendDrain,
    SendPin,
    SendWake,
    SetPin,
    Shutdown,
    SwitchFinished,
    SwitchStarted,
    Tick,
    Transition,
    Wake,
)
from llmux.core.model import ModelCore
from llmux.core.policy import BoundInputs, SwitchPolicy
from llmux.core.scheduler import FAILURE_BACKOFF_SECS, SchedulerCore

T = TypeVar("T")


class HookScript(msgspec.Struct, frozen=True):
    """How long a model's hooks take; `wake_failures` and `sleep_failures` list which
    attempts (0-based, counted per model and hook) fail."""

    wake_secs: float = 1.0
    sleep_secs: float = 1.0
    wake_failures: frozenset[int] = frozenset()
    sleep_failures: frozenset[int] = frozenset()


class HookRun(msgspec.Struct, frozen=True):
    """One hook run as the script decided it when it started: it ends at `finished`."""

    model: str
    hook: Hook
    attempt: int
    started: float
    finished: float
    ok: bool


class RunawayError(RuntimeError):
    """`World.run(max_steps=...)` processed that many instants without running out of work:
    something keeps asking to be woken (a policy that defers by 0 s forever, say)."""


class Settings(msgspec.Struct, frozen=True):
    """Everything about a deployment that the cores decide with, as the server has it.

    A per-model field holds one value for every model or a dict by model name (a model left
    out gets the field's "none"). `llmux.build.settings_from_config` makes one from a config
    file, and the server builds its cores from it with `model_core` / `scheduler_core`, as
    World does: one builder, so a simulation is the server's behaviour.
    """

    request_timeout: float | None = None
    drain_before_switch: bool = True
    min_active: float = 0.0
    # Each model's idle_sleep_secs (None: never put an idle model to sleep).
    idle_sleep: float | dict[str, float | None] | None = None
    # How many requests one backend serves at once; the rest wait inside the backend, in
    # order. None: as many as it is given (service time does not depend on load).
    backend_slots: int | None = None
    # The models' max_in_flight (None: no limit on the requests forwarded at once).
    max_in_flight: int | dict[str, int | None] | None = None
    # The models' max_queue (None: unbounded).
    max_queue: int | dict[str, int | None] | None = None
    # The models' health_interval_secs (None: no periodic alive probe).
    health_interval: float | dict[str, float | None] | None = None
    # Which models have an alive hook (probed at once when their backend is unreachable).
    alive_probe: bool | dict[str, bool] = False
    # The resources the models share, with capacities (None: one model awake at a time),
    # and what each model holds of them while not asleep (a model left out holds nothing).
    resources: dict[str, float] | None = None
    needs: dict[str, dict[str, float]] | None = None
    # Models never evicted to make room.
    persistent: frozenset[str] = frozenset()

    def capacity(self, models: Iterable[str]) -> Capacity:
        if self.resources is None:
            return Capacity.single(models, self.persistent)
        return Capacity(self.resources, self.needs or {}, self.persistent)

    def max_in_flight_of(self, model: str) -> int | None:
        return _of(self.max_in_flight, model)

    def idle_sleep_of(self, model: str) -> float | None:
        return _of(self.idle_sleep, model)

    def smallest_max_in_flight(self) -> int | None:
        if isinstance(self.max_in_flight, dict):
            limits = [v for v in self.max_in_flight.values() if v is not None]
            return min(limits) if limits else None
        return self.max_in_flight


def _of(value: T | dict[str, T | None] | None, model: str) -> T | None:
    if isinstance(value, dict):
        return value.get(model)
    return value


def model_core(name: str, settings: Settings, core_class: type[ModelCore] = ModelCore) -> ModelCore:
    """A model's core configured by `settings` (`core_class` lets a test run a broken one)."""
    alive = settings.alive_probe
    return core_class(
        name,
        request_timeout=settings.request_timeout,
        drain_before_switch=settings.drain_before_switch,
        max_queue=_of(settings.max_queue, name),
        max_in_flight=settings.max_in_flight_of(name),
        health_interval=_of(settings.health_interval, name),
        alive_probe=alive.get(name, False) if isinstance(alive, dict) else alive,
    )


def scheduler_core(
    models: Sequence[str],
    policy: SwitchPolicy,
    settings: Settings,
    *,
    costs: SwitchCostTracker | None = None,
    failure_backoff: float = FAILURE_BACKOFF_SECS,
    core_class: type[SchedulerCore] = SchedulerCore,
) -> SchedulerCore:
    """The scheduler's core for `models`, configured by `settings` (`core_class` lets a
    test run a broken one)."""
    return core_class(
        list(models),
        policy,
        min_active=settings.min_active,
        failure_backoff=failure_backoff,
        costs=costs,
        idle_sleep={name: settings.idle_sleep_of(name) for name in models},
        capacity=settings.capacity(models),
    )


def bound_inputs(
    hooks: Mapping[str, HookScript],
    settings: Settings,
    *,
    max_service: float,
    failure_backoff: float = FAILURE_BACKOFF_SECS,
) -> BoundInputs:
    """What a policy's starvation bound is given for a world of `hooks` and `settings` whose
    requests take at most `max_service`."""
    return BoundInputs(
        models=len(hooks),
        max_wake_secs=max((h.wake_secs for h in hooks.values()), default=0.0),
        max_sleep_secs=max((h.sleep_secs for h in hooks.values()), default=0.0),
        max_service_secs=max_service,
        min_active=settings.min_active,
        request_timeout=settings.request_timeout,
        drain_before_switch=settings.drain_before_switch,
        failure_backoff=failure_backoff,
        max_in_flight=settings.smallest_max_in_flight(),
    )


class RequestRecord(msgspec.Struct):
    req_id: int
    model: str
    arrived: float
    service: float
    granted_at: float | None = None
    # When the backend started serving it: granted_at, unless it queued for a backend slot.
    started_at: float | None = None
    finished_at: float | None = None
    rejected: str | None = None
    cancelled_at: float | None = None

    @property
    def done(self) -> bool:
        return (
            self.finished_at is not None
            or self.rejected is not None
            or (self.cancelled_at is not None)
        )


_Action = Callable[[], None]


class World:
    def __init__(
        self,
        hooks: Mapping[str, HookScript],
        policy: SwitchPolicy,
        settings: Settings | None = None,
        *,
        on_effect: Callable[[object], None] | None = None,
        core_class: type[ModelCore] = ModelCore,
        scheduler_class: type[SchedulerCore] = SchedulerCore,
    ) -> None:
        settings = settings if settings is not None else Settings()
        self.now = 0.0
        self.settings = settings
        self.hooks = dict(hooks)
        self.costs = SwitchCostTracker()
        # `core_class` and `scheduler_class` let a test run a deliberately broken core (see
        # llmux.testing).
        self.models = {name: model_core(name, settings, core_class) for name in hooks}
        self.scheduler = scheduler_core(
            list(hooks), policy, settings, costs=self.costs, core_class=scheduler_class
        )
        self.requests: dict[int, RequestRecord] = {}
        self.transitions: list[Transition] = []
        self.switches: list[SwitchFinished] = []
        self.anomalies: list[Anomaly] = []
        # A broken policy's errors, which the scheduler contained (see PolicyError).
        self.policy_errors: list[PolicyError] = []
        self.hook_runs: list[tuple[float, str, Hook]] = []
        # Every hook run with its scripted end and result, recorded when it starts.
        self.hook_outcomes: list[HookRun] = []
        self.wake_attempts: dict[str, int] = dict.fromkeys(hooks, 0)
        self.sleep_attempts: dict[str, int] = dict.fromkeys(hooks, 0)
        self._on_effect = on_effect
        self._ids = itertools.count()
        self._seq = itertools.count()
        self._timeline: list[tuple[float, int, _Action]] = []
        self._mail: deque[tuple[str, ModelInput]] = deque()
        if settings.backend_slots is not None and settings.backend_slots < 1:
            raise ValueError(f"backend_slots must be >= 1, not {settings.backend_slots}")
        self._backend_queue: dict[str, deque[RequestRecord]] = {name: deque() for name in hooks}
        self._backend_busy: dict[str, int] = dict.fromkeys(hooks, 0)

    # ---- inputs ------------------------------------------------------------------------------

    def submit(self, model: str, at: float, service: float) -> int:
        req_id = next(self._ids)
        self.requests[req_id] = RequestRecord(req_id, model, at, service)
        self._at(at, lambda: self._deliver(model, Acquire(req_id)))
        return req_id

    def cancel(self, req_id: int, at: float) -> None:
        """The client goes away at `at` (a no-op if the request is already over)."""

        def go() -> None:
            record = self.requests[req_id]
            if record.done:
                return
            record.cancelled_at = self.now
            self._deliver(record.model, Finish(req_id))
            if record.started_at is not None:
                # The backend stops serving a request whose client left (vLLM aborts it).
                self._backend_busy[record.model] -= 1
                self._serve_next(record.model)

        self._at(at, go)

    def fail_next_hook(self, model: str, hook: Hook) -> None:
        """Make the next `hook` run of `model` that has not started yet fail."""
        script = self.hooks[model]
        if hook is Hook.WAKE:
            failures = script.wake_failures | {self.wake_attempts[model]}
            self.hooks[model] = msgspec.structs.replace(script, wake_failures=failures)
        else:
            failures = script.sleep_failures | {self.sleep_attempts[model]}
            self.hooks[model] = msgspec.structs.replace(script, sleep_failures=failures)

    def heal_hooks(self) -> None:
        """From now on every hook run that has not started yet succeeds."""
        for name, script in self.hooks.items():
            self.hooks[name] = msgspec.structs.replace(
                script,
                wake_failures=frozenset(
                    i for i in script.wake_failures if i < self.wake_attempts[name]
                ),
                sleep_failures=frozenset(
                    i for i in script.sleep_failures if i < self.sleep_attempts[name]
                ),
            )

    # ---- queries -----------------------------------------------------------------------------

    def live_requests(self) -> list[RequestRecord]:
        """Requests that have arrived and are not over yet, oldest first."""
        return [r for r in self.requests.values() if r.arrived <= self.now and not r.done]

    # ---- running -----------------------------------------------------------------------------

    def run(self, until: float = math.inf, *, max_steps: int | None = None) -> None:
        """Process everything due up to `until` (everything, if no limit).

        With `max_steps`, raise `RunawayError` after processing that many instants rather
        than loop forever at one instant.
        """
        steps = 0
        while True:
            next_at = self._next_time()
            if next_at is None or next_at > until:
                break
            steps += 1
            if max_steps is not None and steps > max_steps:
                raise RunawayError(f"still busy at t={self.now} after {max_steps} instants")
            self.now = max(self.now, next_at)
            while self._timeline and self._timeline[0][0] <= self.now:
                _, _, action = heapq.heappop(self._timeline)
                action()
                self._flush()
            self._tick_due()
        if until < math.inf:
            self.now = max(self.now, until)

    def _next_time(self) -> float | None:
        candidates = [self._timeline[0][0]] if self._timeline else []
        for core in self.models.values():
            deadline = core.next_deadline()
            if deadline is not None:
                candidates.append(deadline)
        deadline = self.scheduler.next_deadline()
        if deadline is not None:
            candidates.append(deadline)
        return min(candidates) if candidates else None

    def _tick_due(self) -> None:
        for name, core in self.models.items():
            deadline = core.next_deadline()
            if deadline is not None and deadline <= self.now:
                self._deliver(name, Tick())
        deadline = self.scheduler.next_deadline()
        if deadline is not None and deadline <= self.now:
            self._scheduler_input(Tick())
        self._flush()

    def _at(self, when: float, action: _Action) -> None:
        heapq.heappush(self._timeline, (when, next(self._seq), action))

    # ---- delivery, in mailbox order ----------------------------------------------------------

    def _deliver(self, model: str, message: ModelInput) -> None:
        self._mail.append((model, message))

    def _flush(self) -> None:
        while self._mail:
            model, message = self._mail.popleft()
            core = self.models[model]
            self._perform(core.handle(message, self.now))
            report = core.report_if_changed()
            if report is not None:
                self._scheduler_input(report)

    def command(self, message: ManualWake | ManualSleep | Pin | Shutdown, at: float) -> None:
        """An operator's command (or the shutdown signal) reaches the scheduler at `at`.

        Shutdown goes to every model first, then to the scheduler, as the app sends it."""

        def go() -> None:
            if isinstance(message, Shutdown):
                for name in self.models:
                    self._deliver(name, Shutdown())
                self._flush()
            self._scheduler_input(message)

        self._at(at, go)

    def _scheduler_input(self, message: SchedulerInput) -> None:
        self._perform(self.scheduler.handle(message, self.now))

    # ---- effects -----------------------------------------------------------------------------

    def _perform(self, effects: Iterable[object]) -> None:
        for effect in effects:
            if self._on_effect is not None:
                self._on_effect(effect)
            match effect:
                case Grant(req_id=req_id, model=model):
                    self._granted(req_id, model)
                case Reject(req_id=req_id, reason=reason):
                    record = self.requests[req_id]
                    record.rejected = str(reason)
                case RunHook(model=model, hook=hook):
                    self._run_hook(model, hook)
                case SendWake(model=model, cause=cause):
                    self._deliver(model, Wake(cause))
                case SendDrain(model=model, cause=cause):
                    self._deliver(model, Drain(cause))
                case SendPin(model=model, pinned_to=pinned_to):
                    self._deliver(model, SetPin(pinned_to))
                case Transition():
                    self.transitions.append(effect)
                case SwitchFinished():
                    self.switches.append(effect)
                case Anomaly():
                    self.anomalies.append(effect)
                case PolicyError():
                    self.policy_errors.append(effect)
                case SwitchStarted():
                    pass

    def _granted(self, req_id: int, model: str) -> None:
        record = self.requests[req_id]
        record.granted_at = self.now
        self._backend_queue[model].append(record)
        self._serve_next(model)

    def _serve_next(self, model: str) -> None:
        slots = self.settings.backend_slots
        queue = self._backend_queue[model]
        while queue and (slots is None or self._backend_busy[model] < slots):
            record = queue.popleft()
            if record.cancelled_at is None:
                self._start_service(record)

    def _start_service(self, record: RequestRecord) -> None:
        record.started_at = self.now
        self._backend_busy[record.model] += 1

        def finish() -> None:
            if record.cancelled_at is None:
                record.finished_at = self.now
                self._backend_busy[record.model] -= 1
                self._deliver(record.model, Finish(record.req_id))
                self._serve_next(record.model)

        self._at(self.now + record.service, finish)

    def _run_hook(self, model: str, hook: Hook) -> None:
        script = self.hooks[model]
        self.hook_runs.append((self.now, model, hook))
        if hook is Hook.WAKE:
            attempt = self.wake_attempts[model]
            self.wake_attempts[model] = attempt + 1
            ok = attempt not in script.wake_failures
            duration = script.wake_secs
        elif hook is Hook.ALIVE:
            # Probes (health_interval) find the model up: a World's backends never die.
            attempt, ok, duration = 0, True, 0.0
        else:
            attempt = self.sleep_attempts[model]
            self.sleep_attempts[model] = attempt + 1
            ok = attempt not in script.sleep_failures
            duration = script.sleep_secs
        self.hook_outcomes.append(HookRun(model, hook, attempt, self.now, self.now + duration, ok))
        detail = "" if ok else "exit status 1"
        self._at(self.now + duration, lambda: self._deliver(model, HookDone(hook, ok, detail)))
