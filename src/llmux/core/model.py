"""ModelCore: one model's lifecycle, waiter queue and in-flight set, as pure code.

Admission is plain code on purpose: it runs once per request and must cost microseconds,
while the lifecycle machine is driven only a few times per switch.
"""

from __future__ import annotations

import itertools
import math

import msgspec

from llmux.core.lifecycle import MODEL_MACHINE, Compiled, ModelEvent, ModelLifecycle, ModelState
from llmux.core.messages import (
    Acquire,
    Adopt,
    Anomaly,
    Drain,
    Finish,
    Grant,
    Hook,
    HookDone,
    ModelEffect,
    ModelInput,
    ModelReport,
    ModelStatus,
    Reject,
    RejectReason,
    RunHook,
    SetPin,
    Shutdown,
    Tick,
    Transition,
    Unreachable,
    Wake,
)

LIFECYCLE = Compiled(ModelLifecycle)

SLEEPING = ModelState.SLEEPING
WAKING = ModelState.WAKING
ACTIVE = ModelState.ACTIVE
DRAINING = ModelState.DRAINING
SLEEPING_DOWN = ModelState.SLEEPING_DOWN

# Without an `alive` hook to ask, this many requests in a row that cannot connect to an
# Active model's backend (with no request finishing normally in between) mean it is gone.
# One could be a race with a restart; on loopback a refusal means nobody is listening.
UNREACHABLE_FOR_DEATH = 2


class Waiter(msgspec.Struct):
    arrived: float
    deadline: float


