"""`llmux simulate`: replay traffic through the scheduler in virtual time and compare policies.

The simulator runs the same cores the server runs (`llmux.core.world.World`): the same
admission, the same switch sequence, the same policy calls. Only time is virtual, so ten
minutes of traffic take a fraction of a second, and the same inputs always give the same
numbers.

Traffic
-------
A *trace* is a JSON-lines file, one request per line (blank lines are skipped)::

    {"at": 0.0, "model": "qwen-small", "service": 0.5}
    {"at": 1.25, "model": "llama-large", "service": 2.0, "cancel_after": 10}

- ``at``: arrival time in seconds from the start of the trace (>= 0; any order).
- ``model``: the model the request asks for. From the CLI it must be one of the config's
  models; from the Python API an unknown model simply joins the simulated world.
- ``service``: seconds the request takes once granted (>= 0).
- ``cancel_after`` (optional): the client gives up that many seconds after arriving, whether
  the request is still queued or already being served.

Unknown keys are an error, so a misspelt key is not silently ignored.

A *profile* is a built-in synthetic workload, seeded and deterministic (see `PROFILES`):
``single``, ``alternating``, ``bursty``, ``dominant``, ``interleaved``, ``surge``, ``three``.
Profiles last 600 s of virtual time unless told otherwise and draw service times uniformly
from 0.25-0.75 s. They use the config's models, in the config's order; when a profile needs
more models than the config has, the missing ones are synthetic (``a``, ``b``, ``c``, ...,
skipping names already taken) and the table header says so.

Hooks
-----
The config's hooks are shell commands, so their durations are stated on the command line:
``--hook-secs WAKE,SLEEP`` sets every model, ``--hook-secs MODEL=WAKE,SLEEP`` one model (the
later option wins). The default is 2 s to wake and 1 s to sleep. Request timeout,
drain-before-switch and min-active come from the config's ``policy`` block.

Policies
--------
``--policy TYPE`` (repeatable) is a built-in name or ``module:Class`` (imported with the
config file's directory first on the path, as ``llmux run`` imports ``policy.type``). The
config's policy options are passed when TYPE is the config's own policy type; other
policies get their defaults. Without ``--policy``: the config's policy, then every built-in
one.

Measures (per workload and policy)
----------------------------------
- requests, served (granted), rejected (by reason: ``timeout``, ``hook_failed``), cancelled
  (the client left before a grant), unserved (never granted, rejected or cancelled: only a
  policy that never switches leaves these);
- switches: wake hooks run, the first cold start included; failed_switches among them;
- switch_secs: time hooks were running (the GPU was changing models, serving nobody);
  drain_secs: time spent draining the old model before its sleep hook;
- makespan: first arrival to the moment the last request was over;
  busy_fraction: share of the makespan during which at least one request was being served;
- waits (arrival to grant, served requests only): p50, p99 (nearest rank), max and mean,
  overall and per model.

Python API: `simulate(workload, policies, hooks, settings) -> list[Result]`, with
`generate_profile`, `load_trace` and `parse_trace` to build workloads.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

from llmux.argtypes import positive_int
from llmux.build import settings_from_config
from llmux.core.messages import Hook, PolicyError, Reject
from llmux.core.policy import PendingContext, PolicyDecision, ScheduleContext, SwitchPolicy
from llmux.core.world import HookScript, Settings, World
from llmux.policies import BUILTIN, PolicyLoadError, build_policy

__all__ = [
    "DEFAULT_HOOK",
    "PROFILES",
    "ModelStats",
    "PolicySpec",
    "Profile",
    "Result",
    "SimulationError",
    "TraceError",
    "TraceRequest",
    "Workload",
    "dump_trace",
    "generate_profile",
    "load_trace",
    "parse_trace",
    "settings_from_config",
    "simulate",
]

DEFAULT_HOOK = HookScript(wake_secs=2.0, sleep_secs=1.0)
DEFAULT_DURATION = 600.0
SYNTHETIC_NAMES = tuple("abcdefghijklmnopqrstuvwxyz")
# A policy that keeps deferring by 0 s would spin forever at one instant; stop it instead.
MAX_DECISIONS_PER_INSTANT = 100_000

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
ModelName = Annotated[str, msgspec.Meta(min_length=1)]


class TraceError(ValueError):
    """One line saying which trace line is wrong and why."""


class SimulationError(RuntimeError):
    """A policy misbehaved during a simulation (raised, or spun without time passing)."""


# ---- workloads -------------------------------------------------------------------------------


class TraceRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One request of a trace (one JSON line)."""

    at: NonNegative
    model: ModelName
    service: NonNegative
    cancel_after: NonNegative | None = None


