"""Workloads for the simulator: traces (JSON lines) and the built-in seeded profiles."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated

import msgspec

from llmux.core.world import HookScript

DEFAULT_HOOK = HookScript(wake_secs=2.0, sleep_secs=1.0)
DEFAULT_DURATION = 600.0
SYNTHETIC_NAMES = tuple("abcdefghijklmnopqrstuvwxyz")

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
ModelName = Annotated[str, msgspec.Meta(min_length=1)]


class TraceError(ValueError):
    """One line saying which trace line is wrong and why."""


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


def _mixed(rng: random.Random, models: Sequence[str], duration: float) -> list[TraceRequest]:
    small = [_request(rng, t, models[0]) for t in _arrivals(rng, 4.0, 0.0, duration)]
    phase = 30.0
    large = [
        _request(rng, t, models[1 + int(t // phase) % 2])
        for t in _arrivals(rng, 2.0, 0.0, duration)
    ]
    return sorted(small + large, key=lambda r: r.at)


def _many(rng: random.Random, models: Sequence[str], duration: float) -> list[TraceRequest]:
    chosen = models[:6]
    return [_request(rng, t, rng.choice(chosen)) for t in _arrivals(rng, 5.0, 0.0, duration)]


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
        Profile(
            "mixed",
            3,
            "a small model always busy (4 req/s) beside two large ones taking turns in 30 s "
            "phases (2 req/s); for capacity: the small one fits beside either large one",
            _mixed,
        ),
        Profile(
            "many",
            6,
            "six small models, each request picks one at random, 5 req/s; for capacity: "
            "several fit at once",
            _many,
        ),
    )
}
# The profiles written for several models awake at once (declared `resources`); the
# one-at-a-time policy comparison (benchmarks/scheduling_*.py) keeps to the others.
CAPACITY_PROFILES = ("mixed", "many")


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
