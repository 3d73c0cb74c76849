"""Hypothesis strategies for request schedules and hook scripts, and replaying a schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from hypothesis import strategies as st

from llmux.core.model import ModelCore
from llmux.core.policy import SwitchPolicy
from llmux.core.world import HookScript, Settings

# ---- strategies --------------------------------------------------------------------------------
from llmux.testkit.checked_world import CheckedWorld
from llmux.testkit.invariants import QUANTUM


def quantized(low: float, high: float, quantum: float = QUANTUM) -> st.SearchStrategy[float]:
    """Multiples of `quantum` in [low, high]; shrinks towards `low`."""
    return st.integers(math.ceil(low / quantum), math.floor(high / quantum)).map(
        lambda k: k * quantum
    )


def hook_scripts(max_secs: float = 2.0, *, failures: bool = False) -> st.SearchStrategy[HookScript]:
    """Hook durations in [0, max_secs] (0 included: instant hooks are an edge case)."""
    attempts = st.frozensets(st.integers(0, 4), max_size=2) if failures else st.just(frozenset())
    return st.builds(
        HookScript,
        wake_secs=quantized(0.0, max_secs),
        sleep_secs=quantized(0.0, max_secs),
        wake_failures=attempts,
        sleep_failures=attempts,
    )


def capacity_settings(
    models: Sequence[str], *, max_resources: int = 2, max_units: int = 6
) -> st.SearchStrategy[dict[str, Any]]:
    """The capacity part of `Settings` (`resources`, `needs`, `persistent`), to be merged
    into one: half the time {} (no resources: one model awake at a time), otherwise one or
    more resources with arbitrary whole capacities, arbitrary needs (0 included) and some
    persistent models, always a deployment the config would accept (persistent models fit
    together, and every other model fits beside them)."""

    @st.composite
    def draw_capacity(draw: st.DrawFn) -> dict[str, Any]:
        if draw(st.booleans()):
            return {}
        names = [f"gpu{i}" for i in range(draw(st.integers(1, max_resources)))]
        resources = {r: float(draw(st.integers(1, max_units))) for r in names}
        persistent = draw(st.frozensets(st.sampled_from(list(models)), max_size=len(models) - 1))
        left = dict(resources)
        needs: dict[str, dict[str, float]] = {}
        # Persistent models take at most half of what is left each, so the others still fit.
        for model in sorted(persistent):
            needs[model] = {r: float(draw(st.integers(0, int(left[r] // 2)))) for r in names}
            left = {r: left[r] - needs[model][r] for r in names}
        for model in models:
            if model not in persistent:
                needs[model] = {r: float(draw(st.integers(0, int(left[r])))) for r in names}
        return {"resources": resources, "needs": needs, "persistent": persistent}

    return draw_capacity()


class PlannedRequest(msgspec.Struct, frozen=True):
    """One request of a schedule: its client leaves `cancel_after` seconds after arriving
    (None: it stays until it is answered and served)."""

    model: str
    at: float
    service: float
    cancel_after: float | None = None


class Schedule(list[PlannedRequest]):
    """A request schedule (a list of `PlannedRequest`) that prints one short line per request,
    so that a failing example stays readable::

        Schedule.parse('''
            #0  t=0.0   a  service=3.0
            #1  t=1.25  b  service=0.25  cancel_after=2.0
        ''')

    which is also Python that rebuilds it (to replay it with `run_schedule`). ``#n`` is the
    request's id in the world `run_schedule` builds (ids follow the schedule's order): the id
    an `InvariantViolation` names. `request_schedules` and `endless_traffic` draw these.
    """

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """The schedule that `repr` printed: one request a line, as ``[#n] t=AT MODEL
        service=SECS [cancel_after=SECS]`` (model names without spaces or ``=``)."""
        schedule = cls()
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if fields and fields[0].startswith("#"):
                fields = fields[1:]
            if not fields:
                continue
            named = dict(f.split("=", 1) for f in fields if "=" in f)
            models = [f for f in fields if "=" not in f]
            unknown = set(named) - {"t", "service", "cancel_after"}
            if len(models) != 1 or unknown or not {"t", "service"} <= set(named):
                raise ValueError(
                    f"line {number} of the schedule: {line.strip()!r} is not "
                    f"'t=AT MODEL service=SECS [cancel_after=SECS]'"
                )
            cancel = named.get("cancel_after")
            schedule.append(
                PlannedRequest(
                    models[0],
                    float(named["t"]),
                    float(named["service"]),
                    float(cancel) if cancel is not None else None,
                )
            )
        return schedule

    def lines(self) -> list[str]:
        """One line per request, in columns."""
        rows = [
            (
                f"#{i}",
                f"t={r.at!r}",
                r.model,
                f"service={r.service!r}",
                f"cancel_after={r.cancel_after!r}" if r.cancel_after is not None else "",
            )
            for i, r in enumerate(self)
        ]
        widths = [max((len(row[k]) for row in rows), default=0) for k in range(4)]
        return [
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, [*widths, 0], strict=True)
            ).rstrip()
            for row in rows
        ]

    def __repr__(self) -> str:
        if not self:
            return "Schedule()"
        body = "".join(f"\n    {line}" for line in self.lines())
        return f"Schedule.parse('''{body}\n''')"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """Hypothesis's (and IPython's) pretty printer: the same, indented where it is."""
        if not self:
            p.text("Schedule()")
            return
        p.text("Schedule.parse('''")
        with p.indent(4):
            for line in self.lines():
                p.break_()
                p.text(line)
        p.break_()
        p.text("''')")


def request_schedules(
    models: Sequence[str],
    *,
    max_requests: int = 40,
    horizon: float = 30.0,
    max_service: float = 3.0,
    cancels: bool = True,
) -> st.SearchStrategy[Schedule]:
    """Whole request schedules: bursts of requests to a model, some of whose clients leave.

    A schedule is a list of bursts (a model, a start, a count, a gap); bursts to different
    models interleave, which is what makes a policy switch.
    """
    cancel_after = st.none() | quantized(0.0, 2 * max_service) if cancels else st.none()

    @st.composite
    def burst(draw: st.DrawFn) -> list[PlannedRequest]:
        model = draw(st.sampled_from(list(models)))
        start = draw(quantized(0.0, horizon))
        count = draw(st.integers(1, 8))
        gap = draw(quantized(0.0, max_service))
        return [
            PlannedRequest(
                model,
                start + i * gap,
                draw(quantized(0.0, max_service)),
                draw(cancel_after),
            )
            for i in range(count)
        ]

    return (
        st.lists(burst(), min_size=1, max_size=max(1, max_requests // 4))
        .map(lambda bursts: sorted((r for b in bursts for r in b), key=lambda r: r.at))
        .map(lambda schedule: Schedule(schedule[:max_requests]))
    )


def endless_traffic(
    busy: str,
    other: str,
    *,
    max_service: float = 3.0,
    horizon: float = 150.0,
) -> st.SearchStrategy[Schedule]:
    """Requests to `busy`, each taking `max_service` and overlapping so that it always has one
    in flight, from 0 to `horizon`, and one request for `other` in the first half."""

    @st.composite
    def schedule(draw: st.DrawFn) -> Schedule:
        gap = draw(quantized(max(QUANTUM, max_service / 2), max_service))
        first = draw(quantized(0.0, max_service))
        stream = [
            PlannedRequest(busy, first + i * gap, max_service)
            for i in range(int((horizon - first) / gap) + 1)
        ]
        lone = PlannedRequest(other, draw(quantized(0.0, horizon / 2)), max_service)
        return Schedule(sorted([*stream, lone], key=lambda r: r.at))

    return schedule()


def run_schedule(
    policy: SwitchPolicy,
    hooks: Mapping[str, HookScript],
    schedule: Sequence[PlannedRequest],
    settings: Settings | None = None,
    *,
    max_service: float,
    core_class: type[ModelCore] = ModelCore,
) -> CheckedWorld:
    """Run a whole schedule through a `CheckedWorld`, checking at every arrival, then
    `settle()`. Raises `InvariantViolation`; returns the world for further assertions."""
    checked = CheckedWorld(hooks, policy, settings, max_service=max_service, core_class=core_class)
    world = checked.world
    for planned in schedule:
        req_id = checked.submit(planned.model, planned.at, planned.service)
        if planned.cancel_after is not None:
            world.cancel(req_id, planned.at + planned.cancel_after)
    for at in sorted({p.at for p in schedule}):
        checked._run(at)
        checked.check()
    checked.settle()
    return checked
