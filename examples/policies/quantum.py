"""Quantum: keep the active model for at least `quantum_secs` while it has work, else FIFO.

A worked example of a user policy (see docs/policy-authors.md). FIFO switches as soon as a
request for another model arrives, so a model with a steady trickle of requests can lose the
GPU after serving a single one. This policy gives the active model a time slice: while it has
requests in flight and has been active for less than `quantum_secs`, other models wait (the
scheduler is asked to come back when the quantum ends, or sooner if the model goes idle).
Once the quantum is over, or the model has nothing in flight, it behaves exactly like FIFO:
the model whose oldest request has waited longest goes next.

Use it from a config file, with this directory on PYTHONPATH:

    "policy": {"type": "quantum:QuantumPolicy", "quantum_secs": 20, "min_active_secs": 0}

Its conformance test is tests/properties/test_example_quantum_policy.py.
"""

from __future__ import annotations

from llmux.core.policy import (
    BasePolicy,
    BoundInputs,
    Defer,
    PendingContext,
    PolicyDecision,
    SwitchNow,
)


class QuantumPolicy(BasePolicy):
    name = "quantum"

    def __init__(self, quantum_secs: float = 10.0) -> None:
        # Extra keys of the config's `policy` block arrive here as keyword arguments.
        if quantum_secs < 0:
            raise ValueError(f"quantum_secs must be >= 0, not {quantum_secs}")
        self.quantum_secs = float(quantum_secs)

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        if ctx.active_model is not None and ctx.active_in_flight > 0:
            left = self.quantum_secs - ctx.active_duration
            if left > 0:
                # Not Skip: Skip would wait for "something to change", and if nothing does
                # the waiting request would starve. Defer guarantees we are asked again.
                return Defer(left, f"{ctx.active_model} is busy, {left:.3f}s of quantum left")
        return SwitchNow(f"{ctx.target_queue_depth} waiting, oldest {ctx.oldest_waiting:.3f}s")

    def starvation_bound(self, inputs: BoundInputs) -> float | None:
        """FIFO's bound, with each switch cycle lengthened by the quantum (none with a
        `max_in_flight`, as for FIFO: a visit may then leave part of a queue behind).

        The decision depends only on the active model, never on the target, so whenever the
        policy says SwitchNow it says it for the scheduler's first candidate, the model with
        the oldest waiter: the order is FIFO's. What changes is how long the scheduler keeps
        a model before its drain starts: until it has been active max(min_active, quantum)
        seconds (the Defer brings the scheduler back exactly then). That is what
        `switch_cycle_secs(hold=quantum)` counts; the rest of FIFO's argument is unchanged:
        at most N cycles plus the one in progress, or a failure backoff.
        """
        if inputs.max_in_flight is not None:
            return None
        cycle = inputs.switch_cycle_secs(hold=self.quantum_secs)
        return inputs.models * cycle + max(cycle, inputs.failure_backoff)