class Workload(msgspec.Struct, frozen=True):
    """Requests to replay, with where they came from."""

    name: str
    requests: tuple[TraceRequest, ...]
    kind: str = "trace"  # "trace" or "profile"
    seed: int | None = None
    # The span the traffic was generated over (profiles); None means "until the last arrival".
    duration: float | None = None
    # Synthetic model names a profile had to make up (the config had too few models).
    synthetic: tuple[str, ...] = ()

    @property
    def models(self) -> list[str]:
        """The models the requests ask for, in order of first appearance."""
        return list(dict.fromkeys(r.model for r in self.requests))

    @property
    def span(self) -> float:
        if self.duration is not None:
            return self.duration
        return max((r.at for r in self.requests), default=0.0)


_decode_line = msgspec.json.Decoder(TraceRequest).decode


def parse_trace(
    lines: Iterable[str | bytes], *, origin: str = "trace", name: str | None = None
) -> Workload:
    """Parse JSON lines into a workload; errors name `origin:LINE`."""
    requests: list[TraceRequest] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            requests.append(_decode_line(line))
        except msgspec.ValidationError as exc:
            raise TraceError(f"{origin}:{number}: {_field_message(str(exc))}") from exc
        except msgspec.DecodeError as exc:
            raise TraceError(f"{origin}:{number}: not a JSON object: {exc}") from exc
    if not requests:
        raise TraceError(f"{origin}: no requests (one JSON object per line)")
    return Workload(name if name is not None else origin, tuple(requests))


def load_trace(path: str | os.PathLike[str]) -> Workload:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read trace {str(path)!r}: {exc.strerror}") from exc
    return parse_trace(data.splitlines(), origin=str(path), name=path.name)


def dump_trace(workload: Workload) -> str:
    """The workload as JSON lines (a profile saved this way replays identically)."""
    encode = msgspec.json.Encoder().encode
    return "".join(encode(r).decode() + "\n" for r in workload.requests)


def _field_message(message: str) -> str:
    """msgspec says "... - at `$.service`"; say "service: ..." instead."""
    detail, sep, where = message.rpartition(" - at `$")
    if not sep:
        return message
    field = where.rstrip("`").lstrip(".")
    return f"{field}: {detail}" if field else detail


# ---- built-in profiles -----------------------------------------------------------------------

Generator = Callable[[random.Random, Sequence[str], float], list[TraceRequest]]


class Profile(msgspec.Struct, frozen=True):
    name: str
    models: int
    description: str
    generate: Generator
    duration: float = DEFAULT_DURATION


def _arrivals(rng: random.Random, rate: float, start: float, end: float) -> Iterator[float]:
    """Poisson arrivals at `rate` per second in [start, end)."""
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return
        yield t


def _request(rng: random.Random, at: float, model: str) -> TraceRequest:
    return TraceRequest(round(at, 3), model, round(rng.uniform(0.25, 0.75), 3))


def _single(rng: random.Random, models: Sequence[str], duration: float) -> list[TraceRequest]:
    return [_request(rng, t, models[0]) for t in _arrivals(rng, 5.0, 0.0, duration)]


