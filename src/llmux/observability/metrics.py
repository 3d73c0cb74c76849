"""Prometheus metrics, with the names and labels of llmux 2.4.

Each app gets its own registry, so several servers can live in one test process.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# `*_created` series double the output and llmux 2.4 has none.
disable_created_metrics()  # type: ignore[no-untyped-call]

IDLE = "idle"  # the `from` label of a cold start, as in llmux 2.4

_SWITCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_REQUEST_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.switch_total = Counter(
            "llmux_switch", "Model switches, by outcome", ["from", "to", "result"], registry=r
        )
        self.switch_duration = Histogram(
            "llmux_switch_duration_seconds",
            "Switch time from the sleep hook's start (or the wake's, cold) to activation",
            ["from", "to"],
            buckets=_SWITCH_BUCKETS,
            registry=r,
        )
        self.switch_drain_duration = Histogram(
            "llmux_switch_drain_duration_seconds",
            "Time spent waiting for in-flight requests before a sleep",
            ["from", "to"],
            buckets=_SWITCH_BUCKETS,
            registry=r,
        )
        self.model_active_duration = Histogram(
            "llmux_model_active_duration_seconds",
            "How long a model stayed active before it was drained",
            ["model"],
            buckets=_SWITCH_BUCKETS,
            registry=r,
        )
        self.switch_cost_ema = Gauge(
            "llmux_switch_cost_ema_seconds",
            "Estimated switch cost (EMA, alpha 0.3) per direction",
            ["from", "to"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "llmux_request_queue_depth", "Requests waiting for the model", ["model"], registry=r
        )
        self.queue_wait = Histogram(
            "llmux_request_queue_wait_seconds",
            "Time a request waited before it was forwarded",
            ["model"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "llmux_model_in_flight", "Requests being forwarded to the model", ["model"], registry=r
        )
        self.requests_total = Counter(
            "llmux_requests", "Requests, by model and status", ["model", "status"], registry=r
        )
        self.request_duration = Histogram(
            "llmux_request_duration_seconds",
            "Request time from arrival to the last byte of the response",
            ["model", "status"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.hook_duration = Histogram(
            "llmux_hook_duration_seconds",
            "Hook run time",
            ["model", "hook"],
            buckets=_SWITCH_BUCKETS,
            registry=r,
        )
        self.hook_failures = Counter(
            "llmux_hook_failures", "Failed hook runs", ["model", "hook"], registry=r
        )

        self.model_deaths = Counter(
            "llmux_model_deaths",
            "Active models taken out of service because their alive hook failed",
            ["model"],
            registry=r,
        )
        self.model_state = Gauge(
            "llmux_model_state",
            "1 for the lifecycle state each model is in, 0 for its other states",
            ["model", "state"],
            registry=r,
        )
        self.resource_used = Gauge(
            "llmux_resource_used",
            "What the models outside Sleeping hold of the resource (needs reserved from the "
            "wake's start until the sleep is over)",
            ["resource"],
            registry=r,
        )
        self.resource_capacity = Gauge(
            "llmux_resource_capacity", "The resource's declared capacity", ["resource"], registry=r
        )
        self.policy_errors = Counter(
            "llmux_policy_errors",
            "Policy calls that raised or answered no decision (FIFO decided that call instead)",
            ["policy", "where"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
