"""One model at a time against capacity-aware scheduling, in the simulator and on the server.

Two workloads (`llmux simulate` profiles), each run twice per policy: once as llmux ran before
capacity (no `resources`: one model awake at a time), once with an 80 GiB GPU declared and each
model's needs, so that several models are awake together:

- mixed: a small model `s` (16 GiB) always busy at 4 req/s beside two large ones `l1`, `l2`
  (60 GiB each) taking turns in 30 s phases at 2 req/s. With capacity, `s` fits beside either
  large model; the two large ones evict each other.
- many: six small models `m0`..`m5` (20 GiB each: four fit), each request picks one at random,
  5 req/s.

Every hook takes the same time (`--hook-secs WAKE,SLEEP`, default 3.75,1.25: a 5 s switch, ten
times the mean service time). For each (workload, mode, policy) the table gives switches (wake
hooks run), GPU busy fraction (the union of service intervals over the makespan), and the
p50/p99/max wait of every request, of the small model's (mixed) and of the large models'. The
simulator's figures (`llmux.core.world.World`, what `llmux simulate` runs) and the real
server's (`llmux run` with `sh` hooks that `sleep`, stand-in backends, requests replayed in real
time scaled by `--scale`, default 0.1, and reported in the simulator's seconds) side by side.

    .venv/bin/python benchmarks/capacity.py               # both, sim and real (~3 min)
    .venv/bin/python benchmarks/capacity.py --sim-only    # the simulator alone (~2 s)
    .venv/bin/python benchmarks/capacity.py --json

The simulator alone, for one cell (the config in benchmarks/capacity-mixed.json):

    .venv/bin/llmux simulate benchmarks/capacity-mixed.json --profile mixed --hook-secs 3.75,1.25
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from llmux.core.world import HookScript, Settings, World
from llmux.policies import build_policy
from llmux.simulate import Workload, generate_profile, percentile, union_length

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scheduling_real import (
    Outcome,
    replay,
    scaled_workload,
    standins,
    start_server,
    stop,
)

GPU = {"gpu0": 80.0}


@dataclass(frozen=True)
class Case:
    profile: str
    models: tuple[str, ...]
    needs: dict[str, dict[str, float]]
    # Whose waits the table shows apart: (label, models).
    groups: tuple[tuple[str, tuple[str, ...]], ...]


CASES = (
    Case(
        "mixed",
        ("s", "l1", "l2"),
        {"s": {"gpu0": 16.0}, "l1": {"gpu0": 60.0}, "l2": {"gpu0": 60.0}},
        (("small", ("s",)), ("large", ("l1", "l2"))),
    ),
    Case(
        "many",
        tuple(f"m{i}" for i in range(6)),
        {f"m{i}": {"gpu0": 20.0} for i in range(6)},
        (),
    ),
)
MODES = ("one at a time", "capacity")
POLICIES = ("fifo", "cost_quantum")
TIME_OPTIONS = {"cost_quantum": {"max_wait_secs": 60.0, "prior_switch_secs": 10.0}}


def waits_summary(waits: Sequence[float]) -> dict[str, float]:
    ordered = sorted(waits)
    return {
        "p50": _round(percentile(ordered, 50)),
        "p99": _round(percentile(ordered, 99)),
        "max": _round(percentile(ordered, 100)),
    }


def _round(value: float | None) -> float:
    return math.nan if value is None else round(value, 3)


def summary(
    case: Case,
    switches: int,
    busy: float,
    makespan: float,
    waits: Mapping[str, Sequence[float]],
    failed: int = 0,
) -> dict[str, Any]:
    every = [w for ws in waits.values() for w in ws]
    row: dict[str, Any] = {
        "switches": switches,
        "busy_fraction": round(busy / makespan, 4) if makespan else 0.0,
        "wait": waits_summary(every),
        "failed": failed,
    }
    for label, models in case.groups:
        row[label] = waits_summary([w for m in models for w in waits.get(m, [])])
    return row


def settings_for(case: Case, mode: str) -> Settings:
    if mode == "capacity":
        return Settings(resources=GPU, needs=case.needs)
    return Settings()


def simulate(
    case: Case, workload: Workload, mode: str, policy: str, hooks: HookScript, scale: float
) -> dict[str, Any]:
    """The simulator's figures for the very requests the server is sent (scaled), unscaled."""
    scaled = scaled_workload(workload, scale)
    script = HookScript(hooks.wake_secs * scale, hooks.sleep_secs * scale)
    world = World(
        dict.fromkeys(case.models, script),
        build_policy(policy, scaled_options_for(policy, scale)),
        settings_for(case, mode),
    )
    for request in scaled.requests:
        world.submit(request.model, request.at, request.service)
    world.run()
    served = [r for r in world.requests.values() if r.started_at is not None]
    waits: dict[str, list[float]] = {}
    for r in served:
        assert r.started_at is not None
        waits.setdefault(r.model, []).append((r.started_at - r.arrived) / scale)
    intervals = [
        (r.started_at, r.finished_at)
        for r in served
        if r.started_at is not None and r.finished_at is not None
    ]
    busy = union_length(intervals) / scale
    ends = [end for _, end in intervals]
    makespan = (max(ends) - min(r.arrived for r in world.requests.values())) / scale
    switches = sum(1 for _, _, hook in world.hook_runs if hook.value == "wake")
    return summary(case, switches, busy, makespan, waits)