def _alternating(rng: random.Random, models: Sequence[str], duration: float) -> list[TraceRequest]:
    phase = 30.0
    return [
        _request(rng, t, models[int(t // phase) % 2]) for t in _arrivals(rng, 5.0, 0.0, duration)
    ]


def _bursty(rng: random.Random, models: Sequence[str], duration: float) -> list[TraceRequest]:
    pair = models[:2]
    requests = [_request(rng, t, rng.choice(pair)) for t in _arrivals(rng, 1.0, 0.0, duration)]
    for start in _arrivals(rng, 1 / 8, 0.0, duration):
        model = rng.choice(pair)
        for _ in range(rng.randint(10, 30)):
            at = start + rng.uniform(0.0, 1.5)
            if at < duration:
                requests.append(_request(rng, at, model))
    return sorted(requests, key=lambda r: r.at)


def _dominant(rng: random.Random, models: Sequence[str], duration: float) -> list[TraceRequest]:
    return [
        _request(rng, t, models[0] if rng.random() < 0.9 else models[1])
        for t in _arrivals(rng, 5.0, 0.0, duration)
    ]


def _interleaved(rng: random.Random, models: Sequence[str], duration: float) -> list[TraceRequest]:
    pair = models[:2]
    return [_request(rng, t, rng.choice(pair)) for t in _arrivals(rng, 5.0, 0.0, duration)]


def _surge(rng: random.Random, models: Sequence[str], duration: float) -> list[TraceRequest]:
    requests = [_request(rng, t, models[0]) for t in _arrivals(rng, 3.0, 0.0, duration)]
    surge = [
        _request(rng, t, models[1]) for t in _arrivals(rng, 10.0, duration * 0.4, duration * 0.6)
    ]
    return sorted(requests + surge, key=lambda r: r.at)


def _three(rng: random.Random, models: Sequence[str], duration: float) -> list[TraceRequest]:
    trio = models[:3]
    return [_request(rng, t, rng.choice(trio)) for t in _arrivals(rng, 5.0, 0.0, duration)]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("single", 1, "one model, Poisson 5 req/s", _single),
        Profile("alternating", 2, "two models taking turns in 30 s phases, 5 req/s", _alternating),
        Profile(
            "bursty",
            2,
            "1 req/s background over two models, plus bursts of 10-30 requests for one model "
            "within 1.5 s, every ~8 s",
            _bursty,
        ),
        Profile("dominant", 2, "two models, 90% of 5 req/s to the first", _dominant),
        Profile(
            "interleaved", 2, "two models, each request picks one at random, 5 req/s", _interleaved
        ),
        Profile(
            "surge",
            2,
            "3 req/s to the first model throughout; 10 req/s more for the second from 40% to "
            "60% of the run",
            _surge,
        ),
        Profile("three", 3, "three models, each request picks one at random, 5 req/s", _three),
    )
}


def profile_models(needed: int, available: Sequence[str]) -> tuple[list[str], list[str]]:
    """The first `needed` of `available`, topped up with synthetic names: (models, synthetic)."""
    models = list(available[:needed])
    synthetic = [n for n in SYNTHETIC_NAMES if n not in available][: needed - len(models)]
    return models + synthetic, synthetic


def generate_profile(
    name: str,
    models: Sequence[str] = (),
    *,
    seed: int = 0,
    duration: float | None = None,
) -> Workload:
    """A built-in profile over `models` (synthetic names if too few), deterministic per seed."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}: use one of {', '.join(PROFILES)}") from None
    span = profile.duration if duration is None else duration
    chosen, synthetic = profile_models(profile.models, models)
    # A string seed is hashed with SHA-512 by `random`, so this is stable across runs and
    # platforms, and each profile draws independently of the others.
    rng = random.Random(f"llmux-simulate:{name}:{seed}")
    requests = tuple(profile.generate(rng, chosen, span))
    return Workload(name, requests, "profile", seed, span, tuple(synthetic))


# ---- policies --------------------------------------------------------------------------------


class PolicySpec(msgspec.Struct, frozen=True):
    """A policy to simulate: a label and how to build a fresh instance for each run."""

    label: str
    factory: Callable[[], SwitchPolicy]

    @classmethod
    def from_type(
        cls,
        type_name: str,
        options: Mapping[str, Any] | None = None,
        search_path: str | os.PathLike[str] | None = None,
    ) -> PolicySpec:
        """A built-in name or `module:Class` (imported from `search_path` first, as the
        config's directory); fails now (PolicyLoadError) rather than later."""
        opts = dict(options or {})
        build_policy(type_name, opts, search_path)  # validate the type and its options up front
        return cls(type_name, lambda: build_policy(type_name, dict(opts)))


PolicyLike = str | PolicySpec | SwitchPolicy


def _spec(policy: PolicyLike) -> PolicySpec:
    if isinstance(policy, PolicySpec):
        return policy
    if isinstance(policy, str):
        return PolicySpec.from_type(policy)
    instance = policy
    return PolicySpec(str(getattr(policy, "name", type(policy).__name__)), lambda: instance)


class _Guarded:
    """Delegates to a policy; turns its exceptions and zero-time spinning into errors that
    say which policy did it and when."""

    def __init__(self, label: str, inner: SwitchPolicy) -> None:
        self.label = label
        self.inner = inner
        self.name = inner.name
        self.tick_interval_secs = inner.tick_interval_secs
        self._instant = -math.inf
        self._calls = 0
        # What the policy last did wrong. The scheduler contains a broken policy (as the
        # server must), so the simulation learns of it from the PolicyError effect, and then
        # stops with this error: a policy author wants the bug, not a FIFO fallback.
        self.failure: SimulationError | None = None

    def _count(self, now: float) -> None:
        if now != self._instant:
            self._instant, self._calls = now, 0
        self._calls += 1
        if self._calls > MAX_DECISIONS_PER_INSTANT:
            self.failure = SimulationError(
                f"policy {self.label!r} was asked {MAX_DECISIONS_PER_INSTANT} times at "
                f"t={now:.3f}s without time passing (does it Defer by 0 s?)"
            )
            raise self.failure

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        self._count(ctx.now)
        try:
            return self.inner.on_pending(ctx)
        except Exception as exc:
            raise self._failed("on_pending", ctx.now, exc) from exc

    def on_tick(self, ctx: ScheduleContext) -> str | None:
        self._count(ctx.now)
        try:
            return self.inner.on_tick(ctx)
        except Exception as exc:
            raise self._failed("on_tick", ctx.now, exc) from exc

    def _failed(self, where: str, now: float, exc: Exception) -> SimulationError:
        self.failure = SimulationError(
            f"policy {self.label!r} raised in {where} at t={now:.3f}s: {type(exc).__name__}: {exc}"
        )
        self.failure.__cause__ = exc
        return self.failure

    def error_for(self, effect: PolicyError) -> SimulationError:
        """The error to stop the simulation with, for a PolicyError the scheduler reported."""
        if self.failure is not None:
            return self.failure
        return SimulationError(f"policy {self.label!r} at t={effect.at:.3f}s: {effect.detail}")


# ---- running ---------------------------------------------------------------------------------


class ModelStats(msgspec.Struct, frozen=True):
    requests: int
    served: int
    wait_p50: float | None
    wait_p99: float | None
    wait_max: float | None


class Result(msgspec.Struct, frozen=True):
    """One policy on one workload. Everything but `wall_secs` is deterministic."""

    workload: str
    policy: str
    requests: int
    served: int
    rejected: int
    rejected_by_reason: dict[str, int]
    cancelled: int
    unserved: int
    switches: int
    failed_switches: int
    switch_secs: float
    drain_secs: float
    makespan: float
    busy_secs: float
    busy_fraction: float
    wait_p50: float | None
    wait_p99: float | None
    wait_max: float | None
    wait_mean: float | None
    per_model: dict[str, ModelStats]
    anomalies: int
    wall_secs: float


def simulate(
    workload: Workload | str | Sequence[TraceRequest],
    policies: Sequence[PolicyLike] | PolicyLike = ("fifo",),
    hooks: Mapping[str, HookScript] | None = None,
    settings: Settings | None = None,
    *,
    seed: int = 0,
    duration: float | None = None,
    default_hook: HookScript = DEFAULT_HOOK,
) -> list[Result]:
    """Replay `workload` once per policy; one Result per policy, in order.

    `workload` is a Workload, a profile name (over the models of `hooks`, or synthetic ones;
    `seed` and `duration` apply) or a sequence of TraceRequests. The simulated models are those
    of `hooks` plus any the workload names; a model without a script gets `default_hook`.
    `policies` are built-in type names, `module:Class` names, PolicySpecs or policy instances
    (an instance is used as is, so pass a fresh one per call if it keeps state).
    """
    hooks = dict(hooks or {})
    if isinstance(workload, str):
        workload = generate_profile(workload, list(hooks), seed=seed, duration=duration)
    elif not isinstance(workload, Workload):
        workload = Workload("trace", tuple(workload))
    for model in workload.models:
        hooks.setdefault(model, default_hook)
    if isinstance(policies, str | PolicySpec) or not isinstance(policies, Sequence):
        policies = [policies]
    return [_run_one(workload, _spec(p), hooks, settings) for p in policies]


def _run_one(
    workload: Workload,
    spec: PolicySpec,
    hooks: Mapping[str, HookScript],
    settings: Settings | None,
) -> Result:
    started = time.perf_counter()
    rejected_at: dict[int, float] = {}

    guard = _Guarded(spec.label, spec.factory())

    def on_effect(effect: object) -> None:
        if type(effect) is Reject:
            rejected_at[effect.req_id] = world.now
        elif type(effect) is PolicyError:
            raise guard.error_for(effect)

    world = World(hooks, guard, settings, on_effect=on_effect)
    for request in workload.requests:
        req_id = world.submit(request.model, request.at, request.service)
        if request.cancel_after is not None:
            world.cancel(req_id, request.at + request.cancel_after)
    world.run()
    wall = time.perf_counter() - started
    return _measure(world, workload.name, spec.label, rejected_at, wall)


def _measure(
    world: World, workload: str, policy: str, rejected_at: Mapping[int, float], wall: float
) -> Result:
    records = list(world.requests.values())
    waits: list[float] = []
    busy: list[tuple[float, float]] = []
    by_model: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    cancelled = unserved = 0
    first = math.inf
    last = -math.inf
    for r in records:
        first = min(first, r.arrived)
        counts[r.model] = counts.get(r.model, 0) + 1
        model_waits = by_model.setdefault(r.model, [])
        if r.started_at is not None:
            # Waiting ends when the backend starts on it (its first token), which is when
            # llmux grants it unless the backend's slots are all taken.
            wait = r.started_at - r.arrived
            waits.append(wait)
            model_waits.append(wait)
            end = r.finished_at if r.finished_at is not None else r.cancelled_at
            end = end if end is not None else world.now
            busy.append((r.started_at, end))
        elif r.rejected is not None:
            reasons[r.rejected] = reasons.get(r.rejected, 0) + 1
            end = rejected_at.get(r.req_id, r.arrived)
        elif r.cancelled_at is not None:
            cancelled += 1
            end = r.cancelled_at
        else:
            unserved += 1
            end = world.now
        last = max(last, end)
    makespan = max(last - first, 0.0) if records else 0.0
    busy_secs = union_length(busy)
    waits.sort()
    hook_secs = sum(
        world.hooks[model].wake_secs if hook is Hook.WAKE else world.hooks[model].sleep_secs
        for _, model, hook in world.hook_runs
    )
    wakes = sum(1 for _, _, hook in world.hook_runs if hook is Hook.WAKE)
    per_model = {}
    for model, model_waits in by_model.items():
        model_waits.sort()
        per_model[model] = ModelStats(
            requests=counts[model],
            served=len(model_waits),
            wait_p50=_r(percentile(model_waits, 50)),
            wait_p99=_r(percentile(model_waits, 99)),
            wait_max=_r(model_waits[-1] if model_waits else None),
        )
    return Result(
        workload=workload,
        policy=policy,
        requests=len(records),
        served=len(waits),
        rejected=sum(reasons.values()),
        rejected_by_reason=reasons,
        cancelled=cancelled,
        unserved=unserved,
        switches=wakes,
        failed_switches=sum(1 for s in world.switches if s.result == "failure"),
        switch_secs=_round(hook_secs),
        drain_secs=_round(sum(s.drain_duration or 0.0 for s in world.switches)),
        makespan=_round(makespan),
        busy_secs=_round(busy_secs),
        busy_fraction=_round(busy_secs / makespan if makespan > 0 else 0.0),
        wait_p50=_r(percentile(waits, 50)),
        wait_p99=_r(percentile(waits, 99)),
        wait_max=_r(waits[-1] if waits else None),
        wait_mean=_r(sum(waits) / len(waits) if waits else None),
        per_model=per_model,
        anomalies=len(world.anomalies),
        wall_secs=round(wall, 6),
    )


def percentile(ordered: Sequence[float], percent: int) -> float | None:
    """Nearest rank: the smallest value with at least `percent`% of values at or below it."""
    if not ordered:
        return None
    rank = max(1, -(-percent * len(ordered) // 100))
    return ordered[rank - 1]


def union_length(intervals: list[tuple[float, float]]) -> float:
    total = 0.0
    current_start = current_end = -math.inf
    for start, end in sorted(intervals):
        if start > current_end:
            total += max(current_end - current_start, 0.0) if current_end > -math.inf else 0.0
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end > -math.inf:
        total += current_end - current_start
    return total


def _round(value: float) -> float:
    return round(value, 6)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


# ---- command line ----------------------------------------------------------------------------

USAGE_EPILOG = """\
trace format (JSON lines, one request per line; blank lines skipped):
  {"at": 0.0, "model": "qwen-small", "service": 0.5}
  {"at": 1.25, "model": "llama-large", "service": 2.0, "cancel_after": 10}
  at: arrival, seconds from the start; service: seconds once granted;
  cancel_after (optional): the client gives up that long after arriving.
  Models must be the config's. Unknown keys are errors.

profiles (seeded; 600 s of virtual time unless --duration; service 0.25-0.75 s):
{profiles}
  Profiles use the config's models in order; if it has too few, synthetic
  models a, b, c... make up the rest. Without --trace or --profile: every profile.

hook durations: --hook-secs WAKE,SLEEP for every model, --hook-secs MODEL=WAKE,SLEEP
  for one (later options win). Default 2,1. Timeout, drain and min-active come
  from the config's policy block.

policies: --policy TYPE (repeatable), a built-in ({builtins}) or module:Class
  (imported with the config file's directory first on the path). The config's
  policy options go to the config's own policy type. Default: the config's policy
  and every built-in.

measures: switches counts wake hooks (cold start included); switching is time
  spent in hooks; busy is the share of the makespan (first arrival to last
  request over) with at least one request being served; waits are arrival to
  grant for served requests (nearest-rank percentiles); rejected (timeouts,
  failed wakes) and cancelled requests are counted apart.
"""


def _epilog() -> str:
    width = max(len(name) for name in PROFILES)
    lines = [
        textwrap.fill(
            p.description,
            80,
            initial_indent=f"  {p.name:<{width}}  ",
            subsequent_indent=" " * (width + 4),
        )
        for p in PROFILES.values()
    ]
    return USAGE_EPILOG.replace("{profiles}", "\n".join(lines)).replace(
        "{builtins}", ", ".join(sorted(BUILTIN))
    )


class HookOverride(msgspec.Struct, frozen=True):
    model: str | None
    script: HookScript


def parse_hook_secs(text: str) -> HookOverride:
    """`WAKE,SLEEP` or `MODEL=WAKE,SLEEP` (argparse type)."""
    model, sep, durations = text.rpartition("=")
    parts = durations.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        wake, sleep = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WAKE,SLEEP or MODEL=WAKE,SLEEP in seconds, got {text!r}"
        ) from None
    if not (wake >= 0 and sleep >= 0 and math.isfinite(wake + sleep)):
        raise argparse.ArgumentTypeError(f"hook durations must be finite and >= 0: {text!r}")
    if sep and not model:
        raise argparse.ArgumentTypeError(f"empty model name in {text!r}")
    return HookOverride(model if sep else None, HookScript(wake, sleep))


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `llmux simulate` on the CLI's subcommands."""
    parser = commands.add_parser(
        "simulate",
        help="replay traffic through the scheduler in virtual time, compare policies",
        description="Replay a trace or synthetic profiles through the scheduler in virtual "
        "time and print, per policy: requests, switches, time switching, GPU busy fraction "
        "and wait percentiles.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="config file (.json, .yaml or .toml)")
    parser.add_argument(
        "--trace",
        action="append",
        default=[],
        metavar="FILE.jsonl",
        help="replay this trace (repeatable)",
    )
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        choices=list(PROFILES),
        metavar="NAME",
        help=f"a synthetic profile (repeatable): {', '.join(PROFILES)}",
    )
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="TYPE",
        help="policy to compare (repeatable): a built-in name or module:Class",
    )
    parser.add_argument(
        "--hook-secs",
        action="append",
        default=[],
        type=parse_hook_secs,
        metavar="[MODEL=]WAKE,SLEEP",
        help="hook durations in seconds (default 2,1 for every model)",
    )
    parser.add_argument(
        "--backend-slots",
        type=positive_int,
        metavar="N",
        help="a backend serves at most N requests at once and queues the rest, like a GPU "
        "whose batch is full (default: unlimited, service time independent of load); waits "
        "then run to the start of service",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the profiles (default 0)")
    parser.add_argument(
        "--duration",
        type=_non_negative,
        metavar="SECS",
        help="virtual seconds of profile traffic (default 600); for a trace, replay only "
        "the requests arriving before SECS",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


class _Report(msgspec.Struct):
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


def main(args: argparse.Namespace) -> int:
    """Run `llmux simulate` with parsed arguments; the exit status."""
    from llmux.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    settings = settings_from_config(config)
    if args.backend_slots is not None:
        settings = msgspec.structs.replace(settings, backend_slots=args.backend_slots)
    config_models = list(config.models)

    try:
        workloads = _workloads(args, config_models)
        specs = _policies(args.policy, config.policy.type, config.policy_options, config.base_dir)
    except (TraceError, PolicyLoadError) as exc:
        return _fail(str(exc))

    # Every workload runs in a world of the config's models plus any synthetic ones.
    models = list(config_models)
    for workload in workloads:
        models.extend(m for m in workload.synthetic if m not in models)
    try:
        hooks = _hooks(models, args.hook_secs)
    except ValueError as exc:
        return _fail(str(exc))

    reports: list[_Report] = []
    for workload in workloads:
        world_hooks = {m: hooks[m] for m in [*config_models, *workload.synthetic]}
        try:
            results = simulate(workload, specs, world_hooks, settings)
        except SimulationError as exc:
            if exc.__cause__ is not None:
                traceback.print_exception(exc.__cause__, file=sys.stderr)
            return _fail(f"{workload.name}: {exc}", status=1)
        reports.append(
            _Report(
                workload.name,
                workload.kind,
                workload.seed,
                [m for m in world_hooks if m in workload.models],
                list(workload.synthetic),
                len(workload.requests),
                workload.span,
                {m: world_hooks[m] for m in workload.models},
                settings,
                results,
            )
        )
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(reports), indent=2).decode())
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(_table(report) for report in reports))
    return 0


def _fail(message: str, status: int = 2) -> int:
    print(f"llmux: simulate: {message}", file=sys.stderr)
    return status


def _workloads(args: argparse.Namespace, config_models: list[str]) -> list[Workload]:
    workloads: list[Workload] = []
    for path in args.trace:
        workload = load_trace(path)
        for number, request in enumerate(workload.requests, start=1):
            if request.model not in config_models:
                raise TraceError(
                    f"{path}: request {number}: model {request.model!r} is not in the config "
                    f"(models: {', '.join(config_models)})"
                )
        if args.duration is not None:
            kept = tuple(r for r in workload.requests if r.at < args.duration)
            workload = msgspec.structs.replace(workload, requests=kept, duration=args.duration)
        workloads.append(workload)
    names = args.profile or ([] if args.trace else list(PROFILES))
    for name in dict.fromkeys(names):
        workloads.append(
            generate_profile(name, config_models, seed=args.seed, duration=args.duration)
        )
    return workloads


def _policies(
    requested: list[str], config_type: str, config_options: Mapping[str, Any], config_dir: str
) -> list[PolicySpec]:
    types = list(dict.fromkeys(requested or [config_type, *BUILTIN]))
    # The config's directory, not the current one: `--policy mod:Class` must find the
    # module `llmux run` would find for `policy.type: "mod:Class"` in the same config.
    return [
        PolicySpec.from_type(t, config_options if t == config_type else None, config_dir)
        for t in types
    ]


def _hooks(models: list[str], overrides: list[HookOverride]) -> dict[str, HookScript]:
    hooks = dict.fromkeys(models, DEFAULT_HOOK)
    for override in overrides:
        if override.model is None:
            hooks = dict.fromkeys(models, override.script)
        elif override.model in hooks:
            hooks[override.model] = override.script
        else:
            raise ValueError(
                f"--hook-secs: no model named {override.model!r} (models: {', '.join(models)})"
            )
    return hooks


# ---- the table -------------------------------------------------------------------------------

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


def _table(report: _Report) -> str:
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