class ModelCore:
    def __init__(
        self,
        name: str,
        *,
        request_timeout: float | None = None,
        drain_before_switch: bool = True,
        max_queue: int | None = None,
        health_interval: float | None = None,
        max_in_flight: int | None = None,
        alive_probe: bool = False,
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.name = name
        # At most this many requests in flight at once; while Active and full, the rest wait
        # in `queue` and are granted in order as requests finish.
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.drain_before_switch = drain_before_switch
        self.max_queue = max_queue
        self.health_interval = health_interval
        # Whether the model has an `alive` hook: an unreachable backend is then asked about
        # at once; without one, repeated failures to connect take it out of service.
        self.alive_probe = alive_probe
        # Granted requests in a row that found the backend unreachable (since one last got
        # through), and those of them whose Finish has not come yet (so that it is not taken
        # for a request that got through; bounded by the in-flight set).
        self._unreachable_streak = 0
        self._unreachable_open: set[int] = set()
        # When the next `alive` probe is due (only while Active), and whether one runs now.
        self._probe_at = math.inf
        self._probing = False
        self.state: str = LIFECYCLE.initial
        self.state_since = 0.0
        self.active_since: float | None = None
        # Insertion-ordered, and every waiter gets the same timeout, so the first entry is
        # both the oldest arrival and the earliest deadline.
        self.queue: dict[int, Waiter] = {}
        self.in_flight: set[int] = set()
        self.closing = False
        self.epoch = 0
        self.pinned_to: str | None = None
        self.idle_since: float | None = None
        self._last_report: ModelReport | None = None

    # ---- queries ---------------------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether one more request may be in flight."""
        return self.max_in_flight is None or len(self.in_flight) < self.max_in_flight

    def oldest_arrival(self) -> float | None:
        for waiter in self.queue.values():
            return waiter.arrived
        return None

    def next_deadline(self) -> float | None:
        """When this core next wants a Tick: the first queued request's timeout, or the next
        health probe."""
        deadline = self._probe_at
        for waiter in self.queue.values():
            deadline = min(deadline, waiter.deadline)
            break
        return deadline if deadline < math.inf else None

    def report(self) -> ModelReport:
        return ModelReport(
            model=self.name,
            state=self.state,
            queue_depth=len(self.queue),
            oldest_arrival=self.oldest_arrival(),
            in_flight=len(self.in_flight),
            active_since=self.active_since,
            epoch=self.epoch,
            idle_since=self.idle_since,
        )

    def status(self, now: float) -> ModelStatus:
        oldest = self.oldest_arrival()
        return ModelStatus(
            state=self.state,
            in_flight=len(self.in_flight),
            queue_depth=len(self.queue),
            oldest_wait_secs=now - oldest if oldest is not None else None,
            time_in_state_secs=now - self.state_since,
            max_in_flight=self.max_in_flight,
        )

    def report_if_changed(self) -> ModelReport | None:
        """The summary for the scheduler, or None if it already has this one.

        The actor calls this once per batch of messages, so a burst of requests to the
        active model costs the scheduler one message, not one per request.
        """
        current = self.report()
        if current == self._last_report:
            return None
        self._last_report = current
        return current

    # ---- the one entry point ----------------------------------------------------------------

    def handle(self, message: ModelInput, now: float) -> list[ModelEffect]:
        match message:
            case Acquire(req_id=req_id):
                return self._acquire(req_id, now)
            case Finish(req_id=req_id):
                return self._finish(req_id, now)
            case Unreachable(req_id=req_id, detail=detail):
                return self._backend_unreachable(req_id, detail, now)
            case Tick():
                return self._expire(now) + self._maybe_probe(now)
            case Wake(cause=cause):
                return self._wake(cause, now)
            case Drain(cause=cause):
                return self._drain(cause, now)
            case Adopt(cause=cause):
                return self._adopt(cause, now)
            case SetPin(model=pinned_to):
                return self._pin(pinned_to, now)
            case HookDone(hook=Hook.WAKE, ok=ok, detail=detail):
                return self._wake_done(ok, detail, now)
            case HookDone(hook=Hook.SLEEP, ok=ok, detail=detail):
                return self._sleep_done(ok, detail, now)
            case HookDone(hook=Hook.ALIVE, ok=ok, detail=detail):
                return self._probe_done(ok, detail, now)
            case Shutdown():
                self.closing = True
                return self._reject_all(RejectReason.SHUTTING_DOWN, "llmux is shutting down", now)
        raise TypeError(f"not a model message: {message!r}")

    # ---- requests --------------------------------------------------------------------------

    def _acquire(self, req_id: int, now: float) -> list[ModelEffect]:
        if self.closing:
            return [
                Reject(self.name, req_id, RejectReason.SHUTTING_DOWN, "llmux is shutting down", 0.0)
            ]
        if self.pinned_to is not None and self.pinned_to != self.name:
            return [Reject(self.name, req_id, RejectReason.PINNED, self._pinned_message(), 0.0)]
        if self.state == ACTIVE and self.has_room():
            # With room, nobody is queued: requests queue while Active only when it is full.
            self.in_flight.add(req_id)
            self.idle_since = None
            return [Grant(self.name, req_id, 0.0)]
        if self.max_queue is not None and len(self.queue) >= self.max_queue:
            detail = f"Too many requests waiting for {self.name} (max_queue {self.max_queue})"
            return [Reject(self.name, req_id, RejectReason.QUEUE_FULL, detail, 0.0)]
        timeout = self.request_timeout
        deadline = now + timeout if timeout is not None else math.inf
        self.queue[req_id] = Waiter(now, deadline)
        return []

    def _finish(self, req_id: int, now: float) -> list[ModelEffect]:
        if self.queue.pop(req_id, None) is not None:
            return []
        if req_id not in self.in_flight:
            # Already answered (timed out, refused): the client's Finish comes after.
            return []
        self.in_flight.remove(req_id)
        if req_id in self._unreachable_open:
            self._unreachable_open.discard(req_id)
        elif self._unreachable_streak:
            self._unreachable_streak = 0  # a request got through: the backend is there
        if self.state == ACTIVE and self.queue:
            return self._grant_all(now)
        if self.state == ACTIVE and not self.in_flight and not self.queue:
            self.idle_since = now
        if self.state == DRAINING and not self.in_flight:
            drained = self._take(ModelEvent.DRAINED, "last in-flight request finished", now)
            return [*drained, RunHook(self.name, Hook.SLEEP)]
        return []

    def _expire(self, now: float) -> list[ModelEffect]:
        effects: list[ModelEffect] = []
        while self.queue:
            req_id, waiter = next(iter(self.queue.items()))
            if waiter.deadline > now:
                break
            del self.queue[req_id]
            effects.append(
                Reject(
                    self.name,
                    req_id,
                    RejectReason.TIMEOUT,
                    "Request timed out waiting for model",
                    now - waiter.arrived,
                )
            )
        return effects

    def _pinned_message(self) -> str:
        return (
            f"llmux is pinned to {self.pinned_to}: requests for {self.name} are refused "
            "until it is unpinned"
        )

    def _pin(self, pinned_to: str | None, now: float) -> list[ModelEffect]:
        self.pinned_to = pinned_to
        if pinned_to is None or pinned_to == self.name:
            return []
        return self._reject_all(RejectReason.PINNED, self._pinned_message(), now)

    def _grant_all(self, now: float) -> list[ModelEffect]:
        """Grant the waiting requests in order, as many as there is room for."""
        room = len(self.queue)
        if self.max_in_flight is not None:
            room = max(0, min(room, self.max_in_flight - len(self.in_flight)))
        # Popping a dict's first key repeatedly is quadratic (deleted slots are skipped
        # again each time): take the first `room` keys in one pass instead.
        chosen = (
            list(itertools.islice(self.queue, room)) if room < len(self.queue) else list(self.queue)
        )
        effects: list[ModelEffect] = []
        for req_id in chosen:
            waiter = self.queue.pop(req_id)
            self.in_flight.add(req_id)
            effects.append(Grant(self.name, req_id, now - waiter.arrived))
        if effects:
            self.idle_since = None
        return effects

    def _reject_all(self, reason: RejectReason, detail: str, now: float) -> list[ModelEffect]:
        effects: list[ModelEffect] = [
            Reject(self.name, req_id, reason, detail, now - waiter.arrived)
            for req_id, waiter in self.queue.items()
        ]
        self.queue.clear()
        return effects

    # ---- lifecycle -------------------------------------------------------------------------

    def _take(self, event: str, cause: str, now: float) -> list[ModelEffect]:
        source = self.state
        self.state = LIFECYCLE.step(source, event)
        self.state_since = now
        self.epoch += 1
        return [Transition(MODEL_MACHINE, self.name, source, self.state, event, cause, now)]

    def _refuse(self, message: str) -> list[ModelEffect]:
        return [Anomaly(self.name, f"{message} is not accepted in state {self.state}")]

    def _wake(self, cause: str, now: float) -> list[ModelEffect]:
        if self.state != SLEEPING:
            return self._refuse("wake")
        return [*self._take(ModelEvent.WAKE, cause, now), RunHook(self.name, Hook.WAKE)]

    def _adopt(self, cause: str, now: float) -> list[ModelEffect]:
        if self.state != SLEEPING:
            return self._refuse("adopt")
        effects = self._take(ModelEvent.ADOPT, cause, now)
        self._became_active(now)
        return effects + self._grant_all(now)

    def _became_active(self, now: float) -> None:
        self.active_since = now
        self.idle_since = now
        if self.health_interval is not None:
            self._probe_at = now + self.health_interval

    def _maybe_probe(self, now: float) -> list[ModelEffect]:
        if self.state != ACTIVE or self._probing or now < self._probe_at:
            return []
        self._probing = True
        self._probe_at = math.inf
        return [RunHook(self.name, Hook.ALIVE)]

    def _probe_done(self, ok: bool, detail: str, now: float) -> list[ModelEffect]:
        self._probing = False
        if self.state != ACTIVE:
            return []  # it left service meanwhile; the answer no longer matters
        if ok:
            if self.health_interval is not None:
                self._probe_at = now + self.health_interval
            return []
        return self._leave_service(ModelEvent.DIED, f"alive hook failed: {detail}", now)

    def _backend_unreachable(self, req_id: int, detail: str, now: float) -> list[ModelEffect]:
        """A request could not connect to the Active model's backend: ask the alive hook now,
        or, without one, take the model out of service on the second such request in a row.
        Either way it leaves through `died`, so the next request wakes it again."""
        if self.state != ACTIVE or req_id not in self.in_flight:
            return []  # already leaving service, or a stale report
        self._unreachable_open.add(req_id)
        self._unreachable_streak += 1
        if self.alive_probe:
            if self._probing:
                return []
            self._probing = True
            self._probe_at = math.inf
            return [RunHook(self.name, Hook.ALIVE)]
        if self._unreachable_streak < UNREACHABLE_FOR_DEATH:
            return []
        count = self._unreachable_streak
        return self._leave_service(
            ModelEvent.DIED, f"{count} requests in a row could not reach its backend: {detail}", now
        )

    def _drain(self, cause: str, now: float) -> list[ModelEffect]:
        if self.state != ACTIVE:
            return self._refuse("drain")
        return self._leave_service(ModelEvent.DRAIN, cause, now)

    def _leave_service(self, event: str, cause: str, now: float) -> list[ModelEffect]:
        self._probe_at = math.inf
        self._unreachable_streak = 0
        self._unreachable_open.clear()
        self.idle_since = None
        effects = self._take(event, cause, now)
        if self.in_flight and self.drain_before_switch:
            return effects
        why = "nothing in flight" if not self.in_flight else "drain_before_switch is off"
        return effects + self._take(ModelEvent.DRAINED, why, now) + [RunHook(self.name, Hook.SLEEP)]

    def _wake_done(self, ok: bool, detail: str, now: float) -> list[ModelEffect]:
        if self.state != WAKING:
            return self._refuse("wake hook result")
        if ok:
            effects = self._take(ModelEvent.WOKE, "wake hook succeeded", now)
            self._became_active(now)
            return effects + self._grant_all(now)
        effects = self._take(ModelEvent.WAKE_FAILED, f"wake hook failed: {detail}", now)
        message = f"Hook failed for {self.name}: {detail}"
        return (
            effects
            + self._reject_all(RejectReason.HOOK_FAILED, message, now)
            + [RunHook(self.name, Hook.SLEEP)]
        )

    def _sleep_done(self, ok: bool, detail: str, now: float) -> list[ModelEffect]:
        if self.state != SLEEPING_DOWN:
            return self._refuse("sleep hook result")
        self.active_since = None
        if ok:
            return self._take(ModelEvent.SLEPT, "sleep hook succeeded", now)
        # The switch goes on: a model whose sleep hook failed is treated as asleep, as in
        # llmux 2.4; the failure is logged and counted.
        return self._take(ModelEvent.SLEEP_FAILED, f"sleep hook failed: {detail}", now)
