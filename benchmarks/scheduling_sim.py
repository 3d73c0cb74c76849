"""Compare switch policies in the simulator at several switch-cost / service-time ratios.

For each ratio R, every built-in `llmux simulate` profile is replayed through the real cores in
virtual time (`llmux.core.world.World`, exactly what `llmux simulate` runs) with hooks that
make one switch cost R x 0.5 s (the profiles' mean service time): wake 3/4 of it, sleep 1/4.
The table gives, per policy, the totals over all profiles: switches, GPU busy fraction (busy
seconds over makespan seconds, summed over profiles), and the p50/p99/max wait of all served
requests pooled, beside the policy's declared starvation bound (the largest over the
profiles; "-" when it declares none). Per-profile figures are the ones `llmux simulate`
prints for the same hooks, e.g. for R = 10:

    .venv/bin/llmux simulate benchmarks/scheduling.json --hook-secs 3.75,1.25 \\
        --policy fifo --policy llmux.policies.drain_first:DrainFirstPolicy \\
        --policy cost_quantum

Run:

    .venv/bin/python benchmarks/scheduling_sim.py                 # the docs/scheduling.md table
    .venv/bin/python benchmarks/scheduling_sim.py --per-profile   # and each profile's rows
    .venv/bin/python benchmarks/scheduling_sim.py --ratios 10 --option max_wait_secs=30
    .venv/bin/python benchmarks/scheduling_sim.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from llmux.cli.argtypes import positive_int
from llmux.core.policy import starvation_bound
from llmux.core.world import HookScript, Settings, World, bound_inputs
from llmux.policies import build_policy
from llmux.simulate import (
    CAPACITY_PROFILES,
    PROFILES,
    Result,
    Workload,
    generate_profile,
    percentile,
)
from llmux.simulation.measure import _measure

SERVICE_MEAN = 0.5  # the profiles draw service times uniformly from 0.25-0.75 s
SERVICE_MAX = 0.75
WAKE_SHARE = 0.75
CONFIG_MODELS = ("a", "b")  # as in benchmarks/scheduling.json
RATIOS = (4.0, 10.0, 20.0, 40.0)
DRAIN_FIRST = "llmux.policies.drain_first:DrainFirstPolicy"
POLICIES = ("fifo", DRAIN_FIRST, "cost_quantum")
LABELS = {DRAIN_FIRST: "drain_first"}
# The capacity profiles are compared in benchmarks/capacity.py, with resources declared.
ONE_AT_A_TIME = tuple(p for p in PROFILES if p not in CAPACITY_PROFILES)


def hooks_for(ratio: float) -> HookScript:
    switch = ratio * SERVICE_MEAN
    return HookScript(wake_secs=WAKE_SHARE * switch, sleep_secs=(1 - WAKE_SHARE) * switch)


@dataclass
class Totals:
    policy: str
    ratio: float
    switches: int = 0
    busy_secs: float = 0.0
    makespan: float = 0.0
    waits: list[float] = field(default_factory=list)
    bound: float | None = None
    unserved: int = 0
    per_profile: list[Result] = field(default_factory=list)

    @property
    def busy_fraction(self) -> float:
        return self.busy_secs / self.makespan if self.makespan else 0.0

    def percentile(self, percent: int) -> float:
        value = percentile(sorted(self.waits), percent)
        return math.nan if value is None else value

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "ratio": self.ratio,
            "switches": self.switches,
            "busy_fraction": round(self.busy_fraction, 4),
            "wait_p50": round(self.percentile(50), 3),
            "wait_p99": round(self.percentile(99), 3),
            "wait_max": round(self.percentile(100), 3),
            "wait_mean": round(sum(self.waits) / len(self.waits), 3) if self.waits else None,
            "bound": None if self.bound is None else round(self.bound, 3),
            "unserved": self.unserved,
        }


def run_one(
    workload: Workload,
    policy_type: str,
    options: Mapping[str, Any],
    hooks: Mapping[str, HookScript],
    settings: Settings,
) -> tuple[Result, list[float], float | None]:
    """One policy on one workload: `llmux simulate`'s Result, every served wait, the bound."""
    policy = build_policy(policy_type, dict(options))
    world = World(hooks, policy, settings)
    for request in workload.requests:
        world.submit(request.model, request.at, request.service)
    started = time.perf_counter()
    world.run()
    label = LABELS.get(policy_type, policy_type)
    result = _measure(world, workload.name, label, {}, time.perf_counter() - started)
    waits = [r.started_at - r.arrived for r in world.requests.values() if r.started_at is not None]
    inputs = bound_inputs(
        hooks, settings, max_service=SERVICE_MAX, failure_backoff=world.scheduler.failure_backoff
    )
    return result, waits, starvation_bound(policy, inputs)