def scaled_options_for(policy: str, scale: float) -> dict[str, float]:
    return {k: v * scale for k, v in TIME_OPTIONS.get(policy, {}).items()}


def real(case: Case, outcomes: Sequence[Outcome], switches: int, scale: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == 200 and o.head is not None and o.end is not None]
    waits: dict[str, list[float]] = {}
    intervals: list[tuple[float, float]] = []
    for o in ok:
        assert o.head is not None and o.end is not None
        waits.setdefault(o.model, []).append((o.head - o.sent) / scale)
        intervals.append((o.head, o.end))
    makespan = (max(end for _, end in intervals) - min(o.sent for o in outcomes)) / scale
    failed = len(outcomes) - len(ok)
    return summary(case, switches, union_length(intervals) / scale, makespan, waits, failed)


async def _replay_all(servers: Mapping[str, Any], workload: Workload, scale: float) -> Any:
    results: dict[str, list[Outcome]] = {}
    t0 = trio.current_time() + 0.5

    async def one(key: str, port: int) -> None:
        results[key] = await replay(port, workload, scale, t0)

    async with trio.open_nursery() as nursery:
        for key, server in servers.items():
            nursery.start_soon(one, key, server.port)
    return results


def run(
    hooks: HookScript, *, scale: float, duration: float, seed: int, sim_only: bool
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmux-cap-")))
        for case in CASES:
            workload = generate_profile(case.profile, case.models, seed=seed, duration=duration)
            real_rows: dict[tuple[str, str], dict[str, Any]] = {}
            if not sim_only:
                scaled_hooks = HookScript(hooks.wake_secs * scale, hooks.sleep_secs * scale)
                # Backends are per server: the stand-ins count nothing, but a shared one would
                # see the four servers' requests interleaved.
                servers = {}
                for i, (mode, policy) in enumerate((m, p) for m in MODES for p in POLICIES):
                    backends = stack.enter_context(
                        standins(workdir, f"{case.profile}{i}-", None, case.models)
                    )
                    capacity = mode == "capacity"
                    servers[(mode, policy)] = start_server(
                        workdir,
                        policy,
                        scaled_options_for(policy, scale),
                        backends,
                        scaled_hooks,
                        resources=GPU if capacity else None,
                        needs=case.needs if capacity else None,
                        tag=f"{case.profile}-{i}-",
                    )
                try:
                    keyed = {f"{m}|{p}": s for (m, p), s in servers.items()}
                    outcomes = trio.run(_replay_all, keyed, workload, scale)
                finally:
                    for server in servers.values():
                        stop(server.process)
                for (mode, policy), server in servers.items():
                    real_rows[(mode, policy)] = real(
                        case, outcomes[f"{mode}|{policy}"], server.switches(), scale
                    )
                print(f"{case.profile}: real runs done", file=sys.stderr, flush=True)
            for mode in MODES:
                for policy in POLICIES:
                    rows.append(
                        {
                            "profile": case.profile,
                            "mode": mode,
                            "policy": policy,
                            "sim": simulate(case, workload, mode, policy, hooks, scale),
                            "real": real_rows.get((mode, policy)),
                        }
                    )
    return rows


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    groups = {label for case in CASES for label, _ in case.groups}
    head = ["profile", "mode", "policy", "", "switches", "busy", "wait p50/p99/max"]
    head += [f"{g} p50/p99/max" for g in sorted(groups, reverse=True)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        for source in ("sim", "real"):
            figures = row[source]
            if figures is None:
                continue
            cells = [row["profile"], row["mode"], row["policy"], source]
            cells += [str(figures["switches"]), f"{figures['busy_fraction']:.3f}"]
            cells.append(_triple(figures["wait"]))
            cells += [
                _triple(figures[g]) if g in figures else "" for g in sorted(groups, reverse=True)
            ]
            if figures.get("failed"):
                cells[-1] += f" ({figures['failed']} failed)"
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _triple(waits: Mapping[str, float]) -> str:
    return f"{waits['p50']:.2f} / {waits['p99']:.2f} / {waits['max']:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n\n")[0])
    parser.add_argument("--hook-secs", default="3.75,1.25", help="WAKE,SLEEP seconds")
    parser.add_argument("--scale", type=float, default=0.1, help="real / simulated time")
    parser.add_argument("--duration", type=float, default=300.0, help="virtual seconds per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sim-only", action="store_true", help="skip the real server")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    wake, sleep = (float(x) for x in args.hook_secs.split(","))
    rows = run(
        HookScript(wake, sleep),
        scale=args.scale,
        duration=args.duration,
        seed=args.seed,
        sim_only=args.sim_only,
    )
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
