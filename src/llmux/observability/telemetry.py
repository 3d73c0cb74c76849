"""Turns the cores' effects into log events and metrics. Observes; decides nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from llmux.core.lifecycle import MODEL_MACHINE, ModelEvent
from llmux.core.messages import (
    Anomaly,
    Hook,
    ModelReport,
    PolicyError,
    Reject,
    RejectReason,
    ResourceUsage,
    SwitchFinished,
    SwitchStarted,
    Transition,
)
from llmux.core.model import ACTIVE, DRAINING, SLEEPING, SLEEPING_DOWN, WAKING
from llmux.errors import CLIENT_GONE
from llmux.hooks import HookOutcome
from llmux.observability.journal import Journal
from llmux.observability.logs import log_event
from llmux.observability.metrics import IDLE, Metrics

# Every ModelLifecycle state, each exported per model as `llmux_model_state` (0 or 1).
MODEL_STATES = (SLEEPING, WAKING, ACTIVE, DRAINING, SLEEPING_DOWN)
# The policy calls a PolicyError can come from (its `where`).
POLICY_CALLS = ("on_pending", "on_tick")


class Telemetry:
    def __init__(
        self, metrics: Metrics, journal: Journal | None = None, *, log_requests: bool = True
    ) -> None:
        self.metrics = metrics
        # One log line per finished request (config `log_requests`).
        self.log_requests = log_requests
        self.journal = journal if journal is not None else Journal()
        self._woke_at: dict[str, float] = {}
        # Children of labelled metrics, looked up once: `labels()` validates its arguments and
        # takes a lock on every call, and these are touched on every request.
        self._queue_wait: dict[str, Histogram] = {}
        self._finished: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._reported: dict[str, tuple[Gauge, Gauge]] = {}
        self._states: dict[str, dict[str, Gauge]] = {}

    def declare_models(self, models: Iterable[str], *, policy: str | None = None) -> None:
        """Export every model's series from start-up, before anything has happened to it.

        A series that appears only on its first event hides that event from `rate()` and
        `increase()`, and an alert on "failures > 0" cannot tell "none yet" from "not
        scraped": so the failure counters start at 0 and every model starts Sleeping (its
        initial state; an adopted model's `adopt` transition follows at once).
        """
        names = list(models)
        for model in names:
            self._model_states(model)[SLEEPING].set(1)
            for hook in Hook:
                self.metrics.hook_failures.labels(model, hook.value)
            self.metrics.model_deaths.labels(model)
            # Only a wake fails a switch, so a failure is labelled with any other model, or
            # `idle` (a cold start), as its `from`.
            for source in [IDLE, *names]:
                if source != model:
                    self.metrics.switch_total.labels(source, model, "failure")
        if policy is not None:
            for where in POLICY_CALLS:
                self.metrics.policy_errors.labels(policy, where)

    def _model_states(self, model: str) -> dict[str, Gauge]:
        """The model's `llmux_model_state` children, created at 0 on first use."""
        states = self._states.get(model)
        if states is None:
            states = self._states[model] = {
                state: self.metrics.model_state.labels(model, state) for state in MODEL_STATES
            }
        return states

    def transition(self, t: Transition) -> None:
        self.journal.record(t)
        log_event(
            "transition",
            f"{t.subject}: {t.source} -{t.event}-> {t.target} ({t.cause})",
            level=logging.DEBUG,
            machine=t.machine,
            subject=t.subject,
            source=t.source,
            target=t.target,
            transition=t.event,
            cause=t.cause,
        )
        if t.machine != MODEL_MACHINE:
            return
        # Set every state, not just source and target: the gauge is then one-hot even for a
        # model whose first transition this is (no declare_models, as in some tests).
        for state, gauge in self._model_states(t.subject).items():
            gauge.set(1 if state == t.target else 0)
        if t.event in (ModelEvent.WOKE, ModelEvent.ADOPT):
            self._woke_at[t.subject] = t.at
            if t.event == ModelEvent.ADOPT:
                log_event(
                    "model_adopted",
                    f"{t.subject} was already awake at start-up: serving it as it is",
                    model=t.subject,
                )
        elif t.event == ModelEvent.DIED:
            self.metrics.model_deaths.labels(t.subject).inc()
            woke_at = self._woke_at.pop(t.subject, None)
            if woke_at is not None:
                self.metrics.model_active_duration.labels(t.subject).observe(t.at - woke_at)
            log_event(
                "model_died",
                f"{t.subject} is out of service ({t.cause}); "
                "requests waiting for it will wake it again",
                level=logging.ERROR,
                model=t.subject,
                detail=t.cause,
            )
        elif t.event == ModelEvent.DRAIN:
            woke_at = self._woke_at.pop(t.subject, None)
            if woke_at is not None:
                self.metrics.model_active_duration.labels(t.subject).observe(t.at - woke_at)
        elif t.event == ModelEvent.SLEEP_FAILED:
            log_event(
                "sleep_hook_failed",
                f"sleep hook of {t.subject} failed; treating it as asleep ({t.cause})",
                level=logging.WARNING,
                model=t.subject,
                detail=t.cause,
            )

    def model_report(self, report: ModelReport) -> None:
        gauges = self._reported.get(report.model)
        if gauges is None:
            gauges = self._reported[report.model] = (
                self.metrics.queue_depth.labels(report.model),
                self.metrics.in_flight.labels(report.model),
            )
        gauges[0].set(report.queue_depth)
        gauges[1].set(report.in_flight)

    def granted(self, model: str, waited: float) -> None:
        histogram = self._queue_wait.get(model)
        if histogram is None:
            histogram = self._queue_wait[model] = self.metrics.queue_wait.labels(model)
        histogram.observe(waited)

    def rejected(self, reject: Reject) -> None:
        if reject.reason is RejectReason.TIMEOUT:
            log_event(
                "request_timeout",
                f"request for {reject.model} timed out after {reject.waited:.3f}s in the queue",
                level=logging.WARNING,
                model=reject.model,
                waited_secs=round(reject.waited, 6),
            )

    def hook_finished(self, model: str, hook: Hook, outcome: HookOutcome) -> None:
        self.metrics.hook_duration.labels(model, hook.value).observe(outcome.duration)
        fields: dict[str, Any] = {
            "model": model,
            "hook": hook.value,
            "duration_secs": round(outcome.duration, 6),
        }
        if outcome.ok:
            # Health probes succeed every few seconds: not worth a line each at INFO.
            level = logging.DEBUG if hook is Hook.ALIVE else logging.INFO
            message = f"{hook.value} hook of {model} completed"
            log_event("hook_completed", message, level=level, **fields)
            return
        self.metrics.hook_failures.labels(model, hook.value).inc()
        log_event(
            "hook_failed",
            f"{hook.value} hook of {model} failed: {outcome.detail}",
            level=logging.WARNING if hook is Hook.ALIVE else logging.ERROR,
            detail=outcome.detail,
            output_tail=outcome.output_tail,
            **fields,
        )

    def switch_started(self, s: SwitchStarted) -> None:
        evicting = f" (evicting {', '.join(s.evict)})" if len(s.evict) > 1 else ""
        log_event(
            "switch_started",
            f"switching {s.from_model or IDLE} -> {s.to_model}{evicting}: {s.reason}",
            **_fields(source=s.from_model or IDLE, target=s.to_model, reason=s.reason),
            evict=list(s.evict),
        )

    def resources_used(self, usage: Iterable[ResourceUsage]) -> None:
        for resource in usage:
            self.metrics.resource_used.labels(resource.name).set(resource.used)
            self.metrics.resource_capacity.labels(resource.name).set(resource.capacity)

    def switch_finished(self, s: SwitchFinished) -> None:
        source = s.from_model or IDLE
        target = s.to_model
        self.metrics.switch_total.labels(source, target, s.result).inc()
        if s.drain_duration is not None:
            self.metrics.switch_drain_duration.labels(source, target).observe(s.drain_duration)
        fields: dict[str, Any] = {
            "from": source,
            "to": target,
            "duration_secs": round(s.duration, 6),
        }
        if s.result == "success":
            self.metrics.switch_duration.labels(source, target).observe(s.duration)
            estimate = s.cost_estimate
            if estimate is not None:
                self.metrics.switch_cost_ema.labels(source, target).set(estimate)
            log_event("model_activated", f"{target} is active after {s.duration:.3f}s", **fields)
        elif s.result == "failure":
            log_event(
                "switch_failed",
                f"switch {source} -> {target} failed: {s.detail}",
                level=logging.ERROR,
                detail=s.detail,
                **fields,
            )
        else:
            log_event("switch_cancelled", f"switch {source} -> {target}: {s.detail}", **fields)

    def policy_error(self, e: PolicyError) -> None:
        self.metrics.policy_errors.labels(e.policy, e.where).inc()
        log_event(
            "policy_error",
            f"policy {e.policy} failed in {e.where}: {e.detail}; "
            "FIFO's decision was taken for that call",
            level=logging.ERROR,
            policy=e.policy,
            where=e.where,
            detail=e.detail,
        )

    def anomaly(self, a: Anomaly) -> None:
        log_event("anomaly", f"{a.where}: {a.detail}", level=logging.ERROR, where=a.where)

    def request_finished(self, request: ProxiedRequestLike) -> None:
        model, status = request.model, request.status
        children = self._finished.get((model, status))
        if children is None:
            label = str(status)
            children = self._finished[model, status] = (
                self.metrics.requests_total.labels(model, label),
                self.metrics.request_duration.labels(model, label),
            )
        children[0].inc()
        children[1].observe(request.duration)
        if self.log_requests:
            self._log_request(request)

    @staticmethod
    def _log_request(request: ProxiedRequestLike) -> None:
        # A failure (5xx) or a client that left (499) is worth a look; the rest is traffic.
        failed = request.status >= 500 or request.status == CLIENT_GONE
        waited = request.waited
        log_event(
            "request",
            f"{request.model} {request.status} in {request.duration:.3f}s",
            level=logging.WARNING if failed else logging.INFO,
            req_id=request.req_id,
            model=request.model,
            status=request.status,
            queue_wait_secs=round(waited, 6) if waited is not None else None,
            duration_secs=round(request.duration, 6),
            bytes=request.bytes_sent,
            streamed=request.streamed,
        )


class ProxiedRequestLike(Protocol):
    """What `request_finished` reads of a request (llmux.routes.proxy.ProxiedRequest)."""

    req_id: int
    model: str
    status: int
    waited: float | None
    duration: float
    bytes_sent: int
    streamed: bool


def _fields(*, source: str, target: str, **rest: Any) -> dict[str, Any]:
    """`from`/`to` as field names: llmux 2.4's, but `from` is a Python keyword."""
    return {"from": source, "to": target, **rest}
