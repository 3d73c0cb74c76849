"""Drain-first: keep the active model until it is idle, then switch to the longest queue.

A baseline for comparisons (docs/scheduling.md), not a built-in: it is exhaustive service
in polling-system terms, which amortizes switches best but promises no bound, since a
model that never goes idle for `gap_secs` keeps the GPU for ever while others wait. It is
what llmux 0.x's `time_slice` policy did. Load it as
`llmux.policies.drain_first:DrainFirstPolicy`.
"""

from __future__ import annotations

from llmux.core.policy import (
    BasePolicy,
    Defer,
    PendingContext,
    PolicyDecision,
    Skip,
    SwitchNow,
    WaitingSummary,
)

# Below this, a remaining time counts as over: a Defer of less would not move the clock.
EPSILON = 1e-6


class DrainFirstPolicy(BasePolicy):
    """Switch only once the active model has had nothing in flight for `gap_secs` (requests
    arriving within the gap keep it), then to the model with the most waiting requests (ties:
    the oldest waiter). With no model active, switch at once."""

    name = "drain_first"

    def __init__(self, gap_secs: float = 0.5) -> None:
        if not gap_secs >= 0:
            raise ValueError(f"gap_secs must be >= 0, not {gap_secs}")
        self.gap_secs = float(gap_secs)

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        if ctx.active_model is not None:
            idle = ctx.active_idle_secs
            if idle is None or ctx.active_in_flight:
                # Busy: the end of its last request is a change, and we are asked again.
                return Skip(f"{ctx.active_model} is busy")
            if idle < self.gap_secs - EPSILON:
                return Defer(self.gap_secs - idle, f"{ctx.active_model} idle for {idle:.3f}s")
        waiting = ctx.waiting or {
            ctx.target_model: WaitingSummary(ctx.target_queue_depth, ctx.oldest_waiting)
        }
        best = max(waiting, key=lambda m: (waiting[m].queue_depth, waiting[m].oldest_waiting))
        if best != ctx.target_model:
            return Skip(f"{best} has the longest queue")
        return SwitchNow(f"longest queue: {ctx.target_queue_depth} waiting")
