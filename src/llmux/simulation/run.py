"""Running a workload through the real cores in virtual time, once per policy, and measuring it."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from llmux.core.messages import Hook, PolicyError, Reject
from llmux.core.policy import PendingContext, PolicyDecision, ScheduleContext, SwitchPolicy
from llmux.core.world import HookScript, RequestRecord, Settings, World
from llmux.policies import build_policy
from llmux.simulation.workloads import DEFAULT_HOOK, TraceRequest, Workload, generate_profile

# A policy that keeps deferring by 0 s would spin forever at one instant; stop it instead.
MAX_DECISIONS_PER_INSTANT = 100_000


class SimulationError(RuntimeError):
    """A policy misbehaved during a simulation (raised, or spun without time passing)."""


# ---- policies --------------------------------------------------------------------------------


class PolicySpec(msgspec.Struct, frozen=True):
    """A policy to simulate: a label and how to build a fresh instance for each run."""

    label: str
    factory: Callable[[], SwitchPolicy]

    @classmethod
    def from_type(
        cls,
        type_name: str,
        options: Mapping[str, Any] | None = None,
        search_path: str | os.PathLike[str] | None = None,
    ) -> PolicySpec:
        """A built-in name or `module:Class` (imported from `search_path` first, as the
        config's directory); fails now (PolicyLoadError) rather than later."""
        opts = dict(options or {})
        build_policy(type_name, opts, search_path)  # validate the type and its options up front
        return cls(type_name, lambda: build_policy(type_name, dict(opts)))


PolicyLike = str | PolicySpec | SwitchPolicy


def _spec(policy: PolicyLike) -> PolicySpec:
    if isinstance(policy, PolicySpec):
        return policy
    if isinstance(policy, str):
        return PolicySpec.from_type(policy)
    instance = policy
    return PolicySpec(str(getattr(policy, "name", type(policy).__name__)), lambda: instance)


class _Guarded:
    """Delegates to a policy; turns its exceptions and zero-time spinning into errors that
    say which policy did it and when."""

    def __init__(self, label: str, inner: SwitchPolicy) -> None:
        self.label = label
        self.inner = inner
        self.name = inner.name
        self.tick_interval_secs = inner.tick_interval_secs
        self._instant = -math.inf
        self._calls = 0
        # What the policy last did wrong. The scheduler contains a broken policy (as the
        # server must), so the simulation learns of it from the PolicyError effect, and then
        # stops with this error: a policy author wants the bug, not a FIFO fallback.
        self.failure: SimulationError | None = None

    def _count(self, now: float) -> None:
        if now != self._instant:
            self._instant, self._calls = now, 0
        self._calls += 1
        if self._calls > MAX_DECISIONS_PER_INSTANT:
            self.failure = SimulationError(
                f"policy {self.label!r} was asked {MAX_DECISIONS_PER_INSTANT} times at "
                f"t={now:.3f}s without time passing (does it Defer by 0 s?)"
            )
            raise self.failure

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        self._count(ctx.now)
        try:
            return self.inner.on_pending(ctx)
        except Exception as exc:
            raise self._failed("on_pending", ctx.now, exc) from exc

    def on_tick(self, ctx: ScheduleContext) -> str | None:
        self._count(ctx.now)
        try:
            return self.inner.on_tick(ctx)
        except Exception as exc:
            raise self._failed("on_tick", ctx.now, exc) from exc

    def _failed(self, where: str, now: float, exc: Exception) -> SimulationError:
        self.failure = SimulationError(
            f"policy {self.label!r} raised in {where} at t={now:.3f}s: {type(exc).__name__}: {exc}"
        )
        self.failure.__cause__ = exc
        return self.failure

    def error_for(self, effect: PolicyError) -> SimulationError:
        """The error to stop the simulation with, for a PolicyError the scheduler reported."""
        if self.failure is not None:
            return self.failure
        return SimulationError(f"policy {self.label!r} at t={effect.at:.3f}s: {effect.detail}")


# ---- running ---------------------------------------------------------------------------------


class ModelStats(msgspec.Struct, frozen=True):
    requests: int
    served: int
    wait_p50: float | None
    wait_p99: float | None
    wait_max: float | None


class Result(msgspec.Struct, frozen=True):
    """One policy on one workload. Everything but `wall_secs` is deterministic."""

    workload: str
    policy: str
    requests: int
    served: int
    rejected: int
    rejected_by_reason: dict[str, int]
    cancelled: int
    unserved: int
    switches: int
    failed_switches: int
    switch_secs: float
    drain_secs: float
    makespan: float
    busy_secs: float
    busy_fraction: float
    wait_p50: float | None
    wait_p99: float | None
    wait_max: float | None
    wait_mean: float | None
    per_model: dict[str, ModelStats]
    anomalies: int
    wall_secs: float


def simulate(
    workload: Workload | str | Sequence[TraceRequest],
    policies: Sequence[PolicyLike] | PolicyLike = ("fifo",),
    hooks: Mapping[str, HookScript] | None = None,
    settings: Settings | None = None,
    *,
    seed: int = 0,
    duration: float | None = None,
    default_hook: HookScript = DEFAULT_HOOK,
) -> list[Result]:
    """Replay `workload` once per policy; one Result per policy, in order.

    `workload` is a Workload, a profile name (over the models of `hooks`, or synthetic ones;
    `seed` and `duration` apply) or a sequence of TraceRequests. The simulated models are those
    of `hooks` plus any the workload names; a model without a script gets `default_hook`.
    `policies` are built-in type names, `module:Class` names, PolicySpecs or policy instances
    (an instance is used as is, so pass a fresh one per call if it keeps state).
    """
    hooks = dict(hooks or {})
    if isinstance(workload, str):
        workload = generate_profile(workload, list(hooks), seed=seed, duration=duration)
    elif not isinstance(workload, Workload):
        workload = Workload("trace", tuple(workload))
    for model in workload.models:
        hooks.setdefault(model, default_hook)
    if isinstance(policies, str | PolicySpec) or not isinstance(policies, Sequence):
        policies = [policies]
    return [_run_one(workload, _spec(p), hooks, settings) for p in policies]


def _run_one(
    workload: Workload,
    spec: PolicySpec,
    hooks: Mapping[str, HookScript],
    settings: Settings | None,
) -> Result:
    started = time.perf_counter()
    rejected_at: dict[int, float] = {}

    guard = _Guarded(spec.label, spec.factory())

    def on_effect(effect: object) -> None:
        if type(effect) is Reject:
            rejected_at[effect.req_id] = world.now
        elif type(effect) is PolicyError:
            raise guard.error_for(effect)

    world = World(hooks, guard, settings, on_effect=on_effect)
    for request in workload.requests:
        req_id = world.submit(request.model, request.at, request.service)
        if request.cancel_after is not None:
            world.cancel(req_id, request.at + request.cancel_after)
    world.run()
    wall = time.perf_counter() - started
    return _measure(world, workload.name, spec.label, rejected_at, wall)


class _Tally:
    """Every request of a run, sorted into what the Result reports."""

    def __init__(self, world: World, rejected_at: Mapping[int, float]) -> None:
        self.waits: list[float] = []
        self.busy: list[tuple[float, float]] = []
        self.by_model: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        self.reasons: dict[str, int] = {}
        self.cancelled = self.unserved = 0
        self.first, self.last = math.inf, -math.inf
        for r in world.requests.values():
            self.first = min(self.first, r.arrived)
            self.counts[r.model] = self.counts.get(r.model, 0) + 1
            self.last = max(self.last, self._end(r, world, rejected_at))

    def _end(self, r: RequestRecord, world: World, rejected_at: Mapping[int, float]) -> float:
        """Files `r` and returns when it was over for its client."""
        model_waits = self.by_model.setdefault(r.model, [])
        if r.started_at is not None:
            # Waiting ends when the backend starts on it (its first token), which is when
            # llmux grants it unless the backend's slots are all taken.
            wait = r.started_at - r.arrived
            self.waits.append(wait)
            model_waits.append(wait)
            end = r.finished_at if r.finished_at is not None else r.cancelled_at
            end = end if end is not None else world.now
            self.busy.append((r.started_at, end))
            return end
        if r.rejected is not None:
            self.reasons[r.rejected] = self.reasons.get(r.rejected, 0) + 1
            return rejected_at.get(r.req_id, r.arrived)
        if r.cancelled_at is not None:
            self.cancelled += 1
            return r.cancelled_at
        self.unserved += 1
        return world.now


def _measure(
    world: World, workload: str, policy: str, rejected_at: Mapping[int, float], wall: float
) -> Result:
    records = list(world.requests.values())
    tally = _Tally(world, rejected_at)
    waits, busy, reasons = tally.waits, tally.busy, tally.reasons
    by_model, counts = tally.by_model, tally.counts
    cancelled, unserved, first, last = tally.cancelled, tally.unserved, tally.first, tally.last
    makespan = max(last - first, 0.0) if records else 0.0
    busy_secs = union_length(busy)
    waits.sort()
    hook_secs = sum(
        world.hooks[model].wake_secs if hook is Hook.WAKE else world.hooks[model].sleep_secs
        for _, model, hook in world.hook_runs
    )
    wakes = sum(1 for _, _, hook in world.hook_runs if hook is Hook.WAKE)
    per_model = {model: _model_stats(counts[model], w) for model, w in by_model.items()}
    return Result(
        workload=workload,
        policy=policy,
        requests=len(records),
        served=len(waits),
        rejected=sum(reasons.values()),
        rejected_by_reason=reasons,
        cancelled=cancelled,
        unserved=unserved,
        switches=wakes,
        failed_switches=sum(1 for s in world.switches if s.result == "failure"),
        switch_secs=_round(hook_secs),
        drain_secs=_round(sum(s.drain_duration or 0.0 for s in world.switches)),
        makespan=_round(makespan),
        busy_secs=_round(busy_secs),
        busy_fraction=_round(busy_secs / makespan if makespan > 0 else 0.0),
        wait_p50=_r(percentile(waits, 50)),
        wait_p99=_r(percentile(waits, 99)),
        wait_max=_r(waits[-1] if waits else None),
        wait_mean=_r(sum(waits) / len(waits) if waits else None),
        per_model=per_model,
        anomalies=len(world.anomalies),
        wall_secs=round(wall, 6),
    )


def _model_stats(requests: int, waits: list[float]) -> ModelStats:
    waits.sort()
    return ModelStats(
        requests=requests,
        served=len(waits),
        wait_p50=_r(percentile(waits, 50)),
        wait_p99=_r(percentile(waits, 99)),
        wait_max=_r(waits[-1] if waits else None),
    )


def percentile(ordered: Sequence[float], percent: int) -> float | None:
    """Nearest rank: the smallest value with at least `percent`% of values at or below it."""
    if not ordered:
        return None
    rank = max(1, -(-percent * len(ordered) // 100))
    return ordered[rank - 1]


def union_length(intervals: list[tuple[float, float]]) -> float:
    total = 0.0
    current_start = current_end = -math.inf
    for start, end in sorted(intervals):
        if start > current_end:
            total += max(current_end - current_start, 0.0) if current_end > -math.inf else 0.0
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end > -math.inf:
        total += current_end - current_start
    return total


def _round(value: float) -> float:
    return round(value, 6)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
