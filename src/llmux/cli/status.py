"""`llmux status`: the /llmux/status picture in a terminal.

Each model's lifecycle is printed as its cycle of states with the current one in brackets,
followed by its queue and in-flight counts; then the scheduler's switch sequence the same
way, its last decision, the switch-cost estimates and the last transitions. With `--watch`
the picture is fetched and printed again every few seconds until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from llmux.cli.argtypes import positive_seconds
from llmux.core.capacity import IMPLICIT_RESOURCE

DEFAULT_WATCH_SECS = 2.0
# Cursor home, then erase the screen: each frame replaces the last instead of scrolling.
CLEAR_SCREEN = "\x1b[H\x1b[2J"


class StatusError(Exception):
    """llmux could not be reached or refused: one line for stderr."""


def _cycle(states: list[str], current: str | None) -> str:
    return " → ".join(f"[{state}]" if state == current else state for state in states)


def _ago(at: float | None, now: float) -> str:
    return "" if at is None else f"{now - at:.1f}s ago"


def render(status: dict[str, Any], url: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    scheduler = status["scheduler"]
    machines = status["machines"]
    awake = scheduler.get("awake", [])
    shown = (
        f"awake {', '.join(awake)}" if len(awake) > 1 else f"active {scheduler['active'] or '-'}"
    )
    lines = [
        f"llmux at {url}  policy {scheduler['policy']}  {shown}"
        + (f"  PINNED to {scheduler['pinned']}" if scheduler["pinned"] else ""),
    ]
    # The implicit resource (none declared: one model at a time) is not worth a line.
    declared = [r for r in status.get("resources", []) if r["name"] != IMPLICIT_RESOURCE]
    if declared:
        lines.append(
            "resources: "
            + ", ".join(f"{r['name']} {r['used']:g}/{r['capacity']:g}" for r in declared)
        )
    lines.append("")
    states = machines["ModelLifecycle"]["states"]
    width = max(len(name) for name in status["models"])
    for name, model in status["models"].items():
        limit = model.get("max_in_flight")
        of = f" of {limit}" if limit is not None else ""
        counts = f"in flight {model['in_flight']}{of}, queued {model['queue_depth']}"
        if model["oldest_wait_secs"] is not None:
            counts += f" (oldest {model['oldest_wait_secs']:.1f}s)"
        if declared:
            needs = model.get("needs", {})
            counts += ", needs " + (
                " ".join(f"{r} {amount:g}" for r, amount in needs.items()) or "nothing"
            )
            counts += ", persistent" if model.get("persistent") else ""
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
        "--url",
        default="http://127.0.0.1:3000",
        help="llmux's address; http:// is assumed without a scheme (default %(default)s)",
    )
    status.add_argument("--key", help="API key (default: $LLMUX_API_KEY)")
    status.add_argument("--json", action="store_true", help="print the raw /llmux/status JSON")
    status.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH_SECS,
        type=positive_seconds,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_SECS:g}) until Ctrl-C",
    )


def normalize_url(url: str) -> str:
    """`127.0.0.1:3000` means http://127.0.0.1:3000, as curl reads it; no trailing slash."""
    url = url.strip().rstrip("/")
    # Not urlsplit: it reads `localhost:3000` as scheme `localhost`.
    return url if "://" in url else f"http://{url}"


def fetch_frame(url: str, headers: dict[str, str], as_json: bool) -> str:
    """One picture of llmux at `url`, as printed; StatusError when it cannot be had."""
    try:
        reply = httpx.get(f"{url}/llmux/status", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot reach {url}: {exc}") from exc
    if reply.status_code != 200:
        raise StatusError(f"{url} answered {reply.status_code}: {reply.text}")
    return reply.text + "\n" if as_json else render(reply.json(), url)


def watch(
    fetch: Callable[[], str],
    interval: float,
    *,
    out: TextIO,
    clear: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print a fresh frame every `interval` seconds until Ctrl-C, then exit 0.

    A failed fetch becomes that frame's text and watching goes on, as `watch(1)` does:
    llmux restarting should not end the view.
    """
    try:
        while True:
            try:
                frame = fetch()
            except StatusError as exc:
                frame = f"llmux status: {exc}\n"
            # Only a terminal understands the escape; in a pipe or a file frames follow
            # one another, a blank line apart.
            out.write(CLEAR_SCREEN + frame if clear else frame + "\n")
            out.flush()
            sleep(interval)
    except KeyboardInterrupt:
        # Ctrl-C is how a watch ends: a clean exit, not a traceback.
        return 0


def main(args: argparse.Namespace) -> int:
    url = normalize_url(args.url)
    key = args.key or os.environ.get("LLMUX_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if args.watch is not None:
        return watch(
            lambda: fetch_frame(url, headers, args.json),
            args.watch,
            out=sys.stdout,
            clear=sys.stdout.isatty(),
        )
    try:
        sys.stdout.write(fetch_frame(url, headers, args.json))
    except StatusError as exc:
        print(f"llmux status: {exc}", file=sys.stderr)
        return 1
    return 0
