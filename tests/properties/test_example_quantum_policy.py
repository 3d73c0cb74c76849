"""The conformance test of the example policy in examples/policies/quantum.py.

This is the file a policy author writes (docs/policy-authors.md): one line per deployment
setting worth checking. It lives under tests/ because pytest's testpaths is ["tests"]; the
conftest puts examples/policies on sys.path, as PYTHONPATH would for a deployment.
"""

from __future__ import annotations

from quantum import QuantumPolicy

from llmux.config import parse_config
from llmux.core.policy import BoundInputs, Defer, PendingContext, SwitchNow
from llmux.policies import build_policy
from llmux.testing import policy_conformance

# Every invariant, with drain on and off and any request timeout, chosen per example.
TestQuantumPolicy = policy_conformance(QuantumPolicy, policy_options={"quantum_secs": 4.0})


# The quantum and min_active together, and a zero quantum (which must be plain FIFO).
class TestQuantumPolicyWithMinActive(
    policy_conformance(
        QuantumPolicy,
        policy_options={"quantum_secs": 3.0},
        min_active=1.5,
        drain_before_switch=True,
    )
):
    pass


TestZeroQuantum = policy_conformance(QuantumPolicy, policy_options={"quantum_secs": 0.0})


def pending(active_in_flight: int, active_duration: float) -> PendingContext:
    return PendingContext(
        target_model="b",
        active_model="a",
        target_queue_depth=1,
        oldest_waiting=0.5,
        active_in_flight=active_in_flight,
        active_duration=active_duration,
        estimated_switch_cost=None,
        now=100.0,
    )


def test_a_busy_model_keeps_the_gpu_until_its_quantum_ends() -> None:
    decision = QuantumPolicy(10.0).on_pending(pending(active_in_flight=2, active_duration=4.0))
    assert isinstance(decision, Defer) and decision.seconds == 6.0


def test_an_idle_model_or_a_spent_quantum_switches_at_once() -> None:
    policy = QuantumPolicy(10.0)
    assert isinstance(policy.on_pending(pending(0, 4.0)), SwitchNow)
    assert isinstance(policy.on_pending(pending(3, 10.0)), SwitchNow)


def test_the_bound_is_fifos_with_the_quantum_added_to_each_cycle() -> None:
    inputs = BoundInputs(
        models=3, max_wake_secs=2.0, max_sleep_secs=1.0, max_service_secs=3.0, min_active=1.0
    )
    # One cycle: max(1, 5) hold + 3 drain + 1 sleep + 2 wake = 11 s.
    assert QuantumPolicy(5.0).starvation_bound(inputs) == 3 * 11 + 11


def test_it_loads_from_a_config_file_with_its_options() -> None:
    config = parse_config(
        {
            "models": {"a": {"port": 9001, "wake": "true", "sleep": "true"}},
            "policy": {"type": "quantum:QuantumPolicy", "quantum_secs": 7, "min_active_secs": 1},
        }
    )
    policy = build_policy(config.policy.type, config.policy_options)
    assert isinstance(policy, QuantumPolicy) and policy.quantum_secs == 7.0
    assert config.policy.min_active_secs == 1
