"""cost_quantum: time-limited visits scaled by the switch cost, with a hard max-wait override.

llmux is a polling system with switch-over times: one server (the GPU), one queue per model,
and a switch that serves nobody for C(from, to) seconds. Serving each queue until it is empty
(exhaustive service; "drain-first") amortizes switches best but lets a model with steady
traffic keep the GPU for ever; switching as soon as anyone waits (FIFO) bounds waits but,
when C is large next to a request's service time, spends most of the time switching. This
policy sits between the two, with the classic remedies (see docs/scheduling.md):

- **Time-limited visits.** While another model waits, the active model keeps the GPU for a
  quantum of `quantum_factor x C`, C being the estimated cost of the switch it would make
  next: the dearer the switch, the longer the visit that pays for it. A request for the
  active model is admitted at once, so "its queue" is what it has in flight.
- **Empty queues are skipped, after a short linger.** A visit also ends once the active
  model has had nothing in flight for `linger_factor x C` seconds ("smart idling": a pause
  in its traffic shorter than that does not cost a switch, while a model whose traffic has
  stopped is left after a small fraction of what a visit may last). Only models with
  waiting requests are candidates.
- **A wake that evicts nobody goes at once.** With several models awake (declared
  `resources`), a waiting model that fits beside them disturbs no visit, so it is woken
  without waiting for another model's quantum.
- **Next model by demand, cost and age.** Among the waiting models, the next is the one with
  the most waiting per second of switching: queue depth x age of its oldest request /
  C(active, model) (ties: the oldest waiter).
- **Max-wait override.** Once a request has waited `max_wait_secs`, everything above is
  ignored: the scheduler switches at once to the model of the oldest waiting request, exactly
  as FIFO would, for as long as any request is that old.

C comes from llmux's EMA of observed switch durations per (from, to) direction; before a
direction is observed, the mean of the directions observed so far stands in (or, before any
switch between two models was observed, the mean of the observed cold starts, which are
wakes only), and before anything was observed, `prior_switch_secs`. The policy keeps no
state: every decision is a function of the scheduler's context.

Config (every key optional; defaults shown):

    policy:
      type: cost_quantum
      max_wait_secs: 60        # hard limit on waiting before the override (>= 0)
      quantum_factor: 12       # visit quantum = quantum_factor x C (>= 0)
      linger_factor: 0.25      # leave an idle model after linger_factor x C (>= 0)
      prior_switch_secs: 10    # C before any switch has been observed (>= 0)

Drain and anti-livelock are untouched: the scheduler still drains, sleeps and wakes as for any
policy (min_active_secs included), every Defer is at least EPSILON long, and every wait the
policy chooses ends, at the latest, when the oldest request reaches `max_wait_secs`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from llmux.core.policy import (
    BasePolicy,
    BoundInputs,
    Defer,
    PendingContext,
    PolicyDecision,
    Skip,
    SwitchNow,
    WaitingSummary,
)

# Times within this of a limit count as having reached it: a shorter Defer might not move a
# floating-point clock, and reaching a limit a microsecond early never breaks the bound.
EPSILON = 1e-6
# Floor of a switch-cost estimate in the score, so that a free switch does not divide by 0.
MIN_COST = 1e-3


def _non_negative(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return value


class CostQuantumPolicy(BasePolicy):
    """Cost-scaled, time-limited visits; next model by demand x age / switch cost; a hard
    max-wait override (see the module docstring and docs/scheduling.md)."""

    name = "cost_quantum"

    def __init__(
        self,
        max_wait_secs: float = 60.0,
        quantum_factor: float = 12.0,
        linger_factor: float = 0.25,
        prior_switch_secs: float = 10.0,
    ) -> None:
        self.max_wait_secs = _non_negative("max_wait_secs", max_wait_secs)
        self.quantum_factor = _non_negative("quantum_factor", quantum_factor)
        self.linger_factor = _non_negative("linger_factor", linger_factor)
        self.prior_switch_secs = _non_negative("prior_switch_secs", prior_switch_secs)

    # ---- switch costs -------------------------------------------------------------------------

    def estimated_cost(
        self,
        from_model: str | None,
        to_model: str,
        estimates: Mapping[tuple[str | None, str], float],
    ) -> float:
        """The cost C(from, to) this policy assumes, from the scheduler's EMAs: the
        direction's own if it was observed, else the mean over the observed switches between
        two models, else over the observed cold starts, else `prior_switch_secs`."""
        known = estimates.get((from_model, to_model))
        if known is not None:
            return known
        for cold in (False, True):
            observed = [c for (a, _), c in estimates.items() if (a is None) == cold]
            if observed:
                return sum(observed) / len(observed)
        return self.prior_switch_secs

    # ---- deciding -----------------------------------------------------------------------------

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        limit = self.max_wait_secs
        # The override. The scheduler asks about the oldest waiter's model first, so when any
        # request has waited `max_wait_secs`, that model is the first asked and goes now.
        if ctx.oldest_waiting >= limit - EPSILON:
            return SwitchNow(f"a request waited {ctx.oldest_waiting:.3f}s (max_wait_secs)")
        waiting: Mapping[str, WaitingSummary] = ctx.waiting or {
            ctx.target_model: WaitingSummary(ctx.target_queue_depth, ctx.oldest_waiting)
        }
        oldest = max(summary.oldest_waiting for summary in waiting.values())
        if oldest >= limit - EPSILON:
            return Skip("another model's request waited max_wait_secs: it goes first")
        estimates = dict(ctx.cost_estimates)
        if ctx.estimated_switch_cost is not None:
            estimates.setdefault((ctx.active_model, ctx.target_model), ctx.estimated_switch_cost)
        costs = {m: self.estimated_cost(_first_victim(ctx, m), m, estimates) for m in waiting}

        def rank(model: str) -> tuple[float, float, str]:
            summary = waiting[model]
            score = summary.queue_depth * summary.oldest_waiting / max(costs[model], MIN_COST)
            return (-score, -summary.oldest_waiting, model)

        best = min(waiting, key=rank)
        if best != ctx.target_model and _fits(ctx, ctx.target_model) and not _fits(ctx, best):
            # Waking the target evicts nobody, so no visit is cut short: it need not wait for
            # the quantum that holds `best` back.
            return SwitchNow(f"fits beside the awake models ({best} waits for room)")
        if ctx.active_model is not None:
            cost = costs[best]
            visit_left = self.quantum_factor * cost - ctx.active_duration
            idle = ctx.active_idle_secs
            linger_left = math.inf if idle is None else self.linger_factor * cost - idle
            if visit_left > EPSILON and linger_left > EPSILON:
                until_override = limit - oldest
                pause = min(visit_left, linger_left, until_override)
                what = "busy" if idle is None else f"idle {idle:.3f}s"
                return Defer(
                    pause,
                    f"{ctx.active_model} {what}, {visit_left:.3f}s of its quantum left "
                    f"(next: {best}, switch ~{cost:.3f}s)",
                )
        if best != ctx.target_model:
            return Skip(f"{best} goes first")
        summary = waiting[best]
        return SwitchNow(
            f"{summary.queue_depth} waiting, oldest {summary.oldest_waiting:.3f}s, "
            f"switch ~{costs[best]:.3f}s"
        )

    def starvation_bound(self, inputs: BoundInputs) -> float | None:
        """`max_wait_secs + N * C + max(C, failure_backoff)`, C = `inputs.switch_cycle_secs()`;
        none when models have a `max_in_flight`, as for FIFO.

        That is FIFO's bound plus `max_wait_secs`. C (min_active, a drain, a sleep and a wake)
        bounds one switch cycle from the scheduler's SwitchNow to the target being active (or
        the old model asleep, if the target's waiters left). The policy's own holds, the
        quantum and the linger, are not in C: they end before it says SwitchNow, and once a
        cycle has started only the scheduler's min_active holds it.

        Take a request r for model m still waiting at an instant s, with no hook failing
        in (s, s + B]. By t0 = s + max_wait_secs at the latest, r has waited max_wait_secs.
        From t0 on, while r waits, the scheduler is asked at once whenever it is idle: every
        Defer of this policy ends by the time the oldest waiter reaches max_wait_secs, and a
        switch, a backoff or a new request each start a new round. In every such round the
        first model asked has a waiter at least as old as r, so over the limit, and gets
        SwitchNow: from t0 the order is FIFO's, and FIFO's argument applies. Each cycle started
        after t0 targets m or one of the at most N - 1 other models with a request older than
        r, and ends with its target's whole queue granted (or gone); later arrivals are younger
        than r, so none of those models is targeted twice before m: at most N cycles. Before
        the first, the scheduler may be finishing a cycle begun before t0 (at most C) or sitting
        out a failure backoff (at most failure_backoff). So r is over by
        s + max_wait_secs + max(C, failure_backoff) + N * C.
        """
        if inputs.max_in_flight is not None:
            return None
        cycle = inputs.switch_cycle_secs()
        return self.max_wait_secs + inputs.models * cycle + max(cycle, inputs.failure_backoff)


def _fits(ctx: PendingContext, model: str) -> bool:
    """Whether waking `model` evicts nobody (as far as the context says)."""
    return ctx.evictions.get(model) == ()


def _first_victim(ctx: PendingContext, model: str) -> str | None:
    """The model a switch to `model` would evict first: the direction of its cost. A context
    built by hand (no `evictions`) has only the active model to go by."""
    victims = ctx.evictions.get(model)
    if victims is None:
        return ctx.active_model
    return victims[0] if victims else None
