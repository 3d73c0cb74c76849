"""cost_quantum against every invariant, with options that make its limits bite.

tests/properties/test_world_conformance.py already runs every built-in policy, cost_quantum
included, with its defaults (drain on and off). With the default `max_wait_secs` of 60 s
the override rarely fires within an example, so these classes shrink it to a few switch
cycles (or to 0: FIFO's order from the first request), and lengthen the quanta so that
the visit limit and the override, not the quantum, are what ends a visit: that is where
the declared bound, `max_wait_secs + N * C + max(C, failure_backoff)`, is tight.

Also here: the drain-first baseline (`llmux.policies.drain_first`, not a built-in), which
declares no bound but must still keep every other invariant, and end everything once
traffic stops.
"""

from __future__ import annotations

from llmux.policies.cost_quantum import CostQuantumPolicy
from llmux.policies.drain_first import DrainFirstPolicy
from llmux.testing import policy_conformance

# The override after 4 s, long quanta (12 x a switch), a short linger, a small prior.
TestCostQuantumShortMaxWait = policy_conformance(
    CostQuantumPolicy,
    policy_options={
        "max_wait_secs": 4.0,
        "quantum_factor": 12.0,
        "linger_factor": 0.5,
        "prior_switch_secs": 1.0,
    },
)


# With min_active and draining, and visits limited only by max_wait (a huge quantum).
class TestCostQuantumWithMinActive(
    policy_conformance(
        CostQuantumPolicy,
        policy_options={"max_wait_secs": 6.0, "quantum_factor": 1000.0, "linger_factor": 2.0},
        min_active=1.5,
        drain_before_switch=True,
    )
):
    pass


# max_wait 0: every request is over the limit at once, so the order is FIFO's from the start.
TestCostQuantumZeroMaxWait = policy_conformance(
    CostQuantumPolicy, policy_options={"max_wait_secs": 0.0}
)

TestDrainFirstBaseline = policy_conformance(DrainFirstPolicy)
