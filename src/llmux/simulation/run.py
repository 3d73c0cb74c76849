"""Running a workload through the real cores in virtual time, once per policy, and measuring it."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from llmux.core.messages import PolicyError, Reject
from llmux.core.policy import PendingContext, PolicyDecision, ScheduleContext, SwitchPolicy
from llmux.core.world import HookScript, Settings, World
from llmux.policies import build_policy
from llmux.simulation.measure import Result, _measure
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
