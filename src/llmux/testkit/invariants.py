"""The invariants the kit checks, by name, and the Monitor that checks them effect by effect."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable

from llmux.core.capacity import Capacity
from llmux.core.lifecycle import ModelLifecycle, SwitchSequence, edges
from llmux.core.messages import (
    Anomaly,
    PolicyError,
    SwitchStarted,
    Transition,
)
from llmux.core.model import ACTIVE, SLEEPING

CAPACITY = "capacity"
# The name the capacity rule had while llmux woke one model at a time: without declared
# resources the two are the same rule, and policy authors' tests may still say it.
SINGLE_AWAKE = CAPACITY
EVICTION = "eviction"
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
    CAPACITY: "for every resource, the needs of the models outside Sleeping sum to at most its "
    "capacity (without declared resources: at most one model outside Sleeping)",
    EVICTION: "only an Active model that is not persistent is evicted to make room (never a "
    "Waking, Draining or SleepingDown one)",
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
        capacity: Capacity | None = None,
    ) -> None:
        self.states: dict[str, str] = dict.fromkeys(models, SLEEPING)
        self.capacity = capacity if capacity is not None else Capacity.single(self.states)
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
        for resource, used, capacity in self.capacity.over(awake):
            self.fail(
                CAPACITY,
                f"{awake} are outside Sleeping at t={t.at} (after {t!r}): they need {used:g} "
                f"of {resource!r}, whose capacity is {capacity:g}",
            )

    def switch_started(self, s: SwitchStarted) -> None:
        """The scheduler decided a switch to `s.to_model` evicting `s.evict`."""
        for victim in s.evict:
            state = self.states.get(victim)
            if state != ACTIVE or victim in self.capacity.persistent:
                what = "persistent" if victim in self.capacity.persistent else state
                self.fail(
                    EVICTION,
                    f"switch to {s.to_model} at t={s.at} evicts {victim}, which is {what}",
                )

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
