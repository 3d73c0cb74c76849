"""The table `llmux simulate` prints: one block per workload, one row per policy."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from llmux.core.world import HookScript, Settings
from llmux.simulation.measure import Result


class Report(msgspec.Struct):
    workload: str
    kind: str
    seed: int | None
    models: list[str]
    synthetic_models: list[str]
    requests: int
    span: float
    hooks: dict[str, HookScript]
    settings: Settings
    results: list[Result]


_COLUMNS = (
    "policy",
    "requests",
    "served",
    "rejected",
    "cancelled",
    "switches",
    "switching",
    "busy",
    "wait p50",
    "wait p99",
    "wait max",
    "run",
)


def _secs(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}s"


def table(report: Report) -> str:
    models = ", ".join(report.models)
    title = f"{report.workload}: {len(report.models)} model{'s' * (len(report.models) != 1)}"
    lines = [
        f"== {title} ({models}), {report.requests} requests over {report.span:g}s"
        + (f", seed {report.seed}" if report.seed is not None else "")
    ]
    if report.synthetic_models:
        lines.append(
            f"   (synthetic: {', '.join(report.synthetic_models)}; the config has too few models)"
        )
    lines.append(
        f"   hooks: {_describe_hooks(report.hooks)}; {_describe_settings(report.settings)}"
    )
    rows = [_COLUMNS]
    for r in report.results:
        rejected = str(r.rejected)
        if r.rejected:
            rejected += (
                " (" + ", ".join(f"{k} {v}" for k, v in sorted(r.rejected_by_reason.items())) + ")"
            )
        rows.append(
            (
                r.policy,
                str(r.requests),
                str(r.served),
                rejected,
                str(r.cancelled),
                str(r.switches) + (f" ({r.failed_switches} failed)" if r.failed_switches else ""),
                _secs(r.switch_secs, 1),
                f"{r.busy_fraction * 100:.1f}%",
                _secs(r.wait_p50),
                _secs(r.wait_p99),
                _secs(r.wait_max),
                f"{r.wall_secs * 1000:.0f}ms",
            )
        )
        if r.unserved:
            lines.append(f"   {r.policy}: {r.unserved} requests never served")
        if r.anomalies:
            lines.append(f"   {r.policy}: {r.anomalies} anomalies (a scheduler bug; please report)")
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines.append("")
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _describe_hooks(hooks: Mapping[str, HookScript]) -> str:
    groups: dict[tuple[float, float], list[str]] = {}
    for model, script in hooks.items():
        groups.setdefault((script.wake_secs, script.sleep_secs), []).append(model)
    if len(groups) == 1:
        ((wake, sleep),) = groups
        return f"wake {wake:g}s, sleep {sleep:g}s"
    return ", ".join(
        f"{'/'.join(models)} wake {wake:g}s sleep {sleep:g}s"
        for (wake, sleep), models in groups.items()
    )


def _describe_settings(settings: Settings) -> str:
    timeout = "none" if settings.request_timeout is None else f"{settings.request_timeout:g}s"
    drain = "drain first" if settings.drain_before_switch else "no drain"
    slots = settings.backend_slots
    capacity = "" if slots is None else f", backends serve {slots} at once"
    limits = settings.max_in_flight
    if isinstance(limits, dict):
        named = ", ".join(f"{m}={v}" for m, v in limits.items() if v is not None)
        capacity += f", max_in_flight {named}" if named else ""
    elif limits is not None:
        capacity += f", max_in_flight {limits}"
    return f"timeout {timeout}, {drain}, min active {settings.min_active:g}s{capacity}"
