"""What a run measured: waits, busy time, switches, per model; the figures in a Result."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import msgspec

from llmux.core.messages import Hook
from llmux.core.world import RequestRecord, World

# A policy that keeps deferring by 0 s would spin forever at one instant; stop it instead.
MAX_DECISIONS_PER_INSTANT = 100_000


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
