"""`llmux simulate` on the command line, and the table it prints."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import traceback
from collections.abc import Mapping
from typing import Any

import msgspec

from llmux.build import settings_from_config
from llmux.cli.argtypes import positive_int, positive_seconds
from llmux.core.world import HookScript
from llmux.policies import BUILTIN, PolicyLoadError
from llmux.simulation.report import Report, table
from llmux.simulation.run import PolicySpec, SimulationError, simulate
from llmux.simulation.workloads import (
    DEFAULT_HOOK,
    PROFILES,
    TraceError,
    Workload,
    generate_profile,
    load_trace,
)

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
        type=positive_seconds,
        metavar="SECS",
        help="virtual seconds of profile traffic (default 600); for a trace, replay only "
        "the requests arriving before SECS",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


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

    reports: list[Report] = []
    for workload in workloads:
        world_hooks = {m: hooks[m] for m in [*config_models, *workload.synthetic]}
        try:
            results = simulate(workload, specs, world_hooks, settings)
        except SimulationError as exc:
            if exc.__cause__ is not None:
                traceback.print_exception(exc.__cause__, file=sys.stderr)
            return _fail(f"{workload.name}: {exc}", status=1)
        reports.append(
            Report(
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
        sys.stdout.write("\n".join(table(report) for report in reports))
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