def compare(
    ratios: Sequence[float],
    policies: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    *,
    profiles: Sequence[str] = ONE_AT_A_TIME,
    seed: int = 0,
    duration: float | None = None,
    backend_slots: int | None = None,
) -> list[Totals]:
    # No timeout, drain first, min_active 0: the config's defaults.
    settings = Settings(backend_slots=backend_slots)
    workloads = [
        generate_profile(name, CONFIG_MODELS, seed=seed, duration=duration) for name in profiles
    ]
    out: list[Totals] = []
    for ratio in ratios:
        script = hooks_for(ratio)
        for policy_type in policies:
            totals = Totals(LABELS.get(policy_type, policy_type), ratio)
            for workload in workloads:
                models = [*CONFIG_MODELS, *workload.synthetic]
                hooks = dict.fromkeys(models, script)
                result, waits, bound = run_one(
                    workload, policy_type, options.get(policy_type, {}), hooks, settings
                )
                totals.switches += result.switches
                totals.busy_secs += result.busy_secs
                totals.makespan += result.makespan
                totals.waits.extend(waits)
                totals.unserved += result.unserved
                totals.per_profile.append(result)
                if bound is not None:
                    totals.bound = max(totals.bound or 0.0, bound)
            out.append(totals)
    return out


def table(rows: Sequence[Totals], *, per_profile: bool = False) -> str:
    header = (
        "| switch/service | policy | switches | GPU busy | wait p50 | wait p99 | wait max "
        "| wait mean | declared bound |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in rows:
        s = t.summary()
        bound = "-" if s["bound"] is None else f"{s['bound']:.1f} s"
        lines.append(
            f"| {t.ratio:g} ({t.ratio * SERVICE_MEAN:g} s) | {t.policy} | {s['switches']} "
            f"| {100 * s['busy_fraction']:.1f}% | {s['wait_p50']:.2f} s | {s['wait_p99']:.2f} s "
            f"| {s['wait_max']:.2f} s | {s['wait_mean']:.2f} s | {bound} |"
        )
    if per_profile:
        lines += ["", "| ratio | policy | profile | switches | busy | p50 | p99 | max |"]
        lines.append("|---|---|---|---:|---:|---:|---:|---:|")
        for t in rows:
            for r in t.per_profile:
                lines.append(
                    f"| {t.ratio:g} | {t.policy} | {r.workload} | {r.switches} "
                    f"| {100 * r.busy_fraction:.1f}% | {r.wait_p50 or 0:.2f} s "
                    f"| {r.wait_p99 or 0:.2f} s | {r.wait_max or 0:.2f} s |"
                )
    return "\n".join(lines) + "\n"


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options this comparison shares with the real-server one (scheduling_real.py)."""
    parser.add_argument(
        "--ratios",
        type=lambda s: [float(x) for x in s.split(",")],
        default=list(RATIOS),
        help="switch-cost / service-time ratios (default 4,10,20,40)",
    )
    parser.add_argument(
        "--backend-slots",
        type=positive_int,
        default=None,
        help="a backend serves at most N requests at once, the rest queue in order "
        "(default: no limit)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        help="policies to compare (default: fifo, drain-first, cost_quantum)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        type=_option,
        metavar="KEY=VALUE",
        help="an option for cost_quantum (repeatable), e.g. max_wait_secs=30",
    )
    parser.add_argument("--profile", action="append", default=[], choices=list(ONE_AT_A_TIME))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--per-profile", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    policies = args.policy or list(POLICIES)
    options = {"cost_quantum": dict(args.option)}
    rows = compare(
        args.ratios,
        policies,
        options,
        profiles=args.profile or ONE_AT_A_TIME,
        seed=args.seed,
        duration=args.duration,
        backend_slots=args.backend_slots,
    )
    if args.json:
        json.dump(
            [
                {**t.summary(), "per_profile": [msgspec.to_builtins(r) for r in t.per_profile]}
                for t in rows
            ],
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table(rows, per_profile=args.per_profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
