"""`llmux status`: the /llmux/status picture in a terminal.

Each model's lifecycle is printed as its cycle of states with the current one in brackets,
followed by its queue and in-flight counts; then the scheduler's switch sequence the same
way, its last decision, the switch-cost estimates and the last transitions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import httpx

LIFECYCLE_ORDER = ["Sleeping", "Waking", "Active", "Draining", "SleepingDown"]


def _cycle(states: list[str], current: str | None) -> str:
    return " → ".join(f"[{state}]" if state == current else state for state in states)


def _ago(at: float | None, now: float) -> str:
    return "" if at is None else f"{now - at:.1f}s ago"


def render(status: dict[str, Any], url: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    scheduler = status["scheduler"]
    machines = status["machines"]
    lines = [
        f"llmux at {url}  policy {scheduler['policy']}  active {scheduler['active'] or '-'}"
        + (f"  PINNED to {scheduler['pinned']}" if scheduler["pinned"] else ""),
        "",
    ]
    states = machines["ModelLifecycle"]["states"]
    width = max(len(name) for name in status["models"])
    for name, model in status["models"].items():
        limit = model.get("max_in_flight")
        of = f" of {limit}" if limit is not None else ""
        counts = f"in flight {model['in_flight']}{of}, queued {model['queue_depth']}"
        if model["oldest_wait_secs"] is not None:
            counts += f" (oldest {model['oldest_wait_secs']:.1f}s)"
        lines.append(f"  {name:<{width}}  {_cycle(states, model['state'])}   {counts}")
        last = model["last_transition"]
        if last is not None:
            lines.append(
                f"  {'':<{width}}  last: {last['source']} -{last['event']}-> {last['target']}"
                f" ({last['cause']}) {_ago(last['at'], now)}"
            )
    lines.append("")
    phases = machines["SwitchSequence"]["states"]
    lines.append(f"  {'scheduler':<{width}}  {_cycle(phases, scheduler['phase'])}")
    switch = scheduler["switch"]
    if switch is not None:
        lines.append(
            f"  {'':<{width}}  switching {switch['from'] or 'idle'} -> {switch['to'] or '(sleep)'}"
            f": {switch['reason']} (started {_ago(switch['started_at'], now)})"
        )
    lines.append(f"  {'':<{width}}  last decision: {scheduler['last_decision']}")
    if status["switch_costs"]:
        costs = ", ".join(
            f"{c['from']}→{c['to']} {c['estimate_secs']:.2f}s" for c in status["switch_costs"]
        )
        lines.append(f"  {'':<{width}}  switch costs: {costs}")
    return "\n".join(lines) + "\n"


def add_parser(commands: Any) -> None:
    status = commands.add_parser("status", help="show what a running llmux is doing")
    status.add_argument(
        "--url", default="http://127.0.0.1:3000", help="llmux's address (default %(default)s)"
    )
    status.add_argument("--key", help="API key (default: $LLMUX_API_KEY)")
    status.add_argument("--json", action="store_true", help="print the raw /llmux/status JSON")


def main(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    key = args.key or os.environ.get("LLMUX_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        reply = httpx.get(f"{url}/llmux/status", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"llmux status: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if reply.status_code != 200:
        print(f"llmux status: {url} answered {reply.status_code}: {reply.text}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(reply.text + "\n")
    else:
        sys.stdout.write(render(reply.json(), url))
    return 0
