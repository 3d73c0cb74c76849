"""FIFO: switch to a waiting model as soon as a request for it arrives (llmux 2.4's default)."""

from __future__ import annotations

from llmux.core.policy import BasePolicy, BoundInputs, PendingContext, PolicyDecision, SwitchNow


class FifoPolicy(BasePolicy):
    """Always switch now. The scheduler asks oldest waiter first, so models are served in
    the order their first waiting request arrived; `min_active_secs` is the only guard
    against thrashing, exactly as in llmux 2.4."""

    name = "fifo"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        # No age of the oldest waiter: FIFO answers as soon as a request arrives, so it would
        # read "oldest 0.000s" on nearly every decision (the wait is in the queue-wait metric).
        return SwitchNow(f"{ctx.target_queue_depth} waiting")

    def starvation_bound(self, inputs: BoundInputs) -> float | None:
        """`N * C + max(C, failure_backoff)`, with C = `inputs.switch_cycle_secs()`; none
        when models have a `max_in_flight` (a visit may then leave part of a queue behind).

        C = min_active + max service (if draining) + max sleep + max wake bounds one switch
        cycle: from the scheduler picking a target to that target being active (or, if the
        target's waiters all left meanwhile, to the old model being asleep). Take a request
        r for model m, arriving at t, and no hook failing from t on. Whenever the scheduler
        is idle it switches at once to the model with the oldest waiter, so each cycle
        started after t targets m or one of the at most N - 1 other models that have a
        waiter older than r. Such a cycle grants that model's whole queue (or ends because
        the queue emptied), and later arrivals are younger than r, so each of those models
        is targeted at most once before m. Before the first of these cycles the scheduler
        may still be finishing a cycle begun before t (at most C) or sitting out a failure
        backoff (at most failure_backoff, which overlaps the failed model's cleanup sleep,
        at most C). So r is answered within max(C, failure_backoff) + (N - 1) * C + C.

        With declared resources (several models awake) the argument is unchanged. Switches
        that touch disjoint resources run at once, but a switch for a younger waiter never
        takes a resource that an older waiter's switch waits for, so r still waits behind at
        most one cycle per model with an older waiter (plus the ones under way at t, which
        run in parallel: at most C together). A cycle's victims are drained and slept in
        parallel (one drain, one sleep), a wake that evicts nobody is a shorter cycle, and a
        request for a model that is awake and not being evicted is granted at once. The
        oldest waiter's model can always be made room for, since persistent models leave
        room for every other (the config refuses a deployment where they do not) and every
        other awake model that no switch holds is Active and may be evicted.
        """
        if inputs.max_in_flight is not None:
            return None
        cycle = inputs.switch_cycle_secs()
        return inputs.models * cycle + max(cycle, inputs.failure_backoff)
